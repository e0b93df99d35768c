"""Speech Commands keyword spotting: KS2 (v0.02, 35 words, official lists) and KS1 (SUPERB's v0.01 12-class task).

KS2: train = every word clip not in `validation_list.txt` / `testing_list.txt`; dev / test = those lists.
KS1 (as SUPERB/s3prl builds it): train/dev from the dataset's hash rule (files in the test range are dropped),
words outside the ten commands -> `_unknown_`, `_silence_` = 1 s crops of `_background_noise_/*.wav`, test = the
separate `speech_commands_test_set_v0.01` folder (12 class folders).

KS1 test-set location (first match wins):
1. ROOT holds both `speech_commands_v0.01/` and `speech_commands_test_set_v0.01/` (the toy layout);
2. ROOT is the v0.01 folder and `ROOT/test_set/` is the test set;
3. ROOT is the v0.01 folder and the test set is its sibling `ROOT/../speech_commands_test_set_v0.01/`
   (SUPERB's layout: `speech_commands_root` and `speech_commands_test_root` side by side).

`_silence_` crops: s3prl adds each noise file once to train and once to dev, re-crops it at random on every access
and balances classes with a weighted sampler (weight = N / class count). Features here are cached, so the crops are
fixed: dev gets one crop per noise file (like s3prl's dev set), train gets about N/11 crops spread over the noise
files (what one s3prl epoch of N class-balanced draws samples from `_silence_`), at seeded offsets; the task's
`sample_weights` are s3prl's class-balancing weights.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from pathlib import Path

from maebench.errors import MaebenchError
from maebench.upstream.frontend import SAMPLE_RATE

from .base import Example, Fold, Task, read_text_file, require_dir

KS2_WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go", "happy",
    "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven", "sheila", "six", "stop",
    "three", "tree", "two", "up", "visual", "wow", "yes", "zero",
)
KS1_COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
KS1_CLASSES = (*KS1_COMMANDS, "_unknown_", "_silence_")
KS1_AUXILIARY = tuple(w for w in KS2_WORDS if w not in KS1_COMMANDS and w not in ("backward", "follow", "forward",
                                                                                   "learn", "visual"))
NOISE_DIR = "_background_noise_"
KS1_TRAIN_DIR = "speech_commands_v0.01"
KS1_TEST_DIR = "speech_commands_test_set_v0.01"
_MAX_NUM_WAVS_PER_CLASS = 2**27 - 1
_SILENCE_SEED = 12345
# s3prl downstream/speech_commands/dataset.py line 22: EFFECTS = [["channels", "1"], ["rate", "16000"],
# ["gain", "-3.0"]], applied to every KS1 file it reads (train, dev, test, _silence_ crops)
KS1_GAIN_DB = -3.0


def hash_percentage(filename: str) -> float:
    """Speech Commands' split hash: a speaker's files (the part before `_nohash_`) share one value in [0, 100]."""
    base = re.sub(r"_nohash_.*$", "", os.path.basename(filename))
    digest = int(hashlib.sha1(base.encode("utf-8")).hexdigest(), 16)
    return (digest % (_MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / _MAX_NUM_WAVS_PER_CLASS)


def which_set(filename: str, validation_percentage: float = 10.0, testing_percentage: float = 10.0) -> str:
    """'validation', 'testing' or 'training' by the dataset's hash rule (README of Speech Commands)."""
    pct = hash_percentage(filename)
    if pct < validation_percentage:
        return "validation"
    if pct < validation_percentage + testing_percentage:
        return "testing"
    return "training"


def _is_wav(name: str) -> bool:
    return name.endswith(".wav") and not name.startswith(".")  # skip macOS "._x.wav" resource forks


def _word_files(root: Path) -> dict[str, list[str]]:
    """word folder -> sorted wav file names (folders starting with '_' or '.' are not words)."""
    words: dict[str, list[str]] = {}
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith(("_", ".")):
                with os.scandir(entry.path) as files:
                    words[entry.name] = sorted(f.name for f in files if _is_wav(f.name) and f.is_file())
    return words


def _read_list(path: Path, root: Path, words: dict[str, list[str]]) -> list[str]:
    entries = []
    for number, line in enumerate(read_text_file(path, "Speech Commands list file").splitlines(), start=1):
        rel = line.strip()
        if not rel:
            continue
        parts = rel.split("/")
        if len(parts) != 2 or not parts[1].endswith(".wav"):
            raise MaebenchError(f"malformed line {number} in {path}: {rel!r} (expected word/file.wav)")
        if parts[0] not in words:
            raise MaebenchError(f"{path} line {number} names {rel} but folder {root / parts[0]} is missing")
        entries.append(rel)
    return entries


def load_ks2(root: Path, probe_defaults: dict, is_toy: bool) -> Task:
    """Speech Commands v0.02, 35 words, official validation/testing lists."""
    require_dir(root, "Speech Commands v0.02 folder")
    words = _word_files(root)
    missing = [w for w in KS2_WORDS if w not in words]
    if missing:
        raise MaebenchError(f"missing word folder(s) {', '.join(missing[:5])} in {root}; KS2 needs the 35 words of "
                            "Speech Commands v0.02 (did you pass v0.01?)")
    extra = sorted(set(words) - set(KS2_WORDS))
    if extra:
        raise MaebenchError(f"unexpected folder {root / extra[0]} in {root}: not one of the 35 KS2 words")
    index = {w: i for i, w in enumerate(KS2_WORDS)}
    existing = {f"{w}/{f}" for w, files in words.items() for f in files}
    split_of: dict[str, str] = {}
    for split, list_name in (("dev", "validation_list.txt"), ("test", "testing_list.txt")):
        for rel in _read_list(root / list_name, root, words):
            if rel not in existing:
                raise MaebenchError(f"{root / list_name} lists {rel} but {root / rel} does not exist")
            split_of[rel] = split
    splits: dict[str, list[Example]] = {"train": [], "dev": [], "test": []}
    for rel in sorted(existing):
        word = rel.split("/", 1)[0]
        splits[split_of.get(rel, "train")].append(Example(root / rel, index[word], key=rel))
    fold = Fold("default", splits["train"], splits["dev"], splits["test"])
    return Task("ks2", root, "accuracy", list(KS2_WORDS), False, [fold], None, None, probe_defaults, is_toy)


def ks1_paths(root: Path) -> tuple[Path, Path]:
    """(v0.01 train folder, test-set folder) for a KS1 root, by the conventions in the module docstring."""
    if (root / KS1_TRAIN_DIR).is_dir():
        return root / KS1_TRAIN_DIR, require_dir(root / KS1_TEST_DIR, "KS1 test-set folder")
    require_dir(root, "Speech Commands v0.01 folder")
    for candidate in (root / "test_set", root.parent / KS1_TEST_DIR):
        if candidate.is_dir():
            return root, candidate
    raise MaebenchError(f"missing KS1 test set: neither {root / 'test_set'} nor {root.parent / KS1_TEST_DIR} exists; "
                        f"put speech_commands_test_set_v0.01 next to {root.name} (or at {root}/test_set)")


def _noise_lengths(noise_dir: Path) -> list[tuple[Path, int]]:
    import soundfile as sf

    require_dir(noise_dir, "Speech Commands background-noise folder")
    found = []
    for path in sorted(p for p in noise_dir.glob("*.wav") if _is_wav(p.name)):
        try:
            info = sf.info(str(path))
        except (RuntimeError, sf.LibsndfileError) as err:
            raise MaebenchError(f"cannot read noise file {path}: {err}; restore it from the archive") from err
        length = int(info.frames * SAMPLE_RATE / info.samplerate)
        if length >= SAMPLE_RATE:
            found.append((path, length))
    if not found:
        raise MaebenchError(f"no background-noise wav of at least 1 s in {noise_dir}; KS1 needs them for _silence_")
    return found


def silence_crops(noise_dir: Path, count: int, salt: str) -> list[Example]:
    """`count` 1 s `_silence_` crops spread round-robin over the noise files at seeded, reproducible offsets."""
    noises = _noise_lengths(noise_dir)
    label = KS1_CLASSES.index("_silence_")
    crops = []
    for i in range(count):
        path, length = noises[i % len(noises)]
        rng = random.Random(f"{_SILENCE_SEED}:{salt}:{path.name}:{i // len(noises)}")
        offset = rng.randint(0, length - SAMPLE_RATE)
        key = f"{NOISE_DIR}/{path.name}@{offset}"
        crops.append(Example(path, label, offset=offset, num_samples=SAMPLE_RATE, key=key))
    return crops


def load_ks1(root: Path, probe_defaults: dict, is_toy: bool) -> Task:
    """SUPERB KS1: Speech Commands v0.01, 12 classes, hash-rule train/dev, separate test-set folder."""
    train_root, test_root = ks1_paths(root)
    words = _word_files(train_root)
    commands_missing = [w for w in KS1_COMMANDS if w not in words]
    if commands_missing:
        raise MaebenchError(f"missing word folder(s) {', '.join(commands_missing)} in {train_root}; "
                            "KS1 needs Speech Commands v0.01")
    index = {c: i for i, c in enumerate(KS1_CLASSES)}
    unknown = index["_unknown_"]
    splits: dict[str, list[Example]] = {"training": [], "validation": [], "testing": []}
    for word in sorted(words):
        label = index.get(word, unknown)
        for name in words[word]:
            rel = f"{word}/{name}"
            splits[which_set(name)].append(Example(train_root / rel, label, key=rel))
    train, dev = splits["training"], splits["validation"]  # files in the testing range are dropped, as in SUPERB
    noise_dir = train_root / NOISE_DIR
    n_train_silence = max(1, round(len(train) / (len(KS1_CLASSES) - 1)))
    train = train + silence_crops(noise_dir, n_train_silence, "train")
    dev = dev + silence_crops(noise_dir, len(_noise_lengths(noise_dir)), "dev")
    test = _load_ks1_test(test_root, index)
    counts = [0] * len(KS1_CLASSES)
    for ex in train:
        counts[ex.label] += 1
    weights = [len(train) / counts[ex.label] for ex in train]
    fold = Fold("default", train, dev, test)
    return Task("ks1", root, "accuracy", list(KS1_CLASSES), False, [fold], None, None, probe_defaults, is_toy,
                sample_weights=weights, gain_db=KS1_GAIN_DB)


def _load_ks1_test(test_root: Path, index: dict[str, int]) -> list[Example]:
    test: list[Example] = []
    folders = sorted(p for p in test_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = {p.name for p in folders}
    missing = [c for c in KS1_CLASSES if c not in names]
    if missing:
        raise MaebenchError(f"missing class folder {test_root / missing[0]} in the KS1 test set {test_root}")
    for folder in folders:
        if folder.name not in index:
            raise MaebenchError(f"unexpected folder {folder} in the KS1 test set: not one of {', '.join(KS1_CLASSES)}")
        for path in sorted(p for p in folder.glob("*.wav") if _is_wav(p.name)):
            test.append(Example(path, index[folder.name], key=f"test/{folder.name}/{path.name}"))
    if not test:
        raise MaebenchError(f"no wav files in the KS1 test set {test_root}")
    return test
