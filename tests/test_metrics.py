"""Metrics against hand-worked examples and scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score

from maebench.downstream.metrics import (
    accuracy,
    average_precision,
    mean_average_precision,
    mean_std,
    multi_hot,
    task_score,
)


def test_accuracy_hand_worked():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [9.0, 0.0, 0.0]])
    labels = np.array([0, 1, 1, 2])
    assert accuracy(logits, labels) == pytest.approx(50.0)
    assert accuracy(np.array([0, 1, 1, 2]), labels) == pytest.approx(100.0)


def test_accuracy_matches_sklearn():
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(200, 7)), rng.integers(0, 7, size=200)
    assert accuracy(logits, labels) == pytest.approx(100 * accuracy_score(labels, logits.argmax(1)))


def test_average_precision_hand_worked():
    # ranking 1 0 1 0: precision 1 at recall 0.5, 2/3 at recall 1 -> (1 + 2/3) / 2
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    # ties form one threshold: at 0.8 both enter -> P = 1/3, R = 1/2; at 0.1 -> P = 2/4, R = 1
    scores, targets = np.array([0.9, 0.8, 0.8, 0.1]), np.array([0, 1, 0, 1])
    assert average_precision(scores, targets) == pytest.approx(0.5 * (1 / 3) + 0.5 * 0.5)


def test_average_precision_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 6, size=50).astype(float)  # many ties
        targets = rng.integers(0, 2, size=50)
        if targets.sum() == 0:
            continue
        assert average_precision(scores, targets) == pytest.approx(average_precision_score(targets, scores))


def test_map_skips_classes_without_positives_and_matches_sklearn():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(40, 6))
    targets = (rng.random(size=(40, 6)) < 0.3).astype(int)
    targets[:, 4] = 0  # no positives: no AP defined, must not count as 0
    present = [c for c in range(6) if c != 4]
    expected = 100 * np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in present])
    assert mean_average_precision(scores, targets) == pytest.approx(expected)
    assert expected == pytest.approx(100 * average_precision_score(targets[:, present], scores[:, present]))


def test_task_score_and_multi_hot():
    targets = multi_hot([(0, 2), (1,), ()], 3)
    np.testing.assert_array_equal(targets, [[1, 0, 1], [0, 1, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.1, 0.8], [0.2, 0.7, 0.1], [0.3, 0.2, 0.1]])
    assert task_score("mAP", scores, targets) == pytest.approx(100.0)
    assert task_score("accuracy", scores, np.array([0, 1, 0])) == pytest.approx(100.0)
    with pytest.raises(ValueError):
        task_score("f1", scores, targets)


def test_mean_std():
    assert mean_std([90.0]) == (90.0, 0.0)
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert std == pytest.approx(np.std([1.0, 2.0, 3.0, 4.0]))
