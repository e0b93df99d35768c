"""Probe curve of a pretraining run after the fact, from the checkpoints it kept (and its step 0, rebuilt).

Writes the same RUN/probes.jsonl as `maebench pretrain --probe-every N` (points already there are kept, not redone;
snapshots a stopped run left in RUN/probe_snapshots/ are probed first), with the same fixed per-task subsets
(RUN/probe_subsets/). Then `maebench report RUN` draws RUN/probes.png.

Examples:
  maebench probe runs/pretrain/mae_ast_patch-tiny --tasks ks2,esc50
  maebench probe RUN --tasks ks2,sid --data ~/data --device cuda
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a `maebench pretrain` run directory")
    parser.add_argument("--tasks", metavar="T1,T2",
                        help="tasks as `maebench eval --task` names them (default: the run's train.probe_tasks)")
    parser.add_argument("--data", metavar="ROOT", help="dataset root, ROOT/<task> holding each (default: the run's "
                        "train.probe_data, else the toy look-alikes)")
    parser.add_argument("--examples", type=int, metavar="N",
                        help="items of each train and test subset (default: the run's train.probe_examples)")
    parser.add_argument("--device", help="torch device of the probes (default: the run's train.probe_device, cpu)")
    parser.add_argument("--quiet", action="store_true", help="no line per point")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from maebench.errors import MaebenchError
    from maebench.probe_curve import PROBES_FILE, CurveSpec
    from maebench.probe_offline import probe_offline, run_config

    run_dir = Path(args.run)
    spec = CurveSpec.from_config(run_config(run_dir))
    changes = {"tasks": tuple(t for t in args.tasks.split(",") if t) if args.tasks else None,
               "data_root": args.data, "examples": args.examples, "device": args.device}
    spec = replace(spec, **{k: v for k, v in changes.items() if v is not None})
    if not spec.tasks:
        raise MaebenchError(f"no tasks to probe: pass --tasks (e.g. ks2,esc50); {run_dir} named none")
    points = probe_offline(run_dir, spec, quiet=args.quiet)
    print(f"{len(points)} new point(s) -> {run_dir / PROBES_FILE}; `maebench report {run_dir}` draws the curves")
    return 0
