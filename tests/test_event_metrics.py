"""HEAR's event post-processing and event scores against hand-worked event lists (and against sed_eval /
hear-eval-kit themselves when installed)."""

from __future__ import annotations

import numpy as np
import pytest

from maebench.downstream.event_metrics import (
    event_f_measure,
    event_score,
    frame_targets,
    predictions_to_events,
    segment_error_rate,
)


def ev(label: int, start: float, end: float) -> dict:
    return {"label": label, "start": start, "end": end}


def test_frame_targets_include_the_end_frame_and_nothing_after():
    stamps = np.array([0.0, 100.0, 200.0, 300.0, 300.00005, 400.0])
    targets = frame_targets([ev(1, 100, 300)], stamps, num_classes=2)
    assert targets[:, 1].tolist() == [0, 1, 1, 1, 1, 0]
    assert targets[:, 0].sum() == 0


def test_events_from_frames_threshold_min_duration_and_median_filter():
    stamps = np.arange(10) * 50.0
    probs = np.array([0, 0, .9, .9, .9, 0, .9, 0, 0, 0])[:, None]
    # runs at frames 2-4 (100-200 ms) and 6 (300 ms); an event ends at its last frame's timestamp
    assert predictions_to_events(probs, stamps, median_filter_ms=0, min_duration_ms=0) == [
        ev(0, 100.0, 200.0), ev(0, 300.0, 300.0)]
    assert predictions_to_events(probs, stamps, median_filter_ms=0, min_duration_ms=100) == [ev(0, 100.0, 200.0)]
    # 150 ms / 50 ms hop = a 3-frame median: frame 5 (between .9 and .9) turns on, frame 6 (between 0 and 0) off
    assert predictions_to_events(probs, stamps, median_filter_ms=150, min_duration_ms=0) == [ev(0, 100.0, 250.0)]
    # exactly 0.5 is not above the threshold
    assert predictions_to_events(np.full((4, 1), 0.5), stamps[:4], median_filter_ms=0, min_duration_ms=0) == []


def test_onset_f_measure_hand_worked():
    reference = {"a": [ev(0, 0, 400), ev(0, 1000, 1400), ev(1, 500, 900)]}
    estimated = {"a": [ev(0, 150, 300), ev(0, 1250, 1300), ev(1, 650, 700), ev(1, 3000, 3100)]}
    # A@150 matches A@0 (150 <= 200); A@1250 is 250 ms late; B@650 matches; B@3000 is a false alarm
    scores = event_f_measure(reference, estimated, collar_ms=200)
    assert scores["precision"] == pytest.approx(2 / 4)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f_measure"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    # a class mismatch never matches; a file without estimates counts its references as misses
    assert event_f_measure({"a": [ev(0, 0, 1)], "b": [ev(1, 0, 1)]}, {"a": [ev(1, 0, 1)]})["f_measure"] == 0.0


def test_onset_matching_is_a_maximum_matching_not_greedy():
    # e@250 could take r@100 or r@350; e@0 only r@100: greedy in estimate order finds 1 match, the optimum 2
    reference = {"a": [ev(0, 100, 200), ev(0, 350, 400)]}
    estimated = {"a": [ev(0, 250, 300), ev(0, 0, 50)]}
    assert event_f_measure(reference, estimated, collar_ms=200)["f_measure"] == pytest.approx(1.0)


def test_offset_condition_uses_the_larger_of_collar_and_length_share():
    reference = {"a": [ev(0, 0, 1000)]}
    late_offset = {"a": [ev(0, 0, 1300)]}  # 300 ms off > max(50, 0.2 x 1000)
    near_offset = {"a": [ev(0, 0, 1150)]}  # 150 ms off <= 200
    assert event_score("event_onset_offset_50ms_20perc_fms", reference, late_offset, 1) == 0.0
    assert event_score("event_onset_offset_50ms_20perc_fms", reference, near_offset, 1) == 1.0
    assert event_score("event_onset_50ms_fms", reference, late_offset, 1) == 1.0


def test_segment_error_rate_hand_worked():
    reference = {"a": [ev(0, 0, 1500)]}  # active in segments 0 and 1
    estimated = {"a": [ev(0, 0, 900), ev(1, 1200, 1800)]}  # A in segment 0, B in segment 1
    # segment 0: A/A correct; segment 1: A vs B is one substitution; 2 reference activities
    assert segment_error_rate(reference, estimated, 2) == pytest.approx(0.5)
    assert segment_error_rate(reference, {"a": []}, 2) == pytest.approx(1.0)  # two deletions
    assert event_score("segment_1s_er", reference, reference, 2) == 0.0


def _random_events(rng, files, labels):
    out = {}
    for f in files:
        events = []
        for _ in range(int(rng.integers(0, 6))):
            start = float(rng.uniform(0, 9000))
            events.append({"label": str(labels[int(rng.integers(len(labels)))]), "start": start,
                           "end": start + float(rng.uniform(50, 1500))})
        out[f] = events
    return out


def test_against_hear_eval_kit_and_sed_eval():
    score = pytest.importorskip("heareval.score")
    from heareval.predictions.task_predictions import create_events_from_prediction

    rng = np.random.default_rng(0)
    labels = ["x", "y", "z"]
    to_index = {name: i for i, name in enumerate(labels)}
    for trial in range(20):
        files = [f"f{i}" for i in range(4)]
        reference, estimated = _random_events(rng, files, labels), _random_events(rng, files, labels)
        ours_ref = {f: [{**e, "label": to_index[e["label"]]} for e in v] for f, v in reference.items()}
        ours_est = {f: [{**e, "label": to_index[e["label"]]} for e in v] for f, v in estimated.items()}
        for name in ("event_onset_200ms_fms", "event_onset_50ms_fms", "event_onset_offset_50ms_20perc_fms",
                     "segment_1s_er"):
            theirs = score.available_scores[name](label_to_idx=to_index)(estimated, reference)
            theirs = theirs[0][1] if isinstance(theirs, tuple) else theirs
            assert event_score(name, ours_ref, ours_est, 3) == pytest.approx(theirs, abs=1e-9), (trial, name)
        # frame predictions -> events
        import torch

        probs = rng.uniform(size=(60, 3)) ** 0.5
        stamps = np.arange(60) * 25.0 + 12.5
        for median, minimum in ((250, 125), (250, 250), (0, 0)):
            by_time = {float(t): torch.tensor(p) for t, p in zip(stamps, probs, strict=True)}
            theirs = create_events_from_prediction(by_time, {i: i for i in range(3)}, median_filter_ms=median,
                                                   min_duration=minimum)
            ours = predictions_to_events(probs, stamps, median_filter_ms=median, min_duration_ms=minimum)
            assert sorted([e["label"], float(e["start"]), float(e["end"])] for e in theirs) == sorted(
                [e["label"], e["start"], e["end"]] for e in ours)
