"""One evaluation: a task x an upstream x a probe, over every fold and seed, aggregated into `results.json`.

Aggregation: each fold's score is the mean over seeds; the reported score is the mean over folds, and the std is
over folds for cross-validated tasks (ESC-50, ER: as the papers report) or over seeds for single-split tasks.
Run directories are never reused: `<out>/<task>-<upstream>-<probe>`, then `-1`, `-2`, ... if that exists.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from maebench.atomic import write_text_atomic
from maebench.downstream.feature_cache import NonFiniteFeatures
from maebench.downstream.metrics import mean_std
from maebench.downstream.probes import PROBES, ProbeResult, ProbeSettings, resolve_settings, run_probe, settings_dict
from maebench.downstream.probes.protocol import describe_protocol
from maebench.downstream.probes.settings import family_defaults, protocol_family
from maebench.downstream.selection import SOURCE as SELECTION_SOURCE
from maebench.downstream.selection import test_selected_scores
from maebench.downstream.tasks.audioset import relabelled_task, train_labels_record
from maebench.errors import MaebenchError
from maebench.paths import usable_dir
from maebench.upstream.checkpoint import RUN_CHECKPOINTS, RUN_INIT, is_run_dir
from maebench.upstream.interface import Upstream

RESULTS_FORMAT = 1
DEFAULT_OUT = Path("runs/eval")


def resolve_upstream(spec: str | Path | Upstream) -> tuple[Upstream, dict[str, Any]]:
    """The model and its identity for results.json: a preset name, a checkpoint/run path, or a ready Upstream."""
    from maebench.upstream.registry import config_hash, find_run_checkpoint, fingerprint, load

    if isinstance(spec, Upstream):
        model, name, path = spec, spec.family or type(spec).__name__, None
    else:
        # presets are random inits: seed them so a random-init baseline is reproducible (and its features cached)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = load(spec)
        candidate = Path(str(spec)).expanduser()
        if is_run_dir(candidate):
            candidate = find_run_checkpoint(candidate)  # record the exact checkpoint a run directory resolved to
        name, path = str(spec), (str(candidate.resolve()) if candidate.exists() else None)
    identity = {"name": name, "path": path, "family": model.family, "config_hash": config_hash(model),
                "fingerprint": fingerprint(model)}
    return model, identity


def upstream_slug(identity: dict[str, Any]) -> str:
    """A short file-name-safe name: the preset (':' -> '-'), or the run / checkpoint directory name."""
    if identity["path"] is None:
        text = identity["name"]
    else:
        path = Path(identity["path"])
        text = f"{path.parents[1].name}-{path.name}" if path.parent.name == RUN_CHECKPOINTS else path.stem
        text = f"{path.parent.name}-{text}" if path.name == RUN_INIT else text
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "upstream"


def new_run_dir(base: Path, name: str) -> Path:
    """Create and return `base/name`, or `base/name-N` with the first free N (never an existing directory)."""
    base.mkdir(parents=True, exist_ok=True)
    for index in range(10_000):
        candidate = base / (name if index == 0 else f"{name}-{index}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise MaebenchError(f"too many runs named {name} in {base}; pass another --out")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def evaluate(
    task_name: str, upstream_spec: str | Path | Upstream, *, data_root: str | Path | None = None,
    probe: str = "linear", seeds: int = 1, out_dir: str | Path | None = None,
    overrides: dict[str, Any] | None = None, quiet: bool = False, device: str | torch.device | None = None,
    show_table: bool = True, num_workers: int | None = None, baseline: str = "none",
    subset: str | Path | None = None, feature_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate one upstream on one task with one probe; writes and returns the results.json content
    (its path under the key "results_path", which is not written to the file).

    results.json records the task's chance level; `baseline` "init" (or "auto", see
    `maebench.downstream.baseline`) also evaluates the pretraining run's random init the same way (its own
    results.json) and records the difference with its noise under "baseline". `subset`: a recorded subset file
    (maebench.downstream.subset; a probe curve's RUN/probe_subsets/*.json) to evaluate on instead of the task.
    `feature_cache`: the folder holding the feature cache's entries (default: the user's cache folder).
    """
    from maebench.downstream.baseline import baseline_upstream, chance_level, compare_with_baseline
    from maebench.downstream.datasets import load_task

    if probe not in PROBES:
        raise MaebenchError(f"unknown probe {probe!r}; use one of {', '.join(PROBES)}")
    if seeds < 1:
        raise MaebenchError(f"--seeds must be at least 1 (got {seeds})")
    started = time.perf_counter()
    out_dir = usable_dir(out_dir if out_dir is not None else DEFAULT_OUT, "--out")  # before any work
    init = baseline_upstream(upstream_spec, baseline, probe)
    task = load_task(task_name, data_root)
    if subset is not None:
        from maebench.downstream.subset import apply_subset, read_subset

        task = apply_subset(task, read_subset(subset), source=subset)
    model, identity = resolve_upstream(upstream_spec)
    family = protocol_family(model)
    settings = resolve_settings(probe, task, overrides, family=family)
    protocol = describe_protocol(model, task, probe, settings, family, family_defaults(task, probe, family)[1])
    protocol["labels"] = train_labels_record(task, settings)
    if getattr(settings, "train_labels", None):  # AudioSet: a label-enhanced training file (PSLA's, as SSAST)
        task = relabelled_task(task, settings.train_labels)
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    if num_workers is None:
        num_workers = 0 if task.is_toy else min(8, max(1, (os.cpu_count() or 2) - 1))
    cache_options = {"upstream_fingerprint": identity["fingerprint"], "data_fingerprint": task.data_fingerprint(),
                     "num_workers": num_workers, **({"root": Path(feature_cache)} if feature_cache is not None else {})}

    results: list[tuple[str, int, ProbeResult]] = []
    for fold in task.folds:
        for seed in range(seeds):
            run_model = copy.deepcopy(model) if probe == "finetune" else model
            try:
                result = run_probe(probe, run_model, task, fold, seed=seed, settings=copy.deepcopy(settings),
                                   quiet=quiet, cache_options=cache_options, num_workers=num_workers)
            except NonFiniteFeatures as err:  # named by the spec the user gave
                raise NonFiniteFeatures(identity["name"], err.example) from None
            results.append((fold.name, seed, result))
            del run_model

    record = _results_record(task, identity, probe, settings, results, time.perf_counter() - started)
    record["protocol"] = protocol
    record["chance"] = chance_level(task)
    if subset is not None:
        record["subset"] = str(Path(subset).resolve())
    if init is not None:  # the same task, probe, settings, seeds and folds; its features are cached like any others
        base = evaluate(task_name, init, data_root=data_root, probe=probe, seeds=seeds, out_dir=out_dir,
                        overrides=overrides, quiet=quiet, device=device, show_table=False, num_workers=num_workers,
                        subset=subset)
        record["baseline"] = compare_with_baseline(record, base, sum(len(fold.test) for fold in task.folds))
    run_dir = new_run_dir(out_dir, f"{task.name}-{upstream_slug(identity)}-{probe}")
    results_path = run_dir / "results.json"
    write_text_atomic(results_path, strict_json(record))
    if show_table and not quiet:
        print_results_table([record])
    return {**record, "results_path": str(results_path)}


def strict_json(record: dict[str, Any]) -> str:
    """`record` as strict JSON (RFC 8259 has no NaN/Infinity, which Python writes by default and other readers
    reject): a non-finite number is written as null."""

    def finite(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: finite(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(item) for item in value]
        return value

    return json.dumps(finite(record), indent=2, allow_nan=False) + "\n"


def _results_record(task, identity: dict, probe: str, settings: ProbeSettings,
                    results: list[tuple[str, int, ProbeResult]], total_s: float) -> dict[str, Any]:
    scores = [result.score for _, _, result in results]
    selection = None
    if all("epoch_test_scores" in result.details for _, _, result in results):  # model_selection test_epoch_mean
        epoch, scores = test_selected_scores([result.details["epoch_test_scores"] for _, _, result in results])
        selection = {"rule": "best mean test epoch", "on_test": True, "epoch": epoch + 1, "source": SELECTION_SOURCE,
                     "last_epoch_score": round(mean_std([r.score for _, _, r in results])[0], 4)}
    by_fold: dict[str, list[float]] = {}
    for (fold, _, _), run_score in zip(results, scores, strict=True):
        by_fold.setdefault(fold, []).append(run_score)
    fold_means = [mean_std(scores)[0] for scores in by_fold.values()]
    if len(by_fold) > 1:
        score, std = mean_std(fold_means)
    else:
        score, std = mean_std(next(iter(by_fold.values())))
    runs = []
    for (fold, seed, result), run_score in zip(results, scores, strict=True):
        entry = {"fold": fold, "seed": seed, "score": round(run_score, 4),
                 "dev_score": None if result.dev_score is None else round(result.dev_score, 4)}
        for key in ("selected_layer", "selected_C", "selected"):
            if key in result.hparams:
                entry[key] = result.hparams[key]
        for key in ("best_step", "selection", "train_crops", "postprocessing", "test_scores", "epoch_test_scores"):
            if key in result.details:
                entry[key] = result.details[key]
        if selection is not None:
            entry["selection"] = f"epoch {selection['epoch']}: best mean test score over all folds (on test)"
        runs.append(entry)
    return {
        "maebench_results": RESULTS_FORMAT, "task": task.name, "metric": task.metric,
        "score": round(score, 4), "std": round(std, 4), "runs": runs, "upstream": identity,
        "probe": {"name": probe, "hparams": settings_dict(settings)}, "layers": _mean_layers(results),
        "data": {"root": str(Path(task.root).resolve()), "toy": bool(task.is_toy)},
        "timings": {"extract_s": round(sum(r.timings.get("extract_s", 0.0) for _, _, r in results), 3),
                    "train_s": round(sum(r.timings.get("train_s", 0.0) for _, _, r in results), 3),
                    "total_s": round(total_s, 3)},
        "versions": _versions(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **({"selection": selection} if selection is not None else {}),
    }


def _mean_layers(results: list[tuple[str, int, ProbeResult]]) -> dict[str, list[float]]:
    """Per-layer weights (linear) or dev scores (logreg), averaged over runs."""
    out: dict[str, list[float]] = {}
    for key in ("weights", "scores", "test_scores"):
        rows = [r.layers[key] for _, _, r in results if key in r.layers]
        if rows:
            out[key] = [round(sum(column) / len(column), 6) for column in zip(*rows, strict=True)]
    return out


def _versions() -> dict[str, str]:
    import numpy
    import sklearn

    import maebench

    return {"maebench": maebench.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "sklearn": sklearn.__version__, "python": platform.python_version()}


def print_results_table(records: list[dict[str, Any]]) -> None:
    """The final summary: one row per evaluation."""
    from rich.console import Console

    from maebench.downstream.baseline import describe
    from maebench.tables import new_table, print_table

    table = new_table("maebench eval", ("task", "upstream", "probe", "metric", "score ± std", "chance",
                                        "random init (Δ ± noise)", "runs", "time"), names=4)
    for record in records:
        chance, base = record.get("chance"), record.get("baseline")
        table.add_row(
            record["task"], record["upstream"]["name"], record["probe"]["name"], record["metric"],
            f"{record['score']:.2f} ± {record['std']:.2f}", f"{chance['score']:.2f}" if chance else "–",
            f"{base['score']:.2f} ({base['difference']:+.2f} ± {base['noise']:.2f})" if base else "–",
            str(len(record["runs"])), f"{record['timings']['total_s']:.1f}s",
        )
    console = Console()
    print_table(table, console)
    for record in records:
        if record.get("baseline") or record.get("chance"):
            console.print(describe(record), soft_wrap=True, highlight=False)
        if record.get("results_path"):
            console.print(f"{record['task']}: {record['results_path']}", soft_wrap=True)
