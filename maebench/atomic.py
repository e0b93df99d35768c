"""Atomic writes and work-in-progress names: a reader (or a crash) sees the old file or the new one, never half of
one, and what a killed process left behind is recognisable and swept by the next run.

Files and folders are created with the user's umask (as `open` and `mkdir` do), not tempfile's private 0600/0700:
results, manifests and caches are ordinary files other tools and users read.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
from pathlib import Path


def _host() -> str:
    """This machine's name, made safe for a file name (caches may sit on a filesystem several machines share)."""
    return "".join(c if c.isalnum() else "_" for c in socket.gethostname()) or "host"


def temp_sibling(path: str | Path, tag: str = "tmp") -> Path:
    """A fresh name beside `path` for work in progress: `.NAME.TAG-PID-HOST-RANDOM` (nothing is created).

    The pid and host let `sweep_stale` tell a killed writer's leftovers from a live writer's work.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{_host()}-{secrets.token_hex(4)}")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (a process of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(path: str | Path, tag: str = "tmp") -> list[Path]:
    """Delete the `temp_sibling(path, tag)` leftovers of processes of this host that no longer run; returns them.

    Also matches the older `.NAME.TAG-PID` form (always written on this host). Live writers' work is kept.
    """
    path = Path(path)
    prefix = f".{path.name}.{tag}-"
    swept = []
    if not path.parent.is_dir():
        return swept
    for entry in path.parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        pid_text, _, rest = entry.name[len(prefix):].partition("-")
        host = rest.rpartition("-")[0] if rest else _host()
        if not pid_text.isdigit() or host != _host() or pid_alive(int(pid_text)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        swept.append(entry)
    return swept


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, flush it to disk, then rename it over `path`.

    The new file gets the user's umask (0644 under the usual 022), like a file written in place would.
    """
    path = Path(path)
    tmp = temp_sibling(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
