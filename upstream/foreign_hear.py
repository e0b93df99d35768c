"""Any HEAR-API model as a maebench Upstream: `load("hear:MODULE")` or `load("hear:MODULE:WEIGHTS")`.

A HEAR module (hearbenchmark.com: `load_model(path)`, `get_scene_embeddings(audio, model)`,
`get_timestamp_embeddings(audio, model)`, a torch model with `sample_rate`, `scene_embedding_size`,
`timestamp_embedding_size`) is imported by name, e.g. `hear:hearbaseline`, or `hear:maebench.hear:CKPT` for
maebench's own HEAR wrapper. The HEAR calls take equal-length batches, so a padded maebench batch is cut back to
each clip's length and clips of equal length are embedded together, `batch_size` at a time.

- `embedding="scene"` (the default; utterance probes): one embedding per clip, as a single output frame. A clip
  longer than `chunk_seconds` is embedded in chunks whose scene embeddings are averaged, weighted by chunk length
  (memory stays bounded; for clips under the limit this is exactly the module's scene embedding).
- `embedding="timestamp"` (frame-level use): the module's timestamp embeddings, chunk after chunk, as frames.

Audio is resampled from 16 kHz to the module's rate when they differ. HEAR gives one embedding, so num_layers = 1.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from maebench.errors import MaebenchError

from .interface import Features, Upstream

__all__ = ["PREFIX", "HearUpstream", "load_hear", "parse_hear_spec"]

PREFIX = "hear:"
_API = ("load_model", "get_scene_embeddings", "get_timestamp_embeddings")


def parse_hear_spec(spec: str) -> tuple[str, str | None]:
    """'hear:MODULE[:WEIGHTS]' -> (MODULE, WEIGHTS or None); WEIGHTS may itself contain ':'."""
    if not spec.startswith(PREFIX):
        raise MaebenchError(f"{spec!r} is not a HEAR upstream; write hear:MODULE or hear:MODULE:WEIGHTS")
    module, _, weights = spec[len(PREFIX):].partition(":")
    if not module:
        raise MaebenchError(f"{spec!r}: no HEAR module name; write e.g. hear:hearbaseline")
    if not all(part.isidentifier() for part in module.split(".")):  # ".relative", "a..b", "my-module"
        raise MaebenchError(f"{spec!r}: {module!r} is not an importable module name; write an absolute dotted name "
                            "such as hear:hearbaseline or hear:mypackage.mymodule")
    return module, (weights or None)


def _import_hear_module(name: str) -> Any:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and name.startswith(err.name):
            raise MaebenchError(f"HEAR module {name!r} is not installed; pip install it (e.g. pip install "
                                f"{name.split('.')[0]}) or put it on PYTHONPATH") from None
        raise
    missing = [f for f in _API if not callable(getattr(module, f, None))]
    if missing:
        raise MaebenchError(f"{name} is not a HEAR module: it lacks {', '.join(missing)}")
    return module


class HearUpstream(Upstream):
    """A HEAR module's model behind the maebench interface (see the module docstring)."""

    family = "hear"

    def __init__(self, module_name: str, weights: str | None = None, *, embedding: str = "scene",
                 chunk_seconds: float = 30.0, batch_size: int = 16, min_seconds: float = 0.1,
                 **options: Any) -> None:
        super().__init__()
        if embedding not in ("scene", "timestamp"):
            raise MaebenchError(f"HEAR embedding={embedding!r}: use 'scene' or 'timestamp'")
        if chunk_seconds <= 0 or batch_size < 1 or min_seconds < 0:
            raise MaebenchError("HEAR options: chunk_seconds > 0, batch_size >= 1 and min_seconds >= 0 required")
        self.module_name, self.embedding = module_name, embedding
        if weights is not None and Path(weights).expanduser().exists():
            weights = str(Path(weights).expanduser().resolve())
        self.weights, self.options = weights, dict(options)
        self.chunk_seconds, self.batch_size, self.min_seconds = float(chunk_seconds), int(batch_size), min_seconds
        self.api = _import_hear_module(module_name)
        model = self.api.load_model(weights, **options) if weights is not None else self.api.load_model(**options)
        if not isinstance(model, nn.Module):
            raise MaebenchError(f"hear:{module_name}: load_model returned {type(model).__name__}, not a torch "
                                "nn.Module; only torch HEAR models are supported")
        self.hear_model = model.eval()
        self.model_rate = int(model.sample_rate)
        size = model.scene_embedding_size if embedding == "scene" else model.timestamp_embedding_size
        self.hidden_size, self.num_layers = int(size), 1
        self.downsample_rate = self.sample_rate if embedding == "scene" else self._timestamp_hop()

    def _device(self) -> torch.device:
        tensor = next(self.hear_model.parameters(), None)
        if tensor is None:
            tensor = next(self.hear_model.buffers(), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    def _timestamp_hop(self) -> int:
        """Samples (at 16 kHz) between timestamp embeddings, measured on up to 2 s of silence."""
        probe = torch.zeros(1, int(min(2.0, self.chunk_seconds) * self.sample_rate))
        with torch.no_grad():
            _, stamps = self._call(self.api.get_timestamp_embeddings, probe)
        stamps = torch.as_tensor(stamps, dtype=torch.float64).reshape(-1)
        if stamps.numel() < 2:
            return self.sample_rate
        return max(1, round(float(stamps.diff().median()) * self.sample_rate / 1000.0))

    def min_input_samples(self) -> int:
        return max(1, int(self.min_seconds * self.sample_rate))

    def output_lens(self, lens: Tensor) -> Tensor:
        if self.embedding == "scene":
            return torch.ones_like(lens)
        return super().output_lens(lens)

    def _call(self, function: Callable, audio: Tensor) -> Any:
        """`function(audio, model)` on the model's device and rate."""
        audio = audio.to(self._device(), torch.float32)
        if self.model_rate != self.sample_rate:
            import torchaudio.functional as AF

            audio = AF.resample(audio, self.sample_rate, self.model_rate)
        return function(audio, self.hear_model)

    def _chunks(self, length: int) -> list[tuple[int, int]]:
        size = max(1, int(self.chunk_seconds * self.sample_rate))
        return [(start, min(length, start + size)) for start in range(0, length, size)]

    def _embed_equal(self, audio: Tensor) -> list[Tensor]:
        """Per clip of an equal-length (n, L) batch: (1, D) scene or (T, D) timestamp embeddings."""
        pieces: list[list[tuple[int, Tensor]]] = [[] for _ in range(audio.shape[0])]
        for start, stop in self._chunks(audio.shape[1]):
            for first in range(0, audio.shape[0], self.batch_size):
                part = audio[first : first + self.batch_size, start:stop]
                if self.embedding == "scene":
                    out = torch.as_tensor(self._call(self.api.get_scene_embeddings, part))[:, None]
                else:
                    out = torch.as_tensor(self._call(self.api.get_timestamp_embeddings, part)[0])
                for i, emb in enumerate(out):
                    pieces[first + i].append((stop - start, emb.float()))
        if self.embedding == "timestamp":
            return [torch.cat([emb for _, emb in clip]) for clip in pieces]
        return [sum(n * emb for n, emb in clip) / sum(n for n, _ in clip) for clip in pieces]

    def forward(self, wavs: Tensor, lens: Tensor) -> Features:
        lens_list = [int(n) for n in lens.tolist()]
        outputs: list[Tensor | None] = [None] * len(lens_list)
        for length in sorted(set(lens_list)):
            rows = [i for i, n in enumerate(lens_list) if n == length]
            for row, emb in zip(rows, self._embed_equal(wavs[rows, :length]), strict=True):
                outputs[row] = emb.to(wavs.device)
        frames = torch.tensor([o.shape[0] for o in outputs], device=wavs.device)
        hidden = nn.utils.rnn.pad_sequence(outputs, batch_first=True)
        return Features(hidden_states=[hidden], lens=frames)

    def to_config(self) -> dict[str, Any]:
        """Identity for results and the feature cache (with the weights' hash, see registry.fingerprint)."""
        return {"module": self.module_name, "weights": self.weights, "embedding": self.embedding,
                "chunk_seconds": self.chunk_seconds, "options": {k: str(v) for k, v in self.options.items()}}


def load_hear(spec: str, **options: Any) -> HearUpstream:
    """`hear:MODULE[:WEIGHTS]` as an Upstream in eval mode; keywords: embedding, chunk_seconds, batch_size,
    min_seconds, and anything else for the module's load_model."""
    module, weights = parse_hear_spec(spec)
    return HearUpstream(module, weights, **options)
