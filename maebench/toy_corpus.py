"""The built-in toy corpus: deterministic procedural audio so `maebench pretrain` works with no data and no network.

Five kinds of 2-4 s clips at 16 kHz, each with its own structure for a masked model to learn, all rendered by the
toy synthesiser that also voices the toy evaluation datasets (`maebench.downstream.sounds`): melodies (harmonic
notes with vibrato, random roll-off and decaying envelopes), chirps (log-frequency sweeps with harmonics), noise
bursts (percussive events, each through its own band), vowel sequences (phrases of pseudo-words made of random
consonant-vowel syllables, from the formant voice with a random speaker; never a word the toy tasks speak) and
mixtures of two of those, over a faint pink-noise floor. Everything is seeded numpy, so every build writes the
same bytes; the folder name carries a version so a change of recipe regenerates instead of reusing stale clips.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from maebench.atomic import sweep_stale, temp_sibling
from maebench.downstream import sounds
from maebench.downstream.tasks.speech_commands import KS2_WORDS
from maebench.downstream.toy import SENTENCES
from maebench.manifest import AudioItem, format_manifest, read_manifest
from maebench.paths import cache_dir
from maebench.upstream.frontend import SAMPLE_RATE

VERSION = 2  # 1: maebench 0.1.0's own synthesiser; 2: rendered through maebench.downstream.sounds
NUM_CLIPS = 480
MANIFEST_NAME = "train.tsv"
_SEED = 20220330  # the MAE-AST preprint's date; any fixed number would do
_CONSONANTS = list("bdfghjklmnprstvwz")  # letters the formant voice renders as consonants
_VOWEL_LETTERS = list("aeiou")
_TOY_TASK_WORDS = frozenset(KS2_WORDS) | {word for sentence in SENTENCES for word in sentence.split()}


# ----------------------------------------------------------------------------------------------------- event layout
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
    amps = np.arange(1, 17, dtype=np.float64) ** -rng.uniform(0.5, 2.0)
    if rng.random() < 0.3:
        amps[1::2] = 0.0
    decay = np.exp(-(np.arange(n) - note_start) / SAMPLE_RATE * rng.uniform(0.5, 6.0))
    return sounds.harmonics(f0, amps) * decay * sounds.gate(n, notes, int(rng.integers(40, 800)))


def _chirps(rng: np.random.Generator, n: int) -> np.ndarray:
    """Log-frequency sweeps up or down with one to three harmonics, separated by gaps."""
    sweeps = _segments(rng, n, int(rng.integers(1, 5)), n // 6, n // 2, SAMPLE_RATE // 8)
    f0 = np.full(n, 200.0)
    for start, end in sweeps:
        lo, hi = np.exp(rng.uniform(np.log(100), np.log(3000), size=2))
        f0[start:end] = np.exp(np.linspace(np.log(lo), np.log(hi), end - start))
    amps = 0.6 ** np.arange(int(rng.integers(1, 4)))
    return sounds.harmonics(f0, amps) * sounds.gate(n, sweeps, 160)


def _noise_bursts(rng: np.random.Generator, n: int) -> np.ndarray:
    """Percussive events: noise with a sharp attack and exponential decay, each through its own band."""
    out = np.zeros(n)
    for _ in range(int(rng.integers(3, 13))):
        onset = int(rng.integers(0, n - SAMPLE_RATE // 20))
        decay = rng.uniform(0.01, 0.3) * SAMPLE_RATE
        length = min(n - onset, int(5 * decay))
        centre = np.exp(rng.uniform(np.log(150), np.log(6500)))
        burst = sounds.noise_band(rng, length, centre, centre * rng.uniform(0.1, 1.5))
        out[onset : onset + length] += rng.uniform(0.3, 1.0) * burst * np.exp(-np.arange(length) / decay)
    return out


def _pseudo_word(rng: np.random.Generator) -> str:
    """One to three random consonant-vowel syllables, never one of the toy tasks' words."""
    while True:
        syllables = int(rng.integers(1, 4))
        word = "".join(str(rng.choice(_CONSONANTS)) + str(rng.choice(_VOWEL_LETTERS)) for _ in range(syllables))
        if word not in _TOY_TASK_WORDS:
            return word


def _vowels(rng: np.random.Generator, n: int) -> np.ndarray:
    """Phrases of pseudo-words from one random speaker, each phrase on its own pitch, separated by pauses."""
    voice = sounds.Voice(variant=int(rng.integers(0, len(sounds.ESPEAK_VARIANTS))), pitch=int(rng.integers(10, 90)),
                         speed=int(rng.integers(120, 220)))
    out = np.zeros(n)
    cursor = int(rng.integers(0, SAMPLE_RATE // 5))
    while cursor < n:
        phrase = " ".join(_pseudo_word(rng) for _ in range(int(rng.integers(1, 5))))
        wav = sounds.formant_say(phrase, voice.restyled(pitch=int(rng.integers(-12, 13))))[: n - cursor]
        out[cursor : cursor + wav.size] = wav
        cursor += wav.size + int(rng.integers(SAMPLE_RATE // 20, SAMPLE_RATE // 3))
    return out


def _mixture(rng: np.random.Generator, n: int) -> np.ndarray:
    """Two different kinds at a random level difference."""
    first, second = rng.choice(len(_PURE_KINDS), size=2, replace=False)
    a = sounds.normalise(_PURE_KINDS[first][1](rng, n))
    b = sounds.normalise(_PURE_KINDS[second][1](rng, n))
    return a + b * 10 ** (-rng.uniform(0, 12) / 20)


_PURE_KINDS = [("tone", _tones), ("chirp", _chirps), ("noise", _noise_bursts), ("vowels", _vowels)]
KINDS = [*_PURE_KINDS, ("mix", _mixture)]


def toy_clip(index: int) -> tuple[str, np.ndarray]:
    """Clip `index` of the corpus: (kind, float32 samples in [-1, 1]); the same numbers on every call."""
    rng = np.random.default_rng([_SEED, VERSION, index])
    kind, make = KINDS[index % len(KINDS)]
    n = int(rng.integers(2 * SAMPLE_RATE, 4 * SAMPLE_RATE + 1))
    wave = sounds.normalise(make(rng, n))
    floor = sounds.normalise(sounds.pink_noise(rng.standard_normal(n)), 10 ** (-rng.uniform(30, 50) / 20))
    return kind, sounds.normalise(wave + floor, 10 ** (-rng.uniform(1, 12) / 20))


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




def corpus_items(*, quiet: bool = False) -> list[AudioItem]:
    """The corpus clips (built on first use): what `maebench pretrain` trains on without --data; said unless quiet."""
    corpus = ensure_toy_corpus()
    items = read_manifest(toy_manifest(corpus))
    if not quiet:
        minutes = sum(item.num_samples or 0 for item in items) / SAMPLE_RATE / 60
        print(f"no --data given: using the built-in toy corpus ({len(items)} clips, {minutes:.0f} min) in {corpus}")
    return items


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
    sweep_stale(final_dir, "build")  # left by a builder that was killed
    build_dir = temp_sibling(final_dir, "build")
    build_dir.mkdir()  # the user's umask: the corpus is ordinary cache data
    try:
        _build(build_dir, final_dir.resolve(), num_clips)
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
