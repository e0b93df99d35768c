"""Shared test helpers: signals with structure, padded batches, wav writers, tiny models, one-line error checks.

Imported by test modules as `from helpers import ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
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


# A HEAR module in the HEAR API's own terms (for tests): a fixed random projection of 20 ms frames, so every
# embedding depends on the audio; timestamps at frame centres; the scene embedding is the mean over frames.
TOY_HEAR_SOURCE = '''
import torch

class Model(torch.nn.Module):
    def __init__(self, sample_rate=16000, dim=8, seed=0):
        super().__init__()
        self.sample_rate = sample_rate
        self.hop = sample_rate // 50
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Parameter(torch.randn(self.hop, dim, generator=g))
        self.scene_embedding_size = self.timestamp_embedding_size = dim
        self.calls = []

    def frames(self, audio):
        self.calls.append(tuple(audio.shape))
        usable = audio.shape[1] // self.hop * self.hop
        return audio[:, :usable].reshape(audio.shape[0], -1, self.hop) @ self.proj

def load_model(model_file_path="", **kwargs):
    seed = int(open(model_file_path).read()) if model_file_path else 0
    return Model(seed=seed, **kwargs)

def get_timestamp_embeddings(audio, model):
    emb = model.frames(audio)
    ts = (torch.arange(emb.shape[1]) + 0.5) * model.hop * 1000.0 / model.sample_rate
    return emb, ts[None].expand(audio.shape[0], -1)

def get_scene_embeddings(audio, model):
    return model.frames(audio).mean(dim=1)
'''
TOY_HEAR_MODULE = "toy_hear_module"


def write_toy_hear_module(folder: Path) -> Path:
    """Write the toy HEAR module into `folder` (created) as toy_hear_module.py; put `folder` on sys.path to use it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TOY_HEAR_MODULE}.py").write_text(TOY_HEAR_SOURCE.lstrip())
    return folder


TORCHAUDIO_SHIM_NAMES = ("set_audio_backend", "get_audio_backend", "list_audio_backends", "sox_effects", "info", "load")


@contextmanager
def torchaudio_restored() -> Iterator[None]:
    """Undo, on exit, what maebench's torchaudio shim (installed by importing s3prl through maebench) added to the
    process-wide torchaudio module, so later test modules see torchaudio as it was."""
    import torchaudio

    saved = {name: getattr(torchaudio, name) for name in TORCHAUDIO_SHIM_NAMES if hasattr(torchaudio, name)}
    saved_module = sys.modules.get("torchaudio.sox_effects")
    try:
        yield
    finally:
        for name in TORCHAUDIO_SHIM_NAMES:
            if name in saved:
                setattr(torchaudio, name, saved[name])
            elif hasattr(torchaudio, name):
                delattr(torchaudio, name)
        if saved_module is None:
            sys.modules.pop("torchaudio.sox_effects", None)


# The tiny MAE-AST the pretraining tests train (a --set override): seconds per run on a CPU.
TINY_MODEL = "model.overrides={dim: 32, num_heads: 2, ffn_dim: 64, depth: 2, decoder_depth: 1}"


@pytest.fixture
def one_thread(monkeypatch):
    """One intra-op thread: the same reduction order in every run a test compares (and fast on a busy CPU).
    A test module makes it autouse with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
