"""Write a fairseq/wav2vec .tsv manifest of every audio file under a folder (for `maebench pretrain --data`).

The first line is the folder's absolute path, then one `relpath<TAB>num_samples` line per readable file, sorted.
Unreadable or empty files are left out and counted. Example: maebench data manifest LibriSpeech/ -o train.tsv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", type=Path, help="folder searched recursively for audio files")
    parser.add_argument("-o", "--output", type=Path, required=True, help="manifest to write, e.g. train.tsv")
    parser.add_argument(
        "--ext", nargs="+", default=[".wav", ".flac", ".ogg"], metavar="EXT",
        help="file extensions to include (default: .wav .flac .ogg)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from maebench.errors import MaebenchError
    from maebench.manifest import write_manifest
    from maebench.paths import usable_file

    usable_file(args.output, "-o")
    if args.output.exists() and not args.overwrite:
        raise MaebenchError(f"{args.output} already exists; pass --overwrite to replace it or choose another -o")
    extensions = tuple(ext if ext.startswith(".") else f".{ext}" for ext in args.ext)
    show_progress = not args.quiet and sys.stderr.isatty()
    count = write_manifest(args.directory, args.output, extensions=extensions, progress=show_progress)
    print(f"wrote {count} files to {args.output}")
    return 0
