"""IEMOCAP emotion recognition (SUPERB ER): 4 classes, 5 leave-one-session-out folds, accuracy mean and std.

Labels come from `Session{k}/dialog/EmoEvaluation/<dialog>.txt` lines `[start - end]<TAB><utt><TAB><emo><TAB>[v, a,
d]` (the annotator lines below them and the sub-folders Categorical/, Attribute/, Self-evaluation/ are ignored);
audio is `Session{k}/sentences/wav/<dialog>/<utt>.wav`. Kept: neu, hap, ang, sad, exc with exc merged into hap
(5,531 clips on the real corpus); every other label (fru, sur, xxx, ...) is dropped. Fold `Session{k}` tests on
session k; dev = 20% of the other four sessions (per class, seeded hash), as s3prl's valid_ratio 0.2.
"""

from __future__ import annotations

import re
from pathlib import Path

from maebench.errors import MaebenchError

from .base import Example, Fold, Task, holdout, require_dir

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


def load_er(root: Path, probe_defaults: dict, is_toy: bool) -> Task:
    require_dir(root, "IEMOCAP root")
    sessions = {s: read_session(root, s) for s in SESSIONS}
    folds = []
    for test_session in SESSIONS:
        pool = [ex for s in SESSIONS if s != test_session for ex in sessions[s]]
        train, dev = holdout(pool, DEV_FRACTION, salt=f"er-{test_session}", stratum=lambda ex: ex.label)
        folds.append(Fold(test_session, train, dev, sessions[test_session]))
    return Task("er", root, "accuracy", list(CLASSES), False, folds, None, None, probe_defaults, is_toy)
