"""Evaluate an upstream on the paper's tasks with a linear, fine-tuned or logistic-regression probe.

Without --upstream the latest `maebench pretrain` run is used; without --data a small toy version of the task (same
layout as the real dataset) is built on first use. `--task all` runs the six tasks (with --data, ROOT/<task> holds
each dataset; every dataset is checked before the first evaluation starts) and prints one table. Each evaluation
writes results.json into a new run directory under --out. Every score is shown with the task's chance level and,
for a `maebench pretrain` run, with the score of that run's own random init (--baseline).

Examples:
  maebench eval --task ks2 --upstream mae_ast_patch:tiny
  maebench eval --task esc50 --upstream runs/pretrain/demo --data ~/data/ESC-50-master --probe logreg
  maebench eval --task all --probe linear --set max_steps=200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TASK_CHOICES = ("as20k", "esc50", "ks2", "ks1", "sid", "er", "as2m", "all")


def task_choice(text: str) -> str:
    """A --task value: one of TASK_CHOICES, or hear:PATH (a HEAR 2021 task folder)."""
    if text in TASK_CHOICES or text.startswith("hear:"):
        return text
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(TASK_CHOICES)}, hear:PATH)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, type=task_choice, metavar="TASK",
                        help="as20k | esc50 | ks2 | ks1 | sid | er | as2m | all (the paper's six) | hear:PATH (a "
                             "HEAR 2021 task folder: scene tasks take linear, logreg or hear; event tasks hear)")
    parser.add_argument("--upstream", metavar="PATH|PRESET",
                        help="checkpoint dir, training run dir, official checkpoint file, preset such as "
                             "mae_ast_patch:tiny, s3prl:NAME[:PATH] or hear:MODULE[:WEIGHTS] (default: the latest "
                             "`maebench pretrain` run)")
    parser.add_argument("--data", metavar="ROOT", help="dataset root in its official layout (default: toy data)")
    parser.add_argument("--probe", default="linear", choices=("linear", "finetune", "logreg", "hear"),
                        help="hear: hear-eval-kit's MLP grid search and early stopping (HEAR leaderboard numbers)")
    parser.add_argument("--seeds", type=int, default=1, metavar="N", help="seeds 0..N-1 per fold (default 1)")
    parser.add_argument("--out", metavar="DIR", default="runs/eval",
                        help="parent of the new run directory (default runs/eval)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a probe setting, e.g. --set max_steps=500 --set lr=1e-3 (repeatable)")
    parser.add_argument("--baseline", default="auto", choices=("auto", "init", "none"),
                        help="also evaluate the pretraining run's random init (its RUN/init/, the exact step-0 "
                             "weights) the same way and show the difference with its noise: init = always (an error "
                             "if the upstream has none), auto (default) = with the frozen probes when the upstream "
                             "is a run that saved its init, none = never. The task's chance level is always shown")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or tables; one line per result")


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`--set KEY=VALUE` items as {KEY: VALUE}; the probe's settings class types and checks them."""
    from maebench.settings import split_assignment

    return dict(split_assignment(item, origin="--set", example="max_steps=500") for item in items)


def task_data(args: argparse.Namespace, task: str) -> Path | None:
    """The dataset root of `task`: --data itself, ROOT/<task> with --task all, or None (toy data)."""
    if args.data is None:
        return None
    return Path(args.data).expanduser() / task if args.task == "all" else Path(args.data).expanduser()


def check_all(roots: dict[str, Path | None]) -> None:
    """Check every task's layout and files before running any (an hour of evaluations should not end at a missing
    sixth dataset); every problem is named in one MaebenchError."""
    from maebench.downstream.datasets import check_layout
    from maebench.errors import MaebenchError

    problems = []
    for task, root in roots.items():
        try:
            check_layout(task, root)
        except MaebenchError as err:
            problems.append(f"{task}: {err}")
    if problems:
        raise MaebenchError(f"--task all: nothing was run, the data of {len(problems)} task(s) failed its check: "
                            + " | ".join(problems))


def run(args: argparse.Namespace) -> int:
    from maebench.downstream.baseline import describe
    from maebench.downstream.evaluate import evaluate, print_results_table
    from maebench.downstream.tasks import TASKS
    from maebench.errors import MaebenchError
    from maebench.paths import latest_pretrain_run

    overrides = parse_overrides(args.overrides)
    if args.task.startswith("hear:") and args.probe == "finetune":
        raise MaebenchError("HEAR tasks take the frozen probes (--probe linear, logreg or hear), not finetune")
    if args.device:  # a missing GPU is a one-line error before any work, as in `maebench pretrain`
        from maebench.distributed import check_device

        check_device(args.device)
    upstream = args.upstream
    if upstream is None:
        latest = latest_pretrain_run()
        if latest is None:
            raise MaebenchError("no --upstream given and no `maebench pretrain` run found; pass --upstream PATH or "
                                "a preset such as mae_ast_patch:tiny, or run `maebench pretrain` first")
        upstream = str(latest)
    tasks = list(TASKS) if args.task == "all" else [args.task]
    roots = {task: task_data(args, task) for task in tasks}
    if len(tasks) > 1:
        check_all(roots)
    progress_quiet = args.quiet or not sys.stderr.isatty()
    records = []
    for task, data in roots.items():
        record = evaluate(task, upstream, data_root=data, probe=args.probe, seeds=args.seeds, out_dir=args.out,
                          overrides=overrides, quiet=progress_quiet, device=args.device, show_table=False,
                          baseline=args.baseline)
        records.append(record)
        if args.quiet:
            print(f"{describe(record)} -> {record['results_path']}")
    if not args.quiet:
        print_results_table(records)
    return 0
