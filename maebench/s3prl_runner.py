"""The s3prl legacy-runner launcher: s3prl's `run_downstream.py` with maebench upstreams registered, started as

    python -m maebench.s3prl -m train -d speech_commands -c speech_commands.yaml -k runs/my_mae_ast -n ks1_mine

Arguments are those of s3prl's `run_downstream.py`; `-u maebench_local` is implied, `-k` takes anything
`maebench.upstream.load` accepts (checkpoint or run directory, official SSAST/MAE-AST file, preset), `-g FILE` a YAML
mapping of load options (e.g. `window_secs: 6.0`). `--device cpu` is implied without CUDA. The pip package of s3prl
does not ship the downstream `config.yaml` files, so pass `-c` (from the s3prl repository) unless `-e` resumes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from maebench.errors import MaebenchError

_HELP = ("-h", "--help")


def _value(argv: list[str], *flags: str) -> str | None:
    for i, arg in enumerate(argv):
        for flag in flags:
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if flag.startswith("--") and arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return None


def runner_arguments(argv: Sequence[str]) -> list[str]:
    """`argv` with maebench's defaults added (-u maebench_local, --device cpu without CUDA); checks -c."""
    import torch

    from maebench.upstream.s3prl_expert import UPSTREAM_NAME

    argv = list(argv)
    if any(a in _HELP for a in argv):
        return argv
    if _value(argv, "-u", "--upstream") is None:
        argv += ["-u", UPSTREAM_NAME]
    if _value(argv, "--device") is None and not torch.cuda.is_available():
        argv += ["--device", "cpu"]
    if _value(argv, "-u", "--upstream") == UPSTREAM_NAME and _value(argv, "-k", "--upstream_ckpt") is None \
            and _value(argv, "-e", "--past_exp") is None:
        raise MaebenchError("pass the upstream with -k PATH_OR_PRESET (a checkpoint, run directory, official file "
                            "or preset such as mae_ast_patch:base)")
    downstream, config = _value(argv, "-d", "--downstream"), _value(argv, "-c", "--config")
    resuming = _value(argv, "-e", "--past_exp") is not None or "-a" in argv or "--auto_resume" in argv
    if config is None and downstream and not resuming and not Path(f"downstream/{downstream}/config.yaml").is_file():
        raise MaebenchError(
            f"no config for downstream {downstream!r}: s3prl's pip package does not ship "
            f"downstream/{downstream}/config.yaml; pass -c CONFIG (copy it from the s3prl repository)"
        )
    if config is not None and not Path(config).is_file():
        raise MaebenchError(f"s3prl config {config} not found; pass an existing YAML file with -c")
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """Register `maebench_local` on s3prl.hub, then hand the arguments to s3prl's legacy runner."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from maebench.upstream.s3prl_expert import register

        register()
        argv = runner_arguments(argv)
        from s3prl import run_downstream
    except MaebenchError as err:
        print(f"maebench.s3prl: error: {err}", file=sys.stderr)
        return 2
    saved = sys.argv
    sys.argv = ["run_downstream.py", *argv]
    try:
        run_downstream.main()
    except MaebenchError as err:
        print(f"maebench.s3prl: error: {err}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved
    return 0
