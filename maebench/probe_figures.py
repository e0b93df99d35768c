"""probes.png: probe score against pretraining step (or training time), one panel per task, one line per run,
with each run's step-0 score as its baseline (dashed) and the task's chance level (dotted grey).

Read from RUN/probes.jsonl only (maebench.probe_curve), like every report and comparison.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from maebench import probe_curve as pc
from maebench.errors import MaebenchError

X_AXES = ("step", "time")


def run_curves(run_dirs: dict[str, Path]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """label -> task -> points by step; a run without points is a MaebenchError naming it."""
    out = {}
    for label, run_dir in run_dirs.items():
        points = pc.read_points(run_dir)
        if not points:
            raise MaebenchError(f"{Path(run_dir) / pc.PROBES_FILE} has no points: train with --probe-every N or run "
                                f"`maebench probe {run_dir} --tasks ...` first")
        out[label] = pc.curves(points)
    return out


def _time_axis(run_dir: Path, steps: list[int]) -> list[float]:
    """Training seconds at each step (linear between the logging windows of metrics.jsonl)."""
    known = sorted(pc.training_seconds(run_dir).items())
    values = []
    for step in steps:
        below = [(s, t) for s, t in known if s <= step][-1]
        above = next(((s, t) for s, t in known if s >= step), None)
        if above is None or above[0] == below[0]:
            values.append(below[1] if above is None else above[1])
        else:
            values.append(below[1] + (above[1] - below[1]) * (step - below[0]) / (above[0] - below[0]))
    return values


def draw_curves(run_dirs: dict[str, str | Path], path: str | Path, *, x: str = "step") -> Path:
    """Write the figure of the runs' curves to `path`; returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x not in X_AXES:
        raise MaebenchError(f"x axis {x!r}: choose one of {', '.join(X_AXES)}")
    dirs = {label: Path(d) for label, d in run_dirs.items()}
    curves = run_curves(dirs)
    tasks = list(dict.fromkeys(task for by_task in curves.values() for task in by_task))
    columns = min(3, len(tasks))
    rows = math.ceil(len(tasks) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, task in zip(axes.flat, tasks, strict=False):
        chance = None
        for index, (label, by_task) in enumerate(curves.items()):
            points = by_task.get(task)
            if not points:
                continue
            color = colors[index % len(colors)]
            steps = [int(p["step"]) for p in points]
            xs = steps if x == "step" else _time_axis(dirs[label], steps)
            ax.plot(xs, [p["score"] for p in points], marker="o", color=color, label=label)
            first = points[0]
            if int(first["step"]) == 0:
                ax.axhline(first["score"], color=color, linestyle="--", linewidth=1, alpha=0.7)
            chance = first.get("chance", chance)
        if chance is not None and math.isfinite(chance):
            ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label="chance")
        metric = next(by_task[task][0]["metric"] for by_task in curves.values() if task in by_task)
        ax.set(title=task, xlabel="pretraining step" if x == "step" else "training time (s)",
               ylabel=f"logreg {metric} (%)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.suptitle("probe curves (dashed: step 0, the random init)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def curve_table(run_dir: str | Path) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per task the step-0, last and best scores, chance, points and seconds per point."""
    header = ["task", "metric", "points", "step 0", "last (step)", "best (step)", "chance", "s/point"]
    rows = []
    for task, points in pc.curves(pc.read_points(Path(run_dir))).items():
        first, last = points[0], points[-1]
        best = max(points, key=lambda p: p["score"])
        start = f"{first['score']:.2f}" if int(first["step"]) == 0 else "-"
        seconds = sum(float(p.get("probe_s", 0.0)) for p in points) / len(points)
        rows.append([task, first["metric"], str(len(points)), start, f"{last['score']:.2f} ({last['step']})",
                     f"{best['score']:.2f} ({best['step']})", f"{first.get('chance', float('nan')):.1f}",
                     f"{seconds:.1f}"])
    return header, rows
