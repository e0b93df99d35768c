"""A pretraining run's probe curve after the fact (`maebench probe RUN`): the points RUN/probes.jsonl lacks, from
the snapshots a stopped run left, the checkpoints it kept and its step 0 rebuilt from its config.

The same points as while training (maebench.probe_curve: same subsets, same probe), so a curve can be started,
finished or extended offline; points already there are never redone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maebench.errors import MaebenchError
from maebench.probe_curve import (
    WORKER_LOCK,
    CurveSpec,
    check_tasks,
    done_points,
    pending_snapshots,
    probe_snapshot,
    write_snapshot,
)
from maebench.upstream import checkpoint as layout
from maebench.upstream.checkpoint import PROBE_SNAPSHOTS_DIR


def run_config(run_dir: Path):
    """The PretrainConfig a run recorded in RUN/config.yaml."""
    import yaml

    from maebench.config import from_dict

    path = Path(run_dir) / layout.RUN_CONFIG_FILE
    if not path.is_file():
        raise MaebenchError(f"{path} not found: {run_dir} is not a `maebench pretrain` run directory")
    return from_dict(yaml.safe_load(path.read_text()) or {}, origin=str(path))


def write_init_snapshot(run_dir: Path) -> Path:
    """Step 0 of a run rebuilt from its config: the trainer seeds, then builds, so these are its initial weights."""
    import torch

    from maebench.trainer import build_model, seed_everything

    cfg = run_config(run_dir)
    with torch.random.fork_rng(devices=[]):
        seed_everything(cfg.train.seed)
        model = build_model(cfg)
    return write_snapshot(model, run_dir, 0)


def offline_steps(run_dir: Path, spec: CurveSpec) -> list[tuple[int, Path, bool]]:
    """(step, weights, delete when done) still to probe: pending snapshots, step 0 (rebuilt) and the run's kept
    checkpoints, each step once, where some task has no point yet."""
    done = done_points(run_dir)
    todo = {step: (path, True) for step, path in pending_snapshots(run_dir)}
    for path in layout.list_checkpoints(run_dir):
        todo.setdefault(layout.step_of(path), (path, False))
    todo.setdefault(0, (None, True))
    return [(step, path, remove) for step, (path, remove) in sorted(todo.items())
            if any((step, task) not in done for task in spec.tasks)]


def probe_offline(run_dir: Path, spec: CurveSpec, *, quiet: bool = False) -> list[dict[str, Any]]:
    """The curve of a finished (or stopped) run from what it kept, appended to RUN/probes.jsonl: points already
    there are not redone. Refused while the run is training (its own probe worker is at work)."""
    import fcntl

    from maebench.run_checkpoint import RunLock

    check_tasks(spec.tasks)
    run_lock = RunLock(run_dir)
    root = Path(run_dir) / PROBE_SNAPSHOTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    points: list[dict[str, Any]] = []
    try:
        with open(root / WORKER_LOCK, "a") as worker_lock:
            fcntl.flock(worker_lock, fcntl.LOCK_EX)  # a worker a killed run left behind finishes first
            for step, path, remove in offline_steps(run_dir, spec):
                path = path if path is not None else write_init_snapshot(run_dir)
                for point in probe_snapshot(run_dir, step, path, spec, remove=remove):
                    points.append(point)
                    if not quiet:
                        print(f"step {step} {point['task']}: {point['metric']} {point['score']:.2f} "
                              f"(chance {point['chance']:.1f}, best layer {point['best_layer']})", flush=True)
    finally:
        run_lock.release()
    return points


def finish_curves(run_dirs: list[Path], *, quiet: bool = True) -> None:
    """The points each probing run (train.probe_every) left pending, one process per run at once (a pipeline's
    report needs complete curves; each probe runs on one core)."""
    import multiprocessing
    from concurrent import futures

    todo = [Path(d) for d in run_dirs if (Path(d) / PROBE_SNAPSHOTS_DIR).is_dir() and pending_snapshots(d)]
    if not todo:
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that already runs OpenMP threads
    with futures.ProcessPoolExecutor(len(todo), mp_context=context) as pool:
        for job in [pool.submit(_finish_one, run_dir, quiet) for run_dir in todo]:
            job.result()


def _finish_one(run_dir: Path, quiet: bool) -> None:
    import torch

    torch.set_num_threads(1)
    probe_offline(run_dir, CurveSpec.from_config(run_config(run_dir)), quiet=quiet)
