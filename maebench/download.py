"""Resumable, verified HTTP downloads (urllib only): a `.part` file grows until it is whole, then is checked.

A Ctrl-C or a dropped connection leaves `NAME.part`; the next call asks the server for the rest with a Range
request (a server that ignores Range answers 200 and the file restarts from zero). The finished file's size and
checksum are compared with the published ones before it is renamed to NAME; a mismatch renames it to
`NAME.mismatch` (kept for inspection) and is an error naming both sums. A full disk is an error naming the file.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from maebench.errors import MaebenchError

CHUNK = 1 << 20
RETRIES = 5
TIMEOUT_S = 60


def apply_mirror(url: str, mirror: str | None) -> str:
    """`url` with its scheme and host replaced by `mirror` (e.g. http://cache.local:8080/datasets)."""
    if not mirror:
        return url
    parts = urlsplit(url)
    return mirror.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def sum_mismatch(path: Path, size: int | None, sha256: str | None, md5: str | None) -> str | None:
    """What is wrong with `path` against the published size and sums ("size 1 bytes, expected 2"), or None."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"size {actual_size} bytes, expected {size}"
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected:
            actual = file_digest(path, algorithm)
            if actual != expected.lower():
                return f"{algorithm} {actual}, expected {expected}"
    return None


def verify(path: Path, size: int | None, sha256: str | None, md5: str | None) -> None:
    """Raise MaebenchError (renaming the file to NAME.mismatch) unless `path` has the expected size and sum."""
    problem = sum_mismatch(path, size, sha256, md5)
    if problem:
        final = path.with_name(path.name.removesuffix(".part"))
        bad = final.with_name(final.name + ".mismatch")
        os.replace(path, bad)
        raise MaebenchError(f"{final.name}: {problem}; kept as {bad} (delete it and rerun, or check --mirror)")


def _open(url: str, offset: int):
    request = urllib.request.Request(url, headers={"User-Agent": "maebench", "Accept-Encoding": "identity"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)  # noqa: S310 (http(s) URLs from the source table)


def _write_error(err: OSError, part: Path) -> MaebenchError:
    reason = "disk full" if err.errno == errno.ENOSPC else err.strerror or str(err)
    return MaebenchError(f"cannot write {part}: {reason}; free space (or pass another -o) and rerun to resume")


def _fetch_once(url: str, part: Path, size: int | None, on_bytes) -> bool:
    """One connection's worth of downloading into `part`; True when the server says the file is complete."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    try:
        response = _open(url, offset)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset and (size is None or offset == size):
            return True  # already whole
        raise MaebenchError(f"{url}: HTTP {err.code} {err.reason}; check the URL or --mirror") from None
    with response:
        status = response.status
        if offset and status == 200:  # the server ignored Range: start again
            offset = 0
        on_bytes(offset, reset=True)
        mode = "ab" if offset else "wb"
        try:
            with open(part, mode) as handle:
                while block := response.read(CHUNK):
                    handle.write(block)
                    on_bytes(len(block))
        except OSError as err:
            if isinstance(err, (ConnectionError, TimeoutError)):
                raise
            raise _write_error(err, part) from None
        declared = response.headers.get("Content-Length")
    got = part.stat().st_size - offset
    return declared is None or got >= int(declared)


def download(url: str, target: Path, *, size: int | None = None, sha256: str | None = None,
             md5: str | None = None, quiet: bool = False) -> Path:
    """Fetch `url` to `target` (resuming `target.part`), verify it and return `target`; a verified target is kept."""
    from maebench.progress import download_bar

    target = Path(target)
    if target.exists():  # a kept or hand-placed archive: held to the same sums
        verify(target, size, sha256, md5)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if size is not None and shutil.disk_usage(target.parent).free < size - have:
        raise MaebenchError(f"not enough space in {target.parent} for {target.name}: {size - have} more bytes "
                            "needed; free space or pass another -o")
    with download_bar(quiet) as bar:
        task = bar.add_task(target.name, total=size)

        def on_bytes(count: int, reset: bool = False) -> None:
            bar.update(task, completed=count) if reset else bar.advance(task, count)

        for attempt in range(RETRIES):
            try:
                if _fetch_once(url, part, size, on_bytes):
                    break
            except (ConnectionError, TimeoutError, http.client.IncompleteRead, urllib.error.URLError) as err:
                if attempt == RETRIES - 1:
                    raise MaebenchError(f"{url}: connection failed ({err}); rerun to resume from {part}") from None
        else:
            raise MaebenchError(f"{url}: connection kept dropping; rerun to resume from {part}")
    verify(part, size, sha256, md5)
    os.replace(part, target)
    return target
