"""Fine-tuning augmentations as SSAST applies them (YuanGongND/ssast src/dataloader.py `__getitem__`): SpecAugment on
the filterbank before normalisation, noise and a time roll after it, and waveform mixup."""

from __future__ import annotations

import torch
from torch import Tensor


class SpecAugment:
    """One frequency mask and one time mask per item (widths uniform in [0, freqm) and [0, timem)), zeroed on the
    (B, T, F) filterbank before the model's normalisation, as SSAST's data loader does (torchaudio FrequencyMasking /
    TimeMasking, dataloader.py lines 184-195).

    `noise=True` adds `NoiseRoll` after the masks, for upstreams that take no `input_augment` (the fine-tuning probe
    installs `NoiseRoll` as `upstream.input_augment` instead, after normalisation, where SSAST adds it).
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
        return NoiseRoll()(fbank) if self.noise else fbank


class NoiseRoll:
    """SSAST's noise augmentation on the normalised (B, T, F) input, drawn per clip as its data loader does per item
    (dataloader.py lines 204-206): `x + U(0, 1) noise * scale` with scale ~ U(0, 0.1), then a roll along time by an
    integer shift in [-10, 9] (np.random.randint(-10, 10)), wrapping frames around the clip's input."""

    def __call__(self, x: Tensor) -> Tensor:
        batch, frames, _ = x.shape
        scale = torch.rand(batch, 1, 1, device=x.device, dtype=x.dtype) / 10
        x = x + torch.rand_like(x) * scale
        shifts = torch.randint(-10, 10, (batch, 1), device=x.device)
        source = (torch.arange(frames, device=x.device)[None, :] - shifts) % frames  # out[t] = x[t - shift]
        return x.gather(1, source[..., None].expand(-1, -1, x.shape[2]))


def mixup(wavs: Tensor, lens: Tensor, targets: Tensor, probability: float, generator: torch.Generator
          ) -> tuple[Tensor, Tensor, Tensor]:
    """SSAST/AST waveform mixup (dataloader.py `_wav2fbank` with two files): each item, with `probability`, is mixed
    with a random other item of the batch (the reference draws from the whole training set), lambda ~ Beta(10, 10),
    targets mixed with the same lambda. The partner is zero-padded or cut to the item's own length, so lengths are
    unchanged, as in the reference."""
    batch = wavs.shape[0]
    if probability <= 0 or batch < 2:
        return wavs, lens, targets
    chosen = torch.rand(batch, generator=generator) < probability
    partners = torch.randint(0, batch, (batch,), generator=generator)
    lam = torch.distributions.Beta(10.0, 10.0).sample((batch,))
    lam = torch.where(chosen, lam, torch.ones(batch))
    inside = (torch.arange(wavs.shape[1])[None, :] < lens[:, None]).to(wavs.dtype)
    mixed = lam[:, None] * wavs + (1 - lam[:, None]) * wavs[partners] * inside
    mixed_targets = lam[:, None] * targets + (1 - lam[:, None]) * targets[partners]
    return mixed, lens, mixed_targets
