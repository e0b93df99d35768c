"""`maebench data get`'s work: fetch a source's archives, unpack them into a temp sibling under ROOT, check the
layout (file counts, then `data check --task`) and only then rename the folders in.

A folder already at a destination is left alone: if an earlier `data get` made it (its record sits in
ROOT/.maebench-get/) the command only re-checks it, otherwise it is an error naming it. Archives live in
ROOT/.maebench-downloads/ while in flight (a rerun resumes them) and are deleted after a successful unpack
unless kept.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from maebench.atomic import sweep_stale, temp_sibling, write_text_atomic
from maebench.data_sources import Archive, Source
from maebench.download import apply_mirror, download, sum_mismatch
from maebench.errors import MaebenchError
from maebench.unpack import remove_tree, unpack
from maebench.zenodo import published_sums

DOWNLOADS = ".maebench-downloads"
RECORDS = ".maebench-get"
AUDIO_SUFFIXES = (".wav", ".flac")


@dataclass(frozen=True)
class Step:
    """One archive of the plan: where it comes from and where it goes."""

    archive: Archive
    url: str
    file: Path
    dest: Path


def plan(source: Source, root: Path, mirror: str | None = None) -> list[Step]:
    return [Step(a, apply_mirror(a.url, mirror), root / DOWNLOADS / a.filename, root / a.dest)
            for a in source.archives]


def _record(root: Path, source: Source) -> Path:
    return root / RECORDS / f"{source.name.replace(':', '_')}.json"


def _made_by_us(root: Path, dest: Path) -> bool:
    folder = root / RECORDS
    if not folder.is_dir():
        return False
    for record in folder.glob("*.json"):
        if str(dest) in json.loads(record.read_text(encoding="utf-8")).get("folders", []):
            return True
    return False


def check_result(source: Source, data: Path) -> str:
    """Verify an unpacked dataset folder; returns the --task value that `data check` / `eval` take for it."""
    from maebench.downstream.datasets import check_layout

    if source.check_task is None:  # a pretraining corpus: any audio will do, `data manifest` reads it
        if not any(p.suffix in AUDIO_SUFFIXES for p in data.rglob("*")):
            raise MaebenchError(f"{data} holds no .wav or .flac file after unpacking; the archive is not "
                                f"{source.title}")
        return ""
    task = f"hear:{data}" if source.check_task == "hear:" else source.check_task
    check_layout(task, data)
    return task


def _expected_count(archive: Archive, folder: Path) -> None:
    if archive.expect is None:
        return
    pattern, count = archive.expect
    found = sum(1 for _ in folder.glob(pattern))
    if found != count:
        raise MaebenchError(f"{archive.filename} unpacked to {found} files matching {pattern}, expected {count}; "
                            "the archive changed upstream or is damaged (delete it and rerun)")


def _inner_folder(unpacked: Path, archive: Archive | None, source: Source) -> Path:
    """The unpacked folder that becomes the destination."""
    if source.check_task == "hear:":  # a HEAR tarball: tasks/<task folder>/task_metadata.json
        found = sorted(p.parent for p in unpacked.rglob("task_metadata.json"))
        if len(found) != 1:
            raise MaebenchError(f"the archive holds {len(found)} HEAR task folders (task_metadata.json); pass "
                                "one task's tarball")
        return found[0]
    if archive is not None:
        inner = unpacked / archive.inner if archive.inner else unpacked
        if not inner.is_dir():
            raise MaebenchError(f"{archive.filename} has no folder {archive.inner}/; it is not {source.title}")
        return inner
    entries = list(unpacked.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else unpacked


def _stage(source: Source, root: Path, files: list[tuple[Archive | None, Path]], keep: bool) -> list[Path]:
    """Unpack every file into a temp sibling, check it there, then rename the folders in; returns them."""
    sweep_stale(root / source.name.replace(":", "_"), "get")
    stage = temp_sibling(root / source.name.replace(":", "_"), "get")
    stage.mkdir()
    try:
        dests = []
        for i, (archive, file) in enumerate(files):
            unpacked = unpack(file, stage / f".unpack{i}")
            inner = _inner_folder(unpacked, archive, source)
            dest = archive.dest if archive else (source.data or inner.name)
            if archive:
                _expected_count(archive, inner)
            (stage / dest).parent.mkdir(parents=True, exist_ok=True)
            os.replace(inner, stage / dest)
            remove_tree(unpacked)
            dests.append(dest)
        data = stage / (dests[0] if source.check_task == "hear:" else source.data)
        check_result(source, data)
        final = []
        for dest in dests:
            target = root / dest
            if target.exists():
                raise MaebenchError(f"{target} appeared while unpacking; move it away and rerun")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / dest, target)
            final.append(target)
    finally:
        remove_tree(stage)
    _record(root, source).parent.mkdir(exist_ok=True)
    write_text_atomic(_record(root, source), json.dumps({"source": source.name, "folders": [str(p) for p in final]}))
    if not keep:
        for _, file in files:
            if file.parent.name == DOWNLOADS:
                file.unlink(missing_ok=True)
    return final


def get_dataset(source: Source, root: Path, *, mirror: str | None = None, from_file: Path | None = None,
                keep_archives: bool = False, quiet: bool = False) -> tuple[Path, str]:
    """Fetch, verify, unpack and check `source` under `root`; returns (the --data folder, the --task value)."""
    root = Path(root).expanduser().absolute()
    root.mkdir(parents=True, exist_ok=True)
    if from_file is not None:
        from_file = Path(from_file).expanduser()
        if not from_file.is_file():
            raise MaebenchError(f"--from {from_file}: no such file; pass the archive you downloaded")
        if source.check_task == "hear:" or source.restricted:
            if source.data and (root / source.data).exists():
                raise MaebenchError(f"{root / source.data} already exists; move it away or pass another -o "
                                    "(nothing was overwritten)")
            folders = _stage(source, root, [(None, from_file)], keep=True)
            return folders[0], _task_of(source, folders[0])
        if len(source.archives) != 1:
            raise MaebenchError(f"--from takes one archive; {source.name} needs {len(source.archives)}: "
                                f"{', '.join(a.filename for a in source.archives)} (put them in {root / DOWNLOADS})")
        archive = source.archives[0]
        problem = sum_mismatch(from_file, archive.size, archive.sha256, archive.md5)
        if problem:
            raise MaebenchError(f"--from {from_file}: {problem}; it is not the published {archive.filename}")
        files = [(archive, from_file)]
    else:
        if source.restricted:
            raise MaebenchError(f"{source.title} is not openly downloadable: {source.request}")
        steps = plan(source, root, mirror)
        existing = [s.dest for s in steps if s.dest.exists()]
        theirs = [d for d in existing if not _made_by_us(root, d)]
        if theirs:
            raise MaebenchError(f"{theirs[0]} already exists and was not made by `maebench data get`; move it away "
                                "or pass another -o (nothing was overwritten)")
        if existing and len(existing) == len(steps):  # an earlier `data get`: only re-check it
            data = root / source.data
            return data, check_result(source, data)
        if existing:
            raise MaebenchError(f"{existing[0]} is left from an incomplete `maebench data get {source.name}`; "
                                "delete it and rerun")
        files = []
        for step in steps:
            a = _with_listed_sums(step.archive, mirror)
            files.append((a, download(step.url, step.file, size=a.size, sha256=a.sha256, md5=a.md5, quiet=quiet)))
    for archive, _ in files:
        if archive and (root / archive.dest).exists():
            raise MaebenchError(f"{root / archive.dest} already exists; move it away or pass another -o "
                                "(nothing was overwritten)")
    _stage(source, root, files, keep_archives)
    data = root / source.data
    return data, _task_of(source, data)


def _with_listed_sums(archive: Archive, mirror: str | None) -> Archive:
    """`archive` with the md5 and size its Zenodo listing publishes (read now), or as it is without a listing."""
    if archive.listing is None:
        return archive
    size, md5 = published_sums(apply_mirror(archive.listing, mirror), archive.filename)
    return dataclasses.replace(archive, size=size, md5=md5)


def _task_of(source: Source, data: Path) -> str:
    if source.check_task == "hear:":
        return f"hear:{data}"
    return source.check_task or ""


def next_command(source: Source, data: Path, task: str) -> str:
    return source.next_step.format(task=shlex.quote(task), data=shlex.quote(str(data)))


def describe(size: int | None) -> str:
    if size is None:
        return "?"
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"
