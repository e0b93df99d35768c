"""Per-layer feature statistics of frozen upstreams: the report's evidence for or against collapsed features.

A pretraining objective can be met by features that carry little: every frame of a clip pointing the same way, or
every clip's pooled vector lying on one line. Probe scores alone cannot tell that apart from "the task is hard", so
`maebench run` writes these three numbers per layer (`write_feature_stats`) and `maebench/report.py` shows them.
All statistics are computed in float64 after the forward pass, from the valid frames only (`Features.lens`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from maebench.atomic import write_text_atomic
from maebench.downstream.batching import eval_max_samples, pad_batch, read_for_eval
from maebench.downstream.datasets import load_task
from maebench.downstream.device import module_device
from maebench.errors import MaebenchError
from maebench.upstream import registry
from maebench.upstream.interface import Upstream

FORMAT = 1
BATCH_CLIPS = 16  # clips per forward pass: keeps memory modest for base-size models on CPU
# Variance of the pooled features below this fraction of their mean square is rounding noise, not a direction: the
# models compute in float32 (relative rounding ~6e-8, squared ~4e-15), so clips pooling to the same vector differ by
# that much; without the floor a collapsed layer would show the spectrum of that noise as a large effective dim.
NOISE_FLOOR = 1e-12
DEFINITIONS = {
    "token_cosine": "mean over clips of the mean cosine similarity between two different valid frames of the clip "
                    "(clips with fewer than 2 frames skipped); 1 = every frame of a clip points the same way",
    "effective_dim": "exp(entropy) of the normalised spectrum s_i^2 / sum s^2 of the clip-pooled features (mean "
                     "over valid frames, centred over clips); about k for k equally strong directions, 1 = every "
                     "clip's pooled vector on one line, 0 = pooled vectors identical",
    "feature_std": "mean over dimensions of the standard deviation (population, ddof 0) of the clip-pooled "
                   "features over clips",
}


class _LayerTotals:
    """One layer's running totals over batches: the cosine is a mean over clips (sum and count suffice), the
    effective dimension needs every clip's pooled vector."""

    def __init__(self) -> None:
        self.cosine_sum = 0.0
        self.cosine_clips = 0
        self.pooled: list[Tensor] = []

    def add(self, hidden: Tensor, lens: Tensor) -> None:
        """Fold in one batch: hidden (B, T, D), lens (B,) valid frames; frames at or past lens[b] are ignored."""
        x = hidden.detach().to(torch.float64)
        mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lens.to(x.device)[:, None])[..., None]
        x = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))  # padding may hold NaN
        frames = mask.sum(dim=(1, 2)).to(x.dtype)
        unit = torch.nn.functional.normalize(x, dim=-1)  # padding and all-zero frames stay 0
        # sum over i != j of <u_i, u_j> = |sum_i u_i|^2 - sum_i |u_i|^2: O(T D) instead of a T x T Gram matrix
        pairs = unit.sum(dim=1).pow(2).sum(dim=-1) - unit.pow(2).sum(dim=(1, 2))
        keep = frames >= 2
        self.cosine_sum += float((pairs[keep] / (frames[keep] * (frames[keep] - 1))).sum())
        self.cosine_clips += int(keep.sum())
        self.pooled.append((x.sum(dim=1) / frames.clamp(min=1)[:, None]).cpu())

    def row(self, layer: int) -> dict[str, Any]:
        """The layer's statistics; a value that is undefined or not finite (a model emitting NaN) is None, so the
        JSON stays valid and the report shows it as missing."""
        pooled = torch.cat(self.pooled) if self.pooled else torch.zeros(0, 0, dtype=torch.float64)
        finite = bool(torch.isfinite(pooled).all())
        cosine = self.cosine_sum / self.cosine_clips if self.cosine_clips else None
        std = float(pooled.std(dim=0, correction=0).mean()) if len(pooled) else 0.0
        return {"layer": layer, "token_cosine": _finite_or_none(cosine),
                "effective_dim": effective_dim(pooled) if finite else None,
                "feature_std": _finite_or_none(std) if finite else None}


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def effective_dim(pooled: Tensor) -> float:
    """exp(entropy) of the normalised squared singular values of `pooled` (N, D) centred over its rows: the number
    of equally strong directions the clips spread along; 0.0 when they do not spread at all (or N < 2)."""
    pooled = pooled.to(torch.float64)
    if pooled.shape[0] < 2:
        return 0.0
    centred = pooled - pooled.mean(dim=0, keepdim=True)
    power = torch.linalg.svdvals(centred).pow(2)
    total = power.sum()
    if total <= NOISE_FLOOR * pooled.pow(2).sum() or total == 0:
        return 0.0
    p = power / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def _accumulate(upstream: Upstream, wavs: Tensor, lens: Tensor, totals: list[_LayerTotals] | None
                ) -> list[_LayerTotals]:
    """One frozen forward pass (eval mode, inference mode; the module's mode is restored after) folded into
    `totals` (created on the first batch, one per layer)."""
    device = module_device(upstream)
    was_training = upstream.training
    upstream.eval()
    try:
        with torch.inference_mode():
            features = upstream(wavs.to(device), lens.to(device))
            if totals is None:
                totals = [_LayerTotals() for _ in features.hidden_states]
            if len(totals) != len(features.hidden_states):
                raise MaebenchError(f"{type(upstream).__name__} returned {len(features.hidden_states)} layers after "
                                    f"{len(totals)} on an earlier batch")
            for layer, hidden in zip(totals, features.hidden_states, strict=True):
                layer.add(hidden, features.lens)
    finally:
        upstream.train(was_training)
    return totals


def layer_statistics(upstream: Upstream, wavs: Tensor, lens: Tensor) -> list[dict]:
    """Per layer of the frozen `upstream` on the padded batch wavs (B, N) with lens (B,) samples:
    {"layer", "token_cosine", "effective_dim", "feature_std"} (see DEFINITIONS); token_cosine is None when no clip
    has two valid frames."""
    totals = _accumulate(upstream, wavs, lens, None)
    return [layer.row(i) for i, layer in enumerate(totals)]


def _task_statistics(upstream: Upstream, task, examples: list) -> list[dict]:
    """layer_statistics over `examples` of `task`, in batches of BATCH_CLIPS (each clip cropped to the task's
    evaluation length, as the probes see it, and zero-padded to the model's minimum input)."""
    max_samples, min_samples = eval_max_samples(upstream, task), upstream.min_input_samples()
    totals = None
    for start in range(0, len(examples), BATCH_CLIPS):
        wavs = [read_for_eval(task, ex, max_samples, min_samples) for ex in examples[start:start + BATCH_CLIPS]]
        totals = _accumulate(upstream, *pad_batch(wavs), totals)
    return [layer.row(i) for i, layer in enumerate(totals or [])]


def write_feature_stats(upstreams: dict[str, str], out_path: str | Path, *, task: str = "ks2",
                        data_root: str | Path | None = None, clips: int = 64) -> Path:
    """Per-layer statistics of each upstream (name -> `registry.load` spec) on the first `clips` test clips of the
    task's first fold (its toy when data_root is None), written atomically as JSON to `out_path`; returns it."""
    loaded = load_task(task, data_root)
    examples = loaded.folds[0].test[:clips]
    if not examples:
        raise MaebenchError(f"task {task} has no test clips in its first fold ({loaded.folds[0].name}): no feature "
                            "statistics to compute")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = {}
    for name, spec in upstreams.items():
        model = registry.load(spec).to(device)
        rows[name] = _task_statistics(model, loaded, examples)
        del model
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    data = {"maebench_feature_stats": FORMAT, "task": task, "clips": len(examples), "definitions": DEFINITIONS,
            "upstreams": rows}
    write_text_atomic(out_path, json.dumps(data, indent=2, allow_nan=False) + "\n")
    return out_path
