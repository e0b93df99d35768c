"""Report on a pretraining run: its probe curves as RUN/probes.png (score vs step per task, step 0 and chance
marked) and a table of them, from RUN/probes.jsonl (`maebench pretrain --probe-every N` or `maebench probe RUN`).

Several runs (e.g. MAE-AST and SSAST) on one figure: `maebench compare --curves RUN1 RUN2`.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a `maebench pretrain` run directory with probes.jsonl")
    parser.add_argument("--x", choices=("step", "time"), default="step",
                        help="x axis: pretraining step (default) or training seconds (from metrics.jsonl)")
    parser.add_argument("--out", metavar="FILE", help="the figure (default RUN/probes.png)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from maebench.probe_curve import PROBES_FIGURE
    from maebench.probe_figures import curve_table, draw_curves

    run_dir = Path(args.run)
    figure = draw_curves({run_dir.name: run_dir}, args.out or run_dir / PROBES_FIGURE, x=args.x)
    header, rows = curve_table(run_dir)
    table = Table(title=f"probe curves of {run_dir}")
    for name in header:
        table.add_column(name, justify="left" if name in ("task", "metric") else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    print(f"wrote {figure}")
    return 0
