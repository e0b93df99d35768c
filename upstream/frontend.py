"""The models' front end: the batched, Kaldi-exact log-mel filterbank both MAE-AST and SSAST feed on.

The filterbank is model state (checkpoints record its FbankConfig), so it lives with the models. `fbank_batch`
runs on the model's device over a whole padded batch, because at pretraining speed a per-utterance CPU front end
would starve the GPU; it reproduces `torchaudio.compliance.kaldi.fbank` (snip_edges, no dither, no energy column)
to float32 rounding. This module is also the one home of the sample rate and of the frame arithmetic
(`num_frames`, `frames_to_samples`).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from maebench.errors import MaebenchError

__all__ = [
    "MAE_AST_FBANK",
    "SAMPLE_RATE",
    "SSAST_FBANK",
    "FbankConfig",
    "fbank_batch",
    "frames_to_samples",
    "mel_matrix",
    "num_frames",
]

SAMPLE_RATE = 16000  # Hz: every model, task and data loader works at this rate
_WINDOW_TYPES = ("povey", "hanning", "hamming", "rectangular")


# --------------------------------------------------------------------------------------------------------------
# Filterbank configuration
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FbankConfig:
    """Settings of a Kaldi log-mel filterbank (`torchaudio.compliance.kaldi.fbank` names in brackets).

    dither is always 0 and use_energy always False: both models were trained that way, and dither would make the
    features random. `htk_compat` only moves the energy column in Kaldi, so without energy it changes nothing; it
    is kept to record the original recipe. `remove_mean` subtracts the mean of each item's valid samples before
    framing (SSAST does this); with `remove_dc_offset` it changes nothing but rounding.
    """

    num_mel_bins: int = 128
    frame_length_ms: float = 25.0  # [frame_length]
    frame_shift_ms: float = 10.0  # [frame_shift]
    window_type: str = "povey"
    htk_compat: bool = False
    remove_mean: bool = False
    preemphasis: float = 0.97  # [preemphasis_coefficient]
    remove_dc_offset: bool = True
    low_freq: float = 20.0
    high_freq: float = 0.0  # <= 0: offset from Nyquist
    round_to_power_of_two: bool = True
    sample_rate: int = SAMPLE_RATE  # [sample_frequency]

    def __post_init__(self) -> None:
        if self.window_type not in _WINDOW_TYPES:
            raise MaebenchError(f"fbank window_type {self.window_type!r} is not one of {', '.join(_WINDOW_TYPES)}")
        if not 0.0 <= self.preemphasis <= 1.0:
            raise MaebenchError(f"fbank preemphasis {self.preemphasis} must be in [0, 1]")
        if self.window_size < 2 or self.window_shift < 1:
            raise MaebenchError(
                f"fbank frame_length_ms={self.frame_length_ms} / frame_shift_ms={self.frame_shift_ms} give an empty "
                f"window at {self.sample_rate} Hz; use longer frames"
            )
        if self.num_mel_bins < 4:
            raise MaebenchError(f"fbank num_mel_bins={self.num_mel_bins} must be at least 4")
        nyquist = self.sample_rate / 2
        high = self.high_freq if self.high_freq > 0 else nyquist + self.high_freq
        if not (0.0 <= self.low_freq < high <= nyquist):
            raise MaebenchError(
                f"fbank low_freq={self.low_freq} / high_freq={self.high_freq} do not fit under Nyquist ({nyquist} Hz);"
                " use 0 <= low_freq < high_freq <= Nyquist (high_freq <= 0 counts back from Nyquist)"
            )
        _ = self.fft_size  # raises for an odd FFT size

    @property
    def window_size(self) -> int:
        """Samples per frame (400 at 16 kHz / 25 ms); truncation as in Kaldi."""
        return int(self.sample_rate * self.frame_length_ms * 0.001)

    @property
    def window_shift(self) -> int:
        """Samples between frame starts (160 at 16 kHz / 10 ms)."""
        return int(self.sample_rate * self.frame_shift_ms * 0.001)

    @property
    def fft_size(self) -> int:
        size = self.window_size
        if self.round_to_power_of_two:
            size = 1 << (size - 1).bit_length()
        if size % 2:
            raise MaebenchError(f"fbank FFT size {size} is odd; set round_to_power_of_two=True")
        return size

    def kaldi_kwargs(self) -> dict:
        """The matching keyword arguments of `torchaudio.compliance.kaldi.fbank` (the reference implementation)."""
        return dict(
            num_mel_bins=self.num_mel_bins, frame_length=float(self.frame_length_ms),
            frame_shift=float(self.frame_shift_ms), window_type=self.window_type, htk_compat=self.htk_compat,
            preemphasis_coefficient=self.preemphasis, remove_dc_offset=self.remove_dc_offset,
            low_freq=self.low_freq, high_freq=self.high_freq, round_to_power_of_two=self.round_to_power_of_two,
            sample_frequency=float(self.sample_rate), dither=0.0, use_energy=False, snip_edges=True,
        )


MAE_AST_FBANK = FbankConfig(window_type="povey", htk_compat=False, remove_mean=False)
SSAST_FBANK = FbankConfig(window_type="hanning", htk_compat=True, remove_mean=True)


def num_frames(num_samples: int | Tensor, cfg: FbankConfig = MAE_AST_FBANK) -> int | Tensor:
    """Frames Kaldi makes from `num_samples` with snip_edges: 0 below one window, else 1 + (N - 400) // 160."""
    size, shift = cfg.window_size, cfg.window_shift
    if isinstance(num_samples, Tensor):
        n = num_samples.long()
        return torch.where(n >= size, torch.div(n - size, shift, rounding_mode="floor") + 1, torch.zeros_like(n))
    num_samples = int(num_samples)
    return 0 if num_samples < size else 1 + (num_samples - size) // shift


def frames_to_samples(num_frames: int, cfg: FbankConfig = MAE_AST_FBANK) -> int:
    """The fewest samples that give `num_frames` frames: (frames - 1) * hop + window (2800 for 16 frames); 0 for 0.

    The inverse of `num_frames`: num_frames(frames_to_samples(n)) == n and one sample fewer gives n - 1.
    """
    num_frames = int(num_frames)
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    return 0 if num_frames == 0 else (num_frames - 1) * cfg.window_shift + cfg.window_size


# --------------------------------------------------------------------------------------------------------------
# Batched filterbank
# --------------------------------------------------------------------------------------------------------------

_EPSILON = torch.finfo(torch.float32).eps  # Kaldi's floor before the log
_CPU_STEP_FRAMES = 2048  # frames per step and CPU thread: a cache-sized working set (~10 MB per thread)
_GPU_STEP_FRAMES = 1 << 18  # frames per step elsewhere: one step for any usual batch, bounded scratch (~1 GB)
_MEL_GROUPS = 8  # mel bins in 8 groups (16 each for 128 bins), each multiplied only with the FFT band it covers


@dataclass(frozen=True)
class _MelGroup:
    """Mel bins [mel0, mel1) draw only on interleaved (re^2, im^2) columns [col0, col1) of the spectrum."""

    mel0: int
    mel1: int
    col0: int
    col1: int
    weights: Tensor  # (col1 - col0, mel1 - mel0): each FFT bin's weight repeated for its re^2 and im^2


@dataclass(frozen=True)
class _FbankConstants:
    window: Tensor  # (window_size,) float32
    window_starts_at_zero: bool  # povey and hanning: a frame's first sample is multiplied by 0
    mel_groups: tuple[_MelGroup, ...]


_CACHE: dict[tuple[FbankConfig, str], _FbankConstants] = {}
_CACHE_LOCK = threading.Lock()


def _kaldi_window(cfg: FbankConfig) -> Tensor:
    """The analysis window in float64 (Kaldi's symmetric definitions: cosines over window_size - 1 steps)."""
    n = cfg.window_size
    if cfg.window_type == "rectangular":
        return torch.ones(n, dtype=torch.float64)
    if cfg.window_type == "hamming":
        return torch.hamming_window(n, periodic=False, alpha=0.54, beta=0.46, dtype=torch.float64)
    hann = torch.hann_window(n, periodic=False, dtype=torch.float64)
    return hann.pow(0.85) if cfg.window_type == "povey" else hann


def mel_matrix(cfg: FbankConfig) -> Tensor:
    """Kaldi's triangular mel weights as (fft_size // 2 + 1, num_mel_bins) float32; the Nyquist row is zero."""
    from torchaudio.compliance.kaldi import get_mel_banks

    banks, _ = get_mel_banks(cfg.num_mel_bins, cfg.fft_size, float(cfg.sample_rate), cfg.low_freq, cfg.high_freq,
                             100.0, -500.0, 1.0)
    mel = torch.zeros(cfg.fft_size // 2 + 1, cfg.num_mel_bins, dtype=torch.float32)
    mel[: banks.shape[1]] = banks.T.float()
    return mel


def _constants(cfg: FbankConfig, device: torch.device) -> _FbankConstants:
    """Window and banded mel weights on `device`, built once per (config, device); math is always float32."""
    key = (cfg, str(device))
    found = _CACHE.get(key)
    if found is not None:
        return found
    mel = mel_matrix(cfg)
    bounds = sorted({round(i * cfg.num_mel_bins / _MEL_GROUPS) for i in range(_MEL_GROUPS + 1)})
    groups = []
    for mel0, mel1 in zip(bounds[:-1], bounds[1:], strict=True):
        used = (mel[:, mel0:mel1] != 0).any(dim=1).nonzero().flatten()
        fft0, fft1 = (int(used.min()), int(used.max()) + 1) if len(used) else (0, 1)
        weights = mel[fft0:fft1, mel0:mel1].repeat_interleave(2, dim=0).contiguous().to(device)
        groups.append(_MelGroup(mel0, mel1, 2 * fft0, 2 * fft1, weights))
    window = _kaldi_window(cfg)
    found = _FbankConstants(window.float().to(device), bool(window[0] == 0), tuple(groups))
    with _CACHE_LOCK:
        _CACHE[key] = found
    return found


@contextlib.contextmanager
def _exact_float32(device: torch.device) -> Iterator[None]:
    """No autocast and full-precision float32 matmuls (no TF32 / bf16 passes), whatever the training code set.

    The matmul setting is global, so it is switched for the duration of the call and then put back, through the
    same API the caller used (torch raises if the legacy and the per-backend APIs are read in a mixed state).
    """
    with torch.no_grad(), torch.autocast(device.type, enabled=False), _ieee_matmuls():
        yield


@contextlib.contextmanager
def _ieee_matmuls() -> Iterator[None]:
    """float32 matmuls in IEEE precision for the duration, the caller's setting restored afterwards."""
    try:
        legacy = torch.get_float32_matmul_precision()
    except RuntimeError:  # precision was set per backend (torch >= 2.9 API): switch and restore those
        legacy = None
    if legacy == "highest":
        yield
        return
    if legacy is not None:
        torch.set_float32_matmul_precision("highest")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(legacy)
        return
    backends = [torch.backends.cuda.matmul, torch.backends.mkldnn.matmul]
    previous = [backend.fp32_precision for backend in backends]
    for backend in backends:
        backend.fp32_precision = "ieee"
    try:
        yield
    finally:
        for backend, value in zip(backends, previous, strict=True):
            backend.fp32_precision = value


def fbank_batch(wavs: Tensor, lens: Tensor, cfg: FbankConfig = MAE_AST_FBANK) -> tuple[Tensor, Tensor]:
    """Kaldi log-mel filterbank of a zero-padded batch: (feats[B, T, num_mel_bins], frame_lens[B]).

    T = num_frames(N) for the padded width N. Row b equals `kaldi.fbank(wavs[b, :lens[b]], **cfg.kaldi_kwargs())`
    (after subtracting the item's mean when cfg.remove_mean) on its first frame_lens[b] frames, in float32 math
    whatever the input dtype, and is zero after them. Runs on the input's device over the whole batch at once;
    on CPU it walks along time in cache-sized steps (never item by item).
    """
    if torch.compiler.is_compiling():  # inside torch.compile: one graph break here instead of seven below
        return torch.compiler.disable(fbank_batch)(wavs, lens, cfg)
    if wavs.dim() != 2:
        raise MaebenchError(f"fbank_batch expects wavs of shape (batch, samples), got {tuple(wavs.shape)}")
    batch, width = wavs.shape
    device = wavs.device
    lens = torch.as_tensor(lens, device=device)
    if lens.shape != (batch,):
        raise MaebenchError(f"fbank_batch expects lens of shape ({batch},), got {tuple(lens.shape)}")
    lens = lens.long().clamp(0, width)
    frames = num_frames(width, cfg)
    frame_lens = num_frames(lens, cfg)
    feats = torch.empty(batch, frames, cfg.num_mel_bins, device=device, dtype=torch.float32)
    if frames == 0 or batch == 0:
        return feats, frame_lens

    consts = _constants(cfg, device)
    with _exact_float32(device):
        x = wavs.to(torch.float32).contiguous()
        means = _item_means(x, lens) if cfg.remove_mean else None
        dc_terms = _frame_dc_terms(x, frames, cfg, means) if cfg.remove_dc_offset else None
        step_frames = _CPU_STEP_FRAMES * min(torch.get_num_threads(), 8) if device.type == "cpu" else _GPU_STEP_FRAMES
        step = max(1, step_frames // batch)
        scratch = _Scratch(batch, min(step, frames), cfg, device)
        # on CPU, skip the masking pass when every item fills the batch; on a GPU asking would cost a host sync
        any_short = device.type != "cpu" or bool((frame_lens < frames).any())
        for start in range(0, frames, step):
            stop = min(start + step, frames)
            out = feats[:, start:stop]
            _log_mel(x, means, dc_terms, start, stop, cfg, consts, scratch, out)
            if any_short:  # zero the frames past each item's end while they are still in cache
                past_end = torch.arange(start, stop, device=device) >= frame_lens[:, None]
                out.masked_fill_(past_end[..., None], 0.0)
    return feats, frame_lens


def _item_means(x: Tensor, lens: Tensor) -> Tensor:
    """Mean of each item's valid samples (SSAST subtracts it from the waveform before the filterbank)."""
    if x.device.type == "cpu" and bool((lens == x.shape[1]).all()):
        sums = x.sum(dim=1)  # every item fills the batch: no mask pass (torch's float32 sum is cascaded)
    else:
        valid = torch.arange(x.shape[1], device=x.device) < lens[:, None]
        sums = torch.where(valid, x, 0.0).sum(dim=1)
    return sums / lens.clamp_min(1)


def _frame_dc_terms(x: Tensor, frames: int, cfg: FbankConfig, means: Tensor | None) -> Tensor:
    """(1 - a) * mean of every frame, (B, frames): the whole DC removal, applied after pre-emphasis.

    Kaldi removes each frame's mean m before pre-emphasis: (x_j - m) - a (x_{j-1} - m) = (x_j - a x_{j-1}) -
    (1 - a) m, so frames can be cut from one pre-emphasised signal and shifted by (1 - a) m. Frame sums come from
    block sums over gcd(window, shift) samples (80 at 16 kHz), five per frame, instead of 400 adds per frame.
    """
    size, shift = cfg.window_size, cfg.window_shift
    block = math.gcd(size, shift)
    used = (frames - 1) * shift + size
    blocks = x.as_strided((x.shape[0], used // block, block), (x.stride(0), block, 1), x.storage_offset()).sum(-1)
    frame_means = blocks.unfold(1, size // block, shift // block).sum(-1).div_(size)
    if means is not None:
        frame_means.sub_(means[:, None])
    return frame_means.mul_(1.0 - cfg.preemphasis)


class _Scratch:
    """Per-call buffers reused by every time step, so CPU steps stay in cache and allocate nothing big."""

    def __init__(self, batch: int, step: int, cfg: FbankConfig, device: torch.device) -> None:
        span = (step - 1) * cfg.window_shift + cfg.window_size  # samples one step reads
        self.centered = torch.empty(batch, span, device=device) if cfg.remove_mean else None
        # zeros, not empty: column 0 is never written and meets a zero window weight, and 0 * garbage can be NaN
        self.emphasized = torch.zeros(batch, span, device=device) if cfg.preemphasis != 0.0 else None
        self.padded = torch.empty(batch * step, cfg.fft_size, device=device)
        self.padded[:, cfg.window_size:] = 0.0  # the FFT's zero padding; frame columns are rewritten every step


def _log_mel(x: Tensor, means: Tensor | None, dc_terms: Tensor | None, start: int, stop: int, cfg: FbankConfig,
             consts: _FbankConstants, scratch: _Scratch, out: Tensor) -> None:
    """Log-mel energies of frames [start, stop) of every item, written into `out` (B, stop - start, mel)."""
    batch, count = x.shape[0], stop - start
    size, shift, coef = cfg.window_size, cfg.window_shift, cfg.preemphasis
    span = (count - 1) * shift + size
    signal = x[:, start * shift:start * shift + span]
    if means is not None:
        signal = torch.sub(signal, means[:, None], out=scratch.centered[:, :span])
    if coef != 0.0:
        # (x_j - x_{j-1}) + (1 - a) x_{j-1}, not x_j - a x_{j-1}: keeps a DC offset out of the cancellation.
        # Column 0 is never read: a frame's first sample gets Kaldi's (1 - a) x_0 below (or a zero window weight).
        emphasized = scratch.emphasized[:, :span]
        torch.sub(signal[:, 1:], signal[:, :-1], out=emphasized[:, 1:])
        emphasized[:, 1:].add_(signal[:, :-1], alpha=1.0 - coef)
    else:
        emphasized = signal
    # (B, count, window_size) overlapping view: frame t starts at sample t * shift
    cut = emphasized.as_strided((batch, count, size), (emphasized.stride(0), shift, 1), emphasized.storage_offset())
    padded = scratch.padded[: batch * count].view(batch, count, -1)  # columns past window_size stay zero
    framed = padded[..., :size]
    dc = dc_terms[:, start:stop, None].contiguous() if dc_terms is not None else None
    if dc is not None:
        torch.sub(cut, dc, out=framed)
    else:
        framed.copy_(cut)
    if coef != 0.0 and not consts.window_starts_at_zero:
        firsts = signal[:, : (count - 1) * shift + 1 : shift]
        framed[..., 0] = firsts * (1.0 - coef) - (dc[..., 0] if dc is not None else 0.0)
    framed.mul_(consts.window)

    # |X_k|^2 = re^2 + im^2: square the interleaved pairs in place and let the mel weights (each repeated for
    # re and im) add them up, which is cheaper than a strided re/im pass.
    squares = torch.view_as_real(torch.fft.rfft(padded, dim=-1)).view(batch * count, -1).square_()
    for group in consts.mel_groups:
        out[:, :, group.mel0:group.mel1] = (squares[:, group.col0:group.col1] @ group.weights).view(batch, count, -1)
    out.clamp_min_(_EPSILON).log_()
