"""What a pipeline (`maebench run`, `maebench demo`) prints on stdout: one line when a stage starts and one when it
ends, with its figures (steps and loss, a score, where its output went). A stage's own chatter (the trainer's
lines, its hints) goes to the stage's log file instead, so the pipeline reads the same on a terminal and in a log.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{seconds:.1f} s"


def say(key: str, text: str) -> None:
    """One line of the pipeline's log: the clock time, the stage, what happened."""
    print(f"{time.strftime('%H:%M:%S')} {key}: {text}", file=sys.stdout, flush=True)


def started(key: str, detail: str = "") -> None:
    say(key, "started" + (f" ({detail})" if detail else ""))


def ended(key: str, entry: dict[str, Any]) -> None:
    """The end line of a stage from its manifest entry."""
    seconds = entry.get("seconds")
    took = f" after {duration(seconds)}" if seconds is not None else ""
    status = entry.get("status")
    if status == "blocked":
        say(key, f"blocked: {entry.get('error')}")
    elif status != "done":
        say(key, f"failed{took}: {entry.get('error')}")
    else:
        figures = _figures(key.split("/", 1)[0], entry)
        say(key, f"done in {duration(seconds or 0.0)}" + (f": {figures}" if figures else ""))


def _figures(kind: str, entry: dict[str, Any]) -> str:
    if kind == "pretrain":
        curve = entry.get("loss_curve") or []
        loss = f", loss {curve[0][1]:.3f} -> {curve[-1][1]:.3f}" if curve else ""
        speed = f", {entry['clips_per_s']:.1f} clips/s" if entry.get("clips_per_s") else ""
        return f"{entry.get('steps', 0)} steps{loss}{speed}"
    if kind == "eval":
        return f"{entry.get('metric')} {entry['score']:.1f} ± {entry['std']:.1f}"
    outputs = [str(path) for path in (entry.get("outputs") or {}).values()]
    return ", ".join(outputs)


def training_status(run_dir: Path, max_steps: int | None) -> str:
    """`step 30/51 loss 6.127` from a training run's metrics.jsonl (the last complete line), for a progress bar."""
    path = run_dir / "metrics.jsonl"
    try:
        lines = path.read_text().splitlines() if path.exists() else []
        record = json.loads(lines[-1]) if lines else None
    except (OSError, json.JSONDecodeError):
        return ""
    if not record:
        return ""
    total = f"/{max_steps}" if max_steps else ""
    return f"step {record['step']}{total} loss {record['loss']:.3f}"
