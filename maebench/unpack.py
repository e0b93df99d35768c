"""Safe unpacking of tar (any compression) and zip archives into a fresh folder.

Every member is checked before anything is written: no absolute names, no `..` component, no device files or
FIFOs, no symbolic or hard links that point outside the target, and the declared total size must fit the budget
(and the free disk space), so a hostile or corrupt archive is refused whole, with an error naming the member.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

from maebench.errors import MaebenchError

# an audio archive barely compresses; a declared size this many times the archive's is a bomb or a lie
MAX_EXPANSION = 20
MIN_BUDGET = 64 << 20


def default_budget(archive: Path) -> int:
    return max(MIN_BUDGET, MAX_EXPANSION * archive.stat().st_size)


def _safe_name(archive: Path, name: str) -> str:
    """The member's name, normalised, or an error if it would land outside the target."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise MaebenchError(f"{archive}: member {name!r} has an absolute path; refusing to unpack this archive")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise MaebenchError(f"{archive}: member {name!r} points outside the target (..); refusing to unpack it")
    return "/".join(parts)


def _link_inside(archive: Path, name: str, link: str, *, hard: bool) -> None:
    base = "" if hard else posixpath.dirname(name)
    if link.startswith("/") or posixpath.normpath(posixpath.join(base, link)).split("/")[0] == "..":
        raise MaebenchError(f"{archive}: link {name!r} -> {link!r} points outside the target; refusing to unpack it")


def _check_budget(archive: Path, declared: int, budget: int, target: Path) -> None:
    if declared > budget:
        raise MaebenchError(f"{archive}: declares {declared:,} unpacked bytes, over the budget of {budget:,} "
                            f"({MAX_EXPANSION}x the archive); refusing to unpack it (corrupt or hostile?)")
    free = shutil.disk_usage(target.parent).free
    if declared > free:
        raise MaebenchError(f"not enough space to unpack {archive.name} into {target.parent}: {declared:,} bytes "
                            f"needed, {free:,} free; free space or pass another -o")


def _tar_members(archive: Path, tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = []
    for member in tar.getmembers():
        name = _safe_name(archive, member.name)
        if member.isdev() or member.isfifo() or not (member.isfile() or member.isdir() or member.issym()
                                                      or member.islnk()):
            raise MaebenchError(f"{archive}: member {member.name!r} is a device or special file; refusing to "
                                "unpack this archive")
        if member.issym() or member.islnk():
            _link_inside(archive, name, member.linkname, hard=member.islnk())
        if name:
            member.name = name
            members.append(member)
    return members


def _unpack_tar(archive: Path, target: Path, budget: int) -> None:
    with tarfile.open(archive) as tar:
        members = _tar_members(archive, tar)
        _check_budget(archive, sum(m.size for m in members if m.isfile()), budget, target)
        # Python's "data" filter (3.10.12+/3.11.4+) re-checks names and links and drops special modes
        safety = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        for member in members:
            tar.extract(member, target, **safety)


def _unpack_zip(archive: Path, target: Path, budget: int) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _safe_name(archive, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode) or (mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))):
                raise MaebenchError(f"{archive}: member {info.filename!r} is a link or special file; refusing to "
                                    "unpack this archive")
        _check_budget(archive, sum(i.file_size for i in infos), budget, target)
        for info in infos:
            name = _safe_name(archive, info.filename)
            if not name:
                continue
            path = target / name
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def unpack(archive: Path, target: Path, budget: int | None = None) -> Path:
    """Unpack `archive` into `target` (a new folder); refuses hostile archives before writing anything."""
    archive, target = Path(archive), Path(target)
    budget = default_budget(archive) if budget is None else budget
    target.mkdir(parents=True, exist_ok=False)
    try:
        if zipfile.is_zipfile(archive):
            _unpack_zip(archive, target, budget)
        elif tarfile.is_tarfile(archive):
            _unpack_tar(archive, target, budget)
        else:
            raise MaebenchError(f"{archive} is neither a tar nor a zip archive; pass the archive as downloaded")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
        raise MaebenchError(f"{archive}: corrupt archive ({err}); delete it and download it again") from None
    except OSError as err:
        reason = "disk full" if err.errno == errno.ENOSPC else err.strerror or str(err)
        raise MaebenchError(f"cannot unpack {archive.name} into {target}: {reason}; free space or pass "
                            "another -o") from None
    return target


def remove_tree(path: Path) -> None:
    if path.exists() or path.is_symlink():
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else os.unlink(path)
