"""Download a task's real dataset (checksummed, resumable), unpack it safely and check its layout.

Openly downloadable: esc50, ks2, ks1 (Speech Commands v0.01 + SUPERB's test set), librispeech-<subset> (a
pretraining corpus: dev-clean, test-clean, train-clean-100, ...) and HEAR 2021 tasks from Zenodo (hear:esc50,
hear:speech_commands, hear:beijing_opera, ...: `maebench data get hear:x` lists them). Restricted (sid =
VoxCeleb1, er = IEMOCAP, as20k = AudioSet) and any other HEAR tarball: the command says what to fetch where;
pass your archive with --from FILE. An interrupted download resumes on the next run; nothing already under ROOT
is overwritten.
Examples:
  maebench data get esc50 -o ~/data
  maebench data get ks2 -o ~/data --mirror http://cache.cluster:8080
  maebench data get hear:beijing_opera -o ~/data
  maebench data get er -o ~/data --from IEMOCAP_full_release.tar.gz
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", metavar="TASK",
                        help="esc50, ks2, ks1, librispeech-SUBSET, hear:NAME, sid, er or as20k")
    parser.add_argument("-o", "--root", type=Path, default=Path("."), metavar="ROOT",
                        help="folder the dataset goes under (default: the current folder)")
    parser.add_argument("--from", dest="from_file", type=Path, metavar="FILE",
                        help="unpack and check this archive instead of downloading (restricted data, HEAR tarballs)")
    parser.add_argument("--mirror", metavar="URL", default=os.environ.get("MAEBENCH_MIRROR"),
                        help="replace the scheme and host of every URL (default: $MAEBENCH_MIRROR)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be fetched, sizes and destinations")
    parser.add_argument("--keep-archives", action="store_true", help="keep the downloaded archives after unpacking")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _print_plan(source, root: Path, mirror: str | None) -> None:
    from maebench.dataset_get import describe, plan
    from maebench.tables import new_table, print_table

    table = new_table(f"data get {source.name}: {source.title} ({source.licence})",
                      ("archive", "url", "size", "checksum", "destination"))
    for step in plan(source, root.expanduser().absolute(), mirror):
        a = step.archive
        checksum = (f"sha256 {a.sha256[:12]}..." if a.sha256 else f"md5 {a.md5}" if a.md5 else
                    "md5 and size: Zenodo's listing" if a.listing else
                    f"layout: {a.expect[1]} x {a.expect[0]}" if a.expect else "layout (data check)")
        table.add_row(a.filename, step.url, describe(a.size), checksum, str(step.dest))
    print_table(table)
    task = f"hear:{root.expanduser().absolute() / source.data}" if source.check_task == "hear:" else source.check_task
    print(f"then: maebench data check --task {task or '(none: corpus)'}; layout {source.layout}")


def run(args: argparse.Namespace) -> int:
    from maebench.data_sources import find_source
    from maebench.dataset_get import get_dataset, next_command

    source = find_source(args.task)
    if source.restricted and args.from_file is None:
        why = "is not in maebench's HEAR table" if args.task.startswith("hear:") else "is not openly downloadable"
        print(f"{source.title} {why}.\n  get it: {source.request}\n"
              f"  data check --task {'hear:FOLDER' if args.task.startswith('hear:') else source.check_task} will "
              f"expect: {source.layout}")
        return 2
    if args.dry_run:
        _print_plan(source, args.root, args.mirror)
        return 0
    data, task = get_dataset(source, args.root, mirror=args.mirror, from_file=args.from_file,
                             keep_archives=args.keep_archives, quiet=args.quiet)
    print(f"{source.title}: {data} (layout OK{', data check --task ' + task + ' passes' if task else ''})")
    print(f"next: {next_command(source, data, task)}")
    return 0
