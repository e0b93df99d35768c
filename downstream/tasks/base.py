"""The task data model shared by every dataset family: examples, folds, tasks, and small layout helpers.

A `Task` is a plain description of a dataset as shipped (which files, which labels, which splits); it reads audio
on demand so probes and the feature cache decide what to load and when.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from maebench.errors import MaebenchError
from maebench.upstream.frontend import SAMPLE_RATE

TOY_MARKER = ".maebench_toy.json"  # written by the toy builder (downstream/toy.py); the loaders never read it


@dataclass(frozen=True)
class Example:
    """One evaluation item: a file (or a window of it) and its label(s)."""

    path: Path
    label: int | tuple[int, ...]  # class index, or sorted class indices for multi-label tasks
    offset: int = 0  # start sample at 16 kHz (e.g. _silence_ crops of the noise files)
    num_samples: int | None = None  # length at 16 kHz, None = to the end
    key: str = ""  # stable id (relative path [+ offset]) for caches and reports


@dataclass
class Fold:
    """One train/dev/test partition; cross-validated tasks have several."""

    name: str  # "default" or "fold1".."fold5" / "Session1".."Session5"
    train: list[Example]
    dev: list[Example]
    test: list[Example]

    def splits(self) -> dict[str, list[Example]]:
        return {"train": self.train, "dev": self.dev, "test": self.test}


@dataclass
class Task:
    """A dataset as a benchmark task: classes, folds, metric, clip lengths and default probe settings."""

    name: str  # as20k, as2m, esc50, ks2, ks1, sid, er
    root: Path
    metric: str  # "accuracy" or "mAP"
    class_names: list[str]
    multilabel: bool
    folds: list[Fold]  # 1 for fixed splits, 5 for esc50 and er (report mean and std)
    train_crop_seconds: float | None  # random training crop (sid: 8 s), None = whole clip
    max_eval_seconds: float | None  # None = whole clip
    probe_defaults: dict[str, dict]  # {"linear": {...}, "finetune": {...}, "logreg": {...}}
    is_toy: bool = False
    sample_weights: list[float] | None = None  # weights for a WeightedRandomSampler over folds[0].train
    gain_db: float = 0.0  # applied to every waveform read (KS1: s3prl's sox effect "gain -3.0")
    events: dict[str, list[dict]] | None = None  # event tasks (HEAR): example key -> [{label index, start, end ms}]
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def read(self, example: Example) -> torch.Tensor:
        """1-D float32 16 kHz mono waveform of `example` (its window when offset/num_samples are set).

        Unreadable or empty audio raises MaebenchError naming the file: evaluation never drops items silently.
        A task's `gain_db` scales it by 10 ** (gain_db / 20), as sox's `gain` effect does.
        """
        wav = read_example(example)
        return wav * 10.0 ** (self.gain_db / 20.0) if self.gain_db else wav

    def data_fingerprint(self) -> str:
        """Hash of every example list plus the size and mtime of every file: changes when the data changes."""
        if self._fingerprint is None:
            name = f"{self.name}@gain{self.gain_db:g}dB" if self.gain_db else self.name  # cached features change
            self._fingerprint = fingerprint_folds(name, self.class_names, self.folds)
        return self._fingerprint

    def examples(self) -> list[Example]:
        """Every distinct example over all folds and splits (deduplicated by key), in a stable order."""
        seen: dict[str, Example] = {}
        for fold in self.folds:
            for items in fold.splits().values():
                for ex in items:
                    seen.setdefault(ex.key, ex)
        return list(seen.values())


def read_example(example: Example) -> torch.Tensor:
    """Read an example's audio; windows of 16 kHz files are read directly without decoding the whole file."""
    if example.offset or example.num_samples is not None:
        window = _read_window_16k(example)
        if window is not None:
            return window
    from maebench.audio import read_audio

    wav = read_audio(example.path, sample_rate=SAMPLE_RATE)
    if example.offset or example.num_samples is not None:
        stop = None if example.num_samples is None else example.offset + example.num_samples
        wav = wav[example.offset : stop]
        _check_window(example, wav.numel())
    return wav


def _read_window_16k(example: Example) -> torch.Tensor | None:
    """Read a sample window straight from a 16 kHz file; None when the file needs resampling (use read_audio)."""
    import soundfile as sf

    if not example.path.is_file():
        raise MaebenchError(f"audio file not found: {example.path}; check the dataset root or restore the file")
    try:
        with sf.SoundFile(str(example.path)) as handle:
            if handle.samplerate != SAMPLE_RATE:
                return None
            handle.seek(min(example.offset, handle.frames))
            frames = -1 if example.num_samples is None else example.num_samples
            data = handle.read(frames=frames, dtype="float32", always_2d=True)
    except Exception as err:  # libsndfile raises several types; all mean "not readable audio"
        message = " ".join(str(err).split()) or type(err).__name__
        raise MaebenchError(f"cannot read audio file {example.path} ({message}); check or replace the file") from err
    wav = torch.from_numpy(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]).contiguous()
    _check_window(example, wav.numel())
    from maebench.audio import check_samples

    check_samples(wav, example.path)
    return wav


def _check_window(example: Example, got: int) -> None:
    if got == 0 or (example.num_samples is not None and got < example.num_samples):
        raise MaebenchError(
            f"audio file {example.path} is too short for the window at sample {example.offset} "
            f"({example.num_samples} samples requested, {got} available); check the file"
        )


def fingerprint_folds(name: str, class_names: list[str], folds: list[Fold]) -> str:
    """sha256 over the task name, classes, all example lists and each file's size and mtime."""
    digest = hashlib.sha256()
    digest.update(f"{name}\n{len(class_names)}\n".encode())
    for cls in class_names:
        digest.update(f"{cls}\n".encode())
    stats: dict[Path, str] = {}
    for fold in folds:
        for split, items in fold.splits().items():
            digest.update(f"[{fold.name}/{split}:{len(items)}]\n".encode())
            for ex in items:
                if ex.path not in stats:
                    require_utf8_name(ex.path)
                    try:
                        st = os.stat(ex.path)
                    except OSError as err:
                        raise MaebenchError(f"audio file {ex.path} is missing or unreadable ({err}); "
                                            "restore it or check the dataset root") from err
                    stats[ex.path] = f"{st.st_size}:{st.st_mtime_ns}"
                digest.update(f"{ex.key}|{ex.label}|{ex.offset}|{ex.num_samples}|{stats[ex.path]}\n".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- layout helpers
def require_utf8_name(path: Path) -> Path:
    """`path` if its name is valid UTF-8: the audio decoder cannot open a file whose name is not, nor can a
    manifest or results file name it."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise MaebenchError(f"audio file {shown} has a name that is not valid UTF-8, which maebench cannot open: "
                            "rename it (e.g. with `convmv -f latin1 -t utf8`)") from None
    return path


def require_file(path: Path, what: str) -> Path:
    """`path` if it is a file, else a MaebenchError naming it and what it should be."""
    if not path.is_file():
        raise MaebenchError(f"missing {what}: {path}; check the dataset root (see `maebench data check --help`)")
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise MaebenchError(f"missing {what}: {path}; check the dataset root (see `maebench data check --help`)")
    return path


def read_text_file(path: Path, what: str) -> str:
    """The text of a UTF-8 list/label/split file (a BOM is dropped); anything else is a MaebenchError naming it."""
    require_file(path, what)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise MaebenchError(f"{what} {path} is not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8 "
                            "or use the file as shipped") from err
    except OSError as err:
        raise MaebenchError(f"cannot read {what} {path} ({err.strerror or err}); check its permissions") from err


def read_csv_rows(path: Path, columns: Iterable[str], what: str) -> list[dict[str, str]]:
    """Rows of a headed CSV file (csv module: quoted fields with commas parse), checking the header columns."""
    text = read_text_file(path, what)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise MaebenchError(f"malformed {what} {path}: missing column(s) {', '.join(missing)} "
                            f"(header is {reader.fieldnames}); use the file as shipped")
    try:
        rows = list(reader)
    except csv.Error as err:
        raise MaebenchError(f"malformed {what} {path} ({err}); use the file as shipped") from err
    if not rows:
        raise MaebenchError(f"malformed {what} {path}: no rows; use the file as shipped")
    return rows


def hash_fraction(key: str, salt: str = "") -> float:
    """A stable pseudo-random number in [0, 1) from a string: order-independent, seedable through `salt`."""
    return int(hashlib.sha1(f"{salt}{key}".encode()).hexdigest()[:15], 16) / 16**15


def holdout(
    examples: list[Example],
    fraction: float,
    *,
    salt: str,
    stratum: Callable[[Example], Hashable] | None = None,
    group: Callable[[Example], Hashable] | None = None,
) -> tuple[list[Example], list[Example]]:
    """Split off `fraction` of `examples` as a dev set, deterministically (seeded by `salt`).

    Within each stratum (e.g. class) the groups (e.g. ESC-50 source recordings, which must not straddle splits)
    are ordered by a salted hash and the first round(fraction * n_groups) (at least 1 when there are 2+ groups)
    go to dev. Returns (train, dev), each in the input order.
    """
    stratum = stratum or (lambda ex: 0)
    group = group or (lambda ex: ex.key)
    groups_by_stratum: dict[Hashable, set[Hashable]] = {}
    for ex in examples:
        groups_by_stratum.setdefault(stratum(ex), set()).add(group(ex))
    dev_groups: set[tuple[Hashable, Hashable]] = set()
    for s, groups in groups_by_stratum.items():
        if len(groups) < 2:
            continue
        ordered = sorted(groups, key=lambda g: (hash_fraction(str(g), salt), str(g)))
        take = max(1, round(fraction * len(ordered)))
        dev_groups.update((s, g) for g in ordered[:take])
    train = [ex for ex in examples if (stratum(ex), group(ex)) not in dev_groups]
    dev = [ex for ex in examples if (stratum(ex), group(ex)) in dev_groups]
    return train, dev


def is_toy_root(path: Path) -> bool:
    """True for a folder written by the toy builder (or KS1's inner v0.01 folder of one)."""
    return (path / TOY_MARKER).is_file() or (path.name == "speech_commands_v0.01"
                                             and (path.parent / TOY_MARKER).is_file())


def relative_key(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
