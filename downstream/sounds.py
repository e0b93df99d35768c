"""The one synthesiser of toy audio: spoken words (espeak-ng, or a formant-synthesis fallback), procedural sound
classes (tones, chirps, clicks, ...) and the building blocks they share (harmonic stacks, formant resonators, noise
bands, envelopes), all deterministic, all at 16 kHz unless asked otherwise. The toy evaluation datasets
(downstream/toy.py) and the built-in pretraining corpus (maebench/toy_corpus.py) both render through it.

Why two speech back ends: espeak-ng gives real, intelligible words with many voices, but it is a system package
that may be missing; the formant fallback keeps every toy task buildable (and learnable: words differ by their
letter-driven formant/noise sequence, speakers by pitch, vocal-tract length and rate) on any machine.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter, resample_poly

from maebench.errors import MaebenchError
from maebench.upstream.frontend import SAMPLE_RATE

SPEECH_BACKEND_ENV = "MAEBENCH_TOY_SPEECH"  # "espeak" | "procedural": overrides speech_backend="auto"
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")  # the toy tasks' voices
# The pretraining corpus speaks with other voices only (Voice.variant >= len(ESPEAK_VARIANTS)), so no toy evaluation
# speaker is ever heard in pretraining: espeak-ng variants and, for the formant fallback, other vocal-tract lengths.
CORPUS_VARIANTS = ("m8", "klatt", "klatt2", "klatt3", "croak", "michel", "norbert", "adam", "linda", "annie",
                   "belinda", "david")
ALL_VARIANTS = ESPEAK_VARIANTS + CORPUS_VARIANTS
EVAL_VOICE_VARIANTS = range(len(ESPEAK_VARIANTS))
CORPUS_VOICE_VARIANTS = range(len(ESPEAK_VARIANTS), len(ALL_VARIANTS))
_FEMALE = frozenset({7, 8, 9, 10, 11, 20, 21, 22})  # f1..f5, linda, annie, belinda


@dataclass(frozen=True)
class Voice:
    """A toy speaker in a given speaking style; the same fields drive espeak-ng and the formant fallback."""

    variant: int  # index into ALL_VARIANTS (0-11 the toy tasks' m1..m7, f1..f5; 12+ the corpus's); the fallback
    # maps it to a vocal-tract length
    pitch: int = 50  # 0..99 (espeak-ng -p)
    speed: int = 160  # words per minute (espeak-ng -s)
    volume: int = 100  # amplitude 0..200 (espeak-ng -a)

    def restyled(self, pitch: int = 0, speed: float = 1.0, volume: float = 1.0) -> Voice:
        """The same speaker with a pitch offset and speed/volume factors (emotions, speaking styles)."""
        return Voice(self.variant, int(np.clip(self.pitch + pitch, 0, 99)), int(np.clip(self.speed * speed, 80, 450)),
                     int(np.clip(self.volume * volume, 10, 200)))


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def resolve_speech_backend(requested: str = "auto") -> str:
    """'espeak' or 'procedural'. 'auto' honours $MAEBENCH_TOY_SPEECH, then uses espeak-ng when it is installed."""
    if requested == "auto":
        requested = os.environ.get(SPEECH_BACKEND_ENV, "auto") or "auto"
    if requested == "auto":
        return "espeak" if espeak_available() else "procedural"
    if requested not in ("espeak", "procedural"):
        raise MaebenchError(f"unknown speech backend {requested!r}; use auto, espeak or procedural")
    if requested == "espeak" and not espeak_available():
        raise MaebenchError("speech backend 'espeak' requested but espeak-ng is not installed; "
                            "install it (apt-get install espeak-ng) or use the procedural backend")
    return requested


def synthesize(jobs: Sequence[tuple[str, Voice]], backend: str) -> list[np.ndarray]:
    """Speak every (text, voice) job; float32 16 kHz mono arrays, in job order. espeak-ng calls run in parallel."""
    say = espeak_say if backend == "espeak" else formant_say
    if backend == "espeak" and len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
            return list(pool.map(lambda job: say(*job), jobs))
    return [say(text, voice) for text, voice in jobs]


# --------------------------------------------------------------------------------------------------- espeak-ng
def espeak_say(text: str, voice: Voice) -> np.ndarray:
    """`text` spoken by espeak-ng (22.05 kHz output, resampled to 16 kHz); deterministic for a given version."""
    import soundfile as sf

    variant = ALL_VARIANTS[voice.variant % len(ALL_VARIANTS)]
    cmd = ["espeak-ng", "-v", f"en-us+{variant}", "-p", str(voice.pitch), "-s", str(voice.speed),
           "-a", str(voice.volume), "--stdout", text]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise MaebenchError(f"espeak-ng failed on {text!r} ({proc.stderr.decode(errors='replace').strip()}); "
                            f"set {SPEECH_BACKEND_ENV}=procedural to build the toy data without it")
    data, rate = sf.read(io.BytesIO(proc.stdout), dtype="float64")
    wav = data if data.ndim == 1 else data.mean(axis=1)
    if rate != SAMPLE_RATE:  # polyphase resampling: exact rational ratio (22050 -> 16000 = 320/441), no threads
        common = math.gcd(rate, SAMPLE_RATE)
        wav = resample_poly(wav, SAMPLE_RATE // common, rate // common)
    return trim_silence(wav.astype(np.float32))


def trim_silence(wav: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    """Cut leading/trailing near-silence (espeak-ng pads its output), keeping a 20 ms margin."""
    loud = np.flatnonzero(np.abs(wav) > threshold)
    if loud.size == 0:
        return wav
    margin = SAMPLE_RATE // 50
    return wav[max(0, loud[0] - margin) : loud[-1] + margin]


# -------------------------------------------------------------------------------------------- formant fallback
# Letter -> (kind, F1, F2, F3) for voiced sounds or (kind, band centre) for noise; a crude but consistent "phonetics"
# so that different words give different spectro-temporal patterns.
_VOWELS = {"a": (730, 1090, 2440), "e": (530, 1840, 2480), "i": (270, 2290, 3010), "o": (570, 840, 2410),
           "u": (300, 870, 2240), "y": (440, 1020, 2240)}
_VOICED = {"m": (250, 1200, 2200), "n": (250, 1700, 2600), "l": (360, 1300, 2700), "r": (420, 1300, 1600),
           "w": (300, 610, 2200), "v": (300, 1400, 2500), "z": (300, 1700, 2700), "b": (250, 800, 2200),
           "d": (300, 1700, 2600), "g": (300, 2000, 2500), "j": (280, 2100, 2900)}
_NOISE = {"s": 6000, "f": 4200, "h": 1500, "t": 4500, "k": 2500, "p": 1000, "c": 3000, "x": 3500, "q": 2500}
_PLOSIVES = set("bdgptkcq")
_TRACT_SCALE = (0.92, 0.97, 1.0, 1.03, 1.06, 0.95, 1.09, 1.14, 1.18, 1.22, 1.16, 1.2,  # per variant: toy tasks,
                0.9, 0.94, 0.985, 1.015, 1.045, 1.075, 1.11, 1.13, 1.15, 1.17, 1.21, 1.24)  # corpus (none shared)


def formant_say(text: str, voice: Voice) -> np.ndarray:
    """`text` rendered by a small source-filter synthesiser: pulse train through formant resonators for vowels and
    voiced consonants, band-passed noise for fricatives and bursts. Deterministic in (text, voice)."""
    rng = np.random.default_rng(_stable_seed("formant", text, voice))
    female = voice.variant % len(ALL_VARIANTS) in _FEMALE
    f0 = (75.0 + 1.6 * voice.pitch) * (1.7 if female else 1.0)
    scale = _TRACT_SCALE[voice.variant % len(_TRACT_SCALE)]
    rate = 160.0 / max(voice.speed, 40)
    pieces: list[np.ndarray] = []
    phase = 0.0
    for position, char in enumerate(text.lower()):
        if char in _VOWELS or char in _VOICED:
            seconds = (0.11 if char in _VOWELS else 0.06) * rate
            n = int(seconds * SAMPLE_RATE)
            contour = f0 * (1.0 + 0.04 * np.sin(position + np.linspace(0, 2, n))) * (1 - 0.1 * position / 40)
            source, phase = _pulse_train(contour, phase)
            formants = _VOWELS.get(char) or _VOICED[char]
            seg = _formant_filter(source, [f * scale for f in formants], (60.0, 90.0, 130.0))
            if char in _VOICED:
                seg *= 0.45
                if char in "vzj":
                    seg += 0.15 * noise_band(rng, n, _NOISE["s"] * scale)
        elif char in _NOISE:
            seconds = (0.04 if char in _PLOSIVES else 0.08) * rate
            n = int(seconds * SAMPLE_RATE)
            seg = 0.5 * noise_band(rng, n, _NOISE[char] * scale)
        else:  # spaces and punctuation: a short pause
            seg = np.zeros(int(0.06 * rate * SAMPLE_RATE))
        pieces.append(_fade(seg))
    wav = np.concatenate(pieces) if pieces else np.zeros(SAMPLE_RATE // 10)
    peak = float(np.max(np.abs(wav))) or 1.0
    return (wav / peak * 0.5 * voice.volume / 100.0).astype(np.float32)


# ---------------------------------------------------------------- building blocks: sources, filters, envelopes
def _pulse_train(f0: np.ndarray, phase: float) -> tuple[np.ndarray, float]:
    """Glottal-like source: one pulse per period of the f0 contour, low-passed for a natural spectral tilt."""
    cycles = phase + np.cumsum(f0 / SAMPLE_RATE)
    pulses = np.diff(np.floor(cycles), prepend=np.floor(phase)).astype(np.float64)
    return lfilter([1.0], [1.0, -0.9], pulses), float(cycles[-1] % 1.0)


def _resonator(x: np.ndarray, freq: float, bandwidth: float) -> np.ndarray:
    r = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
    theta = 2 * np.pi * min(freq, 0.45 * SAMPLE_RATE) / SAMPLE_RATE
    return lfilter([1.0 - r], [1.0, -2 * r * np.cos(theta), r * r], x)


def _formant_filter(x: np.ndarray, formants: Sequence[float], bandwidths: Sequence[float]) -> np.ndarray:
    return sum(_resonator(x, f, b) * g for f, b, g in zip(formants, bandwidths, (1.0, 0.6, 0.3), strict=True))


def noise_band(rng: np.random.Generator, n: int, centre: float, bandwidth: float | None = None) -> np.ndarray:
    """`n` samples of white noise through one resonance at `centre` Hz (bandwidth default: half the centre)."""
    return _resonator(rng.standard_normal(n), centre, 0.5 * centre if bandwidth is None else bandwidth) * 4.0


def _fade(seg: np.ndarray, seconds: float = 0.008) -> np.ndarray:
    k = min(len(seg) // 2, int(seconds * SAMPLE_RATE))
    if k > 0:
        ramp = np.linspace(0.0, 1.0, k)
        seg = seg.copy()
        seg[:k] *= ramp
        seg[-k:] *= ramp[::-1]
    return seg


def harmonics(f0: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """A harmonic stack on the f0 contour `f0` (Hz per sample): harmonic k weighted by amps[k-1], each muted
    where it would pass 7.5 kHz."""
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    k = np.arange(1, amps.size + 1, dtype=np.float64)
    used = (amps != 0) & (k * f0.min() < 7500.0)  # skip harmonics that are silent everywhere
    k, amps = k[used, None], amps[used, None]
    wrapped = (phase % (2 * np.pi)).astype(np.float32)  # k * phase stays small, so float32 sines are accurate
    audible = (k * f0[None, :]) < 7500.0
    return (amps * audible * np.sin(k.astype(np.float32) * wrapped[None, :])).sum(axis=0)


def gate(n: int, segments: np.ndarray, fade: int) -> np.ndarray:
    """An envelope of `n` samples: 1 inside each [start, end) segment with raised-cosine fades of `fade` samples."""
    out = np.zeros(n)
    for start, end in segments:
        start, end = max(int(start), 0), min(int(end), n)
        t = np.arange(start, end)
        shape = np.minimum(np.clip((t - start) / fade, 0, 1), np.clip((end - t) / fade, 0, 1))
        out[start:end] = np.maximum(out[start:end], 0.5 - 0.5 * np.cos(np.pi * shape))
    return out


def pink_noise(white: np.ndarray) -> np.ndarray:
    """Kellet-style 1/f approximation of white noise: a sum of leaky integrators."""
    return sum(lfilter([1.0], [1.0, -p], white) * g for p, g in ((0.99, 0.05), (0.95, 0.1), (0.6, 0.3)))


def normalise(wav: np.ndarray, peak: float = 1.0) -> np.ndarray:
    """`wav` scaled to the given peak (silence stays silent), as float32."""
    top = float(np.max(np.abs(wav))) or 1.0
    return (wav / top * peak).astype(np.float32)


def _stable_seed(*parts: object) -> int:
    return int(hashlib.sha1(repr(parts).encode()).hexdigest()[:12], 16)


# ------------------------------------------------------------------------------------------- procedural sounds
def _tone(rng, t):
    f = rng.uniform(300, 1500)
    return np.sin(2 * np.pi * f * t) + 0.2 * np.sin(4 * np.pi * f * t)


def _chirp(rng, t, up: bool):
    lo, hi = rng.uniform(200, 600), rng.uniform(2000, 5000)
    dur = rng.uniform(0.3, 0.8)
    local = (t % dur) / dur
    freq = lo * (hi / lo) ** (local if up else 1 - local)
    phase = 2 * np.pi * np.cumsum(freq) * (t[1] - t[0])
    return np.sin(phase)


def _noise_bursts(rng, t):
    out = np.zeros_like(t)
    rate = 1.0 / (t[1] - t[0])
    for start in np.sort(rng.uniform(0, t[-1], size=max(2, int(t[-1] * 2)))):
        n = int(rng.uniform(0.05, 0.25) * rate)
        i = int(start * rate)
        seg = rng.standard_normal(min(n, len(t) - i))
        out[i : i + len(seg)] += seg * np.exp(-np.linspace(0, 4, len(seg)))
    return out


_HUM_PERIOD = sum(np.sin(2 * np.pi * k * np.arange(2048) / 2048) / k for k in range(1, 12))  # one buzz period


def _hum(rng, t):
    f = rng.uniform(50, 120)
    return _HUM_PERIOD[((f * t) % 1.0 * 2048).astype(np.int64)]


def _clicks(rng, t):
    rate = 1.0 / (t[1] - t[0])
    out = np.zeros_like(t)
    period = int(rate / rng.uniform(4, 15))
    out[:: max(period, 1)] = 1.0
    return lfilter([1.0], [1.0, -0.6], out) * 3


def _tremolo(rng, t):
    f, m = rng.uniform(400, 900), rng.uniform(4, 10)
    return np.sin(2 * np.pi * f * t) * (0.5 + 0.5 * np.sin(2 * np.pi * m * t))


def _wind(rng, t):
    noise = lfilter([1.0], [1.0, -0.98], rng.standard_normal(len(t))) * 0.1
    gust = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t + rng.uniform(0, 6))
    return noise * gust


def _drips(rng, t):
    rate = 1.0 / (t[1] - t[0])
    out = np.zeros_like(t)
    for start in rng.uniform(0, t[-1], size=max(3, int(t[-1] * 4))):
        i = int(start * rate)
        n = min(int(0.08 * rate), len(t) - i)
        tt = np.arange(n) / rate
        out[i : i + n] += np.sin(2 * np.pi * rng.uniform(800, 2500) * tt * (1 + 2 * tt)) * np.exp(-tt * 60)
    return out


def _siren(rng, t):
    centre, depth, mod = rng.uniform(600, 1000), rng.uniform(150, 400), rng.uniform(0.3, 1.5)
    freq = centre + depth * np.sin(2 * np.pi * mod * t)
    phase = 2 * np.pi * np.cumsum(freq) * (t[1] - t[0])
    return np.sin(phase)


SOUND_CLASSES: dict[str, Callable[[np.random.Generator, np.ndarray], np.ndarray]] = {
    "tone": _tone,
    "chirp_up": lambda rng, t: _chirp(rng, t, True),
    "chirp_down": lambda rng, t: _chirp(rng, t, False),
    "noise_burst": _noise_bursts,
    "hum": _hum,
    "clicks": _clicks,
    "tremolo": _tremolo,
    "wind": _wind,
    "drips": _drips,
    "siren": _siren,
}


def render_sound(name: str, rng: np.random.Generator, seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One clip of procedural sound class `name` (random parameters from `rng`), peak-normalised to 0.5."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wav = SOUND_CLASSES[name](rng, t)
    return normalise(wav, 0.5)


NOISE_KINDS = ("white_noise", "pink_noise", "running_tap", "exercise_bike")


def render_noise(kind: str, rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Background noise like Speech Commands' `_background_noise_` files (white, pink, tap water, machine)."""
    n = int(seconds * SAMPLE_RATE)
    white = rng.standard_normal(n)
    if kind == "white_noise":
        wav = white
    elif kind == "pink_noise":
        wav = pink_noise(white)
    elif kind == "running_tap":
        wav = _resonator(white, 2500.0, 2000.0) * (0.7 + 0.3 * rng.standard_normal(n).cumsum() / np.sqrt(n))
    elif kind == "exercise_bike":
        t = np.arange(n) / SAMPLE_RATE
        wav = _hum(rng, t) * (0.6 + 0.4 * np.sin(2 * np.pi * 1.3 * t)) + 0.3 * white
    else:
        raise ValueError(f"unknown noise kind {kind!r}")
    return normalise(wav, 0.3)


def mix_at_snr(wav: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`wav` plus `noise` (tiled or cut to its length) scaled to the given signal-to-noise ratio (RMS, dB): the
    toy tasks' recording conditions, which keep random-init features off the ceiling."""
    noise = np.resize(noise, wav.shape).astype(np.float64)
    signal_rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) or 1e-4
    noise_rms = float(np.sqrt(np.mean(np.square(noise)))) or 1.0
    return (wav + noise * signal_rms / noise_rms * 10 ** (-snr_db / 20)).astype(np.float32)
