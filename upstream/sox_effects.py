"""The sox effects s3prl's downstream datasets ask for, without libsox: `torchaudio.sox_effects` for torchaudio >= 2.9.

torchaudio 2.9 removed `sox_effects`, and s3prl's SUPERB datasets call `apply_effects_file(path, EFFECTS)` for every
item (speech_commands, sv_voxceleb1, quesst14, mos_prediction) or `apply_effects_tensor` (the `s3prl.problem`
pipes). These two functions keep torchaudio's contract ((channels, time) float32 in [-1, 1], and the new sample
rate) with soundfile for decoding and `torchaudio.functional.resample` for `rate`. Implemented effects, with the
arguments s3prl passes (their semantics measured against the sox 14.4 command in tests/test_s3prl_downstreams.py):

- `channels N`: mix down to mono by averaging (sox's `remix -`), or copy a mono signal to N channels;
- `rate R`: band-limited resampling (Kaiser-windowed sinc, 64 zero crossings, 0.9475 roll-off: close to sox's
  default high-quality linear-phase filter; differences are in the last few percent of the band);
- `gain [-n] [dB]`: scale by dB, or with -n normalise the peak to dB (default 0 dBFS); `norm [dB]` = `gain -n`;
- `silence ABOVE DUR THR [BELOW DUR THR]`: sox's silence trimming on a 20 ms trailing RMS level (above-periods 0 or
  1; below-periods 0, 1 or -1 = remove every silence of at least DUR and resume at the next sound);
- `pad BEFORE [AFTER]` (seconds of zeros), `reverse`.

Any other effect (or option) raises a MaebenchError naming it, rather than silently skipping it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from maebench.errors import MaebenchError

__all__ = ["EFFECTS", "apply_effects_file", "apply_effects_tensor", "effect_names"]


def _fail(effect: Sequence[str], why: str) -> MaebenchError:
    return MaebenchError(f"sox effect {' '.join(effect)!r}: {why} (maebench's sox_effects replacement for "
                         f"torchaudio >= 2.9 implements {', '.join(EFFECTS)})")


def _number(effect: Sequence[str], text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _fail(effect, f"{what} {text!r} is not a number") from None


def _args(effect: Sequence[str], low: int, high: int) -> list[str]:
    args = list(effect[1:])
    if not low <= len(args) <= high:
        raise _fail(effect, f"takes {low}-{high} arguments, got {len(args)}")
    return args


def _channels(wav: Tensor, rate: int, effect: Sequence[str]) -> tuple[Tensor, int]:
    (count,) = _args(effect, 1, 1)
    target = int(_number(effect, count, "channel count"))
    if target == wav.shape[0]:
        return wav, rate
    if target == 1:
        return wav.mean(dim=0, keepdim=True), rate
    if wav.shape[0] == 1 and target > 1:
        return wav.expand(target, -1).clone(), rate
    raise _fail(effect, f"mixing {wav.shape[0]} channels to {target} is not implemented")


def _rate(wav: Tensor, rate: int, effect: Sequence[str]) -> tuple[Tensor, int]:
    args = [a for a in _args(effect, 1, 2) if a not in ("-h", "-v")]  # quality flags: we always use one filter
    if len(args) != 1:
        raise _fail(effect, "expects one sample rate (quality options other than -h/-v are not implemented)")
    target = int(_number(effect, args[0].removesuffix("k"), "sample rate") * (1000 if args[0].endswith("k") else 1))
    if target == rate:
        return wav, rate
    import torchaudio.functional as AF

    out = AF.resample(wav, rate, target, lowpass_filter_width=64, rolloff=0.9475,
                      resampling_method="sinc_interp_kaiser", beta=14.769656459379492)
    return out, target


def _gain(wav: Tensor, rate: int, effect: Sequence[str]) -> tuple[Tensor, int]:
    args = _args(effect, 0, 2)
    normalise = "-n" in args
    args = [a for a in args if a != "-n"]
    if len(args) > 1 or any(a.startswith("-") and not _is_number(a) for a in args):
        raise _fail(effect, "only 'gain dB' and 'gain -n [dB]' are implemented")
    db = _number(effect, args[0], "gain") if args else 0.0
    return _scaled(wav, db, normalise), rate


def _norm(wav: Tensor, rate: int, effect: Sequence[str]) -> tuple[Tensor, int]:
    args = _args(effect, 0, 1)
    return _scaled(wav, _number(effect, args[0], "level") if args else 0.0, True), rate


def _scaled(wav: Tensor, db: float, normalise: bool) -> Tensor:
    factor = 10.0 ** (db / 20.0)
    if normalise:
        peak = float(wav.abs().max()) if wav.numel() else 0.0
        if peak == 0.0:
            return wav
        factor /= peak
    return wav * factor


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _seconds(effect: Sequence[str], text: str, rate: int) -> int:
    if text.endswith("s") and _is_number(text[:-1]):
        return int(float(text[:-1]))  # sox's "Ns": a sample count
    return int(round(_number(effect, text, "duration") * rate))


def _threshold(effect: Sequence[str], text: str) -> float:
    if text.endswith("%"):
        return _number(effect, text[:-1], "threshold") / 100.0
    if text.endswith("d"):
        return 10.0 ** (_number(effect, text[:-1], "threshold") / 20.0)
    raise _fail(effect, f"threshold {text!r}: give it in % or dB (e.g. 0.1% or -60d)")


def _silence(wav: Tensor, rate: int, effect: Sequence[str]) -> tuple[Tensor, int]:
    args = _args(effect, 1, 6)
    if args[0].startswith("-"):
        raise _fail(effect, f"option {args[0]} is not implemented")
    above = int(_number(effect, args[0], "above-periods"))
    if above not in (0, 1) or (above and len(args) < 3):
        raise _fail(effect, "above-periods must be 0, or 1 with a duration and threshold")
    start = (_seconds(effect, args[1], rate), _threshold(effect, args[2])) if above else (0, 0.0)
    below, stop = 0, (0, 0.0)
    if len(args) > 3:
        if len(args) != 6:
            raise _fail(effect, "below-periods needs a duration and a threshold")
        below = int(_number(effect, args[3], "below-periods"))
        if below not in (-1, 0, 1):
            raise _fail(effect, "below-periods must be -1, 0 or 1")
        stop = (_seconds(effect, args[4], rate), _threshold(effect, args[5]))
    keep = _silence_mask(_rms_level(wav, rate), above, start, below, stop)
    return wav[:, torch.from_numpy(keep)], rate


def _rms_level(wav: Tensor, rate: int) -> np.ndarray:
    """sox silence's level: RMS over the trailing 20 ms window (zeros before the start), loudest channel."""
    window = max(1, rate // 50)
    power = wav.double().square().numpy()
    csum = np.cumsum(np.pad(power, ((0, 0), (window, 0))), axis=1)
    mean = (csum[:, window:] - csum[:, :-window]) / window
    return np.sqrt(np.clip(mean, 0.0, None)).max(axis=0)


def _runs(mask: np.ndarray) -> list[tuple[bool, int, int]]:
    """(value, start, end) of each run of equal values."""
    edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    bounds = np.r_[0, edges, len(mask)]
    return [(bool(mask[a]), int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _silence_mask(level: np.ndarray, above: int, start: tuple[int, float], below: int,
                  stop: tuple[int, float]) -> np.ndarray:
    """Which samples survive: leading audio is dropped until `start[0]` samples in a row are above `start[1]`;
    after that a run of at least `stop[0]` samples below `stop[1]` ends the output (below=1) or is removed and
    the search for sound restarts (below=-1)."""
    keep = np.zeros(len(level), dtype=bool)
    trimming, position = above > 0, 0
    while position < len(level):
        if trimming:
            loud = level[position:] > start[1]
            found = next(((a, b) for v, a, b in _runs(loud) if v and b - a >= max(1, start[0])), None)
            if found is None:
                break
            position, trimming = position + found[0], False
            continue
        quiet = level[position:] <= stop[1]
        silent = next(((a, b) for v, a, b in _runs(quiet) if v and below and b - a >= max(1, stop[0])), None)
        if silent is None:
            keep[position:] = True
            break
        keep[position : position + silent[0]] = True
        if below > 0:
            break
        position, trimming = position + silent[1], True
    return keep


def _pad(wav: Tensor, rate: int, effect: Sequence[str]) -> tuple[Tensor, int]:
    args = _args(effect, 1, 2)
    before = _seconds(effect, args[0], rate)
    after = _seconds(effect, args[1], rate) if len(args) > 1 else 0
    return torch.nn.functional.pad(wav, (before, after)), rate


def _reverse(wav: Tensor, rate: int, effect: Sequence[str]) -> tuple[Tensor, int]:
    _args(effect, 0, 0)
    return wav.flip(-1), rate


EFFECTS = {"channels": _channels, "rate": _rate, "gain": _gain, "norm": _norm, "silence": _silence,
           "pad": _pad, "reverse": _reverse}


def effect_names() -> list[str]:
    """The effects this replacement implements (torchaudio's `effect_names()` listed every libsox effect)."""
    return list(EFFECTS)


def _check(effects: Sequence[Sequence[Any]]) -> list[list[str]]:
    checked = []
    for effect in effects:
        effect = [str(part) for part in effect]
        if not effect or effect[0] not in EFFECTS:
            raise _fail(effect or ["(empty)"], "this effect is not implemented")
        checked.append(effect)
    return checked


def apply_effects_tensor(tensor: Tensor, sample_rate: int, effects: Sequence[Sequence[Any]],
                         channels_first: bool = True) -> tuple[Tensor, int]:
    """torchaudio.sox_effects.apply_effects_tensor: effects applied in order to a (channels, time) float tensor."""
    wav = tensor if channels_first else tensor.transpose(0, 1)
    wav, rate = wav.float(), int(sample_rate)
    for effect in _check(effects):  # all checked first: an unknown effect fails before any work
        wav, rate = EFFECTS[effect[0]](wav, rate, effect)
    wav = wav.contiguous()
    return (wav if channels_first else wav.transpose(0, 1).contiguous()), rate


def apply_effects_file(path: Any, effects: Sequence[Sequence[Any]], normalize: bool = True,
                       channels_first: bool = True, format: str | None = None) -> tuple[Tensor, int]:
    """torchaudio.sox_effects.apply_effects_file: decode with soundfile (float32 in [-1, 1]), then the effects."""
    import soundfile

    del format  # soundfile detects the container from the file itself
    if not normalize:
        raise MaebenchError("apply_effects_file(normalize=False) is not implemented; only float32 output is")
    _check(effects)
    try:
        data, rate = soundfile.read(str(Path(path)), dtype="float32", always_2d=True)
    except Exception as err:  # libsndfile raises several types; all mean "not readable audio"
        message = " ".join(str(err).split()) or type(err).__name__
        raise MaebenchError(f"cannot read audio file {path} ({message}); check or replace the file") from err
    return apply_effects_tensor(torch.from_numpy(data.T.copy()), int(rate), effects, channels_first)
