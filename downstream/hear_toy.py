"""A toy HEAR 2021 scene task in the preprocessed format (`maebench data toy --task hear`), built offline in a second.

Procedural sound classes (`downstream/sounds.py`), 1 s clips at 16 kHz, written the way hear-preprocess lays a task
out (see `maebench.downstream.tasks.hear`): task_metadata.json, labelvocabulary.csv, <split>.json, 16000/<split>/.
Multiclass with train/valid/test by default; `multilabel=True` mixes 1-2 classes per clip (scored by mAP);
`folds=k` writes k folds (`new_split_kfold`) instead of the three splits. `build_hear_event_toy` writes an event
(timestamp) task in HEAR's format: 4 s clips of faint noise holding 1-3 sound events, each file's labels a list of
{"label", "start", "end"} (ms), embedding_type "event", scored by the onset F-measure with a 200 ms collar.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .sounds import normalise, render_sound
from .tasks.base import TOY_MARKER
from .tasks.hear import AUDIO_RATE_DIR, METADATA, VOCABULARY

__all__ = ["build_hear_event_toy", "build_hear_toy", "write_hear_event_toy", "write_hear_toy"]

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


EVENT_CLASSES = ("tone", "chirp_up", "clicks")
EVENT_FILES = {"train": 30, "valid": 10, "test": 10}
EVENT_CLIP_SECONDS = 4.0


def _event_clip(rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """A clip of faint noise with 1-3 events (0.5-1.2 s, classes drawn at random, never overlapping in time)."""
    rate = 16000
    wav = 0.003 * rng.standard_normal(int(EVENT_CLIP_SECONDS * rate))
    events, cursor = [], float(rng.uniform(0.1, 0.6))
    for _ in range(int(rng.integers(1, 4))):
        length = float(rng.uniform(0.5, 1.2))
        if cursor + length > EVENT_CLIP_SECONDS - 0.05:
            break
        name = EVENT_CLASSES[int(rng.integers(len(EVENT_CLASSES)))]
        first = int(round(cursor * rate))
        sound = render_sound(name, rng, length) * rng.uniform(0.6, 1.0)
        wav[first : first + len(sound)] += sound
        events.append({"label": name, "start": round(cursor * 1000.0, 3),
                       "end": round((cursor + length) * 1000.0, 3)})
        cursor += length + float(rng.uniform(0.2, 0.8))
    return normalise(wav, 0.5), events


def build_hear_event_toy(out_dir: str | Path, *, seed: int = 0) -> Path:
    """Write the toy HEAR event task into `out_dir` (which becomes the task folder); returns it."""
    import soundfile as sf

    root = Path(out_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed, "hear-events")
    for split, count in EVENT_FILES.items():
        labels: dict[str, list[dict]] = {}
        for i in range(count):
            wav, events = _event_clip(rng)
            filename = f"{split}_{i:03d}.wav"
            path = root / AUDIO_RATE_DIR / split / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), wav, 16000, subtype="PCM_16")
            labels[filename] = events
        (root / f"{split}.json").write_text(json.dumps(labels, indent=1) + "\n")
    rows = ["idx,label"] + [f"{i},{name}" for i, name in enumerate(EVENT_CLASSES)]
    (root / VOCABULARY).write_text("\n".join(rows) + "\n")
    meta = {
        "task_name": "toy_events", "version": "maebench-toy-1", "embedding_type": "event",
        "prediction_type": "multilabel", "split_mode": "trainvaltest", "sample_duration": EVENT_CLIP_SECONDS,
        "evaluation": ["event_onset_200ms_fms", "segment_1s_er"], "splits": list(EVENT_FILES),
        "sample_rates": [16000],
    }
    (root / METADATA).write_text(json.dumps(meta, indent=1) + "\n")
    (root / TOY_MARKER).write_text(json.dumps({"task": "hear_events", "version": 1, "seed": seed}) + "\n")
    return root


def write_hear_event_toy(target: str | Path, *, seed: int = 0, overwrite: bool = False) -> Path:
    """`build_hear_event_toy` at `target`, by the same rules as `write_hear_toy`."""
    from .toy import write_built

    return write_built(lambda tmp: build_hear_event_toy(tmp, seed=seed), target, overwrite=overwrite)


def write_hear_toy(target: str | Path, *, seed: int = 0, overwrite: bool = False) -> Path:
    """`build_hear_toy` at `target` with the toy builder's rules (`downstream/toy.py`): only a new or empty folder,
    or with `overwrite` an earlier toy build, is written; built in a temporary sibling and renamed into place."""
    from .toy import write_built

    return write_built(lambda tmp: build_hear_toy(tmp, seed=seed), target, overwrite=overwrite)
