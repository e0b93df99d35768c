"""Show pretraining working end to end (about 10 minutes on 2 idle CPU cores, no network): `maebench run demo`.

Pretrains a small MAE-AST and a small SSAST (same encoder size, same wall-clock budget) on the built-in corpus,
evaluates both and both at their random init on the six toy tasks with logreg and linear probes, and writes a
report (report.md, figures, summary.json) into the run directory (default runs/pipeline/demo). Interrupted?
Run it again: finished stages are skipped and the pretraining resumes exactly.
"""

from __future__ import annotations

import argparse

from maebench.commands.run import add_common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)


def run(args: argparse.Namespace) -> int:
    from maebench.commands.run import run_recipe

    return run_recipe("demo", args)
