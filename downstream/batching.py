"""Padded batches of evaluation clips, and pooling over their valid frames.

`eval_batches` reads a task's examples cropped to its evaluation length (optionally in DataLoader workers), pads
each clip to the model's minimum input (`Upstream.min_input_samples`) so every clip yields a frame, and groups
them longest-first under an item and a padded-sample budget, so batches carry little padding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from maebench.upstream.interface import Upstream


def masked_mean(hidden: Tensor, lens: Tensor) -> Tensor:
    """Mean over the first `lens[b]` frames of each item: (B, T, D), (B,) -> (B, D)."""
    mask = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lens.to(hidden.device)[:, None]
    summed = (hidden * mask[..., None].to(hidden.dtype)).sum(dim=1)
    return summed / lens.to(hidden.device).clamp(min=1)[:, None].to(hidden.dtype)


def pad_batch(wavs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Right-pad 1-D waveforms with zeros: (B, max N) and their lengths (B,)."""
    lens = torch.tensor([w.numel() for w in wavs], dtype=torch.long)
    batch = torch.zeros(len(wavs), int(lens.max()))
    for row, wav in enumerate(wavs):
        batch[row, : wav.numel()] = wav
    return batch, lens


def read_for_eval(task, example, max_samples: int | None, min_samples: int) -> Tensor:
    """The evaluation waveform: the first `max_samples`, zero-padded to `min_samples` so every clip yields a frame."""
    wav = task.read(example)
    if max_samples is not None:
        wav = wav[:max_samples]
    if wav.numel() < min_samples:
        wav = torch.nn.functional.pad(wav, (0, min_samples - wav.numel()))
    return wav


def eval_max_samples(upstream: Upstream, task) -> int | None:
    """The task's evaluation crop in samples (None: whole clips)."""
    return None if task.max_eval_seconds is None else int(task.max_eval_seconds * int(upstream.sample_rate))


def length_batches(lengths: Sequence[int], batch_size: int, batch_samples: int) -> list[list[int]]:
    """Indices grouped longest-first into batches of at most `batch_size` items and `batch_samples` padded samples
    (one over-long item still forms a batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for index in order:
        current = batches[-1] if batches else None
        if current and len(current) < batch_size and (len(current) + 1) * lengths[current[0]] <= batch_samples:
            current.append(index)
        else:
            batches.append([index])
    return batches


class _ExampleAudio(torch.utils.data.Dataset):
    """Waveforms of `examples` cropped to the task's evaluation length, for DataLoader workers."""

    def __init__(self, task, examples: Sequence, max_samples: int | None, min_samples: int):
        self.task, self.examples, self.max_samples, self.min_samples = task, examples, max_samples, min_samples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[int, Tensor]:
        return index, read_for_eval(self.task, self.examples[index], self.max_samples, self.min_samples)


def eval_batches(
    upstream: Upstream, task, examples: Sequence, *, batch_size: int = 16, batch_seconds: float = 160.0,
    num_workers: int = 0,
) -> Iterator[tuple[list[int], Tensor, Tensor]]:
    """(indices into `examples`, padded waveforms (B, N), lengths (B,)) of evaluation-cropped clips, read in chunks
    (optionally by DataLoader workers) and length-sorted within each chunk so batches carry little padding without
    holding a whole split in memory."""
    dataset = _ExampleAudio(task, examples, eval_max_samples(upstream, task), upstream.min_input_samples())
    chunk = max(batch_size * 16, 256)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=chunk, shuffle=False, num_workers=num_workers, collate_fn=list,
    )
    for items in loader:
        lengths = [wav.numel() for _, wav in items]
        for group in length_batches(lengths, batch_size, int(batch_seconds * int(upstream.sample_rate))):
            wavs, lens = pad_batch([items[i][1] for i in group])
            yield [items[i][0] for i in group], wavs, lens
