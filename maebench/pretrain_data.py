"""Pretraining batches: 16 kHz clips, sharded across ranks, resumable at any batch, never padded for MAE-AST.

Two ways to shape a batch (`data.batch_length`, resolved per model family by `maebench.config.batch_length`):
- "shortest" (MAE-AST, as the public code: mae_ast_dataset.py `collater` with `pad_audio: false`): every clip of
  a batch is randomly cropped to the batch's shortest clip (at most `clip_seconds`), so no batch holds padding and
  the model never learns from silence it was not given. Clips under `min_seconds` are dropped (the public
  `min_sample_size: 32000`, config/pretrain/mae_ast.yaml line 30). With `bucket`, batches are cut from the epoch's
  clips sorted by length, then shuffled (fairseq's `ordered_indices` + `batch_by_size`), so a batch crops little.
- "fixed" (SSAST, its authors' dataloader): every clip is cut or zero-padded to `clip_seconds` of fbank frames
  (10.24 s -> 1,024 frames = 400 + 1,023 * 160 samples, `fixed_clip_samples`). A longer file keeps its start, as
  src/dataloader.py `_wav2fbank` keeps the first target_length frames of the whole file's fbank (the whole-file
  mean it subtracts first changes nothing: Kaldi removes each frame's DC offset); `data.fixed_crop: random` crops
  at a random offset instead (maebench 0.1.0).

Determinism is the point. The epoch's order is a pure function of (seed, epoch, lengths) and every crop offset a
pure function of (seed, epoch, index, length), so a run resumed at (epoch, batch_in_epoch) sees exactly the
batches an uninterrupted run would have seen, whatever the number of workers. Workers only decode, mix to mono,
resample and crop or pad (a whole batch is read and collated in one worker); the filterbank runs batched on the
training device.

These rules (`batch_plan`, `checked_clip`, `CollateClips`) are the only ones: `maebench.fairseq2_data` (`--loader
fairseq2`) decodes with fairseq2's pipeline instead of DataLoader workers and delivers the same batches.

Bad files (unreadable, corrupt, empty, too short, non-finite or absurdly loud) never stop a run: the dataset hands
them back as skipped and the collate step drops them, so the trainer can count them and name the first few (it
stops when a whole logging window had no good clip). Each batch knows its rows' items (`ClipBatch.indices`), so
the trainer can name the files of a batch whose loss was not finite and drop them on resume.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from maebench import manifest
from maebench.config import PretrainConfig, batch_length
from maebench.errors import MaebenchError
from maebench.manifest import AudioItem
from maebench.upstream.frontend import SAMPLE_RATE, SSAST_FBANK, frames_to_samples

__all__ = [
    "AudioItem",
    "ClipBatch",
    "CollateClips",
    "PretrainClips",
    "ResumableBatchSampler",
    "batch_plan",
    "build_pretrain_loader",
    "build_validation_loader",
    "bucket_lengths",
    "checked_clip",
    "list_audio",
    "loader_options",
]

# Distinct tags keep the order stream and the crop stream independent even when their other seeds coincide.
_ORDER_STREAM = 0
_CROP_STREAM = 1
_BATCH_STREAM = 2
MIN_SAMPLES = 400  # one 25 ms fbank frame: shorter files are skipped whatever data.min_seconds says


def list_audio(source: str | Path | None, *, quiet: bool = False) -> list[AudioItem]:
    """The pretraining clips named by `source` (see `manifest.list_audio`); None -> the built-in toy corpus."""
    if source is None:
        from maebench import toy_corpus  # numpy/scipy synthesis: only when the built-in corpus is used

        return toy_corpus.corpus_items(quiet=quiet)
    return manifest.list_audio(source)


def _read_audio(path) -> Tensor:
    from maebench.audio import read_audio

    return read_audio(path, sample_rate=SAMPLE_RATE)


def fixed_clip_samples(clip_seconds: float) -> int:
    """Samples of a fixed-length clip: exactly the fbank frames of `clip_seconds` at a 10 ms shift (1,024 frames for
    10.24 s need 164,080 samples, not 163,840, which give 1,022)."""
    return frames_to_samples(round(clip_seconds * SAMPLE_RATE / SSAST_FBANK.window_shift), SSAST_FBANK)


def crop_offset(num_samples: int, clip_samples: int, *, seed: int, epoch: int, index: int) -> int:
    """Where the clip of item `index` starts in `epoch`: uniform over the valid offsets, a pure function of its args."""
    if num_samples <= clip_samples:
        return 0
    rng = np.random.default_rng([seed, epoch, index, _CROP_STREAM])
    return int(rng.integers(0, num_samples - clip_samples + 1))


class PretrainClips(Dataset):
    """Item (index, epoch) -> (whole decoded clip float32 16 kHz mono, (index, epoch), None), or
    (empty, (index, epoch), path) for a bad file: unreadable, non-finite or under `min_samples`."""

    def __init__(self, items: Sequence[AudioItem], min_samples: int = MIN_SAMPLES):
        self.items = list(items)
        self.min_samples = max(int(min_samples), MIN_SAMPLES)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, tuple[int, int], str | None]:
        index, epoch = key
        path = self.items[index].path
        try:
            wav = _read_audio(path)
        except Exception:  # whatever the decoder raised, a bad file is reported, never fatal mid-run
            wav = None
        return checked_clip(wav, (index, epoch), str(path), self.min_samples)


_EMPTY = torch.zeros(0, dtype=torch.float32)


def checked_clip(
    wav: Tensor | None, key: tuple[int, int], path: str, min_samples: int
) -> tuple[Tensor, tuple[int, int], str | None]:
    """The one rule for a bad file, whichever loader decoded it: no waveform (unreadable), not 1-D, under
    `min_samples`, non-finite or beyond +-MAX_AMPLITUDE (maebench.audio) -> (empty, key, path); else (float32
    clip, key, None)."""
    from maebench.audio import MAX_AMPLITUDE

    if wav is None or wav.ndim != 1 or wav.numel() < min_samples:
        return _EMPTY, key, path
    peak = float(wav.abs().amax())  # NaN and Inf propagate through the max
    if not math.isfinite(peak) or peak > MAX_AMPLITUDE:
        return _EMPTY, key, path
    return wav.to(torch.float32), key, None


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (index, epoch) keys for one rank, starting from a settable (epoch, batch_in_epoch) position.

    Each epoch is a permutation seeded by (seed, epoch), cut (drop_last) or wrapped around (not drop_last) to a
    whole number of global batches of batch_size * world_size, so every rank gets the same number of batches
    (DDP would hang otherwise). Global batch b holds entries [b * B * W, (b + 1) * B * W) of the epoch's order;
    rank r takes its r-th slice of B. One pass of `iter` covers the rest of the current epoch; moving on is the
    caller's call.

    With `lengths` (one per item), the epoch's clips (those the permutation keeps) are sorted by length, ties in
    permutation order, cut into global batches, and the batches shuffled by (seed, epoch): fairseq's bucketing
    (`ordered_indices` sorts by size with random ties; `batch_by_size` cuts consecutive runs; the epoch iterator
    shuffles the batches), here with a fixed clip count per batch. Ranks then get clips of similar length too.
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
        lengths: Sequence[int] | None = None,
    ):
        if batch_size <= 0 or world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"bad sharding: batch_size={batch_size}, rank={rank}, world_size={world_size}")
        global_batch = batch_size * world_size
        if num_items <= 0 or (drop_last and num_items < global_batch):
            raise MaebenchError(
                f"only {num_items} clips for a batch of {batch_size} x {world_size} rank(s); "
                "use a smaller batch size or more data"
            )
        if lengths is not None and len(lengths) != num_items:
            raise ValueError(f"{len(lengths)} lengths for {num_items} items")
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
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
        order = order[:total]  # the clips dropped by drop_last are random ones, whatever their length
        if self.lengths is not None:
            order = order[np.argsort(self.lengths[order], kind="stable")]
        order = order.reshape(num_batches, self.world_size, self.batch_size)
        if self.lengths is not None:
            order = order[np.random.default_rng([self.seed, epoch, _BATCH_STREAM]).permutation(num_batches)]
        return order[:, self.rank, :]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        for batch in self.epoch_order(epoch)[self.batch_in_epoch :]:
            yield [(int(index), epoch) for index in batch]

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.batch_in_epoch


@dataclass
class ClipBatch:
    """A batch of good clips (wavs[B, N] float32, lens[B] valid samples) and the paths of dropped bad items.

    Cropped to the shortest clip, every lens equals N; padded to a fixed length, clips shorter than N are zero
    after lens."""

    wavs: Tensor
    lens: Tensor
    skipped: list[str] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)  # item index of each row: names the files of a batch

    def pin_memory(self) -> ClipBatch:
        """Called by the DataLoader when pin_memory=True (custom batch types must pin themselves)."""
        return ClipBatch(self.wavs.pin_memory(), self.lens.pin_memory(), self.skipped, self.indices)

    def without(self, items: Sequence[AudioItem], drop: set[str]) -> ClipBatch:
        """This batch less the rows whose file is in `drop` (those files join `skipped`); the batch itself when
        none is. The other rows keep their crops, so the rest of the run sees the data it would have seen."""
        keep = [row for row, index in enumerate(self.indices) if str(items[index].path) not in drop]
        if len(keep) == len(self.indices):
            return self
        dropped = [str(items[index].path) for row, index in enumerate(self.indices) if row not in keep]
        rows = torch.tensor(keep, dtype=torch.long)
        return ClipBatch(self.wavs[rows], self.lens[rows], [*self.skipped, *dropped],
                         [self.indices[row] for row in keep])

    def __len__(self) -> int:
        return self.wavs.shape[0]


@dataclass(frozen=True)
class CollateClips:
    """The collate step: drop bad items, then crop (and, for a fixed length, zero-pad) every clip to one length.

    `crop_to_shortest`: that length is the batch's shortest good clip, at most `clip_samples` (MAE-AST);
    otherwise it is `clip_samples` (SSAST). Each crop offset is `crop_offset(len, length, seed, epoch, index)`,
    or 0 (the clip's start) without `random_crop`.
    A plain picklable object, so DataLoader workers can run it.
    """

    clip_samples: int
    seed: int = 0
    crop_to_shortest: bool = False
    random_crop: bool = True

    def __call__(self, samples: Sequence[tuple[Tensor, tuple[int, int], str | None]]) -> ClipBatch:
        if not samples:
            raise ValueError("collate got an empty batch")
        good = [(wav, key) for wav, key, error in samples if error is None]
        skipped = [error for _, _, error in samples if error is not None]
        length = self.clip_samples
        if self.crop_to_shortest and good:
            length = min(length, min(wav.numel() for wav, _ in good))
        wavs = torch.zeros(len(good), length, dtype=torch.float32)
        lens = torch.zeros(len(good), dtype=torch.long)
        for row, (wav, (index, epoch)) in enumerate(good):
            start = 0
            if self.random_crop:
                start = crop_offset(wav.numel(), length, seed=self.seed, epoch=epoch, index=index)
            piece = wav[start : start + length]
            wavs[row, : piece.numel()] = piece
            lens[row] = piece.numel()
        return ClipBatch(wavs, lens, skipped, [index for _, (index, _) in good])


def bucket_lengths(items: Sequence[AudioItem], clip_samples: int) -> list[int] | None:
    """Sort keys for bucketing: each clip's recorded length capped at `clip_samples` (the public code sizes clips
    as min(size, max_sample_size): mae_ast_dataset.py `size`); None when any item's length is unknown.

    Lengths are counted at each file's own rate, as in a fairseq manifest: a corpus mixing rates buckets less
    tightly (the crop to the shortest clip still removes all padding)."""
    if not items or any(item.num_samples is None for item in items):
        return None
    return [min(int(item.num_samples), clip_samples) for item in items]  # type: ignore[arg-type]


def loader_options(cfg: PretrainConfig) -> dict[str, Any]:
    """The data settings of `cfg` as `build_pretrain_loader` keywords (batch length resolved per model family)."""
    data = cfg.data
    return {"clip_seconds": data.clip_seconds, "min_seconds": data.min_seconds,
            "crop_to_shortest": batch_length(cfg) == "shortest", "bucket": data.bucket, "fixed_crop": data.fixed_crop}


def build_pretrain_loader(
    items: Sequence[AudioItem],
    *,
    clip_seconds: float,
    batch_size: int,
    num_workers: int,
    seed: int,
    min_seconds: float = 0.0,
    crop_to_shortest: bool = False,
    bucket: bool = False,
    fixed_crop: str = "start",
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
    batch_in_epoch: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader of ClipBatch for this rank, from (epoch, batch_in_epoch) to the end of that epoch.

    Clips are at most `clip_seconds` long; files under `min_seconds` are skipped. Batches are randomly cropped to
    their shortest clip (`crop_to_shortest`) or cut (`fixed_crop`: "start" or "random") and padded to
    `clip_seconds` of frames; `bucket` groups clips
    of similar recorded length when cropping to the shortest and every length is known (a .tsv manifest).
    The trainer counts the batches it takes and rebuilds the loader for the next epoch or on resume; the sampler
    is reachable as `loader.batch_sampler` (e.g. for `batches_per_epoch()`).
    """
    sampler, collate = batch_plan(items, clip_seconds=clip_seconds, batch_size=batch_size, seed=seed,
                                  crop_to_shortest=crop_to_shortest, bucket=bucket, fixed_crop=fixed_crop, rank=rank,
                                  world_size=world_size, epoch=epoch, batch_in_epoch=batch_in_epoch)
    return DataLoader(
        PretrainClips(items, min_samples=round(min_seconds * SAMPLE_RATE)),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def batch_plan(
    items: Sequence[AudioItem],
    *,
    clip_seconds: float,
    batch_size: int,
    seed: int,
    crop_to_shortest: bool = False,
    bucket: bool = False,
    fixed_crop: str = "start",
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
    batch_in_epoch: int = 0,
) -> tuple[ResumableBatchSampler, CollateClips]:
    """Which clips go in which batch (the sampler, positioned) and how a batch is cut (the collate step): the
    rules every loader shares, so the torch and fairseq2 loaders deliver the same batches."""
    if round(clip_seconds * SAMPLE_RATE) <= 0:
        raise MaebenchError(f"clip length {clip_seconds} s is too short; use a positive data.clip_seconds")
    lengths = bucket_lengths(items, round(clip_seconds * SAMPLE_RATE)) if bucket and crop_to_shortest else None
    sampler = ResumableBatchSampler(
        len(items), batch_size, seed=seed, rank=rank, world_size=world_size, lengths=lengths
    )
    sampler.set_position(epoch, batch_in_epoch)
    return sampler, _collate(clip_seconds, seed, crop_to_shortest, fixed_crop)


def _collate(clip_seconds: float, seed: int, crop_to_shortest: bool, fixed_crop: str) -> CollateClips:
    clip_samples = round(clip_seconds * SAMPLE_RATE) if crop_to_shortest else fixed_clip_samples(clip_seconds)
    random_crop = crop_to_shortest or fixed_crop == "random"
    return CollateClips(clip_samples, seed=seed, crop_to_shortest=crop_to_shortest, random_crop=random_crop)


def build_validation_loader(items: Sequence[AudioItem], *, clip_seconds: float, batch_size: int, num_workers: int,
                            seed: int, min_seconds: float = 0.0, crop_to_shortest: bool = False,
                            fixed_crop: str = "start", **_unused: Any) -> DataLoader:
    """Every held-out clip once, in list order, in batches of `batch_size` (the last may be smaller), cut as the
    training batches are (epoch 0's crops): the same batches at every check. Takes `loader_options` keywords."""
    keys = [[(index, 0) for index in range(start, min(start + batch_size, len(items)))]
            for start in range(0, len(items), batch_size)]
    return DataLoader(PretrainClips(items, min_samples=round(min_seconds * SAMPLE_RATE)), batch_sampler=keys,
                      num_workers=num_workers, collate_fn=_collate(clip_seconds, seed, crop_to_shortest, fixed_crop))
