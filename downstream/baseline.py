"""What a score is read against: the task's chance level, and the upstream's own random init.

A score alone says little on toy data or after a short pretraining run: 31% on a 35-class task may be good or may
be what the untrained network already gives. So every evaluation records the chance level of its test sets
(`chance_level`), and an evaluation of a `maebench pretrain` run can also evaluate that run's random init, the exact
weights its step 0 started from (`RUN/init/`, written by the trainer), with the same probe, settings, seeds and
folds, and record the difference with its noise (`compare_with_baseline`; the rule is
`maebench.downstream.metrics.difference_noise`, the demo report's win rule).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maebench.downstream.metrics import chance_score, difference_noise, mean_std
from maebench.errors import MaebenchError
from maebench.upstream.checkpoint import RUN_INIT, init_checkpoint, run_of

BASELINES = ("auto", "init", "none")
CHANCE_DEFINITIONS = {
    "accuracy": "majority class: always answering the test set's most frequent class (mean over folds)",
    "mAP": "label prevalence: a constant score for every clip, whose AP per class is the class's share of the "
           "test clips, averaged over the classes with a positive (mean over folds)",
}
NOISE_RULE = ("beats when the difference exceeds the noise: the larger of the two scores' std (over folds or seeds) "
              "and, for accuracy, the binomial standard error of the difference, "
              "100 * sqrt((p1(1-p1) + p2(1-p2)) / n) over the n test items")


def chance_level(task: Any) -> dict[str, Any] | None:
    """The task's chance level (percent, aggregated over folds as the score is), its per-fold values and its
    definition; None for a metric without one."""
    if task.metric not in CHANCE_DEFINITIONS:
        return None
    try:
        per_fold = {fold.name: round(chance_score(task.metric, [ex.label for ex in fold.test]), 4)
                    for fold in task.folds}
    except ValueError:  # an empty test set, or no positive label anywhere: no chance level to state
        return None
    return {"score": round(mean_std(list(per_fold.values()))[0], 4), "per_fold": per_fold,
            "definition": CHANCE_DEFINITIONS[task.metric]}


def baseline_upstream(spec: Any, baseline: str, probe: str) -> Path | None:
    """The random init to evaluate beside `spec`: its run's `RUN/init/` with "init" (an error if it has none),
    with "auto" only for the frozen probes (their init features are one more cached extraction; a second
    fine-tuning would double the cost), never with "none"."""
    if baseline not in BASELINES:
        raise MaebenchError(f"--baseline {baseline!r}: choose one of {', '.join(BASELINES)}")
    if baseline == "none" or not isinstance(spec, (str, Path)):
        return None
    path = Path(str(spec)).expanduser()
    init = init_checkpoint(path) if path.exists() else None
    if baseline == "init" and init is None:
        run = run_of(path) if path.exists() else None
        where = f"{run} has no {RUN_INIT}/ (a run written before maebench saved it)" if run else (
            f"{spec} is not a `maebench pretrain` run or one of its checkpoints")
        raise MaebenchError(f"--baseline init: {where}; pass --baseline none, or evaluate a run that saved its "
                            "random init")
    if baseline == "auto" and probe == "finetune":
        return None
    return init


def compare_with_baseline(record: dict[str, Any], base: dict[str, Any], test_items: int) -> dict[str, Any]:
    """The `baseline` block of results.json: the init's score, the difference and its noise, and the verdict."""
    delta = record["score"] - base["score"]
    noise = difference_noise(record["metric"], record["score"], record["std"], base["score"], base["std"],
                             test_items)
    return {"kind": "init", "upstream": base["upstream"], "score": base["score"], "std": base["std"],
            "results": base.get("results_path"), "difference": round(delta, 4), "noise": round(noise, 4),
            "test_items": test_items, "beats": bool(delta > noise), "rule": NOISE_RULE}


def describe(record: dict[str, Any]) -> str:
    """One line: the score next to its chance level and its random init's score, for the terminal."""
    parts = [f"{record['task']} {record['probe']['name']} {record['metric']} {record['score']:.2f} ± "
             f"{record['std']:.2f}"]
    chance = record.get("chance")
    if chance:
        parts.append(f"chance {chance['score']:.2f}")
    base = record.get("baseline")
    if base:
        verdict = "beats it" if base["beats"] else ("worse" if base["difference"] < -base["noise"]
                                                    else "within the noise")
        parts.append(f"random init {base['score']:.2f} (difference {base['difference']:+.2f} ± "
                     f"{base['noise']:.2f}: {verdict})")
    return ", ".join(parts)
