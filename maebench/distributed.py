"""Data-parallel training without a framework: torchrun detection, process group, DDP wrapping, rank-0 duties.

The same `maebench pretrain` command runs alone or under `torchrun --nproc_per_node=K [--nnodes N ...]`: torchrun
sets RANK / WORLD_SIZE / LOCAL_RANK, we join the process group (NCCL on CUDA, gloo on CPU), wrap the model in
DistributedDataParallel, shard the batches by rank, and let rank 0 alone write files and print.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from maebench.errors import MaebenchError


@dataclass
class DistEnv:
    """This process's place in the job (rank 0 of 1 when not launched by torchrun)."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def resolve_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """auto = CUDA (this process's local GPU) when present, else CPU."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise MaebenchError("train.device=cuda but no CUDA GPU is visible: use --set train.device=auto or cpu")
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def check_device(spec: str) -> torch.device:
    """A `--device` value as a torch.device that exists here; a one-line MaebenchError otherwise (a bad name, CUDA
    without a visible GPU, a GPU index past the last one) instead of a traceback from deep inside a run."""
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise MaebenchError(f"--device {spec!r} is not a torch device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MaebenchError(f"--device {spec} but no CUDA GPU is visible: use --device cpu (or leave --device out)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MaebenchError(f"--device {spec}: only {torch.cuda.device_count()} CUDA GPU(s) visible "
                                f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif device.type != "cpu" and not _backend_available(device.type):
        raise MaebenchError(f"--device {spec}: no {device.type} device is available here; use --device cpu")
    return device


def _backend_available(kind: str) -> bool:
    module = getattr(torch, kind, None) or getattr(torch.backends, kind, None)
    available = getattr(module, "is_available", None)
    return bool(available and available())


def setup(device_preference: str = "auto", timeout_minutes: float = 30.0) -> DistEnv:
    """Join the process group when torchrun launched us (and there is more than one process)."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistEnv(device=resolve_device(device_preference))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    device = resolve_device(device_preference, local_rank)
    timeout = timedelta(minutes=timeout_minutes)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=rank, world_size=world_size, timeout=timeout, device_id=device)
    else:
        dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timeout)
    return DistEnv(device=device, rank=rank, local_rank=local_rank, world_size=world_size)


def teardown(env: DistEnv) -> None:
    if env.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


class PretrainStep(nn.Module):
    """forward = model.pretrain_loss, so DDP's hooks (which watch `forward`) see the pretraining pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, wavs: Tensor, lens: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.model.pretrain_loss(wavs, lens)
        return out.loss, out.stats


def wrap_ddp(module: nn.Module, env: DistEnv) -> nn.Module:
    """DistributedDataParallel on the local device.

    find_unused_parameters: MAE-AST's layerdrop skips different encoder layers on different ranks and steps.
    """
    if not env.is_distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)


# ---------------------------------------------------------------------------------------------------- collectives
# Each helper is a no-op (or the identity) in a single process, so the trainer reads the same either way.


def barrier(env: DistEnv) -> None:
    if env.is_distributed:
        dist.barrier()


def all_reduce_sum(tensor: Tensor, env: DistEnv) -> Tensor:
    if env.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's `obj`, in rank order (pickled: small Python objects only)."""
    if not env.is_distributed:
        return [obj]
    gathered: list[Any] = [None] * env.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_from_main(obj: Any, env: DistEnv) -> Any:
    """Rank 0's `obj` on every rank."""
    if not env.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
