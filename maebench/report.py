"""The report of a `maebench run` / `maebench demo` run directory: report.md, PNG figures and the JSON under them.

Everything comes from the run's manifest.json and the results.json files it names (design rule: reports come from
these files alone), so a report can be rebuilt from a copied run directory. `summary.json`'s `wins` counts the
tasks where a pretrained upstream beats its own random init (logreg probe) by more than the noise: the larger of
the two scores' std over folds/seeds (`count_wins`). A done `stats` stage adds the per-layer feature statistics of
`maebench/feature_stats.py` (its JSON, named by the stage's `outputs["stats"]`): a table, a figure and
summary.json's `feature_stats`; runs without that stage report as before.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maebench.atomic import write_text_atomic
from maebench.errors import MaebenchError

INIT_SUFFIX = "@init"
WIN_PROBE = "logreg"
STATS_STAGE = "stats"
FEATURES_FIGURE = "feature statistics per layer"
FEATURES_MEANING = (
    "Evidence for or against collapsed features, per layer of each upstream on {clips} {task} test clips. Token "
    "cosine: the mean cosine similarity between two different frames of a clip; near 1 means every frame of a clip "
    "points the same way (the frames no longer tell time steps apart). Effective dim: exp(entropy) of the spectrum "
    "of the clip-pooled features; about k for k equally strong directions, near 1 means every clip's pooled vector "
    "lies on one line (the clips no longer differ). Collapse shows as token cosine near 1 with effective dim near "
    "1; compare each pretrained upstream with its own random init ({init}).")
WIN_RULE = ("a task is a win when the pretrained upstream's logreg score exceeds its random init's by more than the "
            "noise: the larger of the two scores' std (over folds on ESC-50 and ER, over seeds elsewhere) and, for "
            "accuracy, the binomial standard error of the difference, 100 * sqrt((p1(1-p1) + p2(1-p2)) / n) over "
            "the n test items (a logreg probe on one split is deterministic: its std over seeds is 0)")


@dataclass
class Cell:
    """One evaluation: (upstream, task, probe) -> score, std, per-layer scores."""

    upstream: str
    task: str
    probe: str
    score: float
    std: float
    metric: str = ""
    layers: list[float] = field(default_factory=list)
    n: int = 0  # test items (over all folds); 0 = unknown


def read_cells(manifest: dict[str, Any], run_dir: str | Path = ".") -> list[Cell]:
    """The finished evaluations the manifest names, read from their results.json files (paths relative to the
    run directory, or absolute)."""
    cells = []
    for key, entry in manifest.get("stages", {}).items():
        if not key.startswith("eval/") or entry.get("status") != "done":
            continue
        path = Path(run_dir) / entry["outputs"]["results"]
        if not path.exists() and Path(entry["outputs"]["results"]).exists():  # written relative to the cwd
            path = Path(entry["outputs"]["results"])
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise MaebenchError(f"{path}: unreadable results file ({err}); delete stage {key} from the manifest "
                                "and re-run to redo it") from None
        layers = data.get("layers") or {}
        per_layer = layers.get("test_scores") or layers.get("scores") or []
        if not isinstance(data.get("score"), (int, float)):
            continue  # a failed score (null) is shown as missing, not as zero
        cells.append(Cell(entry["upstream"], data["task"], data["probe"]["name"], float(data["score"]),
                          float(data.get("std") or 0.0), data.get("metric", ""),
                          [float(v) for v in per_layer if v is not None], int(entry.get("test_items") or 0)))
    return cells


def count_wins(cells: list[Cell], pretrained: str, probe: str = WIN_PROBE) -> tuple[int, dict[str, dict]]:
    """Tasks where `pretrained` beats `pretrained@init` with `probe` by more than the noise (WIN_RULE)."""
    from maebench.downstream.metrics import difference_noise

    index = {(c.upstream, c.task, c.probe): c for c in cells}
    detail: dict[str, dict] = {}
    for (upstream, task, cell_probe), cell in index.items():
        init = index.get((f"{pretrained}{INIT_SUFFIX}", task, cell_probe))
        if upstream != pretrained or cell_probe != probe or init is None:
            continue
        metric = cell.metric if cell.metric == init.metric else ""
        margin = difference_noise(metric, cell.score, cell.std, init.score, init.std, cell.n)
        delta = cell.score - init.score
        detail[task] = {"pretrained": cell.score, "init": init.score, "delta": round(delta, 4),
                        "noise": round(margin, 4), "win": delta > margin}
    return sum(1 for d in detail.values() if d["win"]), detail


def read_feature_stats(manifest: dict[str, Any], run_dir: str | Path = ".") -> dict[str, Any] | None:
    """The feature statistics JSON a done `stats` stage names (relative to the run directory, or absolute); None
    when the run has no such stage (older runs)."""
    entry = manifest.get("stages", {}).get(STATS_STAGE) or {}
    output = (entry.get("outputs") or {}).get("stats")
    if entry.get("status") != "done" or not output:
        return None
    path = Path(run_dir) / output
    if not path.exists() and Path(output).exists():  # written relative to the cwd
        path = Path(output)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MaebenchError(f"{path}: unreadable feature statistics ({err}); delete stage {STATS_STAGE} from the "
                            "manifest and re-run to redo it") from None
    if not isinstance(data, dict) or not isinstance(data.get("upstreams"), dict):
        raise MaebenchError(f"{path}: not a feature statistics file (no \"upstreams\" object); delete stage "
                            f"{STATS_STAGE} from the manifest and re-run to redo it")
    return data


def _mae_stage(manifest: dict[str, Any]) -> str | None:
    """The pretraining stage whose wins summary.json reports: the first MAE-AST one, else the first."""
    names = [k.split("/", 1)[1] for k, e in manifest.get("stages", {}).items()
             if k.startswith("pretrain/") and e.get("status") == "done"]
    mae = [n for n in names if str(manifest["stages"][f"pretrain/{n}"].get("model", "")).startswith("mae_ast")]
    return (mae or names or [None])[0]


def speed_table(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per pretraining stage: model, steps, step time, clips/s, peak memory, first and last loss."""
    out = {}
    for key, entry in manifest.get("stages", {}).items():
        if not key.startswith("pretrain/") or entry.get("status") != "done":
            continue
        curve = entry.get("loss_curve") or []
        out[key.split("/", 1)[1]] = {
            "model": entry.get("model"), "overrides": entry.get("overrides"), "steps": entry.get("steps"),
            "budget_seconds": entry.get("budget_seconds"), "batch_size": entry.get("batch_size"),
            "step_s": entry.get("step_s"), "clips_per_s": entry.get("clips_per_s"),
            "train_wall_s": (entry.get("result") or {}).get("wall_s"),
            "peak_memory_mib": round((entry.get("result") or {}).get("peak_memory_bytes", 0) / 2**20, 1),
            "first_loss": curve[0][1] if curve else None, "last_loss": curve[-1][1] if curve else None,
        }
    return out


def speed_ratio(speed: dict[str, dict[str, Any]]) -> float | None:
    """SSAST step time / MAE-AST step time (> 1: MAE-AST is faster per step), when both ran."""
    def step(prefix: str) -> float | None:
        return next((s["step_s"] for s in speed.values() if str(s["model"]).startswith(prefix) and s["step_s"]),
                    None)

    mae, ssast = step("mae_ast"), step("ssast")
    return ssast / mae if mae and ssast else None


def summarize(manifest: dict[str, Any], run_dir: str | Path = ".") -> dict[str, Any]:
    """summary.json: wins of the MAE-AST stage over its init, every stage's wins, speed, the scores."""
    cells = read_cells(manifest, run_dir)
    speed = speed_table(manifest)
    per_stage = {}
    for name in speed:
        wins, detail = count_wins(cells, name)
        linear_wins, linear_detail = count_wins(cells, name, "linear")  # not the win rule's probe: shown beside it
        per_stage[name] = {"wins": wins, "tasks": detail, "linear_wins": linear_wins, "linear_tasks": linear_detail}
    main = _mae_stage(manifest)
    return {
        "wins": per_stage.get(main, {}).get("wins", 0) if main else 0,
        "wins_of": main, "tasks_compared": len(per_stage.get(main, {}).get("tasks", {})) if main else 0,
        "win_rule": WIN_RULE, "per_stage": per_stage, "speed": speed,
        "ssast_over_mae_ast_step_time": speed_ratio(speed),
        "scores": [c.__dict__ for c in cells],
        "feature_stats": read_feature_stats(manifest, run_dir),
        "loss_curves": {k.split("/", 1)[1]: e.get("loss_curve") or [] for k, e in manifest.get("stages", {}).items()
                        if k.startswith("pretrain/") and e.get("status") == "done"},
    }


# ---------------------------------------------------------------------------------------------------- writing


def write_report(run_dir: str | Path, manifest: dict[str, Any], description: str = "") -> Path:
    """RUN/report/{report.md, summary.json, loss.png, scores_<probe>.png, layers.png, reconstruction_<stage>.png};
    returns report.md's path."""
    from maebench.reconstruction import report_figures

    out = Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(manifest, run_dir)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    figures = write_figures(summary, out)
    figures.update(report_figures(run_dir, manifest, out))  # each pretraining run's RUN/reconstruction.png
    write_text_atomic(out / "report.md", render_markdown(summary, manifest, figures, description))
    return out / "report.md"


def score_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per (upstream, probe), one column per task, `score ± std`."""
    cells = [Cell(**c) for c in summary["scores"]]
    tasks = list(dict.fromkeys(c.task for c in cells))
    rows: dict[tuple[str, str], dict[str, Cell]] = {}
    for cell in cells:
        rows.setdefault((cell.upstream, cell.probe), {})[cell.task] = cell
    lines = []
    for (upstream, probe), by_task in rows.items():
        values = [f"{by_task[t].score:.1f} ± {by_task[t].std:.1f}" if t in by_task else "–" for t in tasks]
        lines.append([upstream, probe, *values])
    return ["upstream", "probe", *tasks], lines


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def reading(summary: dict[str, Any]) -> str:
    """One honest paragraph computed from the numbers: wins, speed, loss; no claim the numbers do not carry."""
    parts = []
    main = summary.get("wins_of")
    if main:
        tasks = summary["per_stage"].get(main, {}).get("tasks", {})
        won = [t for t, d in tasks.items() if d["win"]]
        lost = [t for t, d in tasks.items() if d["delta"] < -d["noise"]]
        parts.append(f"The pretrained {main} beats its own random init (logreg) on {summary['wins']} of "
                     f"{len(tasks)} tasks by more than the noise ({', '.join(won) or 'none'}); it is worse by more "
                     f"than the noise on {len(lost)} ({', '.join(lost) or 'none'}), the rest are within the noise.")
        linear = summary["per_stage"].get(main, {}).get("linear_tasks") or {}
        if linear:
            won = [t for t, d in linear.items() if d["win"]]
            parts.append(f"With the linear probe (beside the rule, not part of it) it wins on {len(won)} of "
                         f"{len(linear)} ({', '.join(won) or 'none'}).")
    for name, stage in summary["per_stage"].items():
        if name != main and stage["tasks"]:
            parts.append(f"For comparison, {name} beats its random init on {stage['wins']} of {len(stage['tasks'])}.")
    ratio = summary.get("ssast_over_mae_ast_step_time")
    if ratio:
        met = "meets" if ratio >= 2 else "misses"
        parts.append(f"Per optimizer step at the same encoder size and batch, SSAST took {ratio:.2f}x the time of "
                     f"MAE-AST on this machine, which {met} the 2x target (MAE-AST's encoder sees only the unmasked "
                     "25% of the tokens).")
    for name, s in summary["speed"].items():
        if s["first_loss"] is not None:
            parts.append(f"{name}: {s['steps']} steps, loss {s['first_loss']:.3f} -> {s['last_loss']:.3f}.")
    if main:
        parts.append(collapse_reading(summary.get("feature_stats"), main))
    parts.append("Toy data and a budget of minutes: these numbers show whether pretraining moves the features at "
                 "all, not how the full models compare; the paper's numbers come from 400k+ GPU steps.")
    return " ".join(parts)


COLLAPSED_COSINE, COLLAPSED_DIM = 0.95, 2.0  # a layer this close to one direction (frames or clips) is collapsed


def collapse_reading(stats: dict[str, Any] | None, name: str) -> str:
    """One sentence on whether `name`'s layers collapsed, against its random init; "" without statistics."""
    rows = ((stats or {}).get("upstreams") or {}).get(name)
    init = ((stats or {}).get("upstreams") or {}).get(f"{name}{INIT_SUFFIX}")
    if not rows or not init:
        return ""

    def span(layers: list[dict], key: str) -> tuple[float, float] | None:
        values = [r[key] for r in layers if r.get(key) is not None]
        return (min(values), max(values)) if values else None

    cos, dim, cos0, dim0 = span(rows, "token_cosine"), span(rows, "effective_dim"), span(init, "token_cosine"), \
        span(init, "effective_dim")
    if not (cos and dim and cos0 and dim0):
        return ""
    collapsed = cos[1] >= COLLAPSED_COSINE or dim[0] <= COLLAPSED_DIM
    verdict = "some layers have collapsed" if collapsed else "no layer has collapsed"
    return (f"Feature statistics on {stats.get('task')}: {verdict} (token cosine {cos[0]:.2f}-{cos[1]:.2f} over "
            f"{name}'s layers against {cos0[0]:.2f}-{cos0[1]:.2f} at random init; effective dimension "
            f"{dim[0]:.1f}-{dim[1]:.1f} against {dim0[0]:.1f}-{dim0[1]:.1f}; collapse = cosine >= {COLLAPSED_COSINE} "
            f"or dimension <= {COLLAPSED_DIM:g}).")


def render_markdown(summary: dict[str, Any], manifest: dict[str, Any], figures: dict[str, str],
                    description: str = "") -> str:
    header, rows = score_table(summary)
    speed_rows = [[name, str(s["model"]), str(s["steps"]), _fmt(s.get("train_wall_s"), 0), _fmt(s["step_s"], 3),
                   _fmt(s["clips_per_s"], 1), _fmt(s["peak_memory_mib"], 0), _fmt(s["first_loss"], 3),
                   _fmt(s["last_loss"], 3)]
                  for name, s in summary["speed"].items()]
    stages = [[k, e.get("status", "?"), _fmt(e.get("seconds"), 1), e.get("error", "")]
              for k, e in manifest.get("stages", {}).items()]
    parts = [f"# maebench run: {manifest.get('recipe', '?')}", description.strip(), "## Reading", reading(summary),
             f"## Scores (wins of {summary.get('wins_of')}: {summary['wins']})", _markdown_table(header, rows),
             WIN_RULE + ".", "## Pretraining speed", _markdown_table(
                 ["stage", "model", "steps", "train s", "step s", "clips/s", "peak MiB", "first loss",
                  "last loss"], speed_rows)]
    if summary.get("ssast_over_mae_ast_step_time"):
        parts.append(f"SSAST / MAE-AST step time: {summary['ssast_over_mae_ast_step_time']:.2f}x. Each model's "
                     "step count was fixed from its own first steps, timed (budget / step time, recorded so a resumed "
                     "run computes the same weights); `train s` is the time the rest of the training then took in "
                     "the last session, which drifts from the budget when the machine's load changes. Peak memory "
                     "on a CPU is the pretraining process's peak RSS; on a GPU the peak allocated memory.")
    parts += [f"![{name}]({file})" for name, file in figures.items() if name != FEATURES_FIGURE]
    parts += feature_section(summary.get("feature_stats"), figures.get(FEATURES_FIGURE))
    parts += ["## Stages", _markdown_table(["stage", "status", "seconds", "error"], stages)]
    return "\n\n".join(p for p in parts if p) + "\n"


def feature_table(stats: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per upstream, one column per layer, `token cosine / effective dim`."""
    upstreams = stats.get("upstreams") or {}
    depth = max((len(rows) for rows in upstreams.values()), default=0)
    lines = []
    for name, rows in upstreams.items():
        cells = [f"{_fmt(r.get('token_cosine'), 2)} / {_fmt(r.get('effective_dim'), 1)}" for r in rows]
        lines.append([name, *cells, *["–"] * (depth - len(rows))])
    return ["upstream", *(f"layer {i} cos / eff.dim" for i in range(depth))], lines


def feature_section(stats: dict[str, Any] | None, figure: str | None) -> list[str]:
    """The "Feature statistics" section's parts (heading, meaning, table, figure); none without statistics."""
    if not stats or not stats.get("upstreams"):
        return []
    meaning = FEATURES_MEANING.format(clips=stats.get("clips", "?"), task=stats.get("task", "?"),
                                      init=f"name{INIT_SUFFIX}")
    parts = ["## Feature statistics", meaning, _markdown_table(*feature_table(stats))]
    return parts + ([f"![{FEATURES_FIGURE}]({figure})"] if figure else [])


def _fmt(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def write_figures(summary: dict[str, Any], out: Path) -> dict[str, str]:
    """Loss curves, per-task bars with error bars per probe, per-layer curves (logreg); {title: file name}."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    figures: dict[str, str] = {}
    curves = {n: c for n, c in summary.get("loss_curves", {}).items() if c}
    if curves:
        figures["pretraining loss, by step and by training seconds"] = _loss(plt, curves, out / "loss.png")
    cells = [Cell(**c) for c in summary["scores"]]
    for probe in dict.fromkeys(c.probe for c in cells):
        chosen = [c for c in cells if c.probe == probe]
        figures[f"scores, {probe} probe"] = _bars(plt, chosen, out / f"scores_{probe}.png")
    layered = [c for c in cells if c.probe == WIN_PROBE and c.layers]
    if layered:
        figures["per-layer logreg score"] = _layers(plt, layered, out / "layers.png")
    stats = summary.get("feature_stats") or {}
    if stats.get("upstreams"):
        figures[FEATURES_FIGURE] = _features(plt, stats["upstreams"], out / "features.png")
    return figures


def _loss(plt, curves: dict[str, list[list[float]]], path: Path) -> str:
    """Loss by optimizer step (left) and by training wall-clock seconds (right: models whose steps cost different
    times compare fairly only there). A curve's points are [step, loss, seconds]; older runs have no seconds."""
    timed = {name: curve for name, curve in curves.items() if all(len(point) > 2 for point in curve)}
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(11 if timed else 6, 4), squeeze=False, sharey=True)
    for name, curve in curves.items():
        axes[0, 0].plot([p[0] for p in curve], [p[1] for p in curve], label=name)
    axes[0, 0].set(xlabel="optimizer step", ylabel="pretraining loss", title="pretraining loss by step")
    for name, curve in timed.items():
        axes[0, 1].plot([p[2] for p in curve], [p[1] for p in curve], label=name)
    if timed:
        axes[0, 1].set(xlabel="training wall-clock seconds", title="by training time (equal budgets: the fair view)")
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def _bars(plt, cells: list[Cell], path: Path) -> str:
    tasks = list(dict.fromkeys(c.task for c in cells))
    upstreams = list(dict.fromkeys(c.upstream for c in cells))
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(tasks)), 4))
    width = 0.8 / max(1, len(upstreams))
    for i, upstream in enumerate(upstreams):
        by_task = {c.task: c for c in cells if c.upstream == upstream}
        xs = [t + i * width for t, name in enumerate(tasks) if name in by_task]
        ax.bar(xs, [by_task[n].score for n in tasks if n in by_task], width,
               yerr=[by_task[n].std for n in tasks if n in by_task], capsize=3, label=upstream)
    ax.set_xticks([t + 0.4 - width / 2 for t in range(len(tasks))], tasks)
    ax.set(ylabel="score (%)", title=path.stem.replace("_", " "))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def _layers(plt, cells: list[Cell], path: Path) -> str:
    tasks = list(dict.fromkeys(c.task for c in cells))
    cols = min(3, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for cell in (c for c in cells if c.task == task):
            ax.plot(range(len(cell.layers)), cell.layers, marker=".", label=cell.upstream)
        ax.set(title=task, xlabel="layer (index of the upstream's hidden states)", ylabel="score (%)")
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def _features(plt, upstreams: dict[str, list[dict]], path: Path) -> str:
    """Token cosine and effective dim against layer: one colour per model, pretrained solid, its @init dashed."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    bases = list(dict.fromkeys(name.removesuffix(INIT_SUFFIX) for name in upstreams))
    for name, rows in upstreams.items():
        base = name.removesuffix(INIT_SUFFIX)
        style = {"color": f"C{bases.index(base) % 10}", "linestyle": "--" if name != base else "-",
                 "marker": ".", "label": name}
        for ax, key in zip(axes, ("token_cosine", "effective_dim"), strict=True):
            points = [(r["layer"], r[key]) for r in rows if r.get(key) is not None]
            ax.plot([x for x, _ in points], [y for _, y in points], **style)
    axes[0].set(title="token cosine (1 = frames collapsed)", xlabel="layer", ylabel="mean pairwise cosine")
    axes[1].set(title="effective dim (1 = clips on one line)", xlabel="layer", ylabel="exp(spectral entropy)")
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name
