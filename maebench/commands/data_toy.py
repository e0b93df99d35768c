"""Build toy look-alikes of the evaluation datasets in their official layouts (offline, deterministic, seconds).

Each task is written to DIR/<task> (pass that folder to `--data`). Speech uses espeak-ng voices when installed and a
formant-synthesis fallback otherwise (force one with --speech espeak|procedural or $MAEBENCH_TOY_SPEECH).
Example: maebench data toy --task all -o toy_data
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, metavar="TASK",
                        help="as20k, as2m, esc50, ks2, ks1, sid, er, or all (the six paper tasks)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="DIR",
                        help="folder to write into; each task goes to DIR/<task>")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the toy content (default 0)")
    parser.add_argument("--speech", choices=("auto", "espeak", "procedural"), default="auto",
                        help="speech synthesis back end (default auto: espeak-ng if installed)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing non-empty task folders")


def run(args: argparse.Namespace) -> int:
    from maebench.downstream.datasets import ALL_TASKS, TASKS, build_toy
    from maebench.errors import MaebenchError

    names = list(TASKS) if args.task == "all" else [args.task]
    for name in names:
        if name not in ALL_TASKS:
            raise MaebenchError(f"unknown task {name!r}; choose one of {', '.join(ALL_TASKS)} or all")
        target = args.output / name
        if target.exists() and any(target.iterdir()) and not args.overwrite:
            raise MaebenchError(f"{target} already exists and is not empty; pass --overwrite or choose another -o")
    total = time.perf_counter()
    for name in names:
        target = args.output / name
        if target.exists() and args.overwrite:
            import shutil

            shutil.rmtree(target)
        start = time.perf_counter()
        root = build_toy(name, target, seed=args.seed, speech_backend=args.speech)
        print(f"{name:6s} {time.perf_counter() - start:6.1f} s  {root}")
    if len(names) > 1:
        print(f"built {len(names)} toy datasets in {time.perf_counter() - total:.1f} s")
    return 0
