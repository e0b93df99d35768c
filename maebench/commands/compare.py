"""Compare evaluations side by side (upstreams x tasks) against the MAE-AST paper's numbers.

Reads results.json files under the given directories; with --upstream and --task it first runs the evaluations
that are missing (maebench.downstream.evaluate). Prints a table and writes compare.md, compare.csv and compare.png
(matplotlib) to --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="*", metavar="RESULTS_DIR",
                        help="directories searched recursively for results.json (or results.json files)")
    parser.add_argument("--upstream", action="append", default=[], metavar="PATH|PRESET",
                        help="an upstream to include; repeat for several (evaluated where results are missing)")
    parser.add_argument("--task", action="append", default=[], metavar="TASK",
                        help="a task to include (as20k, esc50, ks2, ks1, sid, er or all); repeat for several")
    parser.add_argument("--probe", default="linear", help="probe for missing evaluations (default: linear)")
    parser.add_argument("--data", default=None, metavar="ROOT", help="dataset root for missing evaluations "
                        "(with several tasks ROOT/<task> holds each; default: the built-in toy data)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds for missing evaluations (default: 1)")
    parser.add_argument("--reference", default=None, metavar="KEY",
                        help="paper row to take differences against for every row (default: inferred per row: "
                        "mae_ast_patch, mae_ast_frame, mae_ast_patch_6, mae_ast_frame_6, ssast_patch, ssast_frame)")
    parser.add_argument("--out", default="runs/compare", metavar="DIR",
                        help="where compare.md/.csv/.png go (default: runs/compare)")
    parser.add_argument("--strict", action="store_true",
                        help="refuse cells whose protocol differs from the paper's for their column (default: mark "
                        "them with a dagger and list the differences)")
    parser.add_argument("--no-png", action="store_true", help="skip the bar chart")
    parser.add_argument("--curves", nargs="+", metavar="RUN",
                        help="instead: overlay the probe curves of these pretraining runs (RUN/probes.jsonl) in "
                             "OUT/probes.png")
    parser.add_argument("--against", choices=("step", "time"), default="step",
                        help="x axis of --curves: pretraining step or training seconds (same wall-clock)")
    parser.add_argument("--quiet", action="store_true", help="no progress output from evaluations")


def _matches(result, spec: str, fingerprints: dict[str, str]) -> bool:
    """Whether `result` is of upstream `spec` as it is now: named so (or its path), and, where the result records
    the weights' fingerprint, of the same weights (a run's older checkpoint is not the run)."""
    if not _named(result, spec):
        return False
    if result.fingerprint is None:  # recorded before fingerprints: the name is all there is
        return True
    if spec not in fingerprints:
        from maebench.downstream.evaluate import resolve_upstream

        fingerprints[spec] = resolve_upstream(spec)[1]["fingerprint"]
    return result.fingerprint == fingerprints[spec]


def _named(result, spec: str) -> bool:
    from maebench.upstream.checkpoint import list_checkpoints

    if result.upstream == spec:
        return True
    if result.upstream_path:
        candidate = Path(spec).expanduser()
        return candidate.exists() and Path(result.upstream_path).resolve() in (
            candidate.resolve(), *list_checkpoints(candidate.resolve()))
    return False


def _tasks(requested: list[str]) -> list[str]:
    from maebench.compare import TASK_LABELS

    tasks: list[str] = []
    for name in requested:
        for task in (TASK_LABELS if name == "all" else [name]):
            if task not in tasks:
                tasks.append(task)
    return tasks


def run(args: argparse.Namespace) -> int:
    from maebench.compare import build_comparison, find_results, read_result, render_rich, write_outputs
    from maebench.errors import MaebenchError

    if args.curves:
        from maebench.probe_figures import draw_curves

        names = [Path(run).resolve().name for run in args.curves]
        runs = {name if names.count(name) == 1 else run: run for name, run in zip(names, args.curves, strict=True)}
        print(f"wrote {draw_curves(runs, Path(args.out) / 'probes.png', x=args.against)}")
        return 0
    if args.task and not args.upstream:
        raise MaebenchError("--task needs at least one --upstream to evaluate")
    if not args.results and not args.upstream:
        raise MaebenchError("nothing to compare: pass results directories and/or --upstream with --task")
    skipped: list[str] = []
    results = find_results(args.results, skipped)
    if skipped and not results:  # nothing readable: the first reason is the error
        raise MaebenchError(skipped[0] + (f" (and {len(skipped) - 1} more unreadable)" if len(skipped) > 1 else ""))
    for reason in skipped:  # the others still make a table
        print(f"maebench compare: skipped {reason}", file=sys.stderr)
    found = len(results)
    fingerprints: dict[str, str] = {}  # spec -> its weights' fingerprint, computed when first needed
    out = Path(args.out)
    tasks = _tasks(args.task)
    stale = [r for r in results if any(_named(r, s) and not _matches(r, s, fingerprints) for s in args.upstream)]
    results = [r for r in results if r not in stale]  # named as an --upstream but of other (older) weights
    if args.upstream and tasks:
        from maebench.downstream.evaluate import evaluate
        from maebench.downstream.tasks.hear import hear_task_name

        for spec in args.upstream:
            for task in tasks:
                recorded = hear_task_name(task) if task.startswith("hear:") else task  # hear:PATH -> hear-<name>
                if any(r.task == recorded and r.probe == args.probe and _matches(r, spec, fingerprints)
                       for r in results):
                    continue
                # like `maebench eval --task all`: with several tasks, ROOT/<task> holds each dataset
                data = Path(args.data).expanduser() / task if args.data and len(tasks) > 1 else args.data
                data = None if task.startswith("hear:") else data  # hear:PATH names its own folder
                record = evaluate(task, spec, data_root=data, probe=args.probe, seeds=args.seeds,
                                  out_dir=out / "evals", quiet=args.quiet, show_table=False)
                results.append(read_result(record["results_path"]))
    elif args.upstream:
        results = [r for r in results if any(_matches(r, spec, fingerprints) for spec in args.upstream)]
    if not results and found:
        raise MaebenchError(f"none of the {found} results.json under {', '.join(args.results)} is of "
                            f"{', '.join(args.upstream)} (as it is now); add --task to evaluate it")
    if not results:
        raise MaebenchError(f"no results.json found under {', '.join(args.results)}; run `maebench eval` first")

    comparison = build_comparison(results, reference=args.reference, strict=args.strict)
    render_rich(comparison)
    written = write_outputs(comparison, out, png=not args.no_png)
    for kind in ("markdown", "csv", "png"):
        if kind in written:
            print(f"wrote {written[kind]}")
    if "png_skipped" in written:
        print(f"note: {written['png_skipped']}")
    return 0
