"""The built-in toy corpus: deterministic procedural audio so `maebench pretrain` works with no data and no network.

Five kinds of 2-4 s clips at 16 kHz, each with its own structure for a masked model to learn: harmonic tones
(notes with vibrato and decaying envelopes), chirps (log-frequency sweeps with harmonics), filtered noise bursts
(percussive events with random bands), vowel sequences (a source-filter model: a sawtooth glottal source with an
intonation contour through three formant resonances that glide between vowel targets, plus fricative noise) and
mixtures of two of those over a faint noise floor. Everything is seeded numpy, so every build writes the same
bytes; the folder name carries a version so a change of recipe regenerates instead of reusing stale clips.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from maebench.manifest import format_manifest
from maebench.paths import cache_dir

VERSION = 1
NUM_CLIPS = 480
SAMPLE_RATE = 16000
MANIFEST_NAME = "train.tsv"
_SEED = 20220330  # the MAE-AST preprint's date; any fixed number would do
_STALE_BUILD_S = 3600  # a temporary build folder this old belongs to a crashed build
_WIN, _HOP = 512, 256  # STFT filtering: 32 ms periodic Hann windows at 50 % overlap sum to exactly one

# Peterson & Barney (1952) average adult male formants F1-F3 in Hz: i, I, E, ae, a, O, U, u, V, 3r
_VOWELS = np.array([
    [270, 2290, 3010], [390, 1990, 2550], [530, 1840, 2480], [660, 1720, 2410], [730, 1090, 2440],
    [570, 840, 2410], [440, 1020, 2240], [300, 870, 2240], [520, 1190, 2390], [490, 1350, 1690],
], dtype=np.float64)
_FORMANT_BANDWIDTHS = np.array([80.0, 110.0, 160.0])  # Hz, typical of F1-F3


# ------------------------------------------------------------------------------------------------------ DSP helpers
def _stft_filter(x: np.ndarray, gains: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Filter `x` with a time-varying magnitude response `gains(frame_times_s, freqs_hz) -> (frames, bins)`."""
    n = x.size
    padded_len = -(-n // _HOP) * _HOP
    xp = np.zeros(padded_len + _WIN)
    xp[_HOP : _HOP + n] = x
    frames = np.lib.stride_tricks.sliding_window_view(xp, _WIN)[::_HOP]  # frame k is centred on sample k * HOP
    window = np.hanning(_WIN + 1)[:-1]
    spectra = np.fft.rfft(frames * window, axis=1)
    times = np.arange(frames.shape[0]) * _HOP / SAMPLE_RATE
    freqs = np.fft.rfftfreq(_WIN, 1 / SAMPLE_RATE)
    filtered = np.fft.irfft(spectra * gains(times, freqs), n=_WIN, axis=1)
    out = np.zeros((frames.shape[0] + 1) * _HOP)
    halves = out.reshape(-1, _HOP)
    halves[:-1] += filtered[:, :_HOP]
    halves[1:] += filtered[:, _HOP:]
    return out[_HOP : _HOP + n]


def _bands(freqs: np.ndarray, centres: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Resonance-shaped (Lorentzian) magnitude peaks, one row per (centre, width)."""
    return 1.0 / (1.0 + ((freqs[None, :] - centres[:, None]) / (widths[:, None] / 2)) ** 2)


def _resonators(freqs: np.ndarray, formants: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """Magnitude of a cascade of two-pole resonators (unit gain at 0 Hz) per frame: formants (frames, k) Hz."""
    f2 = freqs[None, None, :] ** 2
    centre2 = formants[:, :, None] ** 2
    response = centre2 / np.sqrt((centre2 - f2) ** 2 + (bandwidths[None, :, None] ** 2) * f2)
    return response.prod(axis=1)


def _ramp_envelope(n: int, segments: np.ndarray, fade: int) -> np.ndarray:
    """1 inside each [start, end) segment with raised-cosine fades of `fade` samples, 0 elsewhere."""
    out = np.zeros(n)
    for start, end in segments:
        start, end = max(int(start), 0), min(int(end), n)
        t = np.arange(start, end)
        shape = np.minimum(np.clip((t - start) / fade, 0, 1), np.clip((end - t) / fade, 0, 1))
        out[start:end] = np.maximum(out[start:end], 0.5 - 0.5 * np.cos(np.pi * shape))
    return out


def _segments(rng: np.random.Generator, n: int, count: int, min_len: int, max_len: int, gap: int) -> np.ndarray:
    """Up to `count` non-overlapping [start, end) sample segments laid out left to right with random gaps."""
    out, cursor = [], int(rng.integers(0, gap + 1))
    for _ in range(count):
        length = int(rng.integers(min_len, max_len + 1))
        if cursor + length > n:
            break
        out.append((cursor, cursor + length))
        cursor += length + int(rng.integers(0, gap + 1))
    return np.array(out or [(0, n)], dtype=np.int64)


def _harmonic_stack(phase: np.ndarray, f0: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """Sum of harmonics k * phase weighted by amps[k-1], each muted where it would pass 7.5 kHz."""
    k = np.arange(1, amps.size + 1, dtype=np.float64)
    used = (amps != 0) & (k * f0.min() < 7500.0)  # skip harmonics that are silent everywhere
    k, amps = k[used, None], amps[used, None]
    wrapped = (phase % (2 * np.pi)).astype(np.float32)  # k * phase stays small, so float32 sines are accurate
    audible = (k * f0[None, :]) < 7500.0
    return (amps * audible * np.sin(k.astype(np.float32) * wrapped[None, :])).sum(axis=0)


# --------------------------------------------------------------------------------------------------- the five kinds
def _tones(rng: np.random.Generator, n: int) -> np.ndarray:
    """A few notes: harmonic spectra with a random roll-off (odd harmonics only for some), vibrato, decay."""
    notes = _segments(rng, n, int(rng.integers(2, 7)), n // 8, n // 3, SAMPLE_RATE // 10)
    f0 = np.full(n, 100.0)
    note_start = np.zeros(n)
    for start, end in notes:
        f0[start:end] = np.exp(rng.uniform(np.log(80), np.log(1000)))
        note_start[start:end] = start
    t = np.arange(n) / SAMPLE_RATE
    f0 = f0 * (1 + rng.uniform(0, 0.02) * np.sin(2 * np.pi * rng.uniform(4, 7) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    amps = np.arange(1, 17, dtype=np.float64) ** -rng.uniform(0.5, 2.0)
    if rng.random() < 0.3:
        amps[1::2] = 0.0
    wave = _harmonic_stack(phase, f0, amps)
    decay = np.exp(-(np.arange(n) - note_start) / SAMPLE_RATE * rng.uniform(0.5, 6.0))
    return wave * decay * _ramp_envelope(n, notes, int(rng.integers(40, 800)))


def _chirps(rng: np.random.Generator, n: int) -> np.ndarray:
    """Log-frequency sweeps up or down with one to three harmonics, separated by gaps."""
    sweeps = _segments(rng, n, int(rng.integers(1, 5)), n // 6, n // 2, SAMPLE_RATE // 8)
    f0 = np.full(n, 200.0)
    for start, end in sweeps:
        lo, hi = np.exp(rng.uniform(np.log(100), np.log(3000), size=2))
        f0[start:end] = np.exp(np.linspace(np.log(lo), np.log(hi), end - start))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    amps = 0.6 ** np.arange(int(rng.integers(1, 4)))
    return _harmonic_stack(phase, f0, amps) * _ramp_envelope(n, sweeps, 160)


def _noise_bursts(rng: np.random.Generator, n: int) -> np.ndarray:
    """Percussive events: noise with a sharp attack and exponential decay, each through its own band."""
    count = int(rng.integers(3, 13))
    onsets = rng.uniform(0, n / SAMPLE_RATE - 0.05, size=count)
    decays = rng.uniform(0.01, 0.3, size=count)
    centres = np.exp(rng.uniform(np.log(150), np.log(6500), size=count))
    widths = centres * rng.uniform(0.1, 1.5, size=count)
    levels = rng.uniform(0.3, 1.0, size=count)

    def gains(times: np.ndarray, freqs: np.ndarray) -> np.ndarray:
        age = times[:, None] - onsets[None, :]
        envelope = np.where(age >= 0, np.exp(-np.maximum(age, 0) / decays[None, :]), 0.0) * levels[None, :]
        return envelope @ _bands(freqs, centres, widths)

    return _stft_filter(rng.standard_normal(n), gains)


def _vowels(rng: np.random.Generator, n: int) -> np.ndarray:
    """Syllables of gliding vowels on an intonation contour, some led by a fricative, grouped into words."""
    syllables = _segments(rng, n, 20, SAMPLE_RATE // 8, SAMPLE_RATE * 7 // 20, SAMPLE_RATE // 6)
    scale = rng.uniform(0.85, 1.25)  # vocal-tract length: men ~0.9, women and children higher
    base_f0 = np.exp(rng.uniform(np.log(85), np.log(280)))
    t = np.arange(n) / SAMPLE_RATE
    wobble = sum(rng.uniform(0.02, 0.08) * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t + rng.uniform(0, 6.3))
                 for _ in range(3))
    f0 = base_f0 * np.exp(wobble - rng.uniform(0.0, 0.25) * t / t[-1])  # declination over the utterance
    phase_cycles = np.cumsum(f0) / SAMPLE_RATE
    source = 2 * (phase_cycles % 1.0) - 1 + 0.05 * rng.standard_normal(n)  # sawtooth + aspiration

    vowel_ids = rng.integers(0, len(_VOWELS), size=len(syllables))
    starts = syllables[:, 0] / SAMPLE_RATE

    def voiced_gains(times: np.ndarray, freqs: np.ndarray) -> np.ndarray:
        current = np.clip(np.searchsorted(starts, times, side="right") - 1, 0, len(starts) - 1)
        formants = _VOWELS[vowel_ids[current]] * scale
        kernel = np.ones(5) / 5  # ~80 ms glides between vowel targets
        formants = np.stack([np.convolve(np.pad(col, 2, mode="edge"), kernel, "valid") for col in formants.T], 1)
        return _resonators(freqs, formants, _FORMANT_BANDWIDTHS)

    voiced = _stft_filter(source, voiced_gains) * _ramp_envelope(n, syllables, 320)
    fricated = syllables[rng.random(len(syllables)) < 0.4]
    if len(fricated):
        lead = np.stack([np.maximum(fricated[:, 0] - SAMPLE_RATE // 10, 0), fricated[:, 0] + 160], 1)
        centre = rng.choice([2500.0, 4500.0, 6000.0])  # roughly sh, s and f
        band = np.array([centre]), np.array([centre * 0.4])
        hiss = _normalise(_stft_filter(rng.standard_normal(n), lambda tm, fr: _bands(fr, *band)))
        voiced = voiced + 0.15 * hiss * _ramp_envelope(n, lead, 160) * np.abs(voiced).max()
    return voiced


def _mixture(rng: np.random.Generator, n: int) -> np.ndarray:
    """Two different kinds at a random level difference."""
    first, second = rng.choice(len(_PURE_KINDS), size=2, replace=False)
    a = _normalise(_PURE_KINDS[first][1](rng, n))
    b = _normalise(_PURE_KINDS[second][1](rng, n))
    return a + b * 10 ** (-rng.uniform(0, 12) / 20)


_PURE_KINDS = [("tone", _tones), ("chirp", _chirps), ("noise", _noise_bursts), ("vowels", _vowels)]
KINDS = [*_PURE_KINDS, ("mix", _mixture)]


def _normalise(x: np.ndarray) -> np.ndarray:
    peak = np.abs(x).max()
    return x / peak if peak > 0 else x


def toy_clip(index: int) -> tuple[str, np.ndarray]:
    """Clip `index` of the corpus: (kind, float32 samples in [-1, 1]); the same numbers on every call."""
    rng = np.random.default_rng([_SEED, VERSION, index])
    kind, make = KINDS[index % len(KINDS)]
    n = int(rng.integers(2 * SAMPLE_RATE, 4 * SAMPLE_RATE + 1))
    wave = _normalise(make(rng, n))
    floor = _stft_filter(rng.standard_normal(n), lambda t, f: 1.0 / np.sqrt(1.0 + f[None, :] / 100.0))
    wave = wave + _normalise(floor) * 10 ** (-rng.uniform(30, 50) / 20)
    return kind, (_normalise(wave) * 10 ** (-rng.uniform(1, 12) / 20)).astype(np.float32)


# ------------------------------------------------------------------------------------------------ building, caching
def toy_manifest(corpus_dir: Path) -> Path:
    """The manifest inside a corpus folder made by `ensure_toy_corpus`."""
    return Path(corpus_dir) / MANIFEST_NAME


def _folder_name(num_clips: int) -> str:
    return f"toy_corpus_v{VERSION}" + ("" if num_clips == NUM_CLIPS else f"_n{num_clips}")


def _build(build_dir: Path, final_dir: Path, num_clips: int) -> None:
    import soundfile

    (build_dir / "clips").mkdir()
    entries = []
    for index in range(num_clips):
        kind, wave = toy_clip(index)
        relpath = f"clips/{index:04d}_{kind}.wav"
        soundfile.write(str(build_dir / relpath), wave, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        entries.append((relpath, wave.size))
    # the manifest names the folder's final place: it is renamed there once complete
    toy_manifest(build_dir).write_text(format_manifest(final_dir, entries), encoding="utf-8")


def _remove_stale_builds(parent: Path, prefix: str) -> None:
    for leftover in parent.glob(f"{prefix}*"):
        try:
            if time.time() - leftover.stat().st_mtime > _STALE_BUILD_S:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def ensure_toy_corpus(root: Path | None = None, *, num_clips: int = NUM_CLIPS) -> Path:
    """The toy corpus folder (clips/*.wav + train.tsv) under `root` (default: the maebench cache), built on first use.

    The build goes to a temporary folder that is renamed into place only when complete, so a crash never leaves a
    half-built corpus that a later run would use; concurrent builders (e.g. DDP ranks) race harmlessly. A smaller
    `num_clips` (for tests) gets its own folder.
    """
    parent = Path(root) if root is not None else cache_dir()
    final_dir = parent / _folder_name(num_clips)
    if toy_manifest(final_dir).is_file():
        return final_dir
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final_dir.name}.build-"
    _remove_stale_builds(parent, prefix)
    build_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        _build(build_dir, final_dir.resolve(), num_clips)
        build_dir.chmod(0o755)  # mkdtemp makes it private; the corpus is ordinary cache data
        if final_dir.exists() and not toy_manifest(final_dir).is_file():
            shutil.rmtree(final_dir)  # not one of ours (renames are atomic): replace it
        try:
            os.rename(build_dir, final_dir)
        except OSError:
            if not toy_manifest(final_dir).is_file():  # lost a race to another builder; anything else is real
                raise
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    return final_dir
