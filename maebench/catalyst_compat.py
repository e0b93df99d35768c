"""catalyst compatibility shim: the one class s3prl 0.4.18's `speech_commands` downstream imports from catalyst.

s3prl's speech_commands expert does `from catalyst.data.sampler import DistributedSamplerWrapper` to shard its
class-balanced `WeightedRandomSampler` across DDP ranks. catalyst is archived and its last release (22.4) declares a
version specifier pip >= 24.1 rejects, so it cannot be installed with a current pip. `install_catalyst_shim()`
registers `catalyst.data.sampler` with maebench's `DistributedSamplerWrapper` when catalyst is absent; the s3prl
launcher (`maebench.s3prl_runner`) installs it before s3prl imports a downstream expert.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Iterator

from torch.utils.data import DistributedSampler, Sampler

__all__ = ["DistributedSamplerWrapper", "install_catalyst_shim"]


class DistributedSamplerWrapper(DistributedSampler):
    """Any sampler in distributed mode: each rank gets its own shard of the wrapped sampler's indices.

    Every epoch the wrapped sampler is drawn afresh (a random sampler gives new indices); the positions of that draw
    are shared out as `DistributedSampler` shares out a dataset (shuffled by seed + epoch when `shuffle`, padded by
    repeating from the start to a multiple of the number of ranks, rank r taking positions r, r + n, ...). All ranks
    must draw the same indices (same seed), as DDP requires anyway. The wrapped sampler's length must not change.
    """

    def __init__(self, sampler: Sampler, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True) -> None:
        super().__init__(range(len(sampler)), num_replicas=num_replicas, rank=rank, shuffle=shuffle)  # type: ignore[arg-type]
        self.sampler = sampler

    def __iter__(self) -> Iterator[int]:
        drawn = list(self.sampler)
        return iter([drawn[position] for position in super().__iter__()])


def install_catalyst_shim() -> bool:
    """Register `catalyst.data.sampler.DistributedSamplerWrapper` (in this process) when catalyst is not installed.

    Idempotent; an installed catalyst is left alone. Returns whether the shim is in place.
    """
    module = sys.modules.get("catalyst.data.sampler")
    if module is not None:
        return getattr(module, "__maebench_shim__", False)
    if importlib.util.find_spec("catalyst") is not None:  # None too when sys.modules["catalyst"] is None (blocked)
        return False
    names = ["catalyst", "catalyst.data", "catalyst.data.sampler"]
    modules = [types.ModuleType(name, "maebench's stand-in for catalyst (archived; not installable with pip >= 24.1)")
               for name in names]
    modules[0].data, modules[1].sampler = modules[1], modules[2]  # type: ignore[attr-defined]
    modules[2].DistributedSamplerWrapper = DistributedSamplerWrapper  # type: ignore[attr-defined]
    for name, module in zip(names, modules, strict=True):
        module.__maebench_shim__ = True  # type: ignore[attr-defined]
        sys.modules[name] = module
    return True
