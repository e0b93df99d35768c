"""Sound event detection as HEAR 2021 scores it: frame targets from event lists, events from frame predictions
(median filter, threshold, minimum duration), and the sed_eval scores hear-eval-kit reports.

Events are dicts {"label": class index, "start": ms, "end": ms}; an event list per file is keyed by file.
Definitions (hear-eval-kit 2021.1.3 heareval/score.py + predictions/task_predictions.py, sed_eval 0.2 docs):
- A frame at time t carries every event with start <= t < end + 0.0001 ms (hear-eval-kit's interval tree).
- Frame probabilities -> events, per file and class: median filter of round(median_filter_ms / mean hop) frames,
  threshold 0.5 (strictly above), each run of consecutive active frames one event from its first to its last
  frame's timestamp, kept when end - start >= min_duration_ms.
- Event-based F-measure (sed_eval EventBasedMetrics, overall = micro over classes and files): a reference and an
  estimated event of the same class match when their onsets differ by at most the collar (and, when offsets are
  evaluated, their offsets by at most max(collar, percentage x reference length)); each event matches at most once
  and the matching is a maximum one (sed_eval's "optimal"). precision = TP / estimated, recall = TP / reference.
- Segment-based error rate (sed_eval SegmentBasedMetrics): per file, segments of `segment_ms` up to the latest
  offset of either list; an event is active in segments floor(start / seg) .. ceil(end / seg) - 1; per segment
  S = min(ref, sys) - TP, D = max(0, ref - sys), I = max(0, sys - ref); ER = sum(S + D + I) / sum(ref).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["EVENT_SCORES", "event_f_measure", "event_score", "frame_targets", "predictions_to_events",
           "segment_error_rate"]

# HEAR's score names -> (kind, parameters); "higher" says which way is better
EVENT_SCORES: dict[str, dict] = {
    "event_onset_200ms_fms": {"kind": "event", "collar_ms": 200.0, "offset": False, "higher": True},
    "event_onset_50ms_fms": {"kind": "event", "collar_ms": 50.0, "offset": False, "higher": True},
    "event_onset_offset_50ms_20perc_fms": {"kind": "event", "collar_ms": 50.0, "offset": True,
                                           "percentage_of_length": 0.2, "higher": True},
    "segment_1s_er": {"kind": "segment", "segment_ms": 1000.0, "higher": False},
}

Events = Mapping[str, Sequence[Mapping]]


def frame_targets(events: Sequence[Mapping], timestamps_ms: np.ndarray, num_classes: int) -> np.ndarray:
    """(T, C) 0/1 targets of one file's frames: class c is on at t when an event of c has start <= t < end + 1e-4."""
    times = np.asarray(timestamps_ms, dtype=np.float64)
    out = np.zeros((len(times), num_classes), dtype=np.float32)
    for event in events:
        on = (times >= float(event["start"])) & (times < float(event["end"]) + 1e-4)
        out[on, int(event["label"])] = 1.0
    return out


def predictions_to_events(probabilities: np.ndarray, timestamps_ms: np.ndarray, *, median_filter_ms: float,
                          min_duration_ms: float, threshold: float = 0.5) -> list[dict]:
    """One file's (T, C) frame probabilities as events, sorted by start (see the module docstring)."""
    from scipy.ndimage import median_filter

    probs = np.asarray(probabilities, dtype=np.float64)
    times = np.asarray(timestamps_ms, dtype=np.float64)
    if len(times) > 1 and median_filter_ms:
        width = int(round(median_filter_ms / float(np.mean(np.diff(times)))))
        if width:
            probs = median_filter(probs, size=(width, 1))
    active = probs > threshold
    events = []
    for label in range(active.shape[1]):
        frames = np.flatnonzero(active[:, label])
        if not len(frames):
            continue
        breaks = np.flatnonzero(np.diff(frames) > 1)
        for first, last in zip(np.r_[0, breaks + 1], np.r_[breaks, len(frames) - 1], strict=True):
            start, end = float(times[frames[first]]), float(times[frames[last]])
            if end - start >= min_duration_ms:
                events.append({"label": label, "start": start, "end": end})
    return sorted(events, key=lambda e: e["start"])


def _matches(reference: list[Mapping], estimated: list[Mapping], collar_ms: float, offset: bool,
             percentage_of_length: float) -> int:
    """Size of a maximum matching between one class's reference and estimated events of one file."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    if not reference or not estimated:
        return 0
    ok = np.zeros((len(reference), len(estimated)), dtype=bool)
    for i, ref in enumerate(reference):
        for j, est in enumerate(estimated):
            good = abs(float(ref["start"]) - float(est["start"])) <= collar_ms
            if good and offset:
                length = float(ref["end"]) - float(ref["start"])
                good = abs(float(ref["end"]) - float(est["end"])) <= max(collar_ms, percentage_of_length * length)
            ok[i, j] = good
    if not ok.any():
        return 0
    matching = maximum_bipartite_matching(csr_matrix(ok.astype(np.int8)), perm_type="column")
    return int((matching >= 0).sum())


def event_f_measure(reference: Events, estimated: Events, *, collar_ms: float = 200.0, offset: bool = False,
                    percentage_of_length: float = 0.5) -> dict[str, float]:
    """Overall (micro) event-based F-measure, precision and recall as fractions (0 where undefined)."""
    tp = n_ref = n_sys = 0
    for file in sorted(set(reference) | set(estimated)):
        refs, ests = list(reference.get(file, [])), list(estimated.get(file, []))
        n_ref, n_sys = n_ref + len(refs), n_sys + len(ests)
        for label in {int(e["label"]) for e in refs} & {int(e["label"]) for e in ests}:
            tp += _matches([e for e in refs if int(e["label"]) == label],
                           [e for e in ests if int(e["label"]) == label], collar_ms, offset, percentage_of_length)
    precision = tp / n_sys if n_sys else 0.0
    recall = tp / n_ref if n_ref else 0.0
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f_measure": f, "precision": precision, "recall": recall}


def _activity(events: Sequence[Mapping], segments: int, segment_ms: float, num_classes: int) -> np.ndarray:
    roll = np.zeros((segments, num_classes), dtype=bool)
    for event in events:
        first = int(math.floor(float(event["start"]) / segment_ms))
        last = int(math.ceil(float(event["end"]) / segment_ms))
        roll[first:last, int(event["label"])] = True
    return roll


def segment_error_rate(reference: Events, estimated: Events, num_classes: int, *, segment_ms: float = 1000.0
                       ) -> float:
    """Overall segment-based error rate (a fraction; lower is better; nan when the reference has no activity)."""
    errors = n_ref = 0
    for file in sorted(set(reference) | set(estimated)):
        refs, ests = list(reference.get(file, [])), list(estimated.get(file, []))
        latest = max([float(e["end"]) for e in [*refs, *ests]], default=0.0)
        segments = int(math.ceil(latest / segment_ms))
        ref = _activity(refs, segments, segment_ms, num_classes)
        sys = _activity(ests, segments, segment_ms, num_classes)
        r, s, tp = ref.sum(axis=1), sys.sum(axis=1), (ref & sys).sum(axis=1)
        errors += int((np.minimum(r, s) - tp).sum() + np.maximum(0, r - s).sum() + np.maximum(0, s - r).sum())
        n_ref += int(r.sum())
    return errors / n_ref if n_ref else float("nan")


def event_score(name: str, reference: Events, estimated: Events, num_classes: int) -> float:
    """HEAR's score `name` (a key of EVENT_SCORES) as a fraction."""
    spec = EVENT_SCORES[name]
    if spec["kind"] == "segment":
        return segment_error_rate(reference, estimated, num_classes, segment_ms=spec["segment_ms"])
    return event_f_measure(reference, estimated, collar_ms=spec["collar_ms"], offset=spec["offset"],
                           percentage_of_length=spec.get("percentage_of_length", 0.5))["f_measure"]
