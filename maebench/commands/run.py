"""Run a pipeline recipe: pretraining, evaluations (tasks x probes x upstreams), comparison and report, in order.

Every stage runs under one run directory (default runs/pipeline/<recipe>) with a manifest.json of what ran. Re-run
the same command after an interruption or a failure: finished stages are skipped, an interrupted pretraining
resumes exactly from its last checkpoint, a failed stage is tried again. --dry-run prints the plan (each stage,
done or to do, and its estimated GPU hours) and runs nothing.

Bundled pipelines: demo (what `maebench demo` runs), paper_linear and paper_finetune (the paper's four models on
the six tasks; --pretrain-data and --eval-data give the data, see each recipe's header).

Examples:
  maebench run demo --dry-run
  maebench run paper_linear --pretrain-data train.tsv --eval-data /data --run-dir runs/paper
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", metavar="RECIPE", help="pipeline recipe: a YAML path or a bundled name (demo, "
                        "paper_linear, paper_finetune)")
    add_common(parser)
    add_data(parser)
    add_launcher(parser)


def add_launcher(parser: argparse.ArgumentParser) -> None:
    """Where the stages run (the recipe's `launcher:` section gives the defaults; these flags win)."""
    group = parser.add_argument_group("launcher (see README: On a cluster)")
    group.add_argument("--launcher", choices=("local", "slurm"), help="local: this machine, all its GPUs (default); "
                       "slurm: one submitit job per stage")
    group.add_argument("--status", action="store_true", help="show each stage's status, job id, state and log")
    group.add_argument("--partition", help="SLURM partition")
    group.add_argument("--account", help="SLURM account")
    group.add_argument("--constraint", help="SLURM constraint (e.g. a GPU type)")
    group.add_argument("--time", type=int, dest="time_minutes", metavar="MINUTES", help="a pretraining job's time "
                       "limit (a job that reaches it is requeued and resumes)")
    group.add_argument("--gpus", type=int, metavar="N", help="GPUs of a pretraining job (one task each)")


def add_common(parser: argparse.ArgumentParser) -> None:
    """The options `maebench run` and `maebench demo` share."""
    parser.add_argument("--run-dir", metavar="DIR", help="run directory (default runs/pipeline/<recipe name>)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan with estimated GPU hours; run nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress display")


def add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pretrain-data", metavar="PATH", help="pretraining audio for every pretraining stage (a "
                        ".tsv manifest, .json list or folder; the paper recipes need it)")
    parser.add_argument("--eval-data", metavar="ROOT", help="ROOT/<task> holds each evaluation dataset in its "
                        "official layout (default: the recipe's, else the built-in toy tasks)")


def run(args: argparse.Namespace) -> int:
    return run_recipe(args.recipe, args)


def run_recipe(recipe: str, args: argparse.Namespace) -> int:
    """Plan, then run (or print the plan); prints the score table and the report path at the end."""
    from pathlib import Path

    from maebench.lifetime import sigterm_as_interrupt
    from maebench.pipeline import Runner, describe_plan, load_pipeline

    parsed, pretrain, path = load_pipeline(recipe, pretrain_data=getattr(args, "pretrain_data", None),
                                           eval_data=getattr(args, "eval_data", None))
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / "pipeline" / path.stem
    # the bar only when both streams are a terminal: it would carry the stage lines to stderr otherwise
    quiet = args.quiet or not sys.stderr.isatty() or not sys.stdout.isatty()
    runner = Runner(parsed, pretrain, run_dir, path, quiet=quiet)
    launcher = _launcher(parsed, path, args)
    if getattr(args, "status", False) or launcher.kind == "slurm":
        return _run_on_cluster(runner, launcher, args)
    if args.dry_run:
        print(describe_plan(runner))
        return 0
    with sigterm_as_interrupt():  # `kill PID`: stop the pretraining child too, as on Ctrl-C
        bad = runner.run()
    _print_outcome(runner, bad)
    return 1 if bad else 0


def _launcher(parsed, path, args: argparse.Namespace):
    from maebench.launchers import launcher_settings

    flags = {name: getattr(args, name, None) for name in ("partition", "account", "constraint", "time_minutes",
                                                          "gpus")}
    return launcher_settings(parsed.launcher, origin=f"recipe {path}", kind=getattr(args, "launcher", None),
                             **flags)


def _run_on_cluster(runner, launcher, args: argparse.Namespace) -> int:
    """--status (any launcher), or --launcher slurm: submit what is neither done nor live, then the status."""
    from maebench import slurm

    if args.dry_run:
        print(slurm.describe_jobs(runner, launcher))
        return 0
    bad = 0
    if not args.status:
        spec = slurm.RunSpec(str(runner.recipe_path.resolve()), str(runner.run_dir.resolve()),
                             getattr(args, "pretrain_data", None), getattr(args, "eval_data", None))
        bad = slurm.submit_pipeline(runner, spec, launcher)
    else:
        slurm.absorb_outcomes(runner, {})
    print(f"stages of {runner.recipe_path.stem} in {runner.run_dir}:")
    print("\n".join(slurm.status_lines(runner)))
    return 1 if bad else 0


def _print_outcome(runner, bad: int) -> None:
    import json

    from rich.console import Console

    from maebench.report import score_table
    from maebench.tables import new_table, print_table

    console = Console()
    summary_path = runner.run_dir / "report" / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        header, rows = score_table(summary)
        table = new_table(f"maebench run {runner.recipe_path.stem}", header, names=2)
        for row in rows:
            table.add_row(*row)
        print_table(table, console)
        ratio = summary.get("ssast_over_mae_ast_step_time")
        speed = f"; SSAST / MAE-AST step time {ratio:.2f}x" if ratio else ""
        console.print(f"wins of {summary.get('wins_of')} over its random init (logreg): {summary['wins']} of "
                      f"{summary['tasks_compared']} tasks{speed}", soft_wrap=True)
        console.print(f"report: {runner.run_dir / 'report' / 'report.md'}", soft_wrap=True)
    if bad:
        failed = [k for k, e in runner.manifest.stages.items() if e.get("status") in ("failed", "blocked")]
        console.print(f"{bad} stage(s) failed or blocked: {', '.join(failed)} (errors in "
                      f"{runner.manifest.path}); re-run the same command to retry them", soft_wrap=True)
