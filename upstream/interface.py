"""The Upstream interface: every model, ours or imported, turns padded 16 kHz waveforms into per-layer features.

Probes, the feature cache, the s3prl plugin, the HEAR module and `maebench compare` use only this interface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .frontend import SAMPLE_RATE, frames_to_samples


@dataclass
class Features:
    """Per-layer features of a padded batch.

    hidden_states: one (B, T, D) tensor per layer, all the same shape; frames at or past `lens[b]` are padding.
    lens: (B,) number of valid output frames per item.
    """

    hidden_states: list[Tensor]
    lens: Tensor
    # The model's final output over its whole input (e.g. SSAST's `v.norm` output over a fixed, padded grid of
    # target_length frames), pooled whole by SSAST's ft_avgtok head; None where the model has no such output.
    last_hidden_state: Tensor | None = None


@dataclass
class PretrainOutput:
    """What a pretraining forward returns: the loss to minimise and detached scalars to log."""

    loss: Tensor
    stats: dict[str, Tensor]


class Upstream(nn.Module):
    """Base class: `forward(wavs[B, N], lens[B]) -> Features`.

    Subclasses set `downsample_rate` (input samples per output frame), `hidden_size` (D) and `num_layers`
    (len(hidden_states)), and implement `forward` and `to_config` (a JSON-able dict that, with `family`,
    rebuilds the architecture through the registry). Models with a front end of their own override
    `min_input_samples` with its exact arithmetic.
    """

    family: str = ""
    sample_rate: int = SAMPLE_RATE
    # Set by the fine-tuning probe: applied to the (B, T, mel) filterbank in training mode (SpecAugment); models
    # with a filterbank front end honour it, others ignore it.
    fbank_augment: Callable[[Tensor], Tensor] | None = None
    # Set by the fine-tuning probe: applied in training mode to the normalised model input (SSAST's noise and roll)
    input_augment: Callable[[Tensor], Tensor] | None = None
    downsample_rate: int
    hidden_size: int
    num_layers: int

    def forward(self, wavs: Tensor, lens: Tensor) -> Features:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_config(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def output_lens(self, lens: Tensor) -> Tensor:
        """Valid output frames for inputs of `lens` samples (override where the front end differs)."""
        return torch.div(lens, self.downsample_rate, rounding_mode="floor").clamp(min=1)

    def min_input_samples(self) -> int:
        """The shortest input, in samples, that gives every layer at least one real output frame; shorter clips
        are zero-padded to it by the callers (feature cache, probes, the s3prl plugin).

        This default covers one output frame's stride plus one 25 ms fbank window (downsample_rate + 400).
        """
        return int(self.downsample_rate) + frames_to_samples(1)
