"""VoxCeleb1 speaker identification (SUPERB SID): 1,251 speakers, `iden_split.txt` (1 train, 2 dev, 3 test).

Audio lives in `ROOT/dev/wav/idXXXXX/<youtube id>/<nnnnn>.wav` or `ROOT/test/wav/...` (the archive's verification
split puts 40 speakers under test/); a flat `ROOT/wav/...` is accepted too. The split file's paths are relative to
the `wav` folder that holds the speaker. Label = int(id[2:]) - 10001, made dense over the speakers in the split
file (real data: 0..1250). Training uses random 8 s crops (SUPERB's max_timestep 128000); evaluation whole clips.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from maebench.errors import MaebenchError

from .base import Example, Fold, Task, read_text_file, require_file

SPLIT_FILE = "iden_split.txt"
WAV_DIRS = ("dev/wav", "test/wav", "wav")
TRAIN_CROP_SECONDS = 8.0  # s3prl voxceleb1 config.yaml max_timestep 128000 samples at 16 kHz (train split only)
_LINE = re.compile(r"^([123])\s+(id\d{5})/(\S+\.wav)$")


def speaker_number(speaker: str) -> int:
    """VoxCeleb1's label rule: id10001 -> 0."""
    return int(speaker[2:]) - 10001


def _speaker_dirs(root: Path) -> dict[str, Path]:
    """speaker id -> the wav folder holding it, over dev/wav, test/wav and wav."""
    found: dict[str, Path] = {}
    for sub in WAV_DIRS:
        base = root / sub
        if base.is_dir():
            with os.scandir(base) as entries:
                for entry in entries:
                    if entry.is_dir() and entry.name.startswith("id"):
                        found.setdefault(entry.name, base)
    if not found:
        raise MaebenchError(f"no speaker folders under {root}/dev/wav or {root}/test/wav; "
                            "point --data at the VoxCeleb1 root")
    return found


def load_sid(root: Path, probe_defaults: dict, is_toy: bool) -> Task:
    split_path = require_file(root / SPLIT_FILE, "VoxCeleb1 identification split file")
    where = _speaker_dirs(root)
    parsed: list[tuple[str, str, str]] = []
    split_text = read_text_file(split_path, "VoxCeleb1 identification split file")
    for number, line in enumerate(split_text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _LINE.match(line.strip())
        if not match:
            raise MaebenchError(f"malformed line {number} in {split_path}: {line.strip()!r} "
                                "(expected '<1|2|3> idXXXXX/<youtube id>/<n>.wav')")
        split, speaker, rest = match.groups()
        if speaker not in where:
            raise MaebenchError(f"{split_path} line {number} names speaker {speaker}, but there is no "
                                f"{root}/dev/wav/{speaker} or {root}/test/wav/{speaker}")
        parsed.append((split, speaker, rest))
    if not parsed:
        raise MaebenchError(f"{split_path} is empty")
    speakers = sorted({s for _, s, _ in parsed}, key=speaker_number)
    dense = {s: i for i, s in enumerate(speakers)}
    splits: dict[str, list[Example]] = {"1": [], "2": [], "3": []}
    for split, speaker, rest in parsed:
        path = where[speaker] / speaker / rest
        splits[split].append(Example(path, dense[speaker], key=f"{speaker}/{rest}"))
    fold = Fold("default", splits["1"], splits["2"], splits["3"])
    return Task("sid", root, "accuracy", speakers, False, [fold], TRAIN_CROP_SECONDS, None, probe_defaults, is_toy)
