"""Where `maebench run` runs its stages: the `launcher:` settings, and the devices of one machine.

`kind: local` (the default) runs the stages here: a pretraining as one process per visible GPU (torchrun's
variables, so maebench.distributed joins them as under torchrun), the evaluations one worker per GPU, each pinned
to its own (CUDA_VISIBLE_DEVICES); without GPUs one pretraining process and the recipe's `evals.jobs` CPU workers.
`kind: slurm` hands each stage to SLURM through submitit: maebench.slurm.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from maebench.errors import MaebenchError
from maebench.settings import from_mapping


@dataclass
class LauncherSettings:
    """A recipe's `launcher:` section (and `maebench run` flags on top)."""

    kind: str = "local"  # local (this machine) | slurm (submitit)
    cluster: str = "slurm"  # with kind slurm: slurm, or local (submitit's LocalExecutor: the same jobs, here)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus: int = 8  # GPUs of a pretraining job (one task each, one node)
    eval_gpus: int = 1  # GPUs of an evaluation job
    cpus_per_gpu: int = 10  # CPU cores per task (data loading)
    mem_gb_per_gpu: int | None = None
    time_minutes: int = 72 * 60  # a pretraining job's time limit (preempted or timed out: requeued, resumed)
    eval_time_minutes: int = 12 * 60
    summary_time_minutes: int = 60
    max_requeues: int = 10  # submitit's max_num_timeout

    def job_resources(self, kind: str) -> dict[str, Any]:
        """The resources of one job of a stage kind: gpus, tasks (one per GPU), minutes."""
        if kind == "pretrain":
            return {"gpus": self.gpus, "tasks": self.gpus, "minutes": self.time_minutes}
        if kind == "eval":
            return {"gpus": self.eval_gpus, "tasks": 1, "minutes": self.eval_time_minutes}
        return {"gpus": 0, "tasks": 1, "minutes": self.summary_time_minutes}


def launcher_settings(section: dict[str, Any] | None, *, origin: str, **flags: Any) -> LauncherSettings:
    """A recipe's `launcher:` section, checked (one-line errors), with the non-None `flags` on top."""
    settings = from_mapping(LauncherSettings, section or {}, origin=origin, kind="launcher key", prefix="launcher.")
    settings = replace(settings, **{k: v for k, v in flags.items() if v is not None})
    if settings.kind not in ("local", "slurm"):
        raise MaebenchError(f"{origin}: launcher.kind {settings.kind!r} is not a launcher (local, slurm)")
    if settings.cluster not in ("slurm", "local"):
        raise MaebenchError(f"{origin}: launcher.cluster {settings.cluster!r} is not one of slurm, local")
    for name in ("gpus", "time_minutes", "eval_time_minutes", "summary_time_minutes", "cpus_per_gpu"):
        if getattr(settings, name) < 1:
            raise MaebenchError(f"{origin}: launcher.{name} must be at least 1, got {getattr(settings, name)}")
    if settings.eval_gpus < 0:
        raise MaebenchError(f"{origin}: launcher.eval_gpus must be 0 or more, got {settings.eval_gpus}")
    return settings


# ---------------------------------------------------------------------------------------------------- one machine


def local_ddp_environments(device: str = "auto", gpus: int | None = None) -> list[dict[str, str]]:
    """torchrun's variables for one pretraining process per visible GPU (one empty environment, a plain single
    process, without GPUs, on CPU, or when already launched by torchrun)."""
    if gpus is None:
        gpus = visible_gpus() if device in ("auto", "cuda") else 0
    if gpus <= 1 or "RANK" in os.environ:
        return [{}]
    port = str(free_port())
    return [{"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(gpus), "LOCAL_WORLD_SIZE": str(gpus),
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port} for rank in range(gpus)]


def eval_worker_devices(jobs: int, gpus: int) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of each evaluation worker: one worker per GPU (so `jobs` is raised to the GPU count)
    each pinned to its own; None for every worker (CPU, today's behaviour) without GPUs."""
    if gpus <= 0:
        return [None] * jobs
    return [str(index) for index in range(gpus)]


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
