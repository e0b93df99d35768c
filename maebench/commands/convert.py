"""Convert a checkpoint (official SSAST .pth / MAE-AST fairseq .pt, or anything maebench loads) to the native format.

Writes DST/model.safetensors + DST/config.json with provenance (source path and sha256), so later loads need no
pickle at all.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="official .pth/.pt file, checkpoint directory or preset")
    parser.add_argument("destination", metavar="DST", help="directory to write (must not exist unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it already holds a checkpoint")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override stored with the model, e.g. --set window_secs=6.0 (repeatable)")


def _overrides(pairs: list[str]) -> dict:
    import yaml

    from maebench.errors import MaebenchError

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise MaebenchError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set window_secs=6.0")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from maebench.errors import MaebenchError
    from maebench.paths import usable_dir
    from maebench.upstream import load, save_upstream
    from maebench.upstream.official import convert, detect_format, read_checkpoint, sha256_file

    source = Path(args.source).expanduser()
    usable_dir(args.destination, "DST")
    if Path(args.destination).exists() and not args.overwrite:
        raise MaebenchError(f"{args.destination} already exists; pass --overwrite to replace it or choose another DST")
    overrides = _overrides(args.set)
    provenance = {"source": str(source.resolve()) if source.exists() else str(args.source)}
    if source.is_file():
        checkpoint = read_checkpoint(source)
        provenance["source_format"] = detect_format(checkpoint, source)
        provenance["source_sha256"] = sha256_file(source)
        model = convert(checkpoint, source, **overrides)
    else:
        model = load(str(args.source), **overrides)
    target = save_upstream(model, args.destination, provenance=provenance)
    print(f"wrote {target} ({model.family}, {sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0
