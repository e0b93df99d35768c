"""SSAST's learning-rate schedule: warm-up, then halve the lr whenever a held-out pretext metric stops improving.

The authors' pretraining (YuanGongND/ssast src/traintest_mask.py, with src/pretrain/run_mask_*.sh) evaluates every
`epoch_iter` = 4,000 steps on held-out audio, in eval mode and without gradients, with the same objective
(`validatemask`: for `pretrain_joint` the metric is the masked-patch InfoNCE accuracy, averaged over validation
batches of twice the training batch), and feeds it to `torch.optim.lr_scheduler.ReduceLROnPlateau(mode='max',
factor=0.5, patience=lr_patience=2)` with PyTorch's defaults (relative threshold 1e-4, no cooldown, min_lr 0, eps
1e-8): the lr halves at the third check in a row that does not beat the best one by that threshold.

`PlateauRule` is that rule; `PlateauLR` applies it on top of the trainer's warm-up factor and keeps its state as
plain attributes, so the scheduler's `state_dict` (saved in trainer.pt) carries it and a resume continues exactly.
`validation_metric` is the check; `split_validation` holds out its clips from the pretraining list (the authors
held out AudioSet's evaluation split; a slice of the pretraining data is the same idea for any corpus).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from maebench.errors import MaebenchError

THRESHOLD = 1e-4  # ReduceLROnPlateau's default relative threshold
MIN_CHANGE = 1e-8  # ReduceLROnPlateau's eps: smaller lr changes are skipped
_VALID_STREAM = 3  # distinct from pretrain_data's order / crop / batch streams


class PlateauRule:
    """ReduceLROnPlateau's decision (mode, factor, patience, relative threshold, no cooldown) on a multiplier of
    the lr, `scale`. Its state is `best`, `bad_checks` and `scale`."""

    def __init__(self, *, factor: float = 0.5, patience: int = 2, mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"plateau mode must be 'max' or 'min', got {mode!r}")
        self.factor, self.patience, self.mode = factor, patience, mode
        self.best = -math.inf if mode == "max" else math.inf
        self.bad_checks = 0
        self.scale = 1.0

    def improves(self, metric: float) -> bool:
        """ReduceLROnPlateau's relative test, as written there (best * (1 +- threshold), whatever the sign)."""
        if self.mode == "max":
            return metric > self.best * (1 + THRESHOLD)
        return metric < self.best * (1 - THRESHOLD)

    def update(self, metric: float, base_lr: float) -> bool:
        """Record one check of `metric`; True when it cut the lr (base_lr * scale) by `factor`."""
        if self.improves(metric):
            self.best, self.bad_checks = metric, 0
        else:
            self.bad_checks += 1
        if self.bad_checks <= self.patience:
            return False
        self.bad_checks = 0
        old = base_lr * self.scale
        if old - old * self.factor <= MIN_CHANGE:
            return False
        self.scale *= self.factor
        return True

    def state(self) -> dict[str, float]:
        return {"best": self.best, "bad_checks": self.bad_checks, "scale": self.scale}

    def load(self, state: dict[str, float]) -> None:
        self.best, self.bad_checks, self.scale = float(state["best"]), int(state["bad_checks"]), float(state["scale"])


class PlateauLR(torch.optim.lr_scheduler.LambdaLR):
    """lr(step) = base lr * warmup(step) * plateau scale; `report(metric)` feeds a check to the rule and applies a
    cut at once (as ReduceLROnPlateau sets the optimizer's lr). The rule's state rides in `state_dict`."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: Callable[[int], float], *, factor: float,
                 patience: int, mode: str) -> None:
        self.rule = PlateauRule(factor=factor, patience=patience, mode=mode)
        super().__init__(optimizer, lambda step: warmup(step) * self.rule.scale)

    def report(self, metric: float) -> bool:
        cut = self.rule.update(metric, self.base_lrs[0])
        if cut:
            factor = self.lr_lambdas[0](self.last_epoch)
            for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                group["lr"] = base * factor
            self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        return cut

    def state_dict(self) -> dict[str, Any]:
        state = {key: value for key, value in super().state_dict().items() if key != "rule"}
        return {**state, "plateau": self.rule.state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        plateau = state.pop("plateau", None)
        super().load_state_dict(state)
        if plateau is not None:
            self.rule.load(plateau)


def split_validation(items: Sequence, count: int, seed: int) -> tuple[list, list]:
    """(training items, `count` held-out items): a permutation seeded by `seed` picks them, a pure function of
    (items, count, seed), so a resumed run holds out the same clips. count 0 -> (all, [])."""
    if count <= 0:
        return list(items), []
    if count >= len(items):
        raise MaebenchError(f"data.valid_clips={count} leaves no training clips out of {len(items)}: hold out fewer")
    held = set(np.random.default_rng([seed, _VALID_STREAM]).permutation(len(items))[:count].tolist())
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


@torch.no_grad()
def validation_metric(model: nn.Module, batches, metric: str, *, seed: int, device: torch.device,
                      autocast: Callable[[], contextlib.AbstractContextManager]) -> dict[str, float]:
    """Mean over validation batches of `pretrain_loss`'s loss and stats (the reference averages per-batch means),
    in eval mode; masks drawn from `seed` inside a forked RNG, so training's random streams are untouched and the
    check is the same whenever it is repeated (a resumed run)."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for batch in batches:
                if batch.wavs.shape[0] == 0:
                    continue
                with autocast():
                    out = model.pretrain_loss(batch.wavs.to(device), batch.lens.to(device))
                for name, value in {"loss": out.loss, **out.stats}.items():
                    sums[name] = sums.get(name, 0.0) + float(value)
                count += 1
    finally:
        model.train(was_training)
    if not count:
        raise MaebenchError("no readable clip among the held-out validation clips (data.valid_clips): hold out more")
    if metric not in sums:
        raise MaebenchError(f"optim.plateau_metric={metric!r} is not one of this model's {', '.join(sorted(sums))}")
    return {name: value / count for name, value in sums.items()}


def check(model: nn.Module, items: Sequence, scheduler: PlateauLR, cfg, step: int, device: torch.device,
          autocast: Callable[[], contextlib.AbstractContextManager]) -> dict[str, Any]:
    """One check at optimizer step `step` (the trainer calls it every optim.plateau_every steps): the held-out
    metric (batches of twice train.batch_size, as the reference's validation loader), then the rule. Every rank
    evaluates every held-out clip with the same masks, so all take the same decision without communicating.
    Returns the metrics.jsonl fields: valid_<stat> for the loss and each stat, lr_cut."""
    from maebench.pretrain_data import build_validation_loader, loader_options

    o = cfg.optim
    loader = build_validation_loader(items, **loader_options(cfg), batch_size=2 * cfg.train.batch_size,
                                     num_workers=cfg.data.num_workers, seed=cfg.train.seed)
    scores = validation_metric(model, loader, o.plateau_metric, seed=cfg.train.seed + step, device=device,
                               autocast=autocast)
    cut = scheduler.report(scores[o.plateau_metric])
    return {**{f"valid_{name}": value for name, value in scores.items()}, "lr_cut": cut}
