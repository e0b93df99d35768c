"""SSAST's fine-tuning input as its data loader makes it, for any model fine-tuned "under the SSAST library".

YuanGongND/ssast src/dataloader.py (`_wav2fbank`, `__getitem__`): Kaldi fbank of the mean-removed waveform
(hanning window, htk_compat), zero-pad or cut from the start to `target_frames`, SpecAugment (freqm / timem) on the
raw fbank, `(x - mean) / (2 * std)` with the task's statistics (padding frames become -mean / (2 * std)), then
noise + roll. `GlobalInput.normalise_padding=False` is the superb upstream's variant (no mean removal, normalise,
then exact zero padding; src/finetune/superb/upstream/ast/audio.py).

The MAE-AST authors evaluated AS / ESC-50 / KS2 "under the SSAST library with no settings changed"
(MAE-AST-Public README), so `MaeAst` takes this input in front of its own model (`MaeAst.use_global_input`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .frontend import SSAST_FBANK, fbank_batch
from .ssast import FEATURE_FBANK, GlobalInput

__all__ = ["ssast_loader_input"]


def ssast_loader_input(
    wavs: Tensor, lens: Tensor, spec: GlobalInput, *, augment: Callable[[Tensor], Tensor] | None = None,
    noise: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """(normalised (B, target_frames, 128) input, valid frames (B,) clamped to target_frames).

    `augment` (SpecAugment, before normalising) and `noise` (after) are applied when given: pass them in training
    only, as the reference's loader does for the training set alone."""
    fbank, frame_lens = fbank_batch(wavs, lens, SSAST_FBANK if spec.normalise_padding else FEATURE_FBANK)
    target = spec.target_frames
    if fbank.shape[1] < target:  # fbank_batch already zeroes each item's frames past its end
        fbank = F.pad(fbank, (0, 0, 0, target - fbank.shape[1]))
    fbank = fbank[:, :target]
    if augment is not None:
        fbank = augment(fbank)
    x = (fbank - spec.norm_mean) / (2.0 * spec.norm_std)
    if not spec.normalise_padding:  # superb upstream: normalise the clip, then pad with exact zeros
        x = x * (torch.arange(target, device=x.device)[None, :] < frame_lens[:, None])[..., None].to(x.dtype)
    if noise is not None:
        x = noise(x)
    return x, frame_lens.clamp(max=target)
