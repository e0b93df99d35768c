"""The s3prl legacy-runner launcher: s3prl's `run_downstream.py` with maebench upstreams registered, started as

    python -m maebench.s3prl -m train -d speech_commands -c speech_commands.yaml -k runs/my_mae_ast -n ks1_mine

Arguments are those of s3prl's `run_downstream.py`; `-u maebench_local` is implied, `-k` takes anything
`maebench.upstream.load` accepts (checkpoint or run directory, official SSAST/MAE-AST file, preset), `-g FILE` a YAML
mapping of load options (e.g. `window_secs: 6.0`). `--device cpu` is implied without CUDA. The pip package of s3prl
does not ship the downstream `config.yaml` files, so pass `-c` (from the s3prl repository) unless `-e` resumes.

Three repairs for s3prl's SUPERB downstreams: catalyst, which speech_commands imports for one sampler class and
which no current pip installs, is stood in for when absent (`maebench.catalyst_compat`); another missing module a
downstream imports (librosa for voxceleb1) is a one-line error with the install line; and voxceleb1's file-list
cache, which s3prl keeps in its own package folder and reuses for any later dataset, is keyed by the dataset root
and split file instead (`<maebench cache>/s3prl/voxceleb1/<key>/`), so a second copy of the data never gets the
first one's paths.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maebench.errors import MaebenchError

_HELP = ("-h", "--help")
# modules s3prl's downstream experts import that s3prl itself does not install (the `s3prl` extra does)
_DOWNSTREAM_NEEDS = {"voxceleb1": ("librosa",), "sv_voxceleb1": ("librosa",), "voxceleb2_ge2e": ("librosa",)}


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


def check_downstream_modules(downstream: str | None) -> None:
    """MaebenchError with the install line when a module the downstream expert imports is missing."""
    missing = [m for m in _DOWNSTREAM_NEEDS.get(downstream or "", ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise MaebenchError(f"s3prl's {downstream} downstream imports {', '.join(missing)}, which is not installed; "
                            "install the extra: pip install 'maebench[s3prl]'")


def _voxceleb1_cache(file_path: Any, meta_data: Any) -> str:
    """The folder (with trailing separator, as s3prl joins it) for one (dataset root, split file) pair's lists."""
    from maebench.paths import cache_dir

    meta = Path(str(meta_data)).expanduser().resolve()
    stat = meta.stat() if meta.is_file() else None
    text = f"{Path(str(file_path)).expanduser().resolve()}\n{meta}\n{stat and (stat.st_size, stat.st_mtime_ns)}"
    folder = cache_dir() / "s3prl" / "voxceleb1" / hashlib.sha256(text.encode()).hexdigest()[:16]
    return str(folder) + "/"


def key_voxceleb1_file_lists() -> None:
    """Point s3prl's voxceleb1 file-list cache at a folder keyed by the dataset (idempotent)."""
    from s3prl.downstream.voxceleb1 import dataset

    original = dataset.SpeakerClassifiDataset.__init__
    if getattr(original, "_maebench_keyed", False):
        return

    def keyed_init(self, mode, file_path, meta_data, max_timestep=None):
        dataset.CACHE_PATH = _voxceleb1_cache(file_path, meta_data)
        original(self, mode, file_path, meta_data, max_timestep)

    keyed_init._maebench_keyed = True  # type: ignore[attr-defined]
    dataset.SpeakerClassifiDataset.__init__ = keyed_init


def main(argv: Sequence[str] | None = None) -> int:
    """Register `maebench_local` on s3prl.hub, then hand the arguments to s3prl's legacy runner."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from maebench.catalyst_compat import install_catalyst_shim
        from maebench.upstream.s3prl_expert import register

        register()
        argv = runner_arguments(argv)
        downstream = _value(argv, "-d", "--downstream")
        install_catalyst_shim()
        check_downstream_modules(downstream)
        if downstream == "voxceleb1":
            key_voxceleb1_file_lists()
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
