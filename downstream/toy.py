"""Toy look-alikes of the six evaluation datasets, in their exact official layouts, built offline in seconds.

The real loaders read them unchanged, so every code path (list files, hash split rule, csv/json parsing, folds,
silence crops, label merging) is exercised on any machine. Speech comes from espeak-ng voices when available
(distinct speakers = voice variant + pitch + speed) and from the formant fallback otherwise; ESC-50 and AudioSet
clips are procedural sound classes. Builds are deterministic for a given seed, size and speech back end.

Calibrated so the toys can tell upstreams apart: recordings are noisy (background noise at random SNRs, random gain),
takes drift in pitch and rate, SID speakers share voice variants and each video has its own channel, emotions are
mild; a random-init tiny MAE-AST/SSAST scores 30-75% with logreg (not at ceiling or floor), and the default "full"
size tests on >= 200 items per task (summed over folds). `size="small"` ($MAEBENCH_TOY_SIZE=small; the tests) keeps
the historical 27-35-item sizes for speed. The built-in pretraining corpus (maebench/toy_corpus.py) never uses a toy
task's voices, words or sound seeds (`EVAL_WORDS`, `sounds.EVAL_VOICE_VARIANTS`).
This builder sits above the task loaders it imitates (it imports their word lists and split rule); "no root: use
the toy" is `maebench.downstream.datasets.load_task`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from maebench.atomic import sweep_stale, temp_sibling
from maebench.errors import MaebenchError
from maebench.paths import cache_dir
from maebench.upstream.frontend import SAMPLE_RATE

from .sounds import (
    ESPEAK_VARIANTS,
    NOISE_KINDS,
    SOUND_CLASSES,
    Voice,
    mix_at_snr,
    render_noise,
    render_sound,
    resolve_speech_backend,
    synthesize,
)
from .tasks import check_task_name
from .tasks.base import TOY_MARKER
from .tasks.speech_commands import KS1_COMMANDS, KS2_WORDS, which_set

TOY_VERSION = 2  # 2: noisy recordings, jittered takes, sizes (full: >= 200 test items)
TOY_DIR_OF = {"as2m": "as20k"}  # as2m's toy shares the AudioSet toy (it ships unbalanced_train.json too)
SPEECH_TASKS = ("ks2", "ks1", "sid", "er")

SENTENCES = (
    "the quick brown fox jumps over the lazy dog", "please call me back when you get home",
    "we should leave before the rain starts", "i never said she stole my money",
    "the museum opens at nine on sundays", "can you hand me the red notebook",
    "there is a small cafe around the corner", "my brother plays the violin every evening",
    "turn left after the second traffic light", "the train to boston was late again",
    "she bought fresh bread at the market", "nobody knows where the old map went",
    "the children ran across the wet grass", "open the window if it gets too warm",
    "he forgot his keys on the kitchen table", "our neighbours painted their fence blue",
    "the doctor will see you in ten minutes", "a cold wind blew through the empty street",
    "they watched the boats from the harbour wall", "i think the meeting moved to friday",
    "the cat slept all afternoon in the sun", "bring a jacket because the evening is cool",
    "the library closes early during the holidays", "her sister sent a letter from spain",
)
SID_TOY_SPEAKERS = ("id10001", "id10002", "id10003", "id10004", "id10005", "id10006", "id10270", "id10271")  # small

# Toy sizes. "full" (the default): test sets of >= 200 items (summed over folds), so a 5-point difference between
# two upstreams is outside the noise; builds in well under a minute for the six. "small": the historical sizes
# (27-35 test items), for tests that need data, not statistics ($MAEBENCH_TOY_SIZE=small, or size="small").
TOY_SIZES: dict[str, dict[str, dict]] = {
    "full": {
        "ks2": {"pools": {"training": 24, "validation": 6, "testing": 12}, "train": 8, "dev": 2, "test": 6},
        "ks1": {"pools": {"training": 24, "validation": 6, "testing": 20}, "train": 10, "train_aux": 4, "dev": 2,
                "test": 20, "test_unknown": 16, "test_silence": 12},
        "esc50": {"per_fold": 4},
        "as20k": {"balanced": 12, "eval": 20, "unbalanced": 180},
        "sid": {"speakers": 20, "videos": 4, "train": 8, "dev": 2, "test": 10},
        "er": {"takes": 3},
    },
    "small": {
        "ks2": {"pools": {"training": 8, "validation": 3, "testing": 3}, "train": 3, "dev": 1, "test": 1},
        "ks1": {"pools": {"training": 8, "validation": 3, "testing": 4}, "train": 5, "train_aux": 2, "dev": 1,
                "test": 2, "test_unknown": 4, "test_silence": 3},
        "esc50": {"per_fold": 2},
        "as20k": {"balanced": 6, "eval": 3, "unbalanced": 90},
        "sid": {"speakers": 8, "videos": 2, "train": 4, "dev": 1, "test": 1},
        "er": {"takes": 1},
    },
}
TOY_SIZE_ENV = "MAEBENCH_TOY_SIZE"


def resolve_toy_size(size: str | None = None) -> str:
    """'full' or 'small': `size`, else $MAEBENCH_TOY_SIZE, else 'full'."""
    chosen = size or os.environ.get(TOY_SIZE_ENV) or "full"
    if chosen not in TOY_SIZES:
        raise MaebenchError(f"unknown toy size {chosen!r} (from {'size' if size else TOY_SIZE_ENV}); use "
                            f"{' or '.join(TOY_SIZES)}")
    return chosen


def _rng(seed: int, *parts: object) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha1(repr((seed, *parts)).encode()).hexdigest()[:12], 16))


def _write_wav(path: Path, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(wav, -1.0, 1.0), sample_rate, subtype="PCM_16")


def _fit(wav: np.ndarray, length: int, rng: np.random.Generator, noise: float = 0.002) -> np.ndarray:
    """Place a clip in a window of `length` samples at a random offset (trim if longer), over a faint noise floor."""
    out = noise * rng.standard_normal(length)
    if len(wav) >= length:
        out += wav[:length]
    else:
        start = int(rng.integers(0, length - len(wav) + 1))
        out[start : start + len(wav)] += wav
    return out.astype(np.float32)


def _random_voice(rng: np.random.Generator, variant: int) -> Voice:
    return Voice(variant=variant % len(ESPEAK_VARIANTS), pitch=int(rng.integers(15, 85)),
                 speed=int(rng.integers(130, 210)))


def _jittered(voice: Voice, rng: np.random.Generator, pitch: int = 6, speed: float = 0.1) -> Voice:
    """The same speaker on another day: pitch and rate drift a little from take to take."""
    return voice.restyled(int(rng.integers(-pitch, pitch + 1)), float(rng.uniform(1 - speed, 1 + speed)))


def _recorded(wav: np.ndarray, rng: np.random.Generator, snr_db: tuple[float, float],
              kinds: tuple[str, ...] = NOISE_KINDS) -> np.ndarray:
    """`wav` under one of the background noises at a random SNR and a random recording gain (-12..0 dB)."""
    noise = render_noise(str(rng.choice(kinds)), rng, len(wav) / SAMPLE_RATE + 0.01)
    out = mix_at_snr(wav, noise, float(rng.uniform(*snr_db)))
    return out * float(10 ** (-rng.uniform(0, 12) / 20))


# -------------------------------------------------------------------------------------------- speech commands
def _speaker_ids(rng: np.random.Generator, wanted: dict[str, int]) -> dict[str, list[str]]:
    """Random 8-hex speaker ids whose hash-rule split is 'training'/'validation'/'testing' as many as wanted."""
    found: dict[str, list[str]] = {split: [] for split in wanted}
    while any(len(found[s]) < n for s, n in wanted.items()):
        speaker = f"{int(rng.integers(0, 2**32)):08x}"
        split = which_set(f"{speaker}_nohash_0.wav")
        if split in found and len(found[split]) < wanted[split] and speaker not in found[split]:
            found[split].append(speaker)
    return found


def _write_lists(root: Path, files: list[str]) -> None:
    for split, name in (("validation", "validation_list.txt"), ("testing", "testing_list.txt")):
        lines = sorted(rel for rel in files if which_set(rel) == split)
        (root / name).write_text("".join(f"{rel}\n" for rel in lines))


def _write_noise_folder(root: Path, rng: np.random.Generator, kinds: tuple[str, ...], seconds: float) -> None:
    folder = root / "_background_noise_"
    for kind in kinds:
        _write_wav(folder / f"{kind}.wav", render_noise(kind, rng, seconds))
    (folder / "README.md").write_text("Toy background noise (procedural), in the layout of Speech Commands.\n")


KEYWORD_SNR_DB = (0.0, 20.0)  # Speech Commands clips are phone recordings, many in noisy rooms


def _speak_clips(plan: list[tuple[Path, str, Voice]], backend: str, rng: np.random.Generator) -> None:
    """Synthesise `plan` ((path, word, voice)...) and write 1 s 16 kHz clips, each in its own background noise."""
    wavs = synthesize([(word, voice) for _, word, voice in plan], backend)
    for (path, _, _), wav in zip(plan, wavs, strict=True):
        _write_wav(path, _recorded(_fit(wav, SAMPLE_RATE, rng), rng, KEYWORD_SNR_DB))


def _pick(pool: list[str], i: int, count: int) -> list[str]:
    """`count` consecutive speakers of `pool` starting at word i's offset (distinct while count <= len(pool))."""
    return [pool[(i + j) % len(pool)] for j in range(count)]


def _build_ks2(root: Path, seed: int, backend: str, size: dict) -> None:
    """35 words; per word `train`/`dev`/`test` speakers from pools split by the hash rule; noisy recordings."""
    rng = _rng(seed, "ks2")
    pools = _speaker_ids(rng, size["pools"])
    voice = {spk: _random_voice(rng, i) for i, spk in enumerate(s for group in pools.values() for s in group)}
    plan: list[tuple[Path, str, Voice]] = []
    for i, word in enumerate(KS2_WORDS):
        chosen = [(spk, 0) for spk in _pick(pools["training"], i, size["train"])]
        if i % 7 == 0:  # a speaker saying the word twice: <id>_nohash_1.wav
            chosen.append((chosen[0][0], 1))
        chosen += [(spk, 0) for spk in _pick(pools["validation"], i, size["dev"])]
        chosen += [(spk, 0) for spk in _pick(pools["testing"], i, size["test"])]
        for speaker, n in chosen:
            style = _jittered(voice[speaker], rng).restyled(speed=1.0 + 0.08 * n)
            plan.append((root / word / f"{speaker}_nohash_{n}.wav", word, style))
    _speak_clips(plan, backend, rng)
    _write_lists(root, [p.relative_to(root).as_posix() for p, _, _ in plan])
    _write_noise_folder(root, rng, NOISE_KINDS[:2], 3.0)


def ks2_clip(seed: int = 0) -> tuple[str, np.ndarray]:
    """(word, 1 s waveform): one keyword rendered as the toy KS2 renders its clips (a voice, the word, a noisy
    recording), without building the dataset: for figures that show a toy task's kind of audio in milliseconds."""
    rng = _rng(seed, "ks2-clip")
    word = KS2_WORDS[int(rng.integers(len(KS2_WORDS)))]
    (wav,) = synthesize([(word, _random_voice(rng, 0))], resolve_speech_backend())
    return word, _recorded(_fit(wav, SAMPLE_RATE, rng), rng, KEYWORD_SNR_DB).astype(np.float32)


KS1_TOY_AUXILIARY = ("bed", "bird", "cat", "dog", "happy", "house")
KS1_TOY_UNKNOWN_TEST = ("tree", "wow", "bird", "marvin", "sheila", "house", "dog", "cat")  # some never in training


def _build_ks1(out: Path, seed: int, backend: str, size: dict) -> None:
    """v0.01 train folder (10 commands + 6 auxiliary words, hash-rule lists, 4 noise files) and test-set folder."""
    rng = _rng(seed, "ks1")
    root, test_root = out / "speech_commands_v0.01", out / "speech_commands_test_set_v0.01"
    pools = _speaker_ids(rng, size["pools"])
    voice = {spk: _random_voice(rng, i) for i, spk in enumerate(s for group in pools.values() for s in group)}
    plan: list[tuple[Path, str, Voice]] = []
    for i, word in enumerate((*KS1_COMMANDS, *KS1_TOY_AUXILIARY)):
        command = word in KS1_COMMANDS
        chosen = _pick(pools["training"], i, size["train"] if command else size["train_aux"])
        chosen += _pick(pools["validation"], i, size["dev"] if command else 1)
        if command:  # a file in the hash rule's testing range: SUPERB drops it from train/dev
            chosen += _pick(pools["testing"], i, 1)
        plan += [(root / word / f"{spk}_nohash_0.wav", word, _jittered(voice[spk], rng)) for spk in chosen]
    test_plan: list[tuple[Path, str, Voice]] = []
    for i, word in enumerate(KS1_COMMANDS):
        for j, spk in enumerate(_pick(pools["testing"], i, size["test"])):
            test_plan.append((test_root / word / f"{spk}_nohash_{j}.wav", word, _jittered(voice[spk], rng)))
    for i in range(size["test_unknown"]):
        spk = pools["testing"][i % len(pools["testing"])]
        word = KS1_TOY_UNKNOWN_TEST[i % len(KS1_TOY_UNKNOWN_TEST)]
        test_plan.append((test_root / "_unknown_" / f"{spk}_nohash_{i}.wav", word, _jittered(voice[spk], rng)))
    _speak_clips(plan + test_plan, backend, rng)
    _write_lists(root, [p.relative_to(root).as_posix() for p, _, _ in plan])
    _write_noise_folder(root, rng, NOISE_KINDS, 4.0)
    for i in range(size["test_silence"]):
        kind = NOISE_KINDS[i % len(NOISE_KINDS)]
        clip = render_noise(kind, rng, 1.0) * float(rng.uniform(0.05, 1.0))
        _write_wav(test_root / "_silence_" / f"{int(rng.integers(0, 2**32)):08x}_nohash_{i}.wav", clip)


# Every word a toy evaluation set speaks: the built-in pretraining corpus must use none of them
# (maebench.toy_corpus.check_disjoint).
EVAL_WORDS = frozenset(KS2_WORDS) | set(KS1_COMMANDS) | set(KS1_TOY_AUXILIARY) | set(KS1_TOY_UNKNOWN_TEST) | {
    word for sentence in SENTENCES for word in sentence.split()}


# ------------------------------------------------------------------------------------------------------ ESC-50
SOUND_SNR_DB = (-5.0, 15.0)  # field recordings: the event over wind/rain/traffic-like backgrounds


def _build_esc50(root: Path, seed: int, backend: str, size: dict) -> None:
    """10 procedural classes x `per_fold` clips per fold (5 folds), 5 s, 44.1 kHz, ESC-50 names and metadata."""
    del backend
    rng = _rng(seed, "esc50")
    rate, per_fold = 44100, size["per_fold"]
    rows = []
    sources = rng.choice(np.arange(10000, 300000), size=10 * 5 * per_fold, replace=False)
    for target, category in enumerate(SOUND_CLASSES):
        for fold in range(1, 6):
            for pair in range(0, per_fold, 2):
                # odd folds: one source recording cut into takes A and B; even folds: two sources, take A each
                base = target * 5 * per_fold + (fold - 1) * per_fold + pair
                first, second = int(sources[base]), int(sources[base + 1])
                for src, take in ((first, "A"), (first, "B")) if fold % 2 else ((first, "A"), (second, "A")):
                    name = f"{fold}-{src}-{take}-{target}.wav"
                    _write_wav(root / "audio" / name, _esc50_clip(seed, name, category, rate), rate)
                    rows.append((name, fold, target, category, target < 4, src, take))
    (root / "meta").mkdir(parents=True, exist_ok=True)
    lines = ["filename,fold,target,category,esc10,src_file,take"]
    lines += [f"{n},{f},{t},{c},{e},{s},{k}" for n, f, t, c, e, s, k in sorted(rows)]
    (root / "meta" / "esc50.csv").write_text("\n".join(lines) + "\n")


def _esc50_clip(seed: int, name: str, category: str, rate: int) -> np.ndarray:
    clip_rng = _rng(seed, "esc50", name)
    wav = render_sound(category, clip_rng, 5.0, rate)
    background = np.resize(render_noise(str(clip_rng.choice(NOISE_KINDS)), clip_rng, 5.0), wav.shape)
    return mix_at_snr(wav, background, float(clip_rng.uniform(*SOUND_SNR_DB))) * float(clip_rng.uniform(0.3, 1.0))


# ---------------------------------------------------------------------------------------------------- AudioSet
AUDIOSET_TOY_CLASSES = (  # (mid, display name): two names carry commas, quoted in the csv as in the real file
    ("/m/0t0ne", "Sine wave"), ("/m/0ch1rp", "Chirp, rising"), ("/m/0ch2rp", "Chirp, falling"),
    ("/m/0n01se", "Noise burst"), ("/m/0hvm", "Hum"), ("/m/0cl1ck", "Clicking"), ("/m/0tr3m", "Tremolo"),
    ("/m/0w1nd", "Wind noise (microphone)"), ("/m/0dr1p", "Drip"), ("/m/0s1ren", "Siren"),
)


def _audioset_clip(rng: np.random.Generator, labels: list[int]) -> np.ndarray:
    """A mixture of the labelled classes at levels 0 to -20 dB over a background noise (weak labels, as in
    AudioSet: a quiet event still counts)."""
    names = list(SOUND_CLASSES)
    wav = sum(render_sound(names[c], rng, 3.0) * float(10 ** (-rng.uniform(0, 20) / 20)) for c in labels)
    background = render_noise(str(rng.choice(NOISE_KINDS)), rng, 3.0)
    return mix_at_snr(np.asarray(wav, dtype=np.float32), background, float(rng.uniform(*SOUND_SNR_DB)))


def _build_audioset(root: Path, seed: int, backend: str, size: dict) -> None:
    """Multi-label procedural mixtures (1-3 classes, 3 s): balanced and eval per class, unbalanced Zipf."""
    del backend
    rng = _rng(seed, "audioset")
    n = len(AUDIOSET_TOY_CLASSES)
    lines = ["index,mid,display_name"] + [f'{i},{mid},"{name}"' for i, (mid, name) in enumerate(AUDIOSET_TOY_CLASSES)]
    (root / "class_labels_indices.csv").write_text("\n".join(lines) + "\n")
    zipf = 1.0 / np.arange(1, n + 1)
    plans = {
        "balanced_train": [c for c in range(n) for _ in range(size["balanced"])],
        "eval": [c for c in range(n) for _ in range(size["eval"])],
        "unbalanced_train": list(rng.choice(n, size=size["unbalanced"], p=zipf / zipf.sum())),
    }
    used: set[str] = set()
    for split, primaries in plans.items():
        entries = []
        for primary in primaries:
            extra = rng.choice([c for c in range(n) if c != primary], size=int(rng.integers(0, 3)), replace=False)
            labels = sorted({int(primary), *map(int, extra)})
            video = _youtube_id(rng, used)
            rel = f"audio/{split}/Y{video}.wav"
            _write_wav(root / rel, _audioset_clip(rng, labels))
            entries.append({"video_id": video, "wav": rel,
                            "labels": ",".join(AUDIOSET_TOY_CLASSES[c][0] for c in labels)})
        name = {"eval": "eval.json"}.get(split, f"{split}.json")
        (root / name).write_text(json.dumps({"data": entries}, indent=1) + "\n")


def _youtube_id(rng: np.random.Generator, used: set[str]) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    while True:
        video = "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=11))
        if video not in used:
            used.add(video)
            return video


# --------------------------------------------------------------------------------------------------- VoxCeleb1
def sid_speakers(count: int) -> tuple[str, ...]:
    """VoxCeleb1-style ids: the first three quarters under dev/wav (id10001...), the rest under test/wav
    (id10270..., the numbers VoxCeleb1's test speakers start at)."""
    dev = (count * 3 + 3) // 4
    return tuple(f"id{10001 + i}" for i in range(dev)) + tuple(f"id{10270 + i}" for i in range(count - dev))


def _phrase(rng: np.random.Generator) -> str:
    """Three to six consecutive words of one of the toy sentences: a short utterance."""
    words = SENTENCES[int(rng.integers(0, len(SENTENCES)))].split()
    length = int(rng.integers(3, 7))
    start = int(rng.integers(0, max(1, len(words) - length + 1)))
    return " ".join(words[start : start + length])


def _build_sid(root: Path, seed: int, backend: str, size: dict) -> None:
    """Speakers x videos x utterances, split codes round-robin over each speaker's videos; every video has its own
    channel (noise kind and level), so identity must be heard through it."""
    rng = _rng(seed, "sid")
    used: set[str] = set()
    plan, split_lines, channels = [], [], []
    codes = [1] * size["train"] + [2] * size["dev"] + [3] * size["test"]
    for speaker in sid_speakers(size["speakers"]):
        voice = _random_voice(rng, int(rng.integers(0, len(ESPEAK_VARIANTS))))
        base = root / ("test/wav" if int(speaker[2:]) >= 10270 else "dev/wav") / speaker
        videos = [_youtube_id(rng, used) for _ in range(size["videos"])]
        channel = [(str(rng.choice(NOISE_KINDS)), float(rng.uniform(5, 25))) for _ in videos]
        for u, code in enumerate(codes):
            v = u % len(videos)
            rel = f"{speaker}/{videos[v]}/{u // len(videos) + 1:05d}.wav"
            plan.append((base / videos[v] / f"{u // len(videos) + 1:05d}.wav", _phrase(rng), _jittered(voice, rng)))
            split_lines.append(f"{code} {rel}")
            channels.append(channel[v])
    wavs = synthesize([(text, voice) for _, text, voice in plan], backend)
    for (path, _, _), wav, (kind, snr) in zip(plan, wavs, channels, strict=True):
        clip = _fit(wav, len(wav) + SAMPLE_RATE // 4, rng)
        _write_wav(path, mix_at_snr(clip, render_noise(kind, rng, len(clip) / SAMPLE_RATE + 0.01), snr))
    (root / "iden_split.txt").write_text("\n".join(split_lines) + "\n")


# ----------------------------------------------------------------------------------------------------- IEMOCAP
EMOTION_STYLE = {  # emotion -> (pitch offset, speed factor, volume factor), applied to the speaker's own voice;
    # mild, and each take drifts (`_jittered`) and is recorded at its own gain, so the classes overlap as real ones do
    "neu": (0, 1.0, 1.0), "hap": (10, 1.08, 1.15), "exc": (14, 1.12, 1.25), "ang": (4, 1.12, 1.5),
    "sad": (-10, 0.85, 0.7), "fru": (4, 1.04, 1.3), "xxx": (0, 0.95, 0.95), "sur": (15, 1.0, 1.2),
}
EMOTION_VAD = {"neu": "2.5000, 2.5000, 2.5000", "hap": "4.0000, 3.5000, 3.0000", "exc": "4.0000, 4.0000, 3.5000",
               "ang": "1.5000, 4.0000, 4.0000", "sad": "1.5000, 2.0000, 2.0000", "fru": "2.0000, 3.5000, 3.0000",
               "xxx": "2.5000, 3.0000, 3.0000", "sur": "3.5000, 4.0000, 2.5000"}
_EXTRA_EMOTIONS = ("exc", "exc", "fru", "xxx")
EMOTION_SNR_DB = (10.0, 30.0)


def _build_er(root: Path, seed: int, backend: str, size: dict) -> None:
    """5 sessions x 2 speakers x 2 dialogs; each speaker says neu/hap/ang/sad `takes` times plus one of
    exc/exc/fru/xxx."""
    rng = _rng(seed, "er")
    plan: list[tuple[Path, str, Voice]] = []
    labels: dict[tuple[Path, str], list[tuple[str, str, str]]] = {}  # (session dir, dialog) -> [(utt, emo, text)]
    for k in range(1, 6):
        session = root / f"Session{k}"
        voices = {"F": Voice(variant=7 + (k % 5), pitch=45 + 3 * k, speed=150 + 5 * k),
                  "M": Voice(variant=k, pitch=25 + 3 * k, speed=165 - 5 * k)}
        for d, dialog in enumerate((f"Ses0{k}F_impro0{k}", f"Ses0{k}M_script0{k}_1")):
            turns = []
            for s, sex in enumerate("FM"):
                emotions = ["neu", "hap", "ang", "sad"] * size["takes"] + [_EXTRA_EMOTIONS[2 * d + s]]
                for n, emotion in enumerate(emotions):
                    utt = f"{dialog}_{sex}{n:03d}"
                    text = _phrase(rng)
                    pitch, speed, volume = EMOTION_STYLE[emotion]
                    style = _jittered(voices[sex].restyled(pitch, speed, volume), rng, pitch=4, speed=0.06)
                    plan.append((session / "sentences" / "wav" / dialog / f"{utt}.wav", text, style))
                    turns.append((utt, emotion, text))
            labels[(session, dialog)] = turns
    wavs = synthesize([(text, voice) for _, text, voice in plan], backend)
    durations = {}
    for (path, _, _), wav in zip(plan, wavs, strict=True):
        clip = _fit(wav, len(wav) + SAMPLE_RATE // 5, rng)
        _write_wav(path, _recorded(clip, rng, EMOTION_SNR_DB, NOISE_KINDS[:2]))
        durations[path.stem] = len(clip) / SAMPLE_RATE
    for (session, dialog), turns in labels.items():
        _write_emo_evaluation(session, dialog, turns, durations)


def _write_emo_evaluation(session: Path, dialog: str, turns: list[tuple[str, str, str]],
                          durations: dict[str, float]) -> None:
    """EmoEvaluation/<dialog>.txt in IEMOCAP's format, plus a Categorical/ file and a transcription the loader
    must ignore."""
    evaluation = session / "dialog" / "EmoEvaluation"
    (evaluation / "Categorical").mkdir(parents=True, exist_ok=True)
    (session / "dialog" / "transcriptions").mkdir(parents=True, exist_ok=True)
    blocks, categorical, transcript = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n"], [], []
    clock = 1.0
    for utt, emotion, text in turns:
        start, end = clock, clock + durations[utt]
        clock = end + 0.5
        blocks.append(f"[{start:.4f} - {end:.4f}]\t{utt}\t{emotion}\t[{EMOTION_VAD[emotion]}]\n"
                      f"C-E1:\t{emotion.capitalize()};\t()\nC-E2:\t{emotion.capitalize()};\t()\n"
                      f"A-E1:\tval 3; act 3; dom  3;\t()\n")
        categorical.append(f"{utt} :{emotion.capitalize()}; ()\n")
        transcript.append(f"{utt} [{start:.4f}-{end:.4f}]: {text}\n")
    (evaluation / f"{dialog}.txt").write_text("\n".join(blocks))
    (evaluation / "Categorical" / f"{dialog}_e1_cat.txt").write_text("".join(categorical))
    (session / "dialog" / "transcriptions" / f"{dialog}.txt").write_text("".join(transcript))


# --------------------------------------------------------------------------------------------------- building
_BUILDERS: dict[str, Callable[[Path, int, str, dict], None]] = {
    "ks2": _build_ks2, "ks1": _build_ks1, "esc50": _build_esc50, "as20k": _build_audioset, "as2m": _build_audioset,
    "sid": _build_sid, "er": _build_er,
}


def build_toy(name: str, out_dir: str | Path, *, seed: int = 0, speech_backend: str = "auto",
              size: str | None = None) -> Path:
    """Write the toy look-alike of `name` in its official layout into `out_dir` (which becomes the task root);
    returns that root. `size`: 'full' (default) or 'small' (see TOY_SIZES)."""
    check_task_name(name)
    root = Path(out_dir).expanduser()
    size = resolve_toy_size(size)
    backend = resolve_speech_backend(speech_backend) if name in SPEECH_TASKS else "none"
    root.mkdir(parents=True, exist_ok=True)
    _BUILDERS[name](root, seed, backend, TOY_SIZES[size][TOY_DIR_OF.get(name, name)])
    marker = {"task": TOY_DIR_OF.get(name, name), "version": TOY_VERSION, "seed": seed, "speech_backend": backend,
              "size": size}
    (root / TOY_MARKER).write_text(json.dumps(marker) + "\n")
    return root


def _valid_toy(path: Path, size: str) -> bool:
    try:
        marker = json.loads((path / TOY_MARKER).read_text())
        return marker.get("version") == TOY_VERSION and marker.get("size") == size
    except (OSError, ValueError, AttributeError):
        return False


def is_toy_root(path: str | Path) -> bool:
    """A folder the toy builder made, of any toy version (its marker file parses as ours): the only kind of
    non-empty folder maebench ever replaces."""
    try:
        marker = json.loads((Path(path) / TOY_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and {"task", "version"} <= set(marker)


def _replace_dir(built: Path, target: Path) -> None:
    """Put the finished `built` folder at `target`; an old toy there is moved aside first and then deleted, so a
    kill leaves either toy complete (plus a leftover the next build sweeps), never half of one."""
    old = None
    if target.exists():
        old = temp_sibling(target, "old")
        target.rename(old)
    built.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_toy(name: str, target: str | Path, *, seed: int = 0, speech_backend: str = "auto",
              overwrite: bool = False, size: str | None = None) -> Path:
    """Build the toy of `name` at `target` (new, empty, or with `overwrite` an older toy build), atomically.

    A folder holding anything else is refused whatever the flags: it may be the user's real dataset. The build
    goes to a temporary sibling renamed into place; leftovers of killed builds are swept first.
    """
    return write_built(lambda tmp: build_toy(name, tmp, seed=seed, speech_backend=speech_backend, size=size),
                       target, overwrite=overwrite)


def write_built(build: Callable[[Path], object], target: str | Path, *, overwrite: bool = False) -> Path:
    """Run `build(tmp)` in a temporary sibling of `target` and rename it into place, under the toy rules: only a
    new or empty folder, or with `overwrite` an earlier toy build, is replaced; killed builds' leftovers are swept."""
    target = Path(target).expanduser()
    check_writable_toy_target(target, overwrite=overwrite)
    for tag in ("tmp", "old"):
        sweep_stale(target, tag)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target)
    try:
        build(tmp)
        check_writable_toy_target(target, overwrite=overwrite)  # still true after the build (seconds later)?
        _replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def check_writable_toy_target(target: Path, *, overwrite: bool) -> None:
    """MaebenchError unless `target` is absent, an empty folder, or (with `overwrite`) a toy build of ours."""
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir() or target.is_symlink():
        raise MaebenchError(f"{target} exists and is not a folder maebench made; choose another -o")
    if not any(target.iterdir()):
        return
    if not is_toy_root(target):
        raise MaebenchError(f"{target} is not empty and is not a toy dataset maebench built (no {TOY_MARKER}); it is "
                            "never replaced, even with --overwrite: choose another -o")
    if not overwrite:
        raise MaebenchError(f"{target} already holds a toy dataset; pass --overwrite to rebuild it or choose "
                            "another -o")


def ensure_toy(name: str, announce: Callable[[str], None] = print) -> Path:
    """The cached toy root of `name` (cache_dir()/toy/<name>), built atomically on first use."""
    base = cache_dir() / "toy"
    target = base / TOY_DIR_OF.get(name, name)
    size = resolve_toy_size()
    for tag in ("tmp", "old"):
        sweep_stale(target, tag)  # left by a build or a swap killed midway
    if _valid_toy(target, size):
        return target
    announce(f"maebench: building the toy {name} dataset in {target} (first use; no download)")
    base.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target)
    try:
        build_toy(name, tmp, size=size)
        if target.exists() and not _valid_toy(target, size):
            if not is_toy_root(target) and any(target.iterdir()):
                raise MaebenchError(f"{target} is in maebench's cache but is not a toy dataset it built; move it "
                                    "away and rerun")
            old = temp_sibling(target, "old")
            target.rename(old)  # an older toy version
            shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:
            if not _valid_toy(target, size):  # not a concurrent builder that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
