"""Audio reading and resampling: files to 1-D float32 mono waveforms at the models' sample rate.

Reading (soundfile) runs on CPU workers; the filterbank that turns waveforms into model input is model state and
lives with the models, in `maebench.upstream.frontend`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from maebench.errors import MaebenchError
from maebench.upstream.frontend import SAMPLE_RATE

__all__ = ["MAX_AMPLITUDE", "check_samples", "read_audio", "read_audio_info", "resample"]

# Samples beyond this are a broken file, not loud audio: PCM decodes to [-1, 1], and a float file 60 dB over full
# scale drives the log-mel filterbank far out of anything a model was trained on (by 1e20 it overflows to NaN).
MAX_AMPLITUDE = 1000.0


def read_audio_info(path: str | Path) -> tuple[int, int]:
    """(num_frames, sample_rate) from the file header alone, so manifests need not decode whole corpora."""
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise MaebenchError(f"audio file not found: {path}; check the path or rebuild the manifest")
    try:
        info = soundfile.info(str(path))
    except Exception as err:  # libsndfile raises several types; all mean "not readable audio"
        raise MaebenchError(f"cannot read audio file {path} ({_one_line(err)}); re-encode it as wav or flac") from err
    return int(info.frames), int(info.samplerate)


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Decode a wav/flac/ogg file to a 1-D float32 mono waveform at `sample_rate`.

    Channels are mixed by their mean; files at another rate are resampled with torchaudio's sinc resampler.
    NaN / Inf samples or samples beyond +-MAX_AMPLITUDE are a MaebenchError naming the file (see `check_samples`).
    """
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise MaebenchError(f"audio file not found: {path}; check the path or rebuild the manifest")
    try:
        data, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:
        raise MaebenchError(f"cannot read audio file {path} ({_one_line(err)}); re-encode it as wav or flac") from err
    if data.shape[0] == 0:
        raise MaebenchError(f"audio file {path} has no samples; remove it from the data set")
    wav = torch.from_numpy(data).mean(dim=1)
    check_samples(wav, path)
    if file_rate != sample_rate:
        wav = resample(wav, file_rate, sample_rate)
    return wav.contiguous()


def check_samples(wav: Tensor, path: str | Path) -> None:
    """A MaebenchError naming `path` unless every sample is finite and within +-MAX_AMPLITUDE: one bad file would
    otherwise turn features, a probe's weights and its score into NaN or noise without any error."""
    peak = float(wav.abs().amax()) if wav.numel() else 0.0  # one pass: NaN and Inf propagate through the max
    if not math.isfinite(peak):
        bad = int((~torch.isfinite(wav)).sum())
        raise MaebenchError(f"audio file {path} has {bad} NaN/Inf sample(s); re-encode or remove it from the data set")
    if peak > MAX_AMPLITUDE:
        raise MaebenchError(f"audio file {path} has samples of amplitude {peak:.3g} (audio is within +-1; over "
                            f"{MAX_AMPLITUDE:g} is a broken file); re-encode or remove it from the data set")


def resample(wav: Tensor, orig_sr: int, new_sr: int) -> Tensor:
    """Band-limited resampling along the last axis (torchaudio's default sinc interpolation)."""
    if int(orig_sr) == int(new_sr):
        return wav
    import torchaudio.functional

    return torchaudio.functional.resample(wav, int(orig_sr), int(new_sr))


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
