"""Fine-tuning augmentations as SSAST applies them: SpecAugment (+ its noise) on the filterbank, waveform mixup."""

from __future__ import annotations

import torch
from torch import Tensor


class SpecAugment:
    """One frequency mask and one time mask per item (widths uniform in [0, freqm) and [0, timem)), zeroed on the
    (B, T, F) filterbank before the model's normalisation, as SSAST's data loader does; optional SSAST noise
    augmentation (uniform noise of a random scale up to 0.1 and a time roll of up to 10 frames).

    Installed as `upstream.fbank_augment` during fine-tuning (see `active`)."""

    def __init__(self, freqm: int, timem: int, noise: bool = False):
        self.freqm, self.timem, self.noise = int(freqm), int(timem), bool(noise)

    @property
    def active(self) -> bool:
        """Whether it changes anything (else the fine-tuning loop leaves the upstream's hook empty)."""
        return bool(self.freqm or self.timem or self.noise)

    @staticmethod
    def _band(batch: int, size: int, width: int, device) -> Tensor:
        widths = (torch.rand(batch, device=device) * width).long()
        starts = (torch.rand(batch, device=device) * (size - widths + 1).clamp(min=1)).long()
        positions = torch.arange(size, device=device)[None, :]
        return (positions >= starts[:, None]) & (positions < (starts + widths)[:, None])

    def __call__(self, fbank: Tensor) -> Tensor:
        batch, frames, bins = fbank.shape
        keep = torch.ones_like(fbank, dtype=torch.bool)
        if self.freqm > 0:
            keep &= ~self._band(batch, bins, self.freqm, fbank.device)[:, None, :]
        if self.timem > 0:
            keep &= ~self._band(batch, frames, self.timem, fbank.device)[:, :, None]
        fbank = fbank * keep
        if self.noise:
            scale = float(torch.rand(())) / 10
            fbank = fbank + torch.rand_like(fbank) * scale
            fbank = torch.roll(fbank, int(torch.randint(-10, 10, ())), dims=1)
        return fbank


def mixup(wavs: Tensor, lens: Tensor, targets: Tensor, probability: float, generator: torch.Generator
          ) -> tuple[Tensor, Tensor, Tensor]:
    """SSAST/AST waveform mixup: each item, with `probability`, is mixed with a random other item of the batch,
    lambda ~ Beta(10, 10), targets mixed with the same lambda (lengths become the longer of the two)."""
    batch = wavs.shape[0]
    if probability <= 0 or batch < 2:
        return wavs, lens, targets
    chosen = torch.rand(batch, generator=generator) < probability
    partners = torch.randint(0, batch, (batch,), generator=generator)
    lam = torch.distributions.Beta(10.0, 10.0).sample((batch,))
    lam = torch.where(chosen, lam, torch.ones(batch))
    mixed = lam[:, None] * wavs + (1 - lam[:, None]) * wavs[partners]
    mixed_targets = lam[:, None] * targets + (1 - lam[:, None]) * targets[partners]
    new_lens = torch.where(chosen, torch.maximum(lens, lens[partners]), lens)
    return mixed, new_lens, mixed_targets
