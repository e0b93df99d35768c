"""The built-in toy corpus: deterministic audio so `maebench pretrain` works with no data and no network.

Clips of 2-4 s at 16 kHz, each kind with its own structure for a masked model to learn, all rendered by the toy
synthesiser that also voices the toy evaluation datasets (`maebench.downstream.sounds`): spoken words and spoken
sentences (espeak-ng voices when installed, the formant fallback otherwise), procedural environmental sounds (the
toy sound classes), melodies, chirps, noise bursts, and mixtures of two of those, over a faint pink-noise floor.

Disjoint from every toy evaluation set, so a pretrained model is never tested on what it heard (`check_disjoint`,
run before every build and pinned by a test): other voices (`sounds.CORPUS_VOICE_VARIANTS`: espeak-ng variants and
formant vocal tracts the toy tasks never use), other words and sentences (`CORPUS_WORDS`, none of which any toy
task speaks: `toy.EVAL_WORDS`), other sound seeds (every corpus generator is seeded from `[_SEED, VERSION, index]`,
a seed sequence of a different length than the toy tasks' single hashed seeds, so no stream is shared). Everything
is seeded, so every build writes the same bytes for a given speech back end; the folder name carries a version and
the back end, so a change of recipe regenerates instead of reusing stale clips.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from maebench.atomic import sweep_stale, temp_sibling
from maebench.downstream import sounds
from maebench.downstream.toy import EVAL_WORDS
from maebench.errors import MaebenchError
from maebench.manifest import AudioItem, format_manifest, read_manifest
from maebench.paths import cache_dir
from maebench.upstream.frontend import SAMPLE_RATE

VERSION = 3  # 1: maebench 0.1.0's own synthesiser; 2: through maebench.downstream.sounds; 3: words, sentences, sounds
NUM_CLIPS = 480
MANIFEST_NAME = "train.tsv"
_SEED = 20220330  # the MAE-AST preprint's date; any fixed number would do
_CONSONANTS = list("bdfghjklmnprstvwz")  # letters the formant voice renders as consonants
_VOWEL_LETTERS = list("aeiou")

# The corpus vocabulary: sentences are "<det> <adj> <noun> <verb> <det> <noun> <adv>", words are drawn from all.
_DETERMINERS = ("this", "that", "some", "your", "these", "those", "any", "each")
_ADJECTIVES = ("tall", "bright", "quiet", "heavy", "narrow", "gentle", "yellow", "purple", "silver", "wooden",
               "rapid", "sudden", "ancient", "tiny", "clever", "curious", "frozen", "golden", "hollow", "noisy")
_NOUNS = ("mountain", "river", "garden", "pencil", "rocket", "island", "button", "candle", "basket", "ladder",
          "mirror", "pillow", "rabbit", "turtle", "lemon", "tomato", "guitar", "engine", "bottle", "castle",
          "forest", "planet", "captain", "farmer", "teacher", "sailor", "dancer", "pilot", "baker", "poet")
_VERBS = ("carries", "finds", "holds", "likes", "moves", "pulls", "pushes", "lifts", "throws", "catches",
          "cleans", "builds", "drops", "wants", "needs", "visits", "remembers", "describes", "chooses", "borrows")
_ADVERBS = ("slowly", "quickly", "loudly", "softly", "carefully", "gladly", "rarely", "often", "twice", "today",
            "tonight", "outside", "upstairs", "nearby")
CORPUS_WORDS = frozenset(_DETERMINERS + _ADJECTIVES + _NOUNS + _VERBS + _ADVERBS)


def check_disjoint() -> None:
    """MaebenchError if the corpus would share a word or a voice with any toy evaluation set (a recipe edit that
    breaks the rule fails loudly instead of leaking test material into pretraining)."""
    shared_words = sorted(CORPUS_WORDS & EVAL_WORDS)
    shared_voices = sorted(set(sounds.CORPUS_VOICE_VARIANTS) & set(sounds.EVAL_VOICE_VARIANTS))
    if shared_words or shared_voices:
        raise MaebenchError(f"the toy corpus shares words {shared_words} / voices {shared_voices} with the toy "
                            "evaluation sets; edit maebench/toy_corpus.py so they stay disjoint")


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


def _corpus_voice(rng: np.random.Generator) -> sounds.Voice:
    """A random corpus speaker: never one of the toy tasks' voice variants."""
    variant = int(rng.choice(sounds.CORPUS_VOICE_VARIANTS))
    return sounds.Voice(variant=variant, pitch=int(rng.integers(10, 90)), speed=int(rng.integers(120, 220)))


def _place_speech(rng: np.random.Generator, n: int, texts: list[str], backend: str) -> np.ndarray:
    """`texts` spoken one after another by one corpus speaker (pitch drifting per text), with pauses, cut at n."""
    voice = _corpus_voice(rng)
    jobs = [(text, voice.restyled(pitch=int(rng.integers(-10, 11)))) for text in texts]
    out = np.zeros(n)
    cursor = int(rng.integers(0, SAMPLE_RATE // 5))
    for wav in sounds.synthesize(jobs, backend):
        if cursor >= n:
            break
        wav = wav[: n - cursor]
        out[cursor : cursor + wav.size] = wav
        cursor += wav.size + int(rng.integers(SAMPLE_RATE // 10, SAMPLE_RATE // 3))
    return out


def _words(rng: np.random.Generator, n: int, backend: str) -> np.ndarray:
    """Isolated corpus words (and a few pseudo-words), like a keyword-spotting recording session."""
    vocabulary = sorted(CORPUS_WORDS)
    texts = [_pseudo_word(rng) if rng.random() < 0.2 else str(rng.choice(vocabulary)) for _ in range(8)]
    return _place_speech(rng, n, texts, backend)


def _sentences(rng: np.random.Generator, n: int, backend: str) -> np.ndarray:
    """Corpus sentences of the form <det> <adj> <noun> <verb> <det> <noun> <adv>."""
    def sentence() -> str:
        parts = (_DETERMINERS, _ADJECTIVES, _NOUNS, _VERBS, _DETERMINERS, _NOUNS, _ADVERBS)
        return " ".join(str(rng.choice(words)) for words in parts)

    return _place_speech(rng, n, [sentence() for _ in range(2)], backend)


def _pseudo_word(rng: np.random.Generator) -> str:
    """One to three random consonant-vowel syllables, never one of the toy tasks' words."""
    while True:
        syllables = int(rng.integers(1, 4))
        word = "".join(str(rng.choice(_CONSONANTS)) + str(rng.choice(_VOWEL_LETTERS)) for _ in range(syllables))
        if word not in EVAL_WORDS:
            return word


def _environment(rng: np.random.Generator, n: int) -> np.ndarray:
    """One or two procedural environmental sounds (the toy sound classes, with corpus seeds) one after another."""
    names = list(sounds.SOUND_CLASSES)
    cut = int(rng.integers(n // 3, n)) if rng.random() < 0.5 else n
    first = sounds.render_sound(str(rng.choice(names)), rng, cut / SAMPLE_RATE)
    second = sounds.render_sound(str(rng.choice(names)), rng, (n - cut) / SAMPLE_RATE) if cut < n else first[:0]
    return np.concatenate([first, second])[:n]


def _mixture(rng: np.random.Generator, n: int, backend: str) -> np.ndarray:
    """Two different kinds at a random level difference (speech over a sound scene, two sounds, ...)."""
    first, second = rng.choice(len(_PURE_KINDS), size=2, replace=False)
    a = sounds.normalise(_make(_PURE_KINDS[first][1], rng, n, backend))
    b = sounds.normalise(_make(_PURE_KINDS[second][1], rng, n, backend))
    return a + b * 10 ** (-rng.uniform(0, 12) / 20)


def _make(make, rng: np.random.Generator, n: int, backend: str) -> np.ndarray:
    out = make(rng, n, backend) if make in _SPOKEN else make(rng, n)
    return np.resize(out, n) if out.size != n else out


_SPOKEN = (_words, _sentences, _mixture)
_PURE_KINDS = [("words", _words), ("sentence", _sentences), ("sound", _environment), ("tone", _tones),
               ("chirp", _chirps), ("noise", _noise_bursts)]
# speech and environmental sounds twice as often as the synthetic kinds
KINDS = [("words", _words), ("sentence", _sentences), ("sound", _environment), ("tone", _tones),
         ("words", _words), ("sentence", _sentences), ("sound", _environment), ("chirp", _chirps),
         ("noise", _noise_bursts), ("mix", _mixture)]


def toy_clip(index: int, backend: str = "procedural") -> tuple[str, np.ndarray]:
    """Clip `index` of the corpus: (kind, float32 samples in [-1, 1]); the same numbers on every call."""
    rng = np.random.default_rng([_SEED, VERSION, index])
    kind, make = KINDS[index % len(KINDS)]
    n = int(rng.integers(2 * SAMPLE_RATE, 4 * SAMPLE_RATE + 1))
    wave = sounds.normalise(_make(make, rng, n, backend))
    floor = sounds.normalise(sounds.pink_noise(rng.standard_normal(n)), 10 ** (-rng.uniform(30, 50) / 20))
    return kind, sounds.normalise(wave + floor, 10 ** (-rng.uniform(1, 12) / 20))


# ------------------------------------------------------------------------------------------------ building, caching
def toy_manifest(corpus_dir: Path) -> Path:
    """The manifest inside a corpus folder made by `ensure_toy_corpus`."""
    return Path(corpus_dir) / MANIFEST_NAME


def _folder_name(num_clips: int, backend: str | None = None) -> str:
    """toy_corpus_v<VERSION>[_procedural][_n<clips>]: the speech back end and size are part of what was built."""
    backend = backend or sounds.resolve_speech_backend()
    return (f"toy_corpus_v{VERSION}" + ("" if backend == "espeak" else f"_{backend}")
            + ("" if num_clips == NUM_CLIPS else f"_n{num_clips}"))


def _build(build_dir: Path, final_dir: Path, num_clips: int, backend: str) -> None:
    import soundfile

    check_disjoint()
    (build_dir / "clips").mkdir()
    entries = []
    for index in range(num_clips):
        kind, wave = toy_clip(index, backend)
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
    `num_clips` (for tests) and each speech back end ($MAEBENCH_TOY_SPEECH, espeak-ng when installed) get their own
    folder.
    """
    parent = Path(root) if root is not None else cache_dir()
    backend = sounds.resolve_speech_backend()
    final_dir = parent / _folder_name(num_clips, backend)
    if toy_manifest(final_dir).is_file():
        return final_dir
    parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(final_dir, "build")  # left by a builder that was killed
    build_dir = temp_sibling(final_dir, "build")
    build_dir.mkdir()  # the user's umask: the corpus is ordinary cache data
    try:
        _build(build_dir, final_dir.resolve(), num_clips, backend)
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
