"""maebench's stand-in for catalyst's DistributedSamplerWrapper (what s3prl's speech_commands expert imports).

Shards are checked against hand-worked cases (torch's DistributedSampler arithmetic: pad by repeating from the
start to a multiple of the rank count, rank r takes positions r, r + n, ...); with shuffling, the ranks together
must deliver exactly the wrapped sampler's draw of that epoch. The s3prl downstream itself runs with catalyst hidden
in tests/test_s3prl_downstreams.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.utils.data import Sampler, WeightedRandomSampler

from maebench.catalyst_compat import DistributedSamplerWrapper


class Fixed(Sampler):
    """A sampler that always yields the same indices, repeats included (as a sampler with replacement does)."""

    def __init__(self, indices: list[int]) -> None:
        self.indices = indices

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@pytest.mark.parametrize("replicas, shards", [
    (1, [[7, 3, 3, 9, 1]]),
    # positions 0..4 padded with 0 to 6: rank 0 takes 0, 2, 4; rank 1 takes 1, 3, 0
    (2, [[7, 3, 1], [3, 9, 7]]),
    # positions 0..4 padded with 0 to 6: rank 0 takes 0, 3; rank 1 takes 1, 4; rank 2 takes 2, 0
    (3, [[7, 9], [3, 1], [3, 7]]),
])
def test_unshuffled_shards_by_hand(replicas, shards):
    for rank, expected in enumerate(shards):
        wrapper = DistributedSamplerWrapper(Fixed([7, 3, 3, 9, 1]), num_replicas=replicas, rank=rank, shuffle=False)
        assert list(wrapper) == expected
        assert len(wrapper) == len(expected)


def test_shuffled_ranks_share_out_each_epochs_draw():
    """Two ranks wrapping the class-balanced sampler speech_commands uses, each seeded alike (as DDP ranks are):
    every epoch their shards are disjoint parts of that epoch's fresh draw and together give all of it."""
    weights = torch.tensor([0.1, 0.1, 5.0, 1.0, 1.0, 0.5])
    ranks = [DistributedSamplerWrapper(WeightedRandomSampler(weights, 8, generator=torch.Generator().manual_seed(0)),
                                       num_replicas=2, rank=rank) for rank in range(2)]
    reference = torch.Generator().manual_seed(0)
    orders = []
    for epoch in range(3):
        draw = torch.multinomial(weights, 8, replacement=True, generator=reference).tolist()
        shards = []
        for wrapper in ranks:
            wrapper.set_epoch(epoch)
            shards.append(list(wrapper))
        assert [len(s) for s in shards] == [4, 4]
        assert sorted(shards[0] + shards[1]) == sorted(draw)
        orders.append(shards[0] + shards[1])
    assert orders[0] != orders[1] or orders[1] != orders[2]


def _run(code: str, tmp_path: Path, pythonpath: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (pythonpath, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)


def test_shim_stands_in_only_where_catalyst_is_absent(tmp_path):
    absent = _run("import sys\nsys.modules['catalyst'] = None\n"
                  "from maebench.catalyst_compat import install_catalyst_shim\n"
                  "assert install_catalyst_shim() and install_catalyst_shim()\n"
                  "from catalyst.data.sampler import DistributedSamplerWrapper as W\nprint(W.__module__)", tmp_path)
    assert absent.returncode == 0, absent.stderr
    assert absent.stdout.strip() == "maebench.catalyst_compat"

    # an installed catalyst (a package of that name on the path) is used as it is
    sampler = tmp_path / "site" / "catalyst" / "data" / "sampler.py"
    sampler.parent.mkdir(parents=True)
    for init in (sampler.parent / "__init__.py", sampler.parent.parent / "__init__.py"):
        init.write_text("")
    sampler.write_text("class DistributedSamplerWrapper:\n    pass\n")
    present = _run("from maebench.catalyst_compat import install_catalyst_shim\n"
                   "assert not install_catalyst_shim()\n"
                   "from catalyst.data.sampler import DistributedSamplerWrapper as W\nprint(W.__module__)",
                   tmp_path, pythonpath=str(tmp_path / "site"))
    assert present.returncode == 0, present.stderr
    assert present.stdout.strip() == "catalyst.data.sampler"
