"""A toy HEAR 2021 scene task in the preprocessed format (`maebench data toy --task hear`), built offline in a second.

Procedural sound classes (`downstream/sounds.py`), 1 s clips at 16 kHz, written the way hear-preprocess lays a task
out (see `maebench.downstream.tasks.hear`): task_metadata.json, labelvocabulary.csv, <split>.json, 16000/<split>/.
Multiclass with train/valid/test by default; `multilabel=True` mixes 1-2 classes per clip (scored by mAP);
`folds=k` writes k folds (`new_split_kfold`) instead of the three splits.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .sounds import normalise, render_sound
from .tasks.base import TOY_MARKER
from .tasks.hear import AUDIO_RATE_DIR, METADATA, VOCABULARY

__all__ = ["build_hear_toy", "write_hear_toy"]

TOY_CLASSES = ("tone", "chirp_up", "hum", "clicks", "wind", "siren")
PER_CLASS = {"train": 8, "valid": 3, "test": 3}


def _rng(seed: int, *parts: object) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha1(repr((seed, *parts)).encode()).hexdigest()[:12], 16))


def _clip(rng: np.random.Generator, classes: list[str]) -> np.ndarray:
    mix = sum(render_sound(name, rng, 1.0) * rng.uniform(0.6, 1.0) for name in classes)
    return normalise(mix + 0.003 * rng.standard_normal(len(mix)), 0.5)


def build_hear_toy(out_dir: str | Path, *, seed: int = 0, multilabel: bool = False, folds: int = 0) -> Path:
    """Write the toy HEAR task into `out_dir` (which becomes the task folder); returns it."""
    import soundfile as sf

    root = Path(out_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed, "hear", multilabel, folds)
    if folds:
        total = sum(PER_CLASS.values())
        plan = {f"fold{k:02d}": total // folds + (k < total % folds) for k in range(folds)}
    else:
        plan = dict(PER_CLASS)
    for split, per_class in plan.items():
        labels: dict[str, list[str]] = {}
        for c, name in enumerate(TOY_CLASSES):
            for i in range(per_class):
                others = [n for n in TOY_CLASSES if n != name]
                classes = [name, *([others[int(rng.integers(len(others)))]] if multilabel and i % 2 else [])]
                filename = f"{split}_{c}_{i}.wav"
                path = root / AUDIO_RATE_DIR / split / filename
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(str(path), _clip(rng, classes), 16000, subtype="PCM_16")
                labels[filename] = sorted(classes)
        (root / f"{split}.json").write_text(json.dumps(labels, indent=1) + "\n")
    rows = ["idx,label"] + [f"{i},{name}" for i, name in enumerate(TOY_CLASSES)]
    (root / VOCABULARY).write_text("\n".join(rows) + "\n")
    task_name = "toy_sounds" + ("_multilabel" if multilabel else "") + (f"_{folds}fold" if folds else "")
    meta = {
        "task_name": task_name, "version": "maebench-toy-1", "embedding_type": "scene",
        "prediction_type": "multilabel" if multilabel else "multiclass",
        "split_mode": "new_split_kfold" if folds else "trainvaltest", "nfolds": folds or None,
        "sample_duration": 1.0, "evaluation": ["mAP"] if multilabel else ["top1_acc", "mAP"],
        "splits": list(plan), "sample_rates": [16000],
    }
    (root / METADATA).write_text(json.dumps(meta, indent=1) + "\n")
    marker = {"task": "hear", "version": 1, "seed": seed, "multilabel": multilabel, "folds": folds}
    (root / TOY_MARKER).write_text(json.dumps(marker) + "\n")
    return root


def write_hear_toy(target: str | Path, *, seed: int = 0, overwrite: bool = False) -> Path:
    """`build_hear_toy` at `target` with the toy builder's rules (`downstream/toy.py`): only a new or empty folder,
    or with `overwrite` an earlier toy build, is written; built in a temporary sibling and renamed into place."""
    from .toy import write_built

    return write_built(lambda tmp: build_hear_toy(tmp, seed=seed), target, overwrite=overwrite)
