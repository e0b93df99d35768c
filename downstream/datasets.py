"""Evaluation data by task name: the dataset as shipped when given its root, else its toy look-alike.

The one entry point for "a task, with or without data": it sits above the task loaders (`downstream/tasks/`) and
the toy builder (`downstream/toy.py`, which imitates them), so neither has to know about the other's callers.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import toy
from .tasks import ALL_TASKS, TASKS, Task, check_task_name
from .tasks import check_layout as _check_layout
from .tasks import load_task as _load_task

__all__ = ["ALL_TASKS", "TASKS", "build_toy", "check_layout", "load_task", "task_root"]

build_toy = toy.build_toy


def task_root(name: str, root: str | Path | None) -> str | Path:
    """`root` itself, or with None the cached toy root of `name` (built on first use, announced on stderr)."""
    if name.startswith("hear:"):  # `hear:PATH` names its own folder
        return root  # type: ignore[return-value]
    check_task_name(name)
    if root is not None:
        return root
    return toy.ensure_toy(name, announce=lambda msg: print(msg, file=sys.stderr))


def load_task(name: str, root: str | Path | None = None) -> Task:
    """The task `name` read from `root` (its official layout); root None -> the toy version, built on first use."""
    return _load_task(name, task_root(name, root))


def check_layout(name: str, root: str | Path | None = None, *, deep: bool = False) -> dict:
    """`maebench.downstream.tasks.check_layout` of `root`, or of the toy version when root is None."""
    return _check_layout(name, task_root(name, root), deep=deep)
