"""Pretraining batches through fairseq2's C++ data pipeline (`--loader fairseq2`): threads in one process.

The torch loader decodes in worker processes; this one reads files with `FileMapper`, decodes them with
`fairseq2.data.audio.AudioDecoder` (libsndfile) in a parallel `map` on fairseq2's thread pool, groups them with
`bucket`, cuts each batch with the torch loader's own `CollateClips`, and `prefetch`es batches, all in the training
process. What goes in a batch is not decided twice: the clip keys come from the torch loader's
`ResumableBatchSampler` (seeded shuffle per epoch, shard by rank, length bucketing), so both loaders deliver the
same batches, bit for bit where the decoders agree (libsndfile both: 16/24-bit and float WAV/FLAC decode to equal
floats; files at another rate go through the same `maebench.audio.resample`). Bad files are judged by the same
`checked_clip` rule and dropped by the same collate step, so they are skipped and counted exactly alike.

Resuming: the pipeline is rebuilt at the checkpoint's (epoch, batch_in_epoch), exactly as the torch loader is.
fairseq2's own `DataPipeline.state_dict()` is not what a checkpoint keeps: with `strict=False` it records the
read-ahead position, so a restored pipeline silently skips every batch that was prefetched but not yet trained
on; with `strict=True` it pickles those prefetched batches (decoded audio, tens to hundreds of MB per rank, and
Python objects that `torch.load(weights_only=True)` refuses). The position is a few integers, exact, and valid for
any number of processes and for either loader.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from maebench.errors import MaebenchError
from maebench.manifest import AudioItem
from maebench.pretrain_data import (
    MIN_SAMPLES,
    ClipBatch,
    CollateClips,
    ResumableBatchSampler,
    batch_plan,
    checked_clip,
)
from maebench.upstream.frontend import SAMPLE_RATE

__all__ = ["Fairseq2Loader", "DecodeClip", "build_fairseq2_loader", "fairseq2_available", "require_fairseq2"]



def install_hint(python: tuple[int, ...] = sys.version_info[:2]) -> str:
    """How to get fairseq2 on this Python: fairseq2n 0.8.1, its native part, ships wheels for CPython 3.10-3.12 only
    (so the `fairseq2` extra installs nothing on 3.13 and later)."""
    if tuple(python[:2]) >= (3, 13):
        version = ".".join(map(str, python[:2]))
        return (f"--loader fairseq2 needs fairseq2, and fairseq2n 0.8.1 (its native part) has no wheel for Python "
                f"{version}: in a Python 3.10-3.12 environment, pip install -e '.[fairseq2]' (and the system "
                "libsndfile); or use --loader torch")
    return ("--loader fairseq2 needs fairseq2: pip install -e '.[fairseq2]' (and the system libsndfile, "
            "e.g. apt-get install libsndfile1), or use --loader torch")


INSTALL_HINT = install_hint()
PREFETCH_BATCHES = 2


def fairseq2_available() -> bool:
    """Whether fairseq2's data pipeline imports (the package and its native library with libsndfile)."""
    try:
        import fairseq2.data.audio  # noqa: F401
        import fairseq2.data.data_pipeline  # noqa: F401
    except (ImportError, OSError):  # OSError: fairseq2n found but a shared library (libsndfile, tbb) is missing
        return False
    return True


def require_fairseq2() -> None:
    """A one-line MaebenchError saying how to install fairseq2 when it is missing."""
    if not fairseq2_available():
        raise MaebenchError(INSTALL_HINT)


class DecodeClip:
    """Key (index, epoch) -> what `PretrainClips` returns for it: (whole clip float32 16 kHz mono, key, None), or
    (empty, key, path) for a file that is missing, unreadable, non-finite or too short.

    Runs on fairseq2's threads; FileMapper and AudioDecoder are fairseq2's native objects, shared by every call.
    """

    def __init__(self, items: Sequence[AudioItem], min_samples: int = MIN_SAMPLES):
        from fairseq2.data.audio import AudioDecoder
        from fairseq2.data.data_pipeline import FileMapper

        self.paths = [str(item.path) for item in items]
        self.min_samples = max(int(min_samples), MIN_SAMPLES)
        self.file_mapper = FileMapper()
        self.decoder = AudioDecoder(keepdim=True, dtype=torch.float32)

    def __call__(self, key: Sequence[int]) -> tuple[Tensor, tuple[int, int], str | None]:
        index, epoch = int(key[0]), int(key[1])
        path = self.paths[index]
        try:
            wav = self._decode(path)
        except Exception:  # missing (ByteStreamError), undecodable or empty (ValueError): skipped, never fatal
            wav = None
        return checked_clip(wav, (index, epoch), path, self.min_samples)

    def _decode(self, path: str) -> Tensor:
        from maebench.audio import resample

        decoded = self.decoder(self.file_mapper(path)["data"])
        frames = decoded["waveform"]  # (samples, channels), as soundfile's always_2d
        # one channel is taken as is (equal to its mean); more are mixed by the mean, as maebench.audio.read_audio
        wav = frames[:, 0] if frames.shape[1] == 1 else frames.mean(dim=1)
        rate = int(decoded["sample_rate"])
        return resample(wav, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else wav


class _CollateKeyed:
    """fairseq2 hands a bucket over as a list; the collate step (and pinning for CUDA) is the torch loader's."""

    def __init__(self, collate: CollateClips, pin_memory: bool) -> None:
        self.collate, self.pin_memory = collate, pin_memory

    def __call__(self, samples: list[Any]) -> ClipBatch:
        batch = self.collate([(wav, tuple(key), error) for wav, key, error in samples])
        return batch.pin_memory() if self.pin_memory else batch


class Fairseq2Loader:
    """Batches of one rank from (epoch, batch_in_epoch) to the end of that epoch, like the torch DataLoader the
    trainer otherwise gets: iterable of ClipBatch, `len`, and the positioned sampler as `batch_sampler`."""

    def __init__(self, pipeline: Any, batch_sampler: ResumableBatchSampler) -> None:
        self.pipeline, self.batch_sampler = pipeline, batch_sampler

    def __iter__(self) -> Iterator[ClipBatch]:
        return iter(self.pipeline)

    def __len__(self) -> int:
        return len(self.batch_sampler)


def build_fairseq2_loader(
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
    prefetch: int = PREFETCH_BATCHES,
) -> Fairseq2Loader:
    """`build_pretrain_loader`'s batches (same keywords) from a fairseq2 pipeline; `num_workers` decoding threads
    (0 counts as 1: fairseq2 always decodes off the training thread's critical path through `prefetch`)."""
    require_fairseq2()
    from fairseq2.data.data_pipeline import read_sequence

    sampler, collate = batch_plan(items, clip_seconds=clip_seconds, batch_size=batch_size, seed=seed,
                                  crop_to_shortest=crop_to_shortest, bucket=bucket, fixed_crop=fixed_crop, rank=rank,
                                  world_size=world_size, epoch=epoch, batch_in_epoch=batch_in_epoch)
    keys = [[index, epoch] for batch in sampler for index, epoch in batch]
    pipeline = (
        read_sequence(keys)
        .map(DecodeClip(items, round(min_seconds * SAMPLE_RATE)), num_parallel_calls=max(1, num_workers))
        .bucket(batch_size)
        .map(_CollateKeyed(collate, pin_memory))
        .prefetch(max(1, prefetch))
        .and_return()
    )
    return Fairseq2Loader(pipeline, sampler)
