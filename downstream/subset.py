"""A fixed small train/dev/test subset of a task, chosen once and recorded, so repeated probes stay comparable.

A probe curve (maebench.probe_curve) scores many snapshots of one pretraining run; every point must see the same
examples, or the curve would wobble with the draw. The subset is drawn from the task's first fold, class-balanced
(round-robin over the classes in a seeded order), and written as a JSON record of example keys that
`maebench eval --subset FILE` reads back, so any point can be reproduced by a plain evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from maebench.atomic import write_text_atomic
from maebench.errors import MaebenchError

from .metrics import chance_score
from .tasks.base import Example, Fold, Task

SUBSET_FORMAT = "maebench-task-subset"
SUBSET_VERSION = 1
SUBSET_FOLD = "subset"


def split_sizes(examples: int) -> dict[str, int]:
    """Items per split for a subset of `examples`: that many to train on and to test on, half as many for dev."""
    if examples < 2:
        raise MaebenchError(f"a probe subset needs at least 2 examples per split (got {examples})")
    return {"train": examples, "dev": max(1, examples // 2), "test": examples}


def select_subset(task: Task, *, examples: int, seed: int) -> dict[str, Any]:
    """The subset record of `task` for `seed`: up to split_sizes(examples) items of each split of its first fold.

    Deterministic for a given task data, size and seed (the draw uses no global RNG). Single-label splits are
    class-balanced; multi-label ones are a plain seeded draw.
    """
    fold = task.folds[0]
    rng = np.random.default_rng([seed, zlib.crc32(task.name.encode())])
    chosen = {}
    for split, cap in split_sizes(examples).items():
        items = fold.splits()[split]
        chosen[split] = [ex.key for ex in _draw(items, cap, rng, multilabel=task.multilabel)]
    test = [ex for ex in fold.test if ex.key in set(chosen["test"])]
    return {
        "format": SUBSET_FORMAT, "version": SUBSET_VERSION, "task": task.name, "seed": seed, "examples": examples,
        "fold": fold.name, "data_fingerprint": task.data_fingerprint(), "metric": task.metric,
        "chance": chance_level(task, test), "splits": chosen,
    }


def _draw(items: list[Example], cap: int, rng: np.random.Generator, *, multilabel: bool) -> list[Example]:
    if len(items) <= cap:
        return list(items)
    if multilabel:
        return [items[i] for i in sorted(rng.permutation(len(items))[:cap])]
    by_class: dict[int, list[Example]] = {}
    for index in rng.permutation(len(items)):
        by_class.setdefault(int(items[index].label), []).append(items[index])
    order = [by_class[label] for label in rng.permutation(sorted(by_class))]
    picked: list[Example] = []
    while len(picked) < cap:
        for queue in order:
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
