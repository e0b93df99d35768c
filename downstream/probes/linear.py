"""The `linear` probe (SUPERB): frozen upstream; softmax-weighted layer sum -> Linear(D, 256) -> masked mean over
time -> Linear(256, C), Adam, the task's SUPERB step budget, model picked on dev. Trained on cached pooled features,
which gives exactly the frame-level model (see `feature_cache`), so each step costs a few matrix products.

With `train_crop_seconds` (SID: 8 s, s3prl voxceleb1's max_timestep) the head trains on one seeded random crop of
each longer training clip, cached as its own feature entry (crop keys name their window); dev and test stay whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from maebench.audio import read_audio_info
from maebench.downstream.device import few_threads, module_device
from maebench.downstream.feature_cache import FeatureSet, example_key, fold_features
from maebench.downstream.heads import SuperbHead
from maebench.downstream.metrics import task_score
from maebench.downstream.probes.result import ProbeResult
from maebench.downstream.probes.settings import LinearSettings, resolve_settings, settings_dict
from maebench.downstream.probes.training import (
    DevScorer,
    balanced_weights,
    epoch_batches,
    eval_labels,
    loss_name,
    soft_target_loss,
    state_copy,
    targets_for,
)
from maebench.errors import MaebenchError
from maebench.progress import progress_bar
from maebench.upstream.frontend import SAMPLE_RATE
from maebench.upstream.interface import Upstream


def train_superb_head(
    head: SuperbHead, *, num_train: int, train_targets: Tensor, train_logits: Callable[[Tensor], Tensor],
    dev_score: Callable[[], float] | None, settings: LinearSettings, loss: str, seed: int, quiet: bool = True,
    description: str = "linear", sample_weights: Tensor | None = None,
) -> tuple[float | None, int]:
    """SUPERB training loop: Adam, `max_steps` updates of `grad_accum` micro-batches, gradient clipping, dev
    evaluation every `eval_every` updates keeping the best head. Returns (best dev score, its step).
    `sample_weights` (one per training item) draws batches like s3prl's class-balanced sampler."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(head.parameters(), lr=settings.lr)
    batches = epoch_batches(num_train, settings.batch_size, generator, sample_weights)
    max_steps = settings.max_steps
    eval_every = settings.eval_every or max_steps
    best: tuple[float | None, int, list | None] = (None, 0, None)
    head.train()
    with progress_bar(quiet, unit="steps") as progress:
        bar = progress.add_task(description, total=max_steps)
        for step in range(1, max_steps + 1):
            _update(head, optimizer, batches, train_logits, train_targets, settings, loss)
            progress.advance(bar)
            if dev_score is not None and (step % eval_every == 0 or step == max_steps):
                head.eval()
                score = dev_score()
                head.train()
                if best[0] is None or score > best[0]:
                    best = (score, step, state_copy(head))
    if best[2] is not None:
        head.load_state_dict(best[2][0])
    head.eval()
    return best[0], best[1] if best[2] is not None else max_steps


def _update(head: SuperbHead, optimizer: torch.optim.Optimizer, batches, train_logits: Callable[[Tensor], Tensor],
            train_targets: Tensor, settings: LinearSettings, loss: str) -> None:
    """One optimizer step over `grad_accum` micro-batches, gradients clipped to `grad_clip` (0: not clipped)."""
    optimizer.zero_grad(set_to_none=True)
    for _ in range(settings.grad_accum):
        indices = next(batches)
        logits = train_logits(indices)
        (soft_target_loss(logits, train_targets[indices].to(logits.device), loss) / settings.grad_accum).backward()
    if settings.grad_clip:
        nn.utils.clip_grad_norm_(head.parameters(), settings.grad_clip)
    optimizer.step()


@torch.no_grad()
def pooled_logits(head: SuperbHead, features: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Logits (N, C) of `head` over cached pooled features (N, L, D), in chunks."""
    device = module_device(head)
    out = [head.forward_pooled(torch.from_numpy(np.array(features[i : i + chunk])).to(device)).float().cpu()
           for i in range(0, len(features), chunk)]
    return torch.cat(out).numpy()


def _train_logits_fn(head: SuperbHead, train: FeatureSet, device: torch.device) -> Callable[[Tensor], Tensor]:
    """Logits of a batch of training rows; toy and mid-sized splits are read into memory once, large ones are
    sliced from the memmap per batch (rows sorted, and `indices` sorted in place to match)."""
    train_x = torch.from_numpy(np.array(train.features)) if train.features.nbytes < 2**31 else None

    def train_logits(indices: Tensor) -> Tensor:
        if train_x is not None:
            batch = train_x[indices]
        else:
            batch = torch.from_numpy(np.array(train.features[np.sort(indices.numpy())]))
            indices.copy_(torch.sort(indices).values)
        return head.forward_pooled(batch.to(device))

    return train_logits


def linear_probe(
    upstream: Upstream, task, fold, *, seed: int = 0, settings: LinearSettings | None = None, quiet: bool = True,
    cache_options: dict | None = None,
) -> ProbeResult:
    """SUPERB linear probe of a frozen upstream on `fold`, trained on cached pooled features."""
    settings = settings if settings is not None else resolve_settings("linear", task)
    splits, crops = probe_features(upstream, task, fold, settings=settings, seed=seed, quiet=quiet,
                                   cache_options=cache_options)
    train, dev, test = splits["train"], splits.get("dev"), splits["test"]
    device = module_device(upstream)
    torch.manual_seed(seed)
    head = SuperbHead(train.num_layers, train.features.shape[2], task.num_classes, settings.projector_dim).to(device)

    scorer = DevScorer(task, dev.labels, balanced=settings.balanced_dev, seed=seed) if dev is not None else None

    def dev_score() -> float:
        return scorer(pooled_logits(head, dev.features))

    start = time.perf_counter()
    with few_threads(device):
        best_dev, best_step = train_superb_head(
            head, num_train=len(train.keys), train_targets=targets_for(train.labels, task),
            train_logits=_train_logits_fn(head, train, device), dev_score=dev_score if dev is not None else None,
            settings=settings, loss=loss_name(settings, task), seed=seed, quiet=quiet,
            description=f"linear {task.name} {fold.name}",
            sample_weights=balanced_weights(task, settings, len(train.keys)),
        )
        score = task_score(task.metric, pooled_logits(head, test.features), eval_labels(test.labels, task))
    return ProbeResult(
        probe="linear", score=score, dev_score=best_dev, layers={"weights": head.rounded_layer_weights()},
        hparams=settings_dict(settings), timings={"extract_s": sum(s.extract_s for s in splits.values()),
                                                  "train_s": time.perf_counter() - start},
        details={"best_step": best_step, "cache_hits": {k: s.hit for k, s in splits.items()},
                 **({"train_crops": crops} if crops is not None else {})},
    )


def clip_samples(example) -> int:
    """Length of `example` in 16 kHz samples, from the file header (a resampled file's length rounded down)."""
    frames, rate = read_audio_info(example.path)
    total = frames if rate == SAMPLE_RATE else frames * SAMPLE_RATE // rate
    available = max(total - example.offset, 0)
    return available if example.num_samples is None else min(example.num_samples, available)


def crop_start(seed: int, key: str, span: int) -> int:
    """A start in [0, span] (both ends included, as s3prl's random.randint(0, length - max_timestep)), uniform,
    fixed by (seed, clip key) alone so a clip's crop does not depend on the other clips or their order."""
    draw = int.from_bytes(hashlib.sha256(f"{seed}\t{key}".encode()).digest()[:8], "big")
    return draw % (span + 1)


def train_crops(examples: Sequence, seconds: float, seed: int) -> list:
    """One random window of `seconds` per example longer than that, seeded (shorter ones whole), as s3prl's
    voxceleb1 dataset crops training utterances to max_timestep. A crop is an Example whose key names its window."""
    if not seconds > 0:
        raise MaebenchError(f"linear setting train_crop_seconds={seconds}: must be > 0 to crop "
                            "(0 trains on whole clips)")
    crop = int(round(seconds * SAMPLE_RATE))
    out = []
    for example in examples:
        length = clip_samples(example)
        if length <= crop:
            out.append(example)
            continue
        key = example_key(example)
        start = crop_start(seed, key, length - crop)
        out.append(dataclasses.replace(example, offset=example.offset + start, num_samples=crop,
                                       key=f"{key}@{start}+{crop}"))
    return out


def probe_features(upstream: Upstream, task, fold, *, settings: LinearSettings, seed: int, quiet: bool = True,
                   cache_options: dict | None = None) -> tuple[dict[str, FeatureSet], dict | None]:
    """The probe's cached features per split, and what was cropped (None without `train_crop_seconds`).

    Cropped: training rows come from an entry of the seed's crops alone, dev and test from an entry of the whole
    dev and test clips (the task-wide entry would also extract every whole training clip, unused here). When no
    training clip is longer than the crop the task-wide entry serves, shared with the other probes."""
    seconds = settings.train_crop_seconds
    if not seconds:
        return fold_features(upstream, task, fold, quiet=quiet, cache_options=cache_options), None
    crops = train_crops(fold.train, seconds, seed)
    cropped = sum(crop is not example for crop, example in zip(crops, fold.train, strict=True))
    record = {"seconds": seconds, "seed": seed, "cropped": cropped, "clips": len(crops)}
    if not cropped:
        return fold_features(upstream, task, fold, quiet=quiet, cache_options=cache_options), record
    options = dict(cache_options or {})
    if options.get("upstream_fingerprint") is None:
        from maebench.upstream.registry import fingerprint

        options["upstream_fingerprint"] = fingerprint(upstream)
    if options.get("data_fingerprint") is None:
        options["data_fingerprint"] = task.data_fingerprint()
    crop_fold = dataclasses.replace(fold, train=crops, dev=[], test=[])
    eval_fold = dataclasses.replace(fold, train=[])
    crop_task = dataclasses.replace(task, folds=[crop_fold])
    eval_task = dataclasses.replace(task, folds=[dataclasses.replace(f, train=[]) for f in task.folds])
    splits = fold_features(upstream, crop_task, crop_fold, quiet=quiet, cache_options=options)
    splits.update(fold_features(upstream, eval_task, eval_fold, quiet=quiet, cache_options=options))
    return splits, record
