"""Shared test helpers: signals with structure, padded batches, wav writers, tiny models, one-line error checks.

Imported by test modules as `from helpers import ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

SR = 16000


def speechlike(num_samples: int, seed: int = 0) -> torch.Tensor:
    """Harmonics with a wandering pitch plus noise: an fbank with structure in time and frequency, like speech."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(num_samples) / SR
    f0 = 120 + 40 * torch.sin(2 * math.pi * 1.3 * t + seed)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / SR
    wav = sum(torch.sin(k * phase) / k for k in range(1, 12))
    return (0.3 * wav + 0.05 * torch.randn(num_samples, generator=g)).float()


def padded_batch(waves: list[torch.Tensor], fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D waveforms with `fill`: (B, max N) and the lengths (B,)."""
    lens = torch.tensor([len(w) for w in waves])
    batch = torch.full((len(waves), int(lens.max())), fill, dtype=waves[0].dtype)
    for row, wav in zip(batch, waves, strict=True):
        row[: len(wav)] = wav
    return batch, lens


def speech_batch(lengths: list[int], fill: float = 0.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of `speechlike` clips of `lengths` samples (item i seeded with seed + i)."""
    return padded_batch([speechlike(n, seed=seed + i) for i, n in enumerate(lengths)], fill)


def save_in_run(model, run_dir: Path, step: int) -> Path:
    """`model` saved as checkpoint `step` of a training run directory, in the documented layout
    RUN/checkpoints/step_XXXXXXXX/ (written out here, not taken from the code under test)."""
    from maebench.upstream import save_upstream

    return save_upstream(model, run_dir / "checkpoints" / f"step_{step:08d}")


def write_wav(path: Path, wav: np.ndarray | torch.Tensor, rate: int = SR, subtype: str | None = None) -> Path:
    """Write a waveform (samples,) or (samples, channels); parents are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = wav.numpy() if isinstance(wav, torch.Tensor) else wav
    sf.write(str(path), data, rate, subtype=subtype)
    return path


def write_tone_clips(directory: Path, count: int = 24, seed: int = 0) -> Path:
    """`count` short 16 kHz clips (a gliding tone + noise, 0.56-1 s) named clip_000.wav..., so a loss can fall."""
    rng = np.random.default_rng(seed)
    t = np.arange(SR) / SR
    for i in range(count):
        freq = rng.uniform(200, 2000)
        wav = 0.3 * np.sin(2 * np.pi * freq * t * (1 + 0.5 * t)) + 0.05 * rng.standard_normal(t.size)
        write_wav(directory / f"clip_{i:03d}.wav", wav[: int(rng.integers(9000, 16000))].astype(np.float32))
    return directory


def one_line_error(excinfo, *needles: str) -> str:
    """The message of a raised MaebenchError: one line, containing every needle."""
    message = str(excinfo.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message
