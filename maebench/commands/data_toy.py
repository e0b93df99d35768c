"""Build toy look-alikes of the evaluation datasets in their official layouts (offline, deterministic, seconds).

Each task is written to DIR/<task> (pass that folder to `--data`); --overwrite only ever replaces a folder an
earlier `data toy` built (it carries the toy marker file), never anything else. Speech uses espeak-ng voices when
installed and a formant-synthesis fallback otherwise (force one with --speech espeak|procedural or
$MAEBENCH_TOY_SPEECH). --size small builds the few-item versions the test suite uses ($MAEBENCH_TOY_SIZE); the
default, full, has test sets of >= 200 items so that a 5-point difference is outside the noise.
Example: maebench data toy --task all -o toy_data
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, metavar="TASK",
                        help="as20k, as2m, esc50, ks2, ks1, sid, er, hear (HEAR 2021 tasks: a scene task in DIR/hear, "
                             "an event task in DIR/hear_events), or all (the six paper tasks)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="DIR",
                        help="folder to write into; each task goes to DIR/<task>")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the toy content (default 0)")
    parser.add_argument("--speech", choices=("auto", "espeak", "procedural"), default="auto",
                        help="speech synthesis back end (default auto: espeak-ng if installed)")
    parser.add_argument("--size", choices=("full", "small"), default=None,
                        help="full (default; >= 200 test items per task) or small (27-35, for quick checks); "
                             "default from $MAEBENCH_TOY_SIZE, else full")
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild task folders that hold an earlier toy build (any other folder is never replaced)")


def run(args: argparse.Namespace) -> int:
    from maebench.downstream.datasets import ALL_TASKS, TASKS
    from maebench.downstream.toy import check_writable_toy_target, write_toy
    from maebench.errors import MaebenchError

    names = list(TASKS) if args.task == "all" else [args.task]
    for name in names:  # every target checked before anything is built or replaced
        if name not in (*ALL_TASKS, "hear"):
            raise MaebenchError(f"unknown task {name!r}; choose one of {', '.join(ALL_TASKS)}, hear or all")
        check_writable_toy_target(args.output / name, overwrite=args.overwrite)
        if name == "hear":
            check_writable_toy_target(args.output / "hear_events", overwrite=args.overwrite)
    total = time.perf_counter()
    for name in names:
        start = time.perf_counter()
        if name == "hear":  # HEAR 2021 task folders: a scene task (DIR/hear) and an event task (DIR/hear_events)
            from maebench.downstream.hear_toy import write_hear_event_toy, write_hear_toy

            root = write_hear_toy(args.output / name, seed=args.seed, overwrite=args.overwrite)
            events = write_hear_event_toy(args.output / "hear_events", seed=args.seed, overwrite=args.overwrite)
            print(f"{'hear_events':6s} {time.perf_counter() - start:6.1f} s  {events}")
        else:
            root = write_toy(name, args.output / name, seed=args.seed, speech_backend=args.speech,
                             overwrite=args.overwrite, size=args.size)
        print(f"{name:6s} {time.perf_counter() - start:6.1f} s  {root}")
    if len(names) > 1:
        print(f"built {len(names)} toy datasets in {time.perf_counter() - total:.1f} s")
    return 0
