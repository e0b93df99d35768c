"""Probe curves: how good a pretraining run's features are at step 0 and every N steps, as RUN/probes.jsonl.

A point is the logreg probe (`maebench eval --probe logreg`) of one encoder snapshot on one task, restricted to a
fixed small subset of the task (maebench.downstream.subset) drawn once per task and seed and recorded in
RUN/probe_subsets/, so every point of a curve sees the same examples and any point is reproduced exactly by
`maebench eval --task T --upstream SNAPSHOT --probe logreg --subset RUN/probe_subsets/T.seedS.json`.

Run-directory layout (all written by rank 0 only):
    RUN/probes.jsonl                 one point a line: step, task, metric, score, best layer, chance, times
    RUN/probe_subsets/T.seedS.json   the recorded subset of task T for seed S (with its chance level)
    RUN/probe_snapshots/step_N/      encoder weights waiting to be probed (a native checkpoint), deleted once
                                     every task has its point: what is left after a crash is probed at resume
The training loop only writes snapshots; maebench.probe_worker probes them in another process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from maebench.errors import MaebenchError
from maebench.upstream import checkpoint as layout

PROBES_FILE, PROBES_FIGURE = layout.PROBES_FILE, layout.PROBES_FIGURE
SUBSETS_DIR, SNAPSHOTS_DIR = layout.PROBE_SUBSETS_DIR, layout.PROBE_SNAPSHOTS_DIR
PROBE = "logreg"
WORKER_LOCK = ".worker.lock"  # RUN/probe_snapshots/.worker.lock: held by whoever probes this run's snapshots


@dataclass
class CurveSpec:
    """What a curve probes: the tasks, their data, the subset size and seed, the probe's device."""

    tasks: tuple[str, ...]
    data_root: str | None = None
    examples: int = 64
    seed: int = 0
    device: str = "cpu"

    @classmethod
    def from_config(cls, cfg) -> CurveSpec:
        t = cfg.train
        return cls(tuple(t.probe_tasks), t.probe_data, t.probe_examples, t.seed, t.probe_device)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CurveSpec:
        return cls(**{**data, "tasks": tuple(data["tasks"])})


def check_tasks(tasks: tuple[str, ...] | list[str]) -> None:
    """Task names as `maebench eval --task` takes them (hear:PATH: an existing folder); MaebenchError otherwise."""
    from maebench.downstream.tasks import check_task_name

    for task in tasks:
        if task.startswith("hear:"):
            if not Path(task[5:]).expanduser().is_dir():
                raise MaebenchError(f"probe task {task}: {task[5:]} is not a folder (a HEAR 2021 task folder)")
        else:
            check_task_name(task)


def task_data_root(spec: CurveSpec, task: str) -> Path | None:
    """ROOT/<task> of the spec's data root (as `maebench eval --task all --data ROOT`), None for toy data and for
    hear:PATH (which names its own folder)."""
    if spec.data_root is None or task.startswith("hear:"):
        return None
    return Path(spec.data_root).expanduser() / task


# ---------------------------------------------------------------------------------------------------- subsets


def subset_path(run_dir: Path, task: str, seed: int) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", task).strip("-")
    return Path(run_dir) / SUBSETS_DIR / f"{slug}.seed{seed}.json"


def ensure_subset(run_dir: Path, task: str, spec: CurveSpec) -> Path:
    """The recorded subset of `task` for the spec's seed, drawn and written on first use, reused ever after (a
    record of an older format too: the curve's points stay comparable); one drawn for another size is refused."""
    from maebench.downstream.datasets import load_task
    from maebench.downstream.subset import read_subset, select_subset, write_subset

    path = subset_path(run_dir, task, spec.seed)
    if not path.is_file():
        record = select_subset(load_task(task, task_data_root(spec, task)), examples=spec.examples, seed=spec.seed)
        write_subset(path, record)
    elif (drawn := read_subset(path).get("examples")) != spec.examples:
        raise MaebenchError(f"{path} was drawn for {drawn} examples, this run asks "
                            f"train.probe_examples={spec.examples}: one curve's points share one subset; set it back, "
                            f"or delete that file and the {task} points of {PROBES_FILE} to start a new curve")
    return path


# ---------------------------------------------------------------------------------------------------- points


def read_points(run_dir: Path) -> list[dict[str, Any]]:
    """The points of RUN/probes.jsonl in file order; a line cut short by a kill is left out."""
    path = Path(run_dir) / PROBES_FILE
    points = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            point = json.loads(line)
        except ValueError:
            continue
        if isinstance(point, dict) and {"step", "task", "score"} <= set(point):
            points.append(point)
    return points


def done_points(run_dir: Path) -> set[tuple[int, str]]:
    return {(int(p["step"]), p["task"]) for p in read_points(run_dir)}


def append_point(run_dir: Path, point: dict[str, Any]) -> None:
    """Add one line to RUN/probes.jsonl, durably (a kill right after cannot lose it)."""
    with open(Path(run_dir) / PROBES_FILE, "a", encoding="utf-8") as out:
        out.write(json.dumps(point) + "\n")
        out.flush()
        os.fsync(out.fileno())


def keep_points_until(run_dir: Path, step: int) -> None:
    """Drop the points past `step` (a resumed run redoes those steps) and any line cut short by a kill."""
    from maebench.atomic import write_text_atomic

    path = Path(run_dir) / PROBES_FILE
    if path.is_file():
        kept = [p for p in read_points(run_dir) if int(p["step"]) <= step]
        write_text_atomic(path, "".join(json.dumps(p) + "\n" for p in kept))


def probe_point(snapshot: Path, step: int, task: str, spec: CurveSpec, run_dir: Path) -> dict[str, Any]:
    """One point: `maebench eval --probe logreg --subset` of `snapshot` on `task`, as a probes.jsonl record."""
    from maebench.downstream.evaluate import evaluate
    from maebench.downstream.subset import read_subset

    subset = ensure_subset(run_dir, task, spec)
    started, cpu = time.perf_counter(), time.process_time()
    # the features of a snapshot are never asked for again: kept out of the user's feature cache (a long run's
    # points would fill it), extracted into the point's own folder, deleted with it
    with tempfile.TemporaryDirectory(prefix="maebench-probe-") as out:
        record = evaluate(task, str(snapshot), data_root=task_data_root(spec, task), probe=PROBE, out_dir=out,
                          quiet=True, show_table=False, device=spec.device, subset=subset, num_workers=0,
                          feature_cache=out)
    run = record["runs"][0]
    return {
        "step": step, "task": task, "metric": record["metric"], "score": record["score"],
        "best_layer": run.get("selected_layer"), "dev_score": run.get("dev_score"),
        "layer_scores": record["layers"].get("test_scores"), "chance": round(read_subset(subset)["chance"], 4),
        "subset": str(subset.relative_to(run_dir)), "wall_time": round(time.time(), 3),
        "probe_s": round(time.perf_counter() - started, 3), "probe_cpu_s": round(time.process_time() - cpu, 3),
    }


# ---------------------------------------------------------------------------------------------------- snapshots


def snapshot_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / SNAPSHOTS_DIR / layout.step_dir_name(step)


def write_snapshot(model, run_dir: Path, step: int) -> Path:
    """The encoder's weights at `step` as a native checkpoint in RUN/probe_snapshots/ (atomic)."""
    from maebench.upstream import save_upstream

    return save_upstream(model, snapshot_dir(run_dir, step), {"probe_snapshot_of": str(run_dir), "step": step})


def pending_snapshots(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete snapshots waiting to be probed, oldest first."""
    root = Path(run_dir) / SNAPSHOTS_DIR
    found = []
    for path in root.iterdir() if root.is_dir() else []:
        step = layout.step_of(path)
        if step is not None and (path / layout.CONFIG_FILE).is_file() and (path / layout.WEIGHTS_FILE).is_file():
            found.append((step, path))
    return sorted(found)


def drop_snapshots_after(run_dir: Path, step: int) -> None:
    """Snapshots past `step` belong to steps a resumed run redoes; half-written ones are garbage."""
    root = Path(run_dir) / SNAPSHOTS_DIR
    for path in root.iterdir() if root.is_dir() else []:
        at = layout.step_of(path)
        if path.is_dir() and ((at is not None and at > step) or path.name.startswith(".")):
            shutil.rmtree(path, ignore_errors=True)


def probe_snapshot(run_dir: Path, step: int, snapshot: Path, spec: CurveSpec, *, still_wanted=lambda: True,
                   remove: bool = True) -> list[dict[str, Any]]:
    """The missing points of `snapshot` (one per task), appended to probes.jsonl as each is done; the snapshot is
    deleted once every task has its point (`remove`; a kept checkpoint probed offline is not). A point finished
    when `still_wanted()` is false (the training process died) is not written: the resumed run decides."""
    done = done_points(run_dir)
    points = []
    for task in spec.tasks:
        if (step, task) in done:
            continue
        point = probe_point(snapshot, step, task, spec, run_dir)
        if not still_wanted():
            return points
        append_point(run_dir, point)
        points.append(point)
    if remove:
        shutil.rmtree(snapshot, ignore_errors=True)
    return points


# ---------------------------------------------------------------------------------------------------- summary


def cost_summary(points: list[dict[str, Any]], wall_s: float, blocked_s: float) -> dict[str, Any]:
    """What probing cost a run: seconds per point (the probe process), and the training loop's own waiting
    (snapshots, the last points) as a share of the run's wall time."""
    probe_s = sum(float(p.get("probe_s", 0.0)) for p in points)
    return {
        "points": len(points), "probe_s_per_point": round(probe_s / len(points), 3) if points else None,
        "probe_s": round(probe_s, 3), "probe_cpu_s": round(sum(float(p.get("probe_cpu_s", 0.0)) for p in points), 3),
        "loop_blocked_s": round(blocked_s, 3), "wall_s": round(wall_s, 3),
        "blocked_share": round(blocked_s / wall_s, 4) if wall_s > 0 else None,
        "probe_share": round(probe_s / wall_s, 4) if wall_s > 0 else None,
    }


def curves(points: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """task -> its points sorted by step (the last point of a step wins)."""
    by_task: dict[str, dict[int, dict[str, Any]]] = {}
    for point in points:
        by_task.setdefault(point["task"], {})[int(point["step"])] = point
    return {task: [by_step[s] for s in sorted(by_step)] for task, by_step in by_task.items()}


def training_seconds(run_dir: Path) -> dict[int, float]:
    """step -> seconds of training up to it, summed over the logging windows of RUN/metrics.jsonl (every session
    of a resumed run; start-up and waiting excluded): the x axis of curves compared at the same wall-clock."""
    path = Path(run_dir) / layout.METRICS_FILE
    seconds, total, previous = {0: 0.0}, 0.0, 0
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("step", 0) > previous and record.get("clips_per_s"):
            total += record["clips"] / record["clips_per_s"]
            previous = record["step"]
            seconds[previous] = total
    return seconds
