"""Training-run checkpoints: `<run>/checkpoints/step_XXXXXXXX/` = the native upstream files + `trainer.pt`.

The layout itself (file and directory names, which step directories count) lives in `maebench.upstream.checkpoint`,
its one home; this module writes and reads what a resumed run needs.

`trainer.pt` holds everything else a resumed run needs to continue exactly where it stopped (optimizer, scheduler,
step, data position, every RNG stream, the config hash) as tensors, plain containers, numbers and strings only, so
it loads with `torch.load(weights_only=True)`: a checkpoint never runs code.

A checkpoint is staged in a private directory and renamed into place, so a crash (even SIGKILL mid-write) leaves
either the complete new checkpoint or none; stale staging directories are removed on the next start. The run
directory rules (resume, refuse, overwrite) live here too because they are decisions about checkpoints.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from maebench.atomic import sweep_stale
from maebench.errors import MaebenchError
from maebench.upstream import checkpoint as layout
from maebench.upstream.checkpoint import (
    METRICS_FILE,
    PROBE_SNAPSHOTS_DIR,
    PROBE_SUBSETS_DIR,
    PROBES_FIGURE,
    PROBES_FILE,
    RUN_CHECKPOINTS,
    RUN_CONFIG_FILE,
    RUN_LOCK_FILE,
    STAGING_PREFIX,
    TRAINER_FILE,
    fsync_path,
)

FORMAT = "maebench-trainer"
TENSORBOARD_DIR = "tensorboard"  # RUN/tensorboard/: TensorBoard events of the metrics (train.tensorboard)
SKIP_FILES = "skip_files.txt"  # RUN/skip_files.txt: audio files a (resumed) run leaves out (maebench.trainer)
FORMAT_VERSION = 1


@dataclass
class TrainerState:
    """Where a run is: optimizer steps taken and the next batch to read (epoch, batch within that epoch)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    skipped: list[str] = field(default_factory=list)  # first bad files met (capped), for the summary
    num_skipped: int = 0


def resumable_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run (all three files present), oldest first."""
    return layout.list_checkpoints(run_dir, resumable=True)


# ---------------------------------------------------------------------------------------------------- RNG streams


def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """Every RNG stream a step may draw from (dropout, layerdrop, masking, Python/numpy users), as plain tensors.

    Only the training device's CUDA generator is saved (a list of 0 or 1 states): asking for every GPU's state
    would make each DDP rank create a CUDA context on every GPU of its node, and a rank only draws from its own.
    """
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    cuda = device is not None and device.type == "cuda"
    return {
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state(device)] if cuda else [],
    }


def restore_rng(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Put back what capture_rng saved; the CUDA stream goes to `device` (the GPU this rank trains on now)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["mt"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    if len(state["cuda"]) == 1 and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"][0], device)


# ---------------------------------------------------------------------------------------------------- save / load


def save_checkpoint(
    run_dir: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainerState,
    rng: list[dict[str, Any]],
    config_hash: str,
    world_size: int,
    provenance: dict[str, Any] | None = None,
    keep_last: int | None = None,
    cpu_threads: int | None = None,
) -> Path:
    """Write `checkpoints/step_XXXXXXXX/` atomically (stage, then rename), then keep only the newest `keep_last`.

    `rng` holds one capture_rng() per rank (rank order); `cpu_threads` the CPU intra-op thread count (reused on
    resume). Call on one process only (rank 0).
    """
    from maebench.upstream import save_upstream

    final = layout.step_dir(run_dir, state.step)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f"{STAGING_PREFIX}{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        stage = staging / final.name
        save_upstream(model, stage, provenance)
        trainer = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "step": state.step, "epoch": state.epoch,
            "batch_in_epoch": state.batch_in_epoch, "skipped": list(state.skipped), "num_skipped": state.num_skipped,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng,
            "config_hash": config_hash, "world_size": world_size, "cpu_threads": cpu_threads,
        }
        _write_durably(stage / TRAINER_FILE, trainer)
        fsync_path(stage)
        if final.exists():  # the same step saved again (a resumed run that had nothing left to do)
            _discard(final)
        os.replace(stage, final)
        fsync_path(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if keep_last:
        prune(run_dir, keep_last)
    return final


def save_init(run_dir: Path, model: torch.nn.Module, provenance: dict[str, Any]) -> Path:
    """Write `RUN/init/`: the model as freshly built, before step 0 (the baseline `maebench eval` compares the run
    with). Kept when it already holds exactly these weights (a resumed run rebuilds the same init from its seed);
    rewritten when they differ (e.g. `--resume` with another seed). Call on rank 0, before any update."""
    from maebench.upstream import save_upstream
    from maebench.upstream.registry import fingerprint

    target = Path(run_dir) / layout.RUN_INIT
    identity = fingerprint(model)
    if layout.is_native_checkpoint(target):
        try:
            if layout.read_metadata(target).get("provenance", {}).get("fingerprint") == identity:
                return target
        except MaebenchError:
            pass  # damaged: written again below
    return save_upstream(model, target, {**provenance, "fingerprint": identity})


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """trainer.pt as a dict (weights_only: no code runs); MaebenchError naming the file if it is not one of ours."""
    path = Path(checkpoint) / TRAINER_FILE
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MaebenchError(f"{path} is missing: this checkpoint cannot be resumed; use --overwrite") from None
    except Exception as err:  # truncated, corrupt or foreign pickle
        raise MaebenchError(f"{path} could not be read ({type(err).__name__}); delete that checkpoint or use "
                            "--overwrite") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise MaebenchError(f"{path} is not a maebench trainer state; delete that checkpoint or use --overwrite")
    if data.get("format_version") != FORMAT_VERSION:
        raise MaebenchError(f"{path} has trainer format version {data.get('format_version')}, this maebench "
                            f"reads {FORMAT_VERSION}; resume with the maebench version that wrote it")
    return data


def load_model_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Copy a checkpoint's weights into `model` (strict: same architecture; errors name the file and key)."""
    from maebench.upstream import checkpoint as native

    native.load_weights_into(model, native.read_weights(checkpoint), Path(checkpoint) / native.WEIGHTS_FILE)


def prune(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints; returns what was deleted."""
    doomed = resumable_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []
    for path in doomed:
        _discard(path)
    return doomed


def _discard(path: Path) -> None:
    """Delete a checkpoint directory without ever leaving half of one under its step_ name: rename it to a
    staging name first (atomic), then remove it; a kill in between leaves only garbage remove_stale_staging clears."""
    trash = path.with_name(f"{STAGING_PREFIX}discard-{os.getpid()}-{path.name}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def remove_stale_staging(run_dir: Path) -> None:
    """Staging directories left by a killed run (never complete checkpoints) are garbage (call it holding the run's
    lock). So is a half-written init/ (`.init.tmp-*`); a complete one moved aside (`.init.old-*`, a kill between
    the two renames of a replacement) goes back to init/ if that is missing."""
    run_dir = Path(run_dir)
    root = run_dir / RUN_CHECKPOINTS
    if root.is_dir():
        for path in root.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)
    for path in sorted(run_dir.glob(f".{layout.RUN_INIT}.*-*")):
        if path.name.startswith(f".{layout.RUN_INIT}.old-") and not (run_dir / layout.RUN_INIT).exists():
            os.replace(path, run_dir / layout.RUN_INIT)
        elif path.is_dir() and _written_by_pretrain(path):
            shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- run-dir rules


@dataclass
class RunDirDecision:
    resume_from: Path | None  # checkpoint to continue from, or None for a fresh start
    messages: list[str]  # what was decided, for the user


def decide_run_dir(run_dir: Path, config_hash: str, *, resume: bool, overwrite: bool,
                   config: Any = None) -> RunDirDecision:
    """Apply the run-directory rules (rank 0 only, holding the run's lock: --overwrite deletes files).

    - a folder with files maebench did not write and no checkpoint: refused, whatever the flags (check_run_dir);
    - no checkpoints: fresh start;
    - checkpoints of the same resolved config: resume (re-running a command continues it);
    - checkpoints of a different config: refused unless --resume (continue with the new config, e.g. more steps)
      or --overwrite (delete this run's checkpoints, metrics and config, nothing else, and start again). The
      refusal lists the settings that differ from RUN/config.yaml when `config` (the new PretrainConfig) is given.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise MaebenchError("--resume and --overwrite contradict each other: choose one")
    check_run_dir(run_dir)
    remove_stale_staging(run_dir)
    latest = layout.latest_checkpoint(run_dir, resumable=True)
    if overwrite:
        deleted = delete_run_outputs(run_dir)
        what = ", ".join(deleted) if deleted else "nothing to delete"
        return RunDirDecision(None, [f"--overwrite: deleted from {run_dir}: {what}"])
    if latest is None:
        note = [f"--resume: nothing to resume in {run_dir} (no checkpoint yet): starting a fresh run"] if resume else []
        return RunDirDecision(None, note)
    saved_hash = load_trainer_state(latest).get("config_hash")
    if saved_hash == config_hash:
        return RunDirDecision(latest, [f"resuming from {latest}"])
    if resume:
        return RunDirDecision(latest, [f"resuming from {latest} with a changed config (--resume): "
                                       f"{_differences(run_dir, config)}"])
    raise MaebenchError(
        f"run directory {run_dir} holds checkpoints of a different configuration ({_differences(run_dir, config)}): "
        "pass --resume to continue it with this config, --overwrite to start over, or choose another --run-dir"
    )


def _differences(run_dir: Path, config: Any, shown: int = 4) -> str:
    """`key: old -> new` for the settings that differ from the run's config.yaml (what a run computes only)."""
    from maebench.config import _OPERATIONAL_FIELDS, diff, from_dict

    where = f"see its {RUN_CONFIG_FILE}"
    if config is None:
        return where
    try:
        saved = from_dict(yaml.safe_load((run_dir / RUN_CONFIG_FILE).read_text()), origin=RUN_CONFIG_FILE)
    except (OSError, yaml.YAMLError, MaebenchError):
        return where
    lines = [line for line in diff(saved, config) if line.split(":")[0] not in _OPERATIONAL_FIELDS]
    if not lines:
        return where
    more = f"; and {len(lines) - shown} more" if len(lines) > shown else ""
    return f"{'; '.join(lines[:shown])}{more}; {where}"


# ---------------------------------------------------------------------------------------------------- ownership, lock

_RUN_SECTIONS = {"model", "data", "optim", "train", "run_dir"}
_RUN_FILES = (RUN_CONFIG_FILE, METRICS_FILE, SKIP_FILES, layout.RUN_RECONSTRUCTION, PROBES_FILE, PROBES_FIGURE)


def check_run_dir(run_dir: Path) -> None:
    """A run directory is new, empty, or a maebench run: one with a resumable checkpoint (the rules above then
    apply), or holding only what `maebench pretrain` writes. Anything else may be the user's files: refused,
    whatever the flags, because a run would overwrite or (with --overwrite) delete its config.yaml/metrics.jsonl."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise MaebenchError(f"run directory {run_dir} is a file: choose another --run-dir")
    if not run_dir.is_dir() or layout.latest_checkpoint(run_dir, resumable=True) is not None:
        return
    for name in _RUN_FILES:  # a killed writer's half-written file (atomic.temp_sibling) is ours and garbage
        sweep_stale(run_dir / name)
    foreign = [path.name for path in sorted(run_dir.iterdir()) if not _written_by_pretrain(path)]
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise MaebenchError(
            f"run directory {run_dir} holds files maebench pretrain did not write ({', '.join(foreign[:3])}{more}): "
            "a run directory must be new, empty or a maebench run; choose another --run-dir"
        )


def _written_by_pretrain(path: Path) -> bool:
    """Whether `path` (an entry of a run directory without checkpoints) looks like what maebench pretrain writes."""
    try:
        if path.name in (RUN_LOCK_FILE, SKIP_FILES, layout.RUN_RECONSTRUCTION, PROBES_FILE, PROBES_FIGURE):
            return path.is_file()
        if any(path.name.startswith(f".{name}.tmp-") for name in _RUN_FILES):  # a live writer's work in progress
            return path.is_file()
        if path.name in (PROBE_SUBSETS_DIR, PROBE_SNAPSHOTS_DIR):  # the probe curve's (maebench.probe_curve)
            return path.is_dir()
        if path.name == RUN_CHECKPOINTS:
            return path.is_dir() and all(layout.step_of(p) is not None or p.name.startswith(STAGING_PREFIX)
                                         for p in path.iterdir())
        if path.name == layout.RUN_INIT or path.name.startswith((f".{layout.RUN_INIT}.tmp-",
                                                                  f".{layout.RUN_INIT}.old-")):
            # the random init: a native checkpoint and nothing else (or one being written or replaced)
            return path.is_dir() and {p.name for p in path.iterdir()} <= {layout.CONFIG_FILE, layout.WEIGHTS_FILE}
        if path.name == TENSORBOARD_DIR:  # only TensorBoard event files, as SummaryWriter names them
            return path.is_dir() and all(p.is_file() and p.name.startswith("events.out.tfevents.")
                                         for p in path.iterdir())
        if path.name == RUN_CONFIG_FILE:  # a resolved config: every section and run_dir (a recipe has no run_dir)
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            return isinstance(data, dict) and set(data) == _RUN_SECTIONS
        if path.name == METRICS_FILE:  # records with a step and a loss (the last line may be cut by a kill)
            return _metrics_records(path.read_text(encoding="utf-8").splitlines())
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
        return False
    return False


def _metrics_records(lines: list[str]) -> bool:
    """Whether `lines` are metrics.jsonl records ({"step", "loss", ...}), at least one, the last maybe cut short."""
    lines = [line for line in lines if line.strip()]
    records = 0
    for number, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines) - 1:
                break
            return False
        if not (isinstance(record, dict) and {"step", "loss"} <= set(record)):
            return False
        records += 1
    return records > 0


class RunLock:
    """An exclusive lock on a run directory (flock on RUN/.lock), so two runs never write the same directory.

    The OS drops it when the holder exits or dies (no stale lock after a crash or kill -9); the file keeps the
    holder's pid and host for the refusal message. Under torchrun only rank 0 takes it.
    """

    def __init__(self, run_dir: Path, *, command: str = "maebench pretrain", wait_s: float = 0.0) -> None:
        """`wait_s`: how long to wait for a holder that is exiting (a killed pipeline's child still dying)."""
        self.path = Path(run_dir) / RUN_LOCK_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
                os.close(fd)
                who = f"pid {holder[0]}" + (f" on {holder[1]}" if len(holder) > 1 else "") if holder else \
                    "another process"
                raise MaebenchError(f"run directory {self.path.parent} is in use by another {command} ({who}): "
                                    "wait for it to finish, or choose another --run-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self.fd: int | None = fd

    def release(self) -> None:
        """Drop the lock (also done by the OS when the process ends)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def delete_run_outputs(run_dir: Path) -> list[str]:
    """Delete only what `maebench pretrain` writes in a run dir (checkpoints, init, metrics, config, figure); list
    it."""
    run_dir = Path(run_dir)
    deleted = []
    for path in resumable_checkpoints(run_dir):
        shutil.rmtree(path)
        deleted.append(f"{RUN_CHECKPOINTS}/{path.name}")
    root = run_dir / RUN_CHECKPOINTS
    if root.is_dir():
        for path in root.iterdir():  # incomplete step dirs of ours (a complete one was listed above)
            if layout.step_of(path) is not None and path.is_dir():
                shutil.rmtree(path)
                deleted.append(f"{RUN_CHECKPOINTS}/{path.name} (incomplete)")
        if not any(root.iterdir()):
            root.rmdir()
    init = run_dir / layout.RUN_INIT
    if init.is_dir() and _written_by_pretrain(init):
        shutil.rmtree(init)
        deleted.append(layout.RUN_INIT)
    for name in (PROBE_SUBSETS_DIR, PROBE_SNAPSHOTS_DIR):
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)
            deleted.append(name)
    for name in (METRICS_FILE, RUN_CONFIG_FILE, layout.RUN_RECONSTRUCTION, PROBES_FILE, PROBES_FIGURE):
        if (run_dir / name).is_file():
            (run_dir / name).unlink()
            deleted.append(name)
    events = run_dir / TENSORBOARD_DIR
    if events.is_dir() and _written_by_pretrain(events):  # never a folder of the user's that shares the name
        shutil.rmtree(events)
        deleted.append(TENSORBOARD_DIR)
    return deleted


# ---------------------------------------------------------------------------------------------------- internals


def _write_durably(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


