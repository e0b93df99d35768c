"""The paper's six evaluation tasks (plus AS-2M), one module per dataset family, each reading the data as shipped.

`load_task(name, root)` returns a `Task` read from `root`. The toy default (no root: build a small look-alike in
the cache) lives one level up, in `maebench.downstream.datasets`, which sits above both these loaders and the toy
builder that imitates them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from maebench.errors import MaebenchError

from .audioset import load_audioset
from .base import Example, Fold, Task, is_toy_root, require_utf8_name
from .esc50 import load_esc50
from .iemocap import load_er
from .probe_settings import probe_defaults
from .speech_commands import load_ks1, load_ks2
from .voxceleb import load_sid

__all__ = ["ALL_TASKS", "TASKS", "Example", "Fold", "Task", "check_layout", "check_task_name", "load_task"]

TASKS: tuple[str, ...] = ("as20k", "esc50", "ks2", "ks1", "sid", "er")
ALL_TASKS: tuple[str, ...] = (*TASKS, "as2m")  # as2m: the same AudioSet loader with the unbalanced set

_LOADERS: dict[str, Callable[[Path, dict, bool], Task]] = {
    "as20k": lambda root, defaults, toy: load_audioset("as20k", root, defaults, toy),
    "as2m": lambda root, defaults, toy: load_audioset("as2m", root, defaults, toy),
    "esc50": load_esc50,
    "ks2": load_ks2,
    "ks1": load_ks1,
    "sid": load_sid,
    "er": load_er,
}


def check_task_name(name: str) -> None:
    """A MaebenchError listing the task names unless `name` is one of them."""
    if name not in _LOADERS:
        raise MaebenchError(f"unknown task {name!r}; choose one of {', '.join(ALL_TASKS)}")


def load_task(name: str, root: str | Path) -> Task:
    """The task `name` read from `root` (its official layout; a toy look-alike is recognised by its marker)."""
    if name.startswith("hear:"):  # a HEAR 2021 task folder: the name holds the path (tasks/hear.py)
        from .hear import load_hear_task

        return load_hear_task(name, root)
    check_task_name(name)
    if root is None:
        raise TypeError("load_task needs a dataset root; maebench.downstream.datasets.load_task builds the toy")
    path = Path(root).expanduser()
    if not path.exists():
        raise MaebenchError(f"dataset root {path} does not exist; pass the folder holding the {name} data")
    is_toy = is_toy_root(path)
    return _LOADERS[name](path, probe_defaults(name, is_toy), is_toy)


def check_layout(name: str, root: str | Path, *, deep: bool = False) -> dict:
    """Validate a dataset layout and count examples per fold, split and class.

    Every referenced audio file must exist (deep=True also decodes each one: unreadable, empty, NaN/Inf or
    absurdly loud files are listed); a problem is raised as a MaebenchError naming the file(s). Returns {"task",
    "root", "metric", "multilabel", "classes", "files", "toy", "folds": {fold: {split: {"total": n, "per_class":
    {class: n}}}}} (multi-label: label occurrences per class).
    """
    task = load_task(name, root)
    examples = task.examples()
    for ex in examples:
        require_utf8_name(ex.path)
        if not ex.path.is_file():
            raise MaebenchError(f"missing audio file {ex.path} (listed by the {name} layout in {task.root}); "
                                "restore it or fix the list")
    if deep:
        _check_audio(examples)
    folds: dict[str, dict] = {}
    for fold in task.folds:
        folds[fold.name] = {}
        for split, items in fold.splits().items():
            counter: Counter[int] = Counter()
            for ex in items:
                counter.update(ex.label if isinstance(ex.label, tuple) else (ex.label,))
            folds[fold.name][split] = {
                "total": len(items),
                "per_class": {task.class_names[c]: counter.get(c, 0) for c in range(task.num_classes)},
            }
    return {"task": name, "root": str(task.root), "metric": task.metric, "multilabel": task.multilabel,
            "classes": list(task.class_names), "files": len({ex.path for ex in examples}), "toy": task.is_toy,
            "folds": folds}


def _check_audio(examples: list[Example]) -> None:
    """Open and decode every file once: unreadable, empty, NaN/Inf or absurdly loud ones are listed in one error
    (evaluation would otherwise stop at the first, or train a probe on NaN features)."""
    import numpy as np
    import soundfile as sf

    from maebench.audio import MAX_AMPLITUDE

    problems = []
    for path in sorted({ex.path for ex in examples}):
        try:
            with sf.SoundFile(str(path)) as handle:
                frames, peak, finite = handle.frames, 0.0, True
                for block in handle.blocks(blocksize=1 << 18, dtype="float32", always_2d=True):
                    finite = finite and bool(np.isfinite(block).all())
                    peak = max(peak, float(np.abs(block[np.isfinite(block)]).max(initial=0.0)))
        except Exception as err:  # libsndfile raises several types; all mean "not readable audio"
            problems.append(f"{path} (unreadable: {' '.join(str(err).split()) or type(err).__name__})")
            continue
        if frames == 0:
            problems.append(f"{path} (empty)")
        elif not finite:
            problems.append(f"{path} (NaN/Inf samples)")
        elif peak > MAX_AMPLITUDE:
            problems.append(f"{path} (amplitude {peak:.3g}, over {MAX_AMPLITUDE:g})")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... {len(problems) - 5} more" if len(problems) > 5 else "")
        raise MaebenchError(f"{len(problems)} bad audio file(s): {shown}; replace or remove them "
                            "(evaluation stops at such a file)")
