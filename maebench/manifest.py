"""Where pretraining audio comes from: fairseq/wav2vec `.tsv` manifests, AST-style JSON lists and plain folders.

Everything here returns a list of `AudioItem`s (a path plus, when the source records it, the length in samples at
the file's own rate). Nothing here decodes audio; the data loader's workers do that. This module imports no torch
so `maebench data manifest` stays light. (No source at all means the built-in corpus: `pretrain_data.list_audio`.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from maebench.atomic import write_text_atomic
from maebench.errors import MaebenchError
from maebench.progress import track

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
_UNLISTABLE = set("\t\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")  # tab, and what str.splitlines() breaks at
_HOW_TO_MAKE = "write one with `maebench data manifest DIR -o FILE.tsv`"


@dataclass(frozen=True)
class AudioItem:
    """One audio file for pretraining; `num_samples` is at the file's own rate, None when the source does not say."""

    path: Path
    num_samples: int | None = None


# --------------------------------------------------------------------------------------------------- .tsv manifests
def read_manifest(path: str | Path) -> list[AudioItem]:
    """Read a fairseq/wav2vec manifest: the first line is the root directory, then `relpath<TAB>num_samples`.

    A relative root is taken relative to the manifest's own folder (fairseq takes it relative to the working
    directory, which breaks as soon as the manifest is used from elsewhere). Blank lines are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise MaebenchError(f"manifest {path} does not exist; check the path or {_HOW_TO_MAKE}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise MaebenchError(f"manifest {path} cannot be read ({err}); {_HOW_TO_MAKE}") from err
    if not lines or not lines[0].strip():
        raise MaebenchError(f"manifest {path} is empty or its first line (the root directory) is blank; {_HOW_TO_MAKE}")
    root = Path(lines[0].strip())
    if not root.is_absolute():
        root = path.parent / root
    if not root.is_dir():
        raise MaebenchError(
            f"manifest {path}: its root directory {root} (line 1) does not exist; fix line 1 or {_HOW_TO_MAKE}"
        )
    items = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        length = fields[1].strip() if len(fields) == 2 else ""
        if len(fields) != 2 or not fields[0] or not (length.isascii() and length.isdigit()):  # not "²"
            raise MaebenchError(
                f"manifest {path} line {number}: expected 'relpath<TAB>num_samples', got {line[:80]!r}; "
                f"fix that line or {_HOW_TO_MAKE}"
            )
        items.append(AudioItem(root / fields[0], int(fields[1])))
    return items


def format_manifest(root: Path, entries: Iterable[tuple[str, int]]) -> str:
    """The manifest text for `root` and (posix relpath, num_samples) entries."""
    lines = [str(root)] + [f"{relpath}\t{num_samples}" for relpath, num_samples in entries]
    return "\n".join(lines) + "\n"


def write_manifest(
    root: str | Path,
    out_path: str | Path,
    *,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
    progress: bool = True,
) -> int:
    """Write a manifest of every audio file under `root` (recursive, sorted); returns the number of entries.

    Each file's header is read for its length; unreadable or empty files are left out, counted and reported.
    """
    from maebench.audio import read_audio_info  # imports torch: only when a manifest is actually written

    root = Path(root)
    files = _find_files(root, extensions)
    if not files:
        raise MaebenchError(f"no audio files ({', '.join(extensions)}) under {root}; point at a folder that has some")
    unlistable = [file for file in files if _UNLISTABLE & set(file.relative_to(root).as_posix())]
    if unlistable:  # the .tsv format has no escaping: such a line would be misread by every manifest reader
        shown = ", ".join(repr(file.relative_to(root).as_posix()) for file in unlistable[:3])
        print(f"left out {len(unlistable)} file(s) whose names contain a tab or line break, which a .tsv manifest "
              f"cannot hold (rename them to include them): {shown}{' ...' if len(unlistable) > 3 else ''}")
        files = [file for file in files if file not in set(unlistable)]
    undecodable = [file for file in files if not _utf8(file)]
    if undecodable:  # the audio decoder cannot open them, nor can a UTF-8 manifest name them
        shown = ", ".join(os.fsencode(file).decode("utf-8", "backslashreplace") for file in undecodable[:3])
        print(f"left out {len(undecodable)} file(s) whose names are not valid UTF-8 (rename them to include them): "
              f"{shown}{' ...' if len(undecodable) > 3 else ''}")
        files = [file for file in files if file not in set(undecodable)]
    entries: list[tuple[str, int]] = []
    skipped: list[Path] = []
    for file in track(files, "reading headers", quiet=not progress, unit="files"):
        try:
            num_samples, _ = read_audio_info(file)
        except Exception:  # any unreadable file is skipped and counted, whatever the decoder raised
            skipped.append(file)
            continue
        if num_samples <= 0:
            skipped.append(file)
            continue
        entries.append((file.relative_to(root).as_posix(), num_samples))
    if skipped:
        shown = ", ".join(str(p) for p in skipped[:3])
        print(f"skipped {len(skipped)} unreadable or empty file(s): {shown}{' ...' if len(skipped) > 3 else ''}")
    if not entries:
        raise MaebenchError(f"none of the {len(files)} audio files under {root} could be read; check the files")
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_path, format_manifest(root.resolve(), entries))
    return len(entries)


# --------------------------------------------------------------------------------------------- JSON lists, folders
def read_json_list(path: str | Path) -> list[AudioItem]:
    """Read an AST/SSAST-style list `{"data": [{"wav": path, ...}, ...]}`; relative paths are relative to the json."""
    path = Path(path)
    how = 'expected {"data": [{"wav": "path/to/file.wav"}, ...]}'
    if not path.is_file():
        raise MaebenchError(f"json list {path} does not exist; check the path")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MaebenchError(f"json list {path} cannot be parsed ({err}); {how}") from err
    entries = content.get("data") if isinstance(content, dict) else None
    if not isinstance(entries, list):
        raise MaebenchError(f"json list {path} has no \"data\" list; {how}")
    items = []
    for number, entry in enumerate(entries):
        wav = entry.get("wav") if isinstance(entry, dict) else None
        if not isinstance(wav, str) or not wav:
            raise MaebenchError(f"json list {path}: entry {number} has no \"wav\" path; {how}")
        items.append(AudioItem(path.parent / wav))  # an absolute wav path stays absolute
    return items


def _utf8(path: Path) -> bool:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _find_files(directory: Path, extensions: Sequence[str]) -> list[Path]:
    """Audio files under `directory`, sorted, following symlinks but each real folder and file once (a link loop
    such as `sub -> .` would otherwise list every file again at each level)."""
    if not directory.is_dir():
        raise MaebenchError(f"audio directory {directory} does not exist; check the path")
    suffixes = tuple(ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in extensions)
    found: dict[str, Path] = {}  # real path -> the first path (in sorted walk order) that reaches it
    seen_folders: set[tuple[int, int]] = set()
    for folder, subfolders, names in os.walk(directory, followlinks=True):
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen_folders:
            subfolders[:] = []
            continue
        seen_folders.add((info.st_dev, info.st_ino))
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(names):
            path = Path(folder) / name
            if name.lower().endswith(suffixes):
                real = os.path.realpath(path)
                if real not in found or (found[real].is_symlink() and not path.is_symlink()):
                    found[real] = path  # reached by several paths: the file itself rather than a link to it
    return sorted(found.values())


def find_audio(directory: str | Path, *, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> list[AudioItem]:
    """Every audio file under `directory` (recursive, hidden folders skipped, sorted); lengths left unknown."""
    return [AudioItem(path) for path in _find_files(Path(directory), extensions)]


# --------------------------------------------------------------------------------------------------- any of the above
def list_audio(source: str | Path) -> list[AudioItem]:
    """The pretraining clips named by `source`: a .tsv manifest, a .json list or a folder searched recursively."""
    path = Path(source)
    what = "pass a .tsv manifest, an AST-style .json list or a folder of audio files"
    if not path.exists():
        raise MaebenchError(f"data source {path} does not exist; {what}")
    if path.is_dir():
        items = find_audio(path)
    elif path.suffix.lower() == ".tsv":
        items = read_manifest(path)
    elif path.suffix.lower() == ".json":
        items = read_json_list(path)
    else:
        raise MaebenchError(f"data source {path} is neither a .tsv manifest, a .json list nor a folder; {what}")
    if not items:
        raise MaebenchError(f"data source {path} lists no audio files; {what}")
    return items
