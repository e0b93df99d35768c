"""Where maebench keeps things on disk: the user cache (toy data, feature cache) and the latest-run pointer."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$MAEBENCH_CACHE, else $XDG_CACHE_HOME/maebench, else ~/.cache/maebench (created on demand)."""
    root = os.environ.get("MAEBENCH_CACHE")
    if root:
        path = Path(root)
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "maebench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _latest_pointer() -> Path:
    return cache_dir() / "latest_pretrain_run.txt"


def record_latest_pretrain_run(run_dir: Path) -> None:
    """Remember `run_dir` as the run `maebench eval` uses when no --upstream is given."""
    from maebench.atomic import write_text_atomic

    write_text_atomic(_latest_pointer(), str(Path(run_dir).resolve()) + "\n")


def latest_pretrain_run() -> Path | None:
    """The run directory of the most recent `maebench pretrain`, or None if there is none (or it is gone)."""
    pointer = _latest_pointer()
    if not pointer.exists():
        return None
    path = Path(pointer.read_text().strip())
    return path if path.exists() else None
