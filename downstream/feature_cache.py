"""Frozen-upstream features, computed once and memory-mapped from disk for the `linear` and `logreg` probes.

Why pooled features are enough: the SUPERB head (softmax-weighted layer sum -> Linear(D, 256) -> masked mean over
time -> Linear(256, C)) has no non-linearity between the projection and the pooling, and the layer sum and the
projection are linear per frame, so masked mean-pooling commutes with both. Caching each layer's masked mean over
valid frames, (N, L, D), therefore gives exactly the model trained on frame-level features, at a fraction of the
storage and none of the per-step upstream cost (tests/test_feature_cache.py proves the equivalence in float64).

A cache entry lives in `cache_dir()/features/<key>/` (`features.npy` (N, L, D) float32 + `index.json` with keys,
labels, valid frame counts and what the key was made of) and holds every example of a task once, so the splits of
all cross-validation folds, every probe and every seed read the same rows. The key covers everything the numbers
depend on: the upstream fingerprint (weights + config), the maebench version (model code), the task name and data
fingerprint, the task's example list, the layer set, the evaluation crop, the pooling and the compute precision.
Entries are written to a temporary directory and renamed into place, so a crash or a concurrent run never leaves a
half-written entry (what a killed extraction left is swept by the next one); an entry missing a file is rebuilt, an
unreadable one is a MaebenchError naming its folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maebench import __version__
from maebench.atomic import sweep_stale, temp_sibling
from maebench.downstream.batching import eval_batches, masked_mean
from maebench.downstream.device import device_autocast, module_device
from maebench.errors import MaebenchError
from maebench.paths import cache_dir
from maebench.progress import progress_bar
from maebench.upstream.interface import Upstream

CACHE_FORMAT = 1
POOLING = "masked_mean"
TMP_TAG = "tmp"  # an entry being written: `.KEY.tmp-PID-HOST-RANDOM` beside it (maebench.atomic.temp_sibling)


@dataclass
class FeatureSet:
    """Per-layer masked-mean-pooled features of one split, in the order of the examples asked for."""

    features: np.ndarray  # (N, L, D) float32: a read-only memory-mapped slice, or a copy for scattered rows
    labels: list[Any]  # int, or tuple of class indices for multi-label tasks
    lens: np.ndarray  # (N,) valid upstream frames each mean was taken over
    keys: list[str]
    directory: Path
    hit: bool  # True when read from the cache without running the upstream
    extract_s: float  # seconds spent running the upstream (0 on a hit)

    @property
    def num_layers(self) -> int:
        return int(self.features.shape[1])


def example_key(example) -> str:
    """A stable id of an example (the task's key, else its path and crop)."""
    return example.key or f"{example.path}@{example.offset}+{example.num_samples}"


def _label_json(label) -> int | list[int]:
    return list(label) if isinstance(label, (tuple, list)) else int(label)


def _label_from_json(label) -> int | tuple[int, ...]:
    return tuple(label) if isinstance(label, list) else int(label)


def feature_key(
    *, upstream_fingerprint: str, task_name: str, data_fingerprint: str, examples: Sequence,
    layers: Sequence[int] | None, max_eval_seconds: float | None, precision: str,
) -> tuple[str, dict[str, Any]]:
    """The cache key (hex) and the description it was hashed from (stored in the index for inspection)."""
    examples_hash = hashlib.sha256()
    for example in examples:
        examples_hash.update(f"{example_key(example)}\t{_label_json(example.label)}\n".encode())
    description = {
        "format": CACHE_FORMAT, "maebench": __version__, "upstream": upstream_fingerprint, "task": task_name,
        "data": data_fingerprint,
        "examples": examples_hash.hexdigest(), "num_examples": len(examples),
        "layers": None if layers is None else [int(i) for i in layers],
        "max_eval_seconds": max_eval_seconds, "pooling": POOLING, "precision": precision,
    }
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:32]
    return key, description


class NonFiniteFeatures(MaebenchError):
    """The upstream gave NaN or infinite features: a probe would score them at chance without a word."""

    def __init__(self, upstream: str, example: str) -> None:
        self.example = example
        super().__init__(f"upstream {upstream} gave NaN or infinite features (batch with {example}): its weights or "
                         "code are broken; fix or replace the upstream (no features or results were written)")


def task_examples(task) -> list:
    """Every distinct example of the task (by `example_key`), fold by fold and split by split, so each split of
    a single-split task is one contiguous block of rows."""
    seen: dict[str, Any] = {}
    for fold in task.folds:
        for items in (fold.train, fold.dev, fold.test):
            for example in items:
                seen.setdefault(example_key(example), example)
    return list(seen.values())


def cached_features(
    upstream: Upstream, task, examples: Sequence, *, upstream_fingerprint: str | None = None,
    data_fingerprint: str | None = None, layers: Sequence[int] | None = None, batch_size: int = 32,
    batch_seconds: float = 160.0, num_workers: int = 0, device: torch.device | str | None = None,
    quiet: bool = True, root: Path | None = None,
) -> FeatureSet:
    """Pooled features of `examples` (examples of `task`). One cache entry holds every example of the task, so
    cross-validation folds and probes share a single extraction; on a miss the whole task is extracted first."""
    device = torch.device(device) if device is not None else module_device(upstream)
    if upstream_fingerprint is None:
        from maebench.upstream.registry import fingerprint

        upstream_fingerprint = fingerprint(upstream)
    if data_fingerprint is None:
        data_fingerprint = task.data_fingerprint()
    precision = "bf16" if device.type == "cuda" else "fp32"
    everything = task_examples(task)
    key, description = feature_key(
        upstream_fingerprint=upstream_fingerprint, task_name=task.name, data_fingerprint=data_fingerprint,
        examples=everything, layers=layers, max_eval_seconds=task.max_eval_seconds, precision=precision,
    )
    directory = (root or cache_dir()) / "features" / key
    sweep_leftovers(directory.parent)
    hit, extract_s = _is_complete(directory), 0.0
    if not hit:
        if directory.exists():  # an entry damaged by hand (entries appear whole, by rename): ours to rebuild
            shutil.rmtree(directory)
        start = time.perf_counter()
        _write_entry(
            directory, upstream, task, everything, description=description, layers=layers, batch_size=batch_size,
            batch_seconds=batch_seconds, num_workers=num_workers, device=device, quiet=quiet,
        )
        extract_s = time.perf_counter() - start
    return _open_rows(directory, [example_key(e) for e in examples], hit=hit, extract_s=extract_s)


def fold_features(upstream: Upstream, task, fold, *, quiet: bool = True, cache_options: dict | None = None
                  ) -> dict[str, FeatureSet]:
    """Cached features of each non-empty split of `fold` ({"train", "dev"?, "test"}), from one task-wide entry.
    `cache_options` are `cached_features` keyword arguments (fingerprints, workers, root)."""
    options = dict(cache_options or {})
    if options.get("upstream_fingerprint") is None:
        from maebench.upstream.registry import fingerprint

        options["upstream_fingerprint"] = fingerprint(upstream)
    options.setdefault("data_fingerprint", task.data_fingerprint())
    return {
        name: cached_features(upstream, task, examples, quiet=quiet, **options)
        for name, examples in fold.splits().items() if examples
    }


def _is_complete(directory: Path) -> bool:
    return (directory / "index.json").is_file() and (directory / "features.npy").is_file()


def _open_rows(directory: Path, keys: list[str], *, hit: bool, extract_s: float) -> FeatureSet:
    """The rows of `keys` from an entry: a memory-mapped slice when they are contiguous, else a gathered copy."""
    try:
        index = json.loads((directory / "index.json").read_text())
        store = np.load(directory / "features.npy", mmap_mode="r")
    except (OSError, ValueError) as err:  # JSONDecodeError is a ValueError; so is a truncated .npy header
        raise MaebenchError(f"feature cache entry {directory} is unreadable ({err}); delete that folder to "
                            "recompute it") from err
    position = {key: row for row, key in enumerate(index["keys"])}
    missing = [key for key in keys if key not in position]
    if missing:
        raise ValueError(f"{len(missing)} examples are not part of the task (first: {missing[0]})")
    rows = np.asarray([position[key] for key in keys], dtype=np.int64)
    contiguous = len(rows) > 0 and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows)))
    features = store[rows[0] : rows[0] + len(rows)] if contiguous else store[rows]
    lens = np.asarray(index["lens"], dtype=np.int64)[rows]
    return FeatureSet(
        features=features, labels=[_label_from_json(index["labels"][row]) for row in rows], lens=lens,
        keys=list(keys), directory=directory, hit=hit, extract_s=extract_s,
    )


def sweep_leftovers(features_dir: Path) -> list[Path]:
    """Delete the half-written entries (`.KEY.tmp-PID-HOST-RANDOM`) of extractions killed on this host (kill -9,
    out of memory, power loss); a live extraction's folder is kept. Returns what was deleted."""
    swept: list[Path] = []
    if not features_dir.is_dir():
        return swept
    marker = f".{TMP_TAG}-"
    keys = {entry.name[1:].partition(marker)[0] for entry in features_dir.iterdir()
            if entry.name.startswith(".") and marker in entry.name}
    for key in sorted(keys):
        swept += sweep_stale(features_dir / key, TMP_TAG)
    return swept


def _write_entry(directory: Path, upstream: Upstream, task, examples: Sequence, *, description: dict, **kwargs) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(directory, TMP_TAG)
    tmp.mkdir()
    try:
        features_path = tmp / "features.npy"
        lens = _extract_to(features_path, upstream, task, examples, **kwargs)
        index = {
            "description": description, "keys": [example_key(e) for e in examples],
            "labels": [_label_json(e.label) for e in examples], "lens": lens.tolist(),
        }
        with open(tmp / "index.json", "w") as handle:
            json.dump(index, handle)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.rename(tmp, directory)
        except OSError:
            if not (directory / "index.json").exists():  # not a concurrent writer that got there first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract_to(
    path: Path, upstream: Upstream, task, examples: Sequence, *, layers: Sequence[int] | None,
    batch_size: int, batch_seconds: float, num_workers: int, device: torch.device, quiet: bool,
) -> np.ndarray:
    """Run the frozen upstream over `examples` in length-sorted padded batches; write (N, L, D) pooled features."""
    if not examples:
        raise ValueError("no examples to extract features from")
    was_training = upstream.training
    upstream.eval()
    out: np.ndarray | None = None
    lens_out = np.zeros(len(examples), dtype=np.int64)
    batches = eval_batches(upstream, task, examples, batch_size=batch_size, batch_seconds=batch_seconds,
                           num_workers=num_workers)
    try:
        with progress_bar(quiet, unit="clips") as progress, torch.inference_mode(), device_autocast(device):
            bar = progress.add_task(f"features {task.name}", total=len(examples))
            for indices, wavs, lens in batches:
                features = upstream(wavs.to(device), lens.to(device))
                hidden = features.hidden_states if layers is None else [features.hidden_states[i] for i in layers]
                frame_lens = features.lens.to(device)
                pooled = torch.stack([masked_mean(h.float(), frame_lens) for h in hidden], dim=1)
                if not bool(torch.isfinite(pooled).all()):
                    raise NonFiniteFeatures(getattr(upstream, "family", type(upstream).__name__),
                                            example_key(examples[int(indices[0])]))
                if out is None:
                    out = np.lib.format.open_memmap(
                        path, mode="w+", dtype=np.float32, shape=(len(examples), *pooled.shape[1:]),
                    )
                out[indices] = pooled.cpu().numpy()
                lens_out[indices] = frame_lens.cpu().numpy()
                progress.advance(bar, len(indices))
        assert out is not None
        out.flush()
        del out
    finally:
        upstream.train(was_training)
    return lens_out
