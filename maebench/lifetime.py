"""Child processes die with their parent: a killed `maebench run` (SIGTERM, SIGKILL, out of memory) must not leave
its pretraining child or evaluation workers running as orphans that hold the run's locks and keep training.

The child asks the kernel for a parent-death signal (Linux prctl PR_SET_PDEATHSIG); the parent turns SIGTERM into
an interrupt that stops its children before it exits. Checkpoints are written atomically, so a re-run resumes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

PARENT_PID_ENV = "MAEBENCH_PARENT_PID"
_PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM received: stop as on Ctrl-C, and stop the children too (they did not receive it)."""


def die_with_parent(parent_pid: int | None = None) -> None:
    """Have the kernel send this process SIGTERM when its parent dies; exit now if the parent is already gone
    (it died before the request was made). Only Linux has the request; elsewhere this does nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    expected = parent_pid if parent_pid is not None else int(os.environ.get(PARENT_PID_ENV, "0") or 0)
    if expected and os.getppid() != expected:
        sys.exit(143)


def child_environment() -> dict[str, str]:
    """The environment for a child that calls `die_with_parent()`: this process's, plus its pid."""
    return {**os.environ, PARENT_PID_ENV: str(os.getpid())}


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread."""
    def handler(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave the default
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
