"""IEMOCAP emotion recognition (SUPERB ER): 4 classes, 5 leave-one-session-out folds, accuracy mean and std.

Labels come from `Session{k}/dialog/EmoEvaluation/<dialog>.txt` lines `[start - end]<TAB><utt><TAB><emo><TAB>[v, a,
d]` (the annotator lines below them and the sub-folders Categorical/, Attribute/, Self-evaluation/ are ignored);
audio is `Session{k}/sentences/wav/<dialog>/<utt>.wav`. Kept: neu, hap, ang, sad, exc with exc merged into hap
(5,531 clips on the real corpus); every other label (fru, sur, xxx, ...) is dropped. Fold `Session{k}` tests on
session k; dev = 20% of the other four sessions drawn as s3prl's emotion expert draws it (`dev_split`).

s3prl orders the training utterances as its `IEMOCAP_preprocess.py` wrote them into
`ROOT/meta_data/Session{k}/train_meta_data.json`; when that file is present its order is used, so the same
utterances land in dev. Without it the order is the one that script produces with its label files sorted by name
(it lists them with os.listdir, whose order depends on the file system).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from maebench.errors import MaebenchError

from .base import Example, Fold, Task, read_text_file, require_dir

CLASSES = ("neu", "hap", "ang", "sad")
MERGE = {"exc": "hap"}
SESSIONS = tuple(f"Session{k}" for k in range(1, 6))
DEV_FRACTION = 0.2
_LINE = re.compile(r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\t(\S+)\t(\S+)\t\[.*\]\s*$")


def emotion_label(emotion: str) -> int | None:
    """Class index of an IEMOCAP label after merging exc into hap; None for labels the task drops."""
    emotion = MERGE.get(emotion, emotion)
    return CLASSES.index(emotion) if emotion in CLASSES else None


def read_session(root: Path, session: str) -> list[Example]:
    base = require_dir(root / session, "IEMOCAP session folder")
    label_dir = require_dir(base / "dialog" / "EmoEvaluation", "IEMOCAP EmoEvaluation folder")
    files = sorted(p for p in label_dir.glob("*.txt") if not p.name.startswith("."))  # no macOS "._" forks
    if not files:
        raise MaebenchError(f"no label files (*.txt) in {label_dir}")
    examples = []
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("["):
                continue
            match = _LINE.match(line)
            if not match:
                raise MaebenchError(f"malformed label line in {path}: {line!r} "
                                    "(expected '[start - end]<TAB>utterance<TAB>emotion<TAB>[v, a, d]')")
            utterance, emotion = match.groups()
            label = emotion_label(emotion)
            if label is None:
                continue
            dialog = utterance.rsplit("_", 1)[0]
            rel = f"{session}/sentences/wav/{dialog}/{utterance}.wav"
            examples.append(Example(root / rel, label, key=rel))
    return examples


def dev_split(pool: list[Example]) -> tuple[list[Example], list[Example]]:
    """(train, dev) as s3prl downstream/emotion/expert.py splits its training set: `torch.manual_seed(0)` then
    `random_split(dataset, [int((1 - 0.2) * n), n - that])`, i.e. one torch.randperm(n) from a generator seeded 0,
    its first part train and the rest dev (each in permutation order)."""
    n = len(pool)
    train_len = int((1 - DEV_FRACTION) * n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    return [pool[i] for i in order[:train_len]], [pool[i] for i in order[train_len:]]


def s3prl_order(root: Path, test_session: str, pool: list[Example]) -> list[Example]:
    """`pool` in the order of s3prl's `ROOT/meta_data/<test session>/train_meta_data.json` when present (it must
    list the same utterances), else unchanged."""
    meta = root / "meta_data" / test_session / "train_meta_data.json"
    if not meta.is_file():
        return pool
    try:
        paths = [item["path"] for item in json.loads(read_text_file(meta, "s3prl IEMOCAP meta data"))["meta_data"]]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise MaebenchError(f"malformed s3prl meta data {meta} ({err}); re-run s3prl's IEMOCAP_preprocess.py "
                            "or remove the meta_data folder") from err
    by_key = {ex.key: ex for ex in pool}
    if sorted(paths) != sorted(by_key):
        raise MaebenchError(f"{meta} lists {len(paths)} utterances, the label files {len(by_key)} (or other ones); "
                            "re-run s3prl's IEMOCAP_preprocess.py on this copy or remove the meta_data folder")
    return [by_key[path] for path in paths]


def load_er(root: Path, probe_defaults: dict, is_toy: bool) -> Task:
    require_dir(root, "IEMOCAP root")
    sessions = {s: read_session(root, s) for s in SESSIONS}
    folds = []
    for test_session in SESSIONS:
        pool = s3prl_order(root, test_session, [ex for s in SESSIONS if s != test_session for ex in sessions[s]])
        train, dev = dev_split(pool)
        folds.append(Fold(test_session, train, dev, sessions[test_session]))
    return Task("er", root, "accuracy", list(CLASSES), False, folds, None, None, probe_defaults, is_toy)
