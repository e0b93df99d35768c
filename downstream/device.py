"""Where a module runs and at what precision: its device, bf16 autocast on CUDA, one CPU thread for tiny ops."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of `module`'s first parameter or buffer (CPU for a module with neither)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def device_autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA (the precision the feature cache records), full precision elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


@contextmanager
def few_threads(device: torch.device) -> Iterator[None]:
    """One intra-op thread for head-only work on CPU: its ops are tiny, and on a busy machine waiting for a
    second OpenMP thread costs more than the op itself (measured 10-30x slower with 2 threads under load)."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
