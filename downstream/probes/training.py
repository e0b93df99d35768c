"""What the trained probes share: targets and losses, class-balanced sampling, shuffled batches, dev scoring,
state snapshots."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maebench.downstream.metrics import multi_hot, task_score
from maebench.errors import MaebenchError


def targets_for(labels: Sequence, task) -> Tensor:
    """Training targets as float (N, C): multi-hot for multi-label tasks, one-hot otherwise."""
    if task.multilabel:
        return torch.from_numpy(multi_hot(labels, task.num_classes))
    return F.one_hot(torch.as_tensor(labels, dtype=torch.long), task.num_classes).float()


def eval_labels(labels: Sequence, task) -> np.ndarray:
    """Labels in the form `task_score` expects: (N,) class indices or (N, C) multi-hot."""
    return multi_hot(labels, task.num_classes) if task.multilabel else np.asarray(labels, dtype=np.int64)


def loss_name(settings, task) -> str:
    """The training loss of a probe: sigmoid BCE for multi-label tasks, else the setting's `loss`."""
    return "bce" if task.multilabel else settings.loss


def soft_target_loss(logits: Tensor, targets: Tensor, loss: str) -> Tensor:
    """"bce": sigmoid BCE (multi-label, and SSAST's choice for KS2); "ce": cross entropy with (soft) targets."""
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits.float(), targets)
    if loss == "ce":
        return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()
    raise MaebenchError(f"unknown loss {loss!r}; use 'ce' or 'bce'")


def balanced_weights(task, settings, num_train: int) -> Tensor | None:
    """The task's per-item training weights when the settings ask for balanced sampling, else None."""
    if task.sample_weights is None or not settings.balanced_sampling:
        return None
    if len(task.sample_weights) != num_train:
        raise MaebenchError(
            f"{task.name}: {len(task.sample_weights)} sample weights for {num_train} training items; "
            "set balanced_sampling=false or fix the task's weights"
        )
    return torch.tensor(task.sample_weights, dtype=torch.double)


def epoch_batches(num: int, batch_size: int, generator: torch.Generator, weights: Tensor | None = None
                  ) -> Iterator[Tensor]:
    """Endless shuffled batches of indices (a new permutation every epoch), like a shuffling DataLoader; with
    `weights`, each epoch draws `num` indices with replacement in proportion to them (WeightedRandomSampler)."""
    while True:
        if weights is None:
            order = torch.randperm(num, generator=generator)
        else:
            order = torch.multinomial(weights, num, replacement=True, generator=generator)
        for start in range(0, num, batch_size):
            yield order[start : start + batch_size]


class DevScorer:
    """The dev score a probe selects on: the task metric over the dev split, or with `balanced` (s3prl's KS1 dev
    loader, downstream/speech_commands/expert.py `_get_balanced_dev_dataloader`) over a fresh draw of len(dev)
    items with replacement at each evaluation, item weights len(dev) / (its class's count), as WeightedRandomSampler
    draws them (torch.multinomial over the weights), from a generator seeded with the probe's seed."""

    def __init__(self, task, labels: Sequence, *, balanced: bool, seed: int):
        self.metric = task.metric
        self.labels = eval_labels(labels, task)
        self.generator = torch.Generator().manual_seed(seed) if balanced else None
        self.weights = class_balanced_weights(labels) if balanced else None

    def __call__(self, logits: np.ndarray) -> float:
        if self.weights is None:
            return task_score(self.metric, logits, self.labels)
        draw = torch.multinomial(self.weights, len(self.weights), replacement=True, generator=self.generator).numpy()
        return task_score(self.metric, logits[draw], self.labels[draw])


def class_balanced_weights(labels: Sequence[int]) -> Tensor:
    """s3prl speech_commands' sample weights: len(labels) / (count of the item's class), float64."""
    counts: dict[int, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return torch.tensor([len(labels) / counts[label] for label in labels], dtype=torch.double)


def state_copy(*modules: nn.Module) -> list[dict[str, Tensor]]:
    """A CPU copy of each module's state dict (the best-on-dev snapshot)."""
    return [{k: v.detach().to("cpu", copy=True) for k, v in m.state_dict().items()} for m in modules]
