"""A fixed small train/dev/test subset of a task, chosen once and recorded, so repeated probes stay comparable.

A probe curve (maebench.probe_curve) scores many snapshots of one pretraining run; every point must see the same
examples, or the curve would wobble with the draw. The subset is drawn from the task's first fold and written as a
JSON record of example keys that `maebench eval --subset FILE` reads back, so any point can be reproduced by a
plain evaluation.

Single-label tasks: one seeded order of the classes (those with both train and test items) serves every split, and
each split is drawn round-robin over it, so the splits are class-balanced over the same classes. A class seen in
training less than `min_per_class` times is mostly noise to a probe, and a test item of a class never trained on
can only be wrong: when the subset is too small to give every class `min_per_class` training items, it keeps the
first `examples // min_per_class` classes of the order (at least 2; more where their train or test items cannot fill
the subset). The kept classes and the chance level of the restricted test set are recorded. (Version 1 drew each
split's class order on its own: a 16-item subset of a 35-class task tested mostly classes it never trained on,
scoring below chance at every point.) Multi-label tasks: a plain seeded draw.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from maebench.atomic import write_text_atomic
from maebench.errors import MaebenchError

from .metrics import chance_score
from .tasks.base import Example, Fold, Task

SUBSET_FORMAT = "maebench-task-subset"
SUBSET_VERSION = 2  # 2: one class order for all splits, a floor of training items per class
MIN_PER_CLASS = 4
SUBSET_FOLD = "subset"


def split_sizes(examples: int) -> dict[str, int]:
    """Items per split for a subset of `examples`: that many to train on and to test on, half as many for dev."""
    if examples < 2:
        raise MaebenchError(f"a probe subset needs at least 2 examples per split (got {examples})")
    return {"train": examples, "dev": max(1, examples // 2), "test": examples}


def select_subset(task: Task, *, examples: int, seed: int, min_per_class: int = MIN_PER_CLASS) -> dict[str, Any]:
    """The subset record of `task` for `seed`: up to split_sizes(examples) items of each split of its first fold
    (the module docstring says how). Deterministic for a given task data, size and seed (no global RNG)."""
    if min_per_class < 1:
        raise MaebenchError(f"min_per_class must be at least 1 (got {min_per_class})")
    fold = task.folds[0]
    rng = np.random.default_rng([seed, zlib.crc32(task.name.encode())])
    splits = fold.splits()
    classes = None if task.multilabel else subset_classes(splits, examples, min_per_class, rng)
    chosen = {}
    for split, cap in split_sizes(examples).items():
        items = splits[split]
        picked = _plain_draw(items, cap, rng) if classes is None else _balanced_draw(items, cap, classes, rng)
        chosen[split] = [ex.key for ex in picked]
    test_keys = set(chosen["test"])
    test = [ex for ex in fold.test if ex.key in test_keys]
    return {
        "format": SUBSET_FORMAT, "version": SUBSET_VERSION, "task": task.name, "seed": seed, "examples": examples,
        "min_per_class": None if classes is None else min_per_class, "fold": fold.name,
        "data_fingerprint": task.data_fingerprint(), "metric": task.metric, "classes": classes,
        "chance": chance_level(task, test), "splits": chosen,
    }


def subset_classes(splits: dict[str, list[Example]], examples: int, min_per_class: int,
                   rng: np.random.Generator) -> list[int]:
    """The classes a single-label subset draws from, in their seeded order: those with train and test items; when
    there is no room for `min_per_class` each, the first `examples // min_per_class` of them (at least 2), or as
    many more as it takes for their train and test items to fill the subset (classes with few items)."""
    train, test = (Counter(int(ex.label) for ex in splits[split]) for split in ("train", "test"))
    order = [int(label) for label in rng.permutation(sorted(set(train) & set(test)))]
    if examples >= min_per_class * len(order):
        return order
    kept = max(2, examples // min_per_class)
    while kept < len(order) and min(sum(c[label] for label in order[:kept]) for c in (train, test)) < examples:
        kept += 1
    return order[:kept]


def _plain_draw(items: list[Example], cap: int, rng: np.random.Generator) -> list[Example]:
    if len(items) <= cap:
        return list(items)
    return [items[i] for i in sorted(rng.permutation(len(items))[:cap])]


def _balanced_draw(items: list[Example], cap: int, classes: list[int], rng: np.random.Generator) -> list[Example]:
    """Up to `cap` items of `classes`, round-robin in the classes' order (each class's items in a seeded order)."""
    by_class: dict[int, list[Example]] = {label: [] for label in classes}
    for index in rng.permutation(len(items)):
        queue = by_class.get(int(items[index].label))
        if queue is not None:
            queue.append(items[index])
    queues = [by_class[label] for label in classes]
    picked: list[Example] = []
    while len(picked) < cap and any(queues):
        for queue in queues:
            if queue and len(picked) < cap:
                picked.append(queue.pop())
    return picked


def chance_level(task: Task, test: list[Example]) -> float:
    """The score of a probe that learned nothing on `test` (maebench.downstream.metrics.chance_score); NaN when
    empty."""
    return chance_score(task.metric, [ex.label for ex in test]) if test else float("nan")


def write_subset(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=1) + "\n")


def read_subset(path: str | Path) -> dict[str, Any]:
    """A subset record written by write_subset; anything else is a one-line MaebenchError naming the file."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise MaebenchError(f"cannot read the subset file {path} ({err}); give one from RUN/probe_subsets/") from None
    if not isinstance(record, dict) or record.get("format") != SUBSET_FORMAT:
        raise MaebenchError(f"{path} is not a maebench subset file; give a file from RUN/probe_subsets/")
    if not isinstance(record.get("version"), int) or record["version"] > SUBSET_VERSION:
        raise MaebenchError(f"{path} is a subset file of version {record.get('version')}, newer than this maebench "
                            f"reads ({SUBSET_VERSION}): upgrade maebench")
    return record


def apply_subset(task: Task, record: dict[str, Any], *, source: str | Path = "subset") -> Task:
    """`task` reduced to one fold holding exactly the recorded examples (same order as recorded)."""
    if record.get("task") != task.name:
        raise MaebenchError(f"{source} is a subset of task {record.get('task')!r}, not {task.name!r}: pass the "
                            "matching --task")
    folds = [f for f in task.folds if f.name == record.get("fold")]
    if not folds:
        raise MaebenchError(f"{source}: task {task.name} has no fold {record.get('fold')!r}; the data changed")
    by_key = {ex.key: ex for ex in folds[0].train + folds[0].dev + folds[0].test}
    splits: dict[str, list[Example]] = {}
    for split in ("train", "dev", "test"):
        keys = record["splits"].get(split, [])
        missing = [key for key in keys if key not in by_key]
        if missing:
            raise MaebenchError(f"{source}: example {missing[0]} of the {split} subset is not in the data of "
                                f"{task.name} ({len(missing)} missing); the data changed: delete {source} to draw "
                                "a new subset")
        splits[split] = [by_key[key] for key in keys]
    return dataclasses.replace(task, folds=[Fold(SUBSET_FOLD, **splits)], sample_weights=None, _fingerprint=None)
