"""Task metrics as percentages (the paper's table): accuracy, mAP, and the mean/std used to aggregate runs.

mAP follows AudioSet practice (and sklearn's `average_precision_score`): average precision per class, computed as
the step-wise area sum_n (R_n - R_{n-1}) P_n over distinct score thresholds, averaged over the classes that have at
least one positive in the evaluation set (a class without positives has no defined AP and would otherwise count
as 0 and drag the mean down on small sets).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent. `scores` (N, C) logits/probabilities (or (N,) predicted classes); `labels` (N,)."""
    scores = np.asarray(scores)
    labels = np.asarray(labels).reshape(-1)
    predictions = scores.argmax(axis=1) if scores.ndim == 2 else scores.reshape(-1)
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    return float((predictions == labels).mean() * 100.0)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Average precision (fraction, not percent) of one class: `scores` (N,), binary `targets` (N,).

    Tied scores form one threshold (all of them enter the ranking together), exactly like sklearn.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    targets = np.asarray(targets).reshape(-1) > 0
    num_positive = int(targets.sum())
    if num_positive == 0:
        raise ValueError("average precision needs at least one positive")
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_targets = scores[order], targets[order]
    true_positives = np.cumsum(sorted_targets)
    # the last index of every run of equal scores is where a threshold takes effect
    threshold_ends = np.r_[np.flatnonzero(np.diff(sorted_scores) != 0), len(sorted_scores) - 1]
    tp = true_positives[threshold_ends].astype(np.float64)
    precision = tp / (threshold_ends + 1)
    recall = tp / num_positive
    recall_steps = np.diff(np.r_[0.0, recall])
    return float((recall_steps * precision).sum())


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """mAP in percent over the classes with at least one positive. `scores`, `targets`: (N, C)."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (N, C)")
    present = np.flatnonzero((targets > 0).any(axis=0))
    if len(present) == 0:
        raise ValueError("mAP needs at least one class with a positive example")
    return float(np.mean([average_precision(scores[:, c], targets[:, c]) for c in present]) * 100.0)


def multi_hot(labels: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """(N, C) 0/1 matrix from per-example lists of class indices."""
    out = np.zeros((len(labels), num_classes), dtype=np.float32)
    for row, classes in enumerate(labels):
        out[row, list(classes)] = 1.0
    return out


def task_score(metric: str, scores: np.ndarray, labels: np.ndarray) -> float:
    """The task's metric in percent: "accuracy" with integer labels (N,), "mAP" with multi-hot labels (N, C)."""
    if metric == "accuracy":
        return accuracy(scores, labels)
    if metric == "mAP":
        return mean_average_precision(scores, labels)
    raise ValueError(f"unknown metric {metric!r}; expected 'accuracy' or 'mAP'")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof=0; 0.0 for a single value), as reported over folds/seeds."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean of no values")
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def chance_score(metric: str, labels: Sequence) -> float:
    """The score of a predictor that ignores the audio, in percent, on one test set.

    accuracy: always answering the test set's most frequent class (the majority share, 100 * max_c n_c / N);
    mAP: a constant score for every clip, whose average precision per class is that class's prevalence (all clips
    tie, so precision = positives / N at recall 1), averaged over the classes with a positive, as the mAP is.
    `labels`: class indices (accuracy) or, per clip, its class indices (mAP).
    """
    if len(labels) == 0:
        raise ValueError("the chance level of an empty test set is undefined")
    if metric == "accuracy":
        _, counts = np.unique(np.asarray([int(label) for label in labels]), return_counts=True)
        return float(counts.max() / len(labels) * 100.0)
    if metric == "mAP":
        positives: dict[int, int] = {}
        for classes in labels:
            for c in set(classes):
                positives[int(c)] = positives.get(int(c), 0) + 1
        if not positives:
            raise ValueError("mAP needs at least one class with a positive example")
        return float(np.mean([count / len(labels) for count in positives.values()]) * 100.0)
    raise ValueError(f"unknown metric {metric!r}; expected 'accuracy' or 'mAP'")


def binomial_se(p1: float, p2: float, n: int) -> float:
    """Standard error (points) of the difference of two accuracies p1, p2 (percent) measured on the same n items:
    100 * sqrt((p1 (1 - p1) + p2 (1 - p2)) / n), the two treated as independent binomial proportions."""
    if n <= 0:
        return 0.0
    a, b = p1 / 100.0, p2 / 100.0
    return 100.0 * math.sqrt(max(0.0, a * (1 - a) + b * (1 - b)) / n)


def difference_noise(metric: str, score: float, std: float, other: float, other_std: float, n: int) -> float:
    """The noise of `score - other` (points), the rule behind every "beats its random init": the larger of the two
    scores' std (over folds or seeds) and, for accuracy, the binomial standard error of the difference over the n
    test items (a deterministic probe has std 0, so the test-set size is what is left)."""
    binomial = binomial_se(score, other, n) if metric == "accuracy" else 0.0
    return max(std, other_std, binomial)
