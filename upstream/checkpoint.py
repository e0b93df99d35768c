"""The native upstream checkpoint: a directory with `model.safetensors` (weights) and `config.json` (how to rebuild).

config.json = {"format": "maebench-upstream", "format_version": 1, "family": ..., "config": {...},
"frontend": {...FbankConfig...} | null, "provenance": {"maebench_version", "created", ...}}.
Nothing is unpickled when reading (safetensors + JSON only), and a directory is written under a temporary name
and renamed into place, so readers never see a half-written checkpoint.

This module is also the one home of the training-run layout (the trainer writes it, the registry loads from it):
`RUN/config.yaml`, `RUN/metrics.jsonl`, `RUN/.lock`, `RUN/checkpoints/step_XXXXXXXX/` (the native files above +
`trainer.pt`), `RUN/init/` (the native files of the exact weights step 0 started from: the run's random-init
baseline, never pruned) and `RUN/reconstruction.png` (the figure drawn when training ends).
Names under `RUN/checkpoints/` starting with `.staging-` are writes or deletions in progress, never checkpoints.
`latest_checkpoint(run_dir)` is the one reader of that layout.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import maebench
from maebench.errors import MaebenchError

FORMAT = "maebench-upstream"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def is_native_checkpoint(path: str | Path) -> bool:
    """True for a directory holding a config.json (whether it is valid is checked when it is read)."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def fsync_path(path: Path) -> None:
    """Flush a file or directory entry to disk (a rename is only durable once its directory is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replaceable(path: Path) -> bool:
    """An empty directory, or one holding nothing but the files of a native checkpoint."""
    return path.is_dir() and {p.name for p in path.iterdir()} <= {CONFIG_FILE, WEIGHTS_FILE}


def _unshared(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous tensors with no two sharing storage (safetensors refuses shared or strided tensors)."""
    out: dict[str, Tensor] = {}
    seen: set[tuple[int, str]] = set()
    for name, tensor in state_dict.items():
        t = tensor.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), str(t.device))
        if key in seen and t.numel():
            t = t.clone()
        seen.add(key)
        out[name] = t
    return out


def write_checkpoint(
    directory: str | Path,
    *,
    family: str,
    config: dict[str, Any],
    state_dict: Mapping[str, Tensor],
    frontend: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write a native checkpoint directory atomically; an existing checkpoint at `directory` is replaced.

    Anything else at `directory` (a file, a folder with other contents) is refused rather than deleted.
    """
    target = Path(directory).absolute()
    if target.exists() and not _replaceable(target):
        raise MaebenchError(
            f"{target} exists and is not a maebench checkpoint directory; choose another directory"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "family": family,
        "config": config,
        "frontend": frontend,
        "provenance": {
            "maebench_version": maebench.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **(provenance or {}),
        },
    }
    try:
        config_text = json.dumps(meta, indent=2, sort_keys=False) + "\n"
    except (TypeError, ValueError) as err:
        raise MaebenchError(f"checkpoint config for {target} is not JSON-serialisable ({err})") from None

    tmp = _new_dir(target, "tmp")
    try:
        _save_weights(state_dict, tmp / WEIGHTS_FILE)
        os.chmod(tmp / WEIGHTS_FILE, 0o666 & ~_umask())  # safetensors writes 0600; config.json follows the umask
        (tmp / CONFIG_FILE).write_text(config_text, encoding="utf-8")
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            fsync_path(tmp / name)
        fsync_path(tmp)
        if target.exists():
            # two renames: a crash between them leaves the old checkpoint complete under `.old-*`, never half of one
            old = _new_dir(target, "old")
            old.rmdir()
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
        fsync_path(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _save_weights(state_dict: Mapping[str, Tensor], path: Path) -> None:
    """safetensors' save_file, its I/O failures (a full disk) raised as the OSError they are."""
    try:
        save_file(_unshared(state_dict), str(path), metadata={"format": "pt"})
    except Exception as err:
        code = re.search(r"\(os error (\d+)\)", str(err))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None


def _umask() -> int:
    """The process umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_dir(target: Path, tag: str) -> Path:
    """A new empty directory `.NAME.TAG-XXXXXXXX` beside `target`, made with the user's umask (tempfile.mkdtemp
    makes private 0700 ones)."""
    for _ in range(100):
        path = target.with_name(f".{target.name}.{tag}-{secrets.token_hex(4)}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary name beside {target}")


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """Parse and validate config.json of a native checkpoint directory."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise MaebenchError(f"{path}: no such file; is {directory} a maebench checkpoint directory?")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MaebenchError(f"{path}: not valid JSON ({err}); the checkpoint is corrupt, re-create it") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MaebenchError(
            f'{path}: not a maebench upstream checkpoint (no "format": "{FORMAT}"); '
            "for official SSAST/MAE-AST files pass the .pth/.pt file itself"
        )
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise MaebenchError(
            f"{path}: format_version {version!r} is not supported (this maebench reads <= {FORMAT_VERSION}); "
            "upgrade maebench"
        )
    if not isinstance(meta.get("family"), str) or not isinstance(meta.get("config"), dict):
        raise MaebenchError(f'{path}: "family" (string) and "config" (object) are required')
    return meta


def read_weights(directory: str | Path) -> dict[str, Tensor]:
    """Tensors of model.safetensors (safetensors never unpickles)."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise MaebenchError(f"{path}: no such file; the checkpoint is incomplete, re-create it")
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own error types (and OSError) for damaged files
        reason = " ".join(str(err).split()) or type(err).__name__
        raise MaebenchError(f"{path}: not a readable safetensors file ({reason}); re-create the checkpoint") from None


def load_weights_into(model: nn.Module, tensors: Mapping[str, Tensor], source: str | Path) -> None:
    """Strict load: every model key present with its exact shape, and no extra keys; errors name file and key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise MaebenchError(f"{source}: missing weight {missing[0]!r}{more}; the file does not match its config")
    unexpected = [k for k in tensors if k not in expected]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise MaebenchError(f"{source}: unexpected weight {unexpected[0]!r}{more}; the file does not match its config")
    for key, ref in expected.items():
        got = tensors[key]
        if tuple(got.shape) != tuple(ref.shape):
            raise MaebenchError(
                f"{source}: weight {key!r} has shape {tuple(got.shape)}, the model expects {tuple(ref.shape)}"
            )
        if got.dtype.is_floating_point != ref.dtype.is_floating_point:
            raise MaebenchError(f"{source}: weight {key!r} has dtype {got.dtype}, the model expects {ref.dtype}")
    check_finite(tensors, source)
    with torch.no_grad():
        model.load_state_dict(dict(tensors), strict=True)


def check_finite(tensors: Mapping[str, Tensor], source: str | Path) -> None:
    """NaN or infinite weights would give NaN features, and probes would score them at chance without a word."""
    for key, tensor in tensors.items():
        if tensor.dtype.is_floating_point and not bool(torch.isfinite(tensor).all()):
            raise MaebenchError(f"{source}: weight {key!r} holds NaN or infinite values (a corrupt file, or a "
                                "training run that diverged): use another checkpoint")


# ---------------------------------------------------------------------------------------------------- training runs

RUN_CONFIG_FILE = "config.yaml"  # RUN/config.yaml: the run's fully resolved pretraining config
METRICS_FILE = "metrics.jsonl"  # RUN/metrics.jsonl: one record per logging window
RUN_CHECKPOINTS = "checkpoints"  # RUN/checkpoints/step_XXXXXXXX/
TRAINER_FILE = "trainer.pt"  # what a resumed run needs beyond the weights (written by maebench.run_checkpoint)
STAGING_PREFIX = ".staging-"  # RUN/checkpoints/.staging-*: a checkpoint being written or deleted (garbage if left)
RUN_INIT = "init"  # RUN/init/: the run's random init (a native checkpoint), the baseline of its evaluations
RUN_RECONSTRUCTION = "reconstruction.png"  # RUN/reconstruction.png: init vs last step (maebench.reconstruction)
RUN_LOCK_FILE = ".lock"  # RUN/.lock: flock-ed by the live `maebench pretrain` (or `maebench run`) there (its pid)
_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def step_dir(run_dir: str | Path, step: int) -> Path:
    """Where a run's checkpoint of optimizer step `step` lives."""
    return Path(run_dir) / RUN_CHECKPOINTS / step_dir_name(step)


def step_of(path: str | Path) -> int | None:
    """The step a `step_XXXXXXXX` directory name stands for (None for any other name)."""
    match = _STEP_DIR.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_run_dir(path: str | Path) -> bool:
    """A training run directory (it has a checkpoints/ folder, complete checkpoints or not)."""
    return (Path(path) / RUN_CHECKPOINTS).is_dir()


def list_checkpoints(run_dir: str | Path, *, resumable: bool = False) -> list[Path]:
    """A run's checkpoints, oldest first: the `step_*` directories holding config.json (an upstream: its validity
    is checked when it is loaded), or with `resumable` all of config.json, model.safetensors and trainer.pt."""
    root = Path(run_dir) / RUN_CHECKPOINTS
    if not root.is_dir():
        return []
    needed = (CONFIG_FILE, WEIGHTS_FILE, TRAINER_FILE) if resumable else (CONFIG_FILE,)
    found = []
    for path in root.iterdir():
        step = step_of(path)
        if step is not None and all((path / name).is_file() for name in needed):
            found.append((step, path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: str | Path, *, resumable: bool = False) -> Path | None:
    """The newest checkpoint of a training run (see list_checkpoints), or None if it has none."""
    checkpoints = list_checkpoints(run_dir, resumable=resumable)
    return checkpoints[-1] if checkpoints else None


def run_of(path: str | Path) -> Path | None:
    """The training run a path names: the run directory itself, or the run of one of its step checkpoints."""
    path = Path(path)
    if is_run_dir(path):
        return path
    if step_of(path) is not None and path.parent.name == RUN_CHECKPOINTS:
        return path.parent.parent
    return None


def init_checkpoint(path: str | Path) -> Path | None:
    """The saved random init (`RUN/init/`) of the training run `path` names (see run_of), or None."""
    run = run_of(path)
    if run is None or not is_native_checkpoint(run / RUN_INIT):
        return None
    return run / RUN_INIT
