"""Validate an evaluation dataset layout and print example counts per split and class.

A missing or malformed file (list, csv, json, split file, label file or any listed audio file) is a one-line error
naming it; --deep also decodes every audio file and lists the unreadable, empty, NaN/Inf or absurdly loud ones
(evaluation stops at such a file). Without --data the toy dataset is checked (built on first use).
Example: maebench data check --task ks2 --data speech_commands_v0.02
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True,
                        help="as20k, as2m, esc50, ks2, ks1, sid, er, or hear:PATH (a HEAR 2021 task folder)")
    parser.add_argument("--data", type=Path, default=None, metavar="ROOT", help="dataset root (default: toy data)")
    parser.add_argument("--fold", default=None, help="fold whose per-class counts to show (default: the first)")
    parser.add_argument("--deep", action="store_true",
                        help="also decode every audio file: list unreadable, empty, NaN/Inf or absurdly loud ones")
    parser.add_argument("--max-classes", type=int, default=60, help="class rows to show at most (default 60)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from maebench.downstream.datasets import check_layout
    from maebench.errors import MaebenchError
    from maebench.tables import new_table, print_table

    report = check_layout(args.task, args.data, deep=args.deep)
    folds = report["folds"]
    fold = args.fold or next(iter(folds))
    if fold not in folds:
        raise MaebenchError(f"unknown fold {fold!r} for {args.task}; choose one of {', '.join(folds)}")
    console = Console()
    kind = "multi-label, " if report["multilabel"] else ""
    console.print(f"[bold]{args.task}[/bold] at {report['root']}{' (toy)' if report['toy'] else ''}: "
                  f"{len(report['classes'])} classes, {kind}{report['metric']}, {report['files']} audio files, "
                  "layout OK", soft_wrap=True)
    splits = new_table("examples per fold and split", ("fold", "train", "dev", "test"))
    for name, counts in folds.items():
        splits.add_row(name, *(str(counts[s]["total"]) for s in ("train", "dev", "test")))
    print_table(splits, console)
    label = "label occurrences" if report["multilabel"] else "examples"
    classes = new_table(f"{label} per class ({fold})", ("class", "train", "dev", "test"))
    for name in report["classes"][: args.max_classes]:
        classes.add_row(name, *(str(folds[fold][s]["per_class"][name]) for s in ("train", "dev", "test")))
    print_table(classes, console)
    hidden = len(report["classes"]) - args.max_classes
    if hidden > 0:
        console.print(f"... {hidden} more classes (--max-classes to show them)")
    return 0
