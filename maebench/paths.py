"""Where maebench keeps things on disk: the user cache (toy data, feature cache), the latest-run pointer, and the
check of output paths before any work (an evaluation that runs for an hour and then cannot write its result, the
path being a file, a folder or under a file, loses that hour)."""

from __future__ import annotations

import os
from pathlib import Path

from maebench.errors import MaebenchError


def cache_dir() -> Path:
    """$MAEBENCH_CACHE, else $XDG_CACHE_HOME/maebench, else ~/.cache/maebench (created on demand); one that cannot
    be made or written is a one-line error, before any work goes into something that would be written there."""
    root = os.environ.get("MAEBENCH_CACHE")
    if root:
        path = Path(root)
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "maebench"
    hint = "set MAEBENCH_CACHE to a writable folder"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # under a file, on a read-only or full disk
        raise MaebenchError(f"cache folder {path} cannot be made ({err.strerror or err}): {hint}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise MaebenchError(f"cache folder {path} is not writable (toy data, features and the latest-run pointer "
                            f"go there): {hint}")
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


def usable_dir(path: str | Path, option: str) -> Path:
    """`path` as a folder outputs can go to: it is a folder, or can be made (its nearest existing parent is a
    writable folder)."""
    path = Path(path).expanduser()
    for existing in (path, *path.parents):
        if not existing.exists() and not existing.is_symlink():
            continue
        if not existing.is_dir():
            where = "is a file" if existing == path else f"is under {existing}, which is a file"
            raise MaebenchError(f"{option} {path} {where}, not a folder: choose another {option}")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise MaebenchError(f"{option} {path}: {existing} is not writable; choose another {option}")
        return path
    return path


def usable_file(path: str | Path, option: str) -> Path:
    """`path` as a file to write: not a folder, in a folder that exists or can be made."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise MaebenchError(f"{option} {path} is a folder; name a file in it, e.g. {path / 'out'}")
    usable_dir(path.parent, option)
    return path
