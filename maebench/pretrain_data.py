"""Pretraining batches: fixed-length 16 kHz clips, sharded across ranks, resumable at any batch.

Determinism is the point. The epoch's order is a permutation seeded by (seed, epoch) and every crop offset is a
pure function of (seed, epoch, index), so a run resumed at (epoch, batch_in_epoch) sees exactly the batches an
uninterrupted run would have seen, whatever the number of workers. Workers only decode, mix to mono, resample and
crop or pad; the filterbank runs batched on the training device.

Bad files (unreadable, corrupt, empty, too short) never stop a run: the dataset hands them back as skipped and
`collate_clips` drops them, so the trainer can count them and name the first few.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from maebench import manifest
from maebench.errors import MaebenchError
from maebench.manifest import AudioItem
from maebench.upstream.frontend import SAMPLE_RATE

__all__ = [
    "AudioItem",
    "ClipBatch",
    "PretrainClips",
    "ResumableBatchSampler",
    "build_pretrain_loader",
    "collate_clips",
    "list_audio",
]

# Distinct tags keep the order stream and the crop stream independent even when their other seeds coincide.
_ORDER_STREAM = 0
_CROP_STREAM = 1


def list_audio(source: str | Path | None, *, quiet: bool = False) -> list[AudioItem]:
    """The pretraining clips named by `source` (see `manifest.list_audio`); None -> the built-in toy corpus."""
    if source is None:
        from maebench import toy_corpus  # numpy/scipy synthesis: only when the built-in corpus is used

        return toy_corpus.corpus_items(quiet=quiet)
    return manifest.list_audio(source)


def _read_audio(path) -> Tensor:
    from maebench.audio import read_audio

    return read_audio(path, sample_rate=SAMPLE_RATE)


def crop_offset(num_samples: int, clip_samples: int, *, seed: int, epoch: int, index: int) -> int:
    """Where the clip of item `index` starts in `epoch`: uniform over the valid offsets, a pure function of its args."""
    if num_samples <= clip_samples:
        return 0
    rng = np.random.default_rng([seed, epoch, index, _CROP_STREAM])
    return int(rng.integers(0, num_samples - clip_samples + 1))


class PretrainClips(Dataset):
    """Item (index, epoch) -> (clip[clip_samples] float32 16 kHz, valid length, None) or (zeros, 0, path) if bad."""

    def __init__(self, items: Sequence[AudioItem], clip_samples: int, seed: int = 0, min_samples: int = 400):
        if clip_samples <= 0:
            raise ValueError(f"clip_samples must be positive, got {clip_samples}")
        self.items = list(items)
        self.clip_samples = int(clip_samples)
        self.seed = int(seed)
        self.min_samples = int(min_samples)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int, str | None]:
        index, epoch = key
        path = self.items[index].path
        try:
            wav = _read_audio(path)
        except Exception:  # whatever the decoder raised, a bad file is reported, never fatal mid-run
            return self._bad(path)
        if wav.ndim != 1 or wav.numel() < self.min_samples or not bool(torch.isfinite(wav).all()):
            return self._bad(path)
        clip = torch.zeros(self.clip_samples, dtype=torch.float32)
        start = crop_offset(wav.numel(), self.clip_samples, seed=self.seed, epoch=epoch, index=index)
        piece = wav[start : start + self.clip_samples].to(torch.float32)
        clip[: piece.numel()] = piece
        return clip, piece.numel(), None

    def _bad(self, path) -> tuple[Tensor, int, str]:
        return torch.zeros(self.clip_samples, dtype=torch.float32), 0, str(path)


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (index, epoch) keys for one rank, starting from a settable (epoch, batch_in_epoch) position.

    Each epoch is a permutation seeded by (seed, epoch), cut (drop_last) or wrapped around (not drop_last) to a
    whole number of global batches of batch_size * world_size, so every rank gets the same number of batches
    (DDP would hang otherwise). Global batch b holds permutation entries [b * B * W, (b + 1) * B * W); rank r takes
    its r-th slice of B. One pass of `iter` covers the rest of the current epoch; moving on is the caller's call.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ):
        if batch_size <= 0 or world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"bad sharding: batch_size={batch_size}, rank={rank}, world_size={world_size}")
        global_batch = batch_size * world_size
        if num_items <= 0 or (drop_last and num_items < global_batch):
            raise MaebenchError(
                f"only {num_items} clips for a batch of {batch_size} x {world_size} rank(s); "
                "use a smaller batch size or more data"
            )
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.batch_in_epoch = 0

    def batches_per_epoch(self) -> int:
        """Batches each rank gets in one epoch (the same on every rank)."""
        global_batch = self.batch_size * self.world_size
        if self.drop_last:
            return self.num_items // global_batch
        return -(-self.num_items // global_batch)

    def set_position(self, epoch: int, batch_in_epoch: int) -> None:
        """Make the next `iter` start at batch `batch_in_epoch` of `epoch` (== batches_per_epoch: nothing left)."""
        if epoch < 0 or not 0 <= batch_in_epoch <= self.batches_per_epoch():
            raise ValueError(
                f"position (epoch {epoch}, batch {batch_in_epoch}) outside 0..{self.batches_per_epoch()} batches"
            )
        self.epoch = epoch
        self.batch_in_epoch = batch_in_epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This rank's item indices for `epoch`, shape (batches_per_epoch, batch_size)."""
        num_batches = self.batches_per_epoch()
        total = num_batches * self.batch_size * self.world_size
        order = np.random.default_rng([self.seed, epoch, _ORDER_STREAM]).permutation(self.num_items)
        if total > order.size:  # not drop_last: wrap around so the last global batch is full
            order = np.resize(order, total)
        order = order[:total].reshape(num_batches, self.world_size, self.batch_size)
        return order[:, self.rank, :]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        for batch in self.epoch_order(epoch)[self.batch_in_epoch :]:
            yield [(int(index), epoch) for index in batch]

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.batch_in_epoch


@dataclass
class ClipBatch:
    """A padded batch of good clips (wavs[B, N] float32, lens[B] valid samples) and the paths of dropped bad items."""

    wavs: Tensor
    lens: Tensor
    skipped: list[str] = field(default_factory=list)

    def pin_memory(self) -> ClipBatch:
        """Called by the DataLoader when pin_memory=True (custom batch types must pin themselves)."""
        return ClipBatch(self.wavs.pin_memory(), self.lens.pin_memory(), self.skipped)

    def __len__(self) -> int:
        return self.wavs.shape[0]


def collate_clips(samples: Sequence[tuple[Tensor, int, str | None]]) -> ClipBatch:
    """Stack the good clips; bad ones (error path set) are dropped and listed in `skipped`."""
    if not samples:
        raise ValueError("collate_clips got an empty batch")
    good = [(wav, length) for wav, length, error in samples if error is None]
    skipped = [error for _, _, error in samples if error is not None]
    if good:
        wavs = torch.stack([wav for wav, _ in good])
    else:
        wavs = torch.zeros(0, samples[0][0].shape[-1], dtype=torch.float32)
    lens = torch.tensor([length for _, length in good], dtype=torch.long)
    return ClipBatch(wavs, lens, skipped)


def build_pretrain_loader(
    items: Sequence[AudioItem],
    *,
    clip_seconds: float,
    batch_size: int,
    num_workers: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
    batch_in_epoch: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader of ClipBatch for this rank, from (epoch, batch_in_epoch) to the end of that epoch.

    The trainer counts the batches it takes and rebuilds the loader for the next epoch or on resume; the sampler
    is reachable as `loader.batch_sampler` (e.g. for `batches_per_epoch()`).
    """
    clip_samples = round(clip_seconds * SAMPLE_RATE)
    if clip_samples <= 0:
        raise MaebenchError(f"clip length {clip_seconds} s is too short; use a positive data.clip_seconds")
    dataset = PretrainClips(items, clip_samples, seed=seed)
    sampler = ResumableBatchSampler(len(dataset), batch_size, seed=seed, rank=rank, world_size=world_size)
    sampler.set_position(epoch, batch_in_epoch)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_clips,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
