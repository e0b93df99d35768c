"""The `maebench` command line: a thin dispatcher over one module per (sub)command.

Each leaf module in `maebench.commands` defines a module docstring (its help), `add_arguments(parser)` and
`run(args) -> int | None`. Leaf modules import heavy libraries (torch, sklearn) inside `run`, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence

from maebench.errors import MaebenchError

# command name -> leaf module, or a group of sub-commands
COMMANDS: dict[str, str | dict[str, str]] = {
    "pretrain": "maebench.commands.pretrain",
    "eval": "maebench.commands.eval",
    "compare": "maebench.commands.compare",
    "convert": "maebench.commands.convert",
    "run": "maebench.commands.run",
    "demo": "maebench.commands.demo",
    "probe": "maebench.commands.probe",
    "report": "maebench.commands.report",
    "data": {
        "manifest": "maebench.commands.data_manifest",
        "toy": "maebench.commands.data_toy",
        "check": "maebench.commands.data_check",
        "get": "maebench.commands.data_get",
    },
    "bench": {
        "fbank": "maebench.commands.bench_fbank",
        "pretrain": "maebench.commands.bench_pretrain",
        "cache": "maebench.commands.bench_cache",
        "data": "maebench.commands.bench_data",
        "compile": "maebench.commands.bench_compile",
        "probe": "maebench.commands.bench_probe",
    },
}


def _add_leaf(subparsers: argparse._SubParsersAction, name: str, module_name: str) -> None:
    if importlib.util.find_spec(module_name) is None:
        return
    module = importlib.import_module(module_name)
    doc = (module.__doc__ or "").strip()
    parser = subparsers.add_parser(
        name, help=doc.splitlines()[0] if doc else None, description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maebench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, target in COMMANDS.items():
        if isinstance(target, str):
            _add_leaf(sub, name, target)
            continue
        group = sub.add_parser(name, help=f"{name} commands")
        group_sub = group.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")
        for leaf, module_name in target.items():
            _add_leaf(group_sub, leaf, module_name)
        group.set_defaults(_run=None, _group=group)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "_run", None)
    if run is None:
        (getattr(args, "_group", None) or parser).print_help()
        return 2
    try:
        return int(run(args) or 0)
    except MaebenchError as err:
        print(f"maebench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("maebench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout piped into a reader that stopped early (`maebench run X --dry-run | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        return 0
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {err.filename}" if err.filename else ""
        print(f"maebench: error: the disk is full{where}: free some space (or point --out / MAEBENCH_CACHE at another "
              "disk) and run the same command again; files written before are intact", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
