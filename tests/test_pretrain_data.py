"""Pretraining data: deterministic crops, bad-file handling, sharded resumable batches, the toy corpus."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from maebench import toy_corpus
from maebench.audio import read_audio
from maebench.errors import MaebenchError
from maebench.manifest import format_manifest, read_manifest
from maebench.pretrain_data import (
    AudioItem,
    ClipBatch,
    CollateClips,
    PretrainClips,
    ResumableBatchSampler,
    bucket_lengths,
    build_pretrain_loader,
    crop_offset,
    list_audio,
    loader_options,
)

CLIP = 4000  # 0.25 s


def _write(path: Path, samples: int, rate: int = 16000, channels: int = 1, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    subtype = "FLOAT" if path.suffix == ".wav" else None  # float wav reads back bit-exact; flac is 16-bit
    soundfile.write(str(path), 0.2 * rng.standard_normal((samples, channels)), rate, subtype=subtype)
    return path


@pytest.fixture
def clips(tmp_path: Path) -> dict[str, Path]:
    files = {
        "long": _write(tmp_path / "long.wav", 24000, seed=1),
        "stereo_44k": _write(tmp_path / "stereo_44k.flac", 44100, rate=44100, channels=2, seed=2),
        "short": _write(tmp_path / "short.wav", 1600, seed=3),
        "too_short": _write(tmp_path / "too_short.wav", 200, seed=4),
        "corrupt": tmp_path / "corrupt.wav",
        "empty": tmp_path / "empty.flac",
        "missing": tmp_path / "missing.wav",
        "nan": tmp_path / "nan.wav",
    }
    files["corrupt"].write_bytes(b"RIFF\x00\x10\x00\x00WAVEfmt garbage" * 10)
    files["empty"].write_bytes(b"")
    soundfile.write(str(files["nan"]), np.full(8000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    return files


# ------------------------------------------------------------------------------------------------------- the clips
def _collated(dataset: PretrainClips, keys, clip: int = CLIP, **options) -> ClipBatch:
    return CollateClips(clip, **options)([dataset[key] for key in keys])


def test_crop_is_a_pure_function_of_seed_epoch_index(clips):
    items = [AudioItem(clips["long"]), AudioItem(clips["stereo_44k"])]
    dataset = PretrainClips(items)
    wav, key, error = dataset[(0, 3)]
    full = read_audio(clips["long"])
    assert error is None and key == (0, 3) and torch.equal(wav, full) and wav.dtype == torch.float32

    batch = _collated(dataset, [(0, 3)], seed=7)
    assert batch.lens.tolist() == [CLIP] and batch.wavs.shape == (1, CLIP) and batch.wavs.dtype == torch.float32
    start = crop_offset(full.numel(), CLIP, seed=7, epoch=3, index=0)
    assert torch.equal(batch.wavs[0], full[start : start + CLIP])
    assert torch.equal(batch.wavs, _collated(PretrainClips(items), [(0, 3)], seed=7).wavs)  # a fresh process agrees
    assert not torch.equal(batch.wavs, _collated(dataset, [(0, 4)], seed=7).wavs)  # another epoch, another crop
    assert not torch.equal(batch.wavs, _collated(dataset, [(0, 3)], seed=8).wavs)
    starts = {crop_offset(24000, CLIP, seed=7, epoch=e, index=0) for e in range(200)}
    assert len(starts) > 150 and min(starts) >= 0 and max(starts) <= 24000 - CLIP

    resampled = _collated(dataset, [(1, 0)])  # 1 s stereo at 44.1 kHz -> 16,000 mono samples, cropped
    assert resampled.lens.tolist() == [CLIP] and resampled.wavs.abs().sum() > 0


def test_fixed_length_zero_pads_a_short_clip(clips):
    """SSAST's way (batch_length fixed): every clip cropped or zero-padded to clip_seconds."""
    dataset = PretrainClips([AudioItem(clips["short"]), AudioItem(clips["long"])])
    batch = _collated(dataset, [(0, 5), (1, 5)])
    assert batch.wavs.shape == (2, CLIP) and batch.lens.tolist() == [1600, CLIP]
    assert torch.equal(batch.wavs[0, :1600], read_audio(clips["short"]))
    assert torch.count_nonzero(batch.wavs[0, 1600:]) == 0


def test_crop_to_shortest_leaves_no_padding(clips):
    """MAE-AST's way (the public collater with pad_audio: false): every clip randomly cropped to the batch's
    shortest good clip, capped at clip_seconds; no sample of the batch is padding."""
    names = ["long", "stereo_44k", "short", "corrupt"]
    dataset = PretrainClips([AudioItem(clips[n]) for n in names])
    keys = [(i, 2) for i in range(len(names))]
    batch = _collated(dataset, keys, seed=5, crop_to_shortest=True)
    assert batch.wavs.shape == (3, 1600) and batch.lens.tolist() == [1600] * 3
    assert batch.skipped == [str(clips["corrupt"])]
    for row, (index, epoch) in zip(batch.wavs, keys[:3], strict=True):
        full = dataset[(index, epoch)][0]
        start = crop_offset(full.numel(), 1600, seed=5, epoch=epoch, index=index)
        assert torch.equal(row, full[start : start + 1600])
    capped = _collated(dataset, keys[:2], clip=8000, crop_to_shortest=True)  # 24,000 and 16,000 samples
    assert capped.wavs.shape == (2, 8000) and capped.lens.tolist() == [8000, 8000]
    nothing = _collated(dataset, [(3, 0)], crop_to_shortest=True)
    assert nothing.wavs.shape[0] == 0 and nothing.lens.shape == (0,) and len(nothing.skipped) == 1


def test_clips_under_the_minimum_are_skipped(clips):
    dataset = PretrainClips([AudioItem(clips["short"]), AudioItem(clips["long"])], min_samples=2000)
    assert dataset[(0, 0)][2] == str(clips["short"]) and dataset[(1, 0)][2] is None
    assert PretrainClips([AudioItem(clips["too_short"])], min_samples=0).min_samples == 400  # one fbank frame


@pytest.mark.parametrize("name", ["too_short", "corrupt", "empty", "missing", "nan"])
def test_bad_files_come_back_as_skipped(clips, name):
    wav, key, error = PretrainClips([AudioItem(clips[name])])[(0, 0)]
    assert error == str(clips[name]) and key == (0, 0) and wav.numel() == 0


def test_collate_drops_bad_items(clips):
    names = ["long", "corrupt", "short", "empty"]
    dataset = PretrainClips([AudioItem(clips[n]) for n in names])
    batch = _collated(dataset, [(i, 0) for i in range(len(names))])
    assert batch.wavs.shape == (2, CLIP) and batch.lens.tolist() == [CLIP, 1600]
    assert batch.skipped == [str(clips["corrupt"]), str(clips["empty"])]
    assert torch.equal(batch.wavs[1], _collated(dataset, [(2, 0)]).wavs[0])
    nothing = _collated(dataset, [(1, 0), (3, 0)])
    assert nothing.wavs.shape == (0, CLIP) and nothing.lens.shape == (0,) and len(nothing.skipped) == 2


# ----------------------------------------------------------------------------------------------------- the sampler
def test_shards_are_disjoint_equal_and_cover_the_epoch():
    world = 3
    samplers = [ResumableBatchSampler(103, 4, seed=1, rank=r, world_size=world) for r in range(world)]
    assert {s.batches_per_epoch() for s in samplers} == {103 // 12}
    shards = [[key for batch in s for key in batch] for s in samplers]
    assert all(len(batch) == 4 for s in samplers for batch in s)
    indices = [index for shard in shards for index, _ in shard]
    assert len(indices) == len(set(indices)) == 96 and set(indices) <= set(range(103))
    assert {epoch for shard in shards for _, epoch in shard} == {0}

    padded = [ResumableBatchSampler(103, 4, seed=1, rank=r, world_size=world, drop_last=False) for r in range(3)]
    assert [len(list(s)) for s in padded] == [9, 9, 9]
    assert {index for s in padded for batch in s for index, _ in batch} == set(range(103))


def test_epochs_reshuffle_and_single_rank_is_a_permutation():
    sampler = ResumableBatchSampler(20, 5, seed=0)
    first = [index for batch in sampler for index, _ in batch]
    sampler.set_position(1, 0)
    second = [index for batch in sampler for index, _ in batch]
    assert sorted(first) == sorted(second) == list(range(20)) and first != second
    assert all(epoch == 1 for batch in sampler for _, epoch in batch)


def test_set_position_resumes_exactly():
    def uninterrupted(epoch: int) -> list:
        sampler = ResumableBatchSampler(50, 3, seed=5, rank=1, world_size=2)
        sampler.set_position(epoch, 0)
        return list(sampler)

    resumed = ResumableBatchSampler(50, 3, seed=5, rank=1, world_size=2)  # a new process after a restart
    resumed.set_position(2, 5)
    assert len(resumed) == resumed.batches_per_epoch() - 5 == 3
    assert list(resumed) == uninterrupted(2)[5:]
    assert list(resumed) == list(resumed)  # iterating does not move the position
    resumed.set_position(2, resumed.batches_per_epoch())
    assert list(resumed) == []
    with pytest.raises(ValueError):
        resumed.set_position(0, resumed.batches_per_epoch() + 1)


def test_bucketing_cuts_sorted_runs_and_shuffles_them():
    """With lengths: each global batch is a run of the epoch's clips sorted by length (fairseq's batch_by_size on
    ordered_indices), the runs come in a shuffled order, ranks share each global batch, and an epoch is still a
    pure function of (seed, epoch) that resumes exactly."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(32_000, 250_000, size=103).tolist()
    world = 2
    samplers = [ResumableBatchSampler(103, 4, seed=1, rank=r, world_size=world, lengths=lengths) for r in range(2)]
    per_rank = [s.epoch_order(0) for s in samplers]
    global_batches = np.concatenate(per_rank, axis=1)  # (batches, 8): rank 0's 4 then rank 1's 4
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in global_batches)
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(spans, spans[1:], strict=False))  # disjoint runs
    firsts = [min(lengths[i] for i in b) for b in global_batches]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)  # the runs are shuffled
    indices = global_batches.flatten().tolist()
    assert len(set(indices)) == 96 == samplers[0].batches_per_epoch() * 8
    dropped = {i for i in range(103) if i not in set(indices)}
    assert dropped != set(np.argsort(lengths)[-7:].tolist())  # drop_last drops random clips, not the longest
    again = ResumableBatchSampler(103, 4, seed=1, rank=1, world_size=world, lengths=lengths)
    again.set_position(0, 5)
    assert list(again) == [[(int(i), 0) for i in b] for b in per_rank[1][5:]]
    assert not np.array_equal(samplers[0].epoch_order(1), per_rank[0])
    with pytest.raises(ValueError, match="lengths"):
        ResumableBatchSampler(10, 2, lengths=[1, 2])


def test_bucket_lengths_need_every_length():
    items = [AudioItem(Path("a.wav"), 48_000), AudioItem(Path("b.wav"), 480_000)]
    assert bucket_lengths(items, 250_000) == [48_000, 250_000]  # capped, as the public size() is
    assert bucket_lengths([*items, AudioItem(Path("c.wav"))], 250_000) is None


def test_too_little_data_for_a_batch_is_a_user_error():
    with pytest.raises(MaebenchError, match="smaller batch"):
        ResumableBatchSampler(7, 4, world_size=2)


# ------------------------------------------------------------------------------------------------------ the loader
@pytest.fixture
def corpus(tmp_path: Path, clips) -> list[AudioItem]:
    items = [AudioItem(_write(tmp_path / f"c{i:02d}.wav", 2000 + 700 * i, seed=10 + i)) for i in range(10)]
    return items + [AudioItem(clips["corrupt"]), AudioItem(clips["stereo_44k"])]


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    return [(b.wavs, b.lens, b.skipped) for b in loader]


def _same(a, b) -> bool:
    if len(a) != len(b):
        return False
    pairs = zip(a, b, strict=True)
    return all(torch.equal(wa, wb) and torch.equal(la, lb) and sa == sb for (wa, la, sa), (wb, lb, sb) in pairs)


def test_workers_give_the_same_batches_and_resume_matches(corpus):
    options = dict(clip_seconds=CLIP / 16000, batch_size=3, seed=3, epoch=1)
    serial = _batches(build_pretrain_loader(corpus, num_workers=0, **options))
    parallel = _batches(build_pretrain_loader(corpus, num_workers=2, **options))
    assert len(serial) == 4 and _same(serial, parallel)
    assert sum(len(skipped) for _, _, skipped in serial) == 1  # the corrupt file, dropped from its batch
    assert sum(wavs.shape[0] for wavs, _, _ in serial) == 11
    resumed = _batches(build_pretrain_loader(corpus, num_workers=0, batch_in_epoch=2, **options))
    assert _same(resumed, serial[2:])
    other_epoch = _batches(build_pretrain_loader(corpus, num_workers=0, **{**options, "epoch": 2}))
    assert not _same(other_epoch, serial)


def test_ranks_get_disjoint_batches_of_equal_count(corpus):
    loaders = [
        build_pretrain_loader(corpus, clip_seconds=0.1, batch_size=2, num_workers=0, seed=0, rank=r, world_size=2)
        for r in range(2)
    ]
    assert len(loaders[0]) == len(loaders[1]) == loaders[0].batch_sampler.batches_per_epoch() == 3
    keys = [key for loader in loaders for batch in loader.batch_sampler for key in batch]
    assert len(keys) == len(set(keys)) == 12
    batch = next(iter(loaders[0]))
    assert batch.wavs.shape[1] == 1840 and batch.wavs.dtype == torch.float32  # 10 frames: 400 + 9 * 160 samples


def _manifest_of(tmp_path: Path, lengths: list[int]) -> list[AudioItem]:
    entries = []
    for i, n in enumerate(lengths):
        _write(tmp_path / f"v{i:03d}.wav", n, seed=100 + i)
        entries.append((f"v{i:03d}.wav", n))
    (tmp_path / "train.tsv").write_text(format_manifest(tmp_path, entries))
    return read_manifest(tmp_path / "train.tsv")


def test_bucketed_batches_keep_most_audio(tmp_path: Path):
    """Cropping to the shortest clip wastes the longer clips' tails; bucketing keeps them. 48 clips of 0.3-2 s in
    batches of 6: measured kept share of the audio (capped at 2 s) with and without buckets."""
    lengths = np.random.default_rng(1).integers(4_800, 32_000, size=48).tolist()
    items = _manifest_of(tmp_path, lengths)

    def kept(bucket: bool) -> float:
        loader = build_pretrain_loader(items, clip_seconds=2.0, batch_size=6, num_workers=0, seed=0,
                                       crop_to_shortest=True, bucket=bucket)
        batches = list(loader)
        assert all(int(b.lens.min()) == int(b.lens.max()) == b.wavs.shape[1] for b in batches)  # no padding
        return sum(b.wavs.numel() for b in batches) / sum(lengths)

    plain, bucketed = kept(False), kept(True)
    assert bucketed > 0.9 and plain < 0.75, (plain, bucketed)


def test_loader_options_follow_the_model_family():
    from maebench.config import PretrainConfig, apply_overrides

    mae = loader_options(PretrainConfig())
    assert mae["crop_to_shortest"] is True and mae["min_seconds"] == 0.5 and mae["bucket"] is False
    ssast = loader_options(apply_overrides(PretrainConfig(), ["model.name=ssast_patch"]))
    assert ssast["crop_to_shortest"] is False
    forced = loader_options(apply_overrides(PretrainConfig(), ["model.name=ssast_patch", "data.batch_length=shortest"]))
    assert forced["crop_to_shortest"] is True


def test_trainer_resumes_bucketed_variable_length_batches_exactly(tmp_path: Path, monkeypatch):
    """The loop on clips of 0.5-1.5 s, cropped to each batch's shortest and bucketed: 6 steps in one go == 3 steps,
    then a resume (bitwise), across an epoch boundary."""
    from safetensors.torch import load_file

    from maebench import trainer
    from maebench.config import PretrainConfig, apply_overrides

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    items_dir = tmp_path / "clips"
    items_dir.mkdir()
    _manifest_of(items_dir, np.random.default_rng(2).integers(8_000, 24_000, size=10).tolist())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def run(run_dir: Path):
        settings = [f"data.source={items_dir / 'train.tsv'}", "data.clip_seconds=1.5", "data.bucket=true",
                    "data.num_workers=0", "train.batch_size=4", "train.max_steps=6", "train.log_every=1",
                    "train.ckpt_every=3", "train.device=cpu", "optim.warmup_steps=2", f"run_dir={run_dir}",
                    "model.overrides={dim: 32, num_heads: 2, ffn_dim: 64, depth: 2, decoder_depth: 1}"]
        return trainer.train(apply_overrides(PretrainConfig(), settings), quiet=True)

    try:
        whole = run(tmp_path / "whole")
        (tmp_path / "half" / "checkpoints").mkdir(parents=True)
        os.rename(tmp_path / "whole" / "checkpoints" / "step_00000003",
                  tmp_path / "half" / "checkpoints" / "step_00000003")
        torch.manual_seed(99)
        resumed = run(tmp_path / "half")
    finally:
        torch.set_num_threads(threads)
    assert resumed.start_step == 3 and dict(resumed.losses) == {s: v for s, v in whole.losses if s > 3}
    a = load_file(tmp_path / "whole" / "checkpoints" / "step_00000006" / "model.safetensors")
    b = load_file(tmp_path / "half" / "checkpoints" / "step_00000006" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


# -------------------------------------------------------------------------------------------------- the toy corpus
def test_toy_corpus_is_deterministic_and_cached(tmp_path: Path, monkeypatch):
    first = toy_corpus.ensure_toy_corpus(tmp_path / "a", num_clips=10)
    second = toy_corpus.ensure_toy_corpus(tmp_path / "b", num_clips=10)
    lines_a = toy_corpus.toy_manifest(first).read_text().splitlines()
    lines_b = toy_corpus.toy_manifest(second).read_text().splitlines()
    assert lines_a[0] == str(first.resolve()) and lines_b[0] == str(second.resolve())
    assert lines_a[1:] == lines_b[1:] and len(lines_a) == 11
    for item in read_manifest(toy_corpus.toy_manifest(first)):
        twin = second / item.path.relative_to(first.resolve())
        assert item.path.read_bytes() == twin.read_bytes()
        wav, rate = soundfile.read(str(item.path))
        assert rate == 16000 and wav.size == item.num_samples and 2 * 16000 <= wav.size <= 4 * 16000
        assert np.isfinite(wav).all() and 0.01 < np.sqrt(np.mean(wav**2)) and np.abs(wav).max() < 1.0
    kinds = {line.split("\t")[0].split("_")[-1].removesuffix(".wav") for line in lines_a[1:]}
    assert kinds == {kind for kind, _ in toy_corpus.KINDS}
    assert [p.name for p in (tmp_path / "a").iterdir()] == [first.name]  # no build folder left behind

    def no_rebuild(*args):
        raise AssertionError("rebuilt a cached corpus")

    monkeypatch.setattr(toy_corpus, "_build", no_rebuild)
    assert toy_corpus.ensure_toy_corpus(tmp_path / "a", num_clips=10) == first


def test_toy_corpus_never_uses_a_half_built_folder(tmp_path: Path, monkeypatch):
    real_clip = toy_corpus.toy_clip

    def crash_at_third(index: int, backend: str):
        if index == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-build
        return real_clip(index, backend)

    monkeypatch.setattr(toy_corpus, "toy_clip", crash_at_third)
    with pytest.raises(KeyboardInterrupt):
        toy_corpus.ensure_toy_corpus(tmp_path, num_clips=4)
    assert os.listdir(tmp_path) == []  # neither the corpus nor its temporary build folder

    monkeypatch.setattr(toy_corpus, "toy_clip", real_clip)
    leftover = tmp_path / toy_corpus._folder_name(4)
    (leftover / "clips").mkdir(parents=True)  # a folder without a manifest is not a finished corpus
    corpus = toy_corpus.ensure_toy_corpus(tmp_path, num_clips=4)
    assert corpus == leftover and len(read_manifest(toy_corpus.toy_manifest(corpus))) == 4


def test_default_toy_corpus_lives_in_the_cache(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("MAEBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(toy_corpus, "NUM_CLIPS", 3)  # the folder name follows the requested size
    corpus = toy_corpus.ensure_toy_corpus(num_clips=3)
    assert corpus.parent == tmp_path / "cache" and corpus.name.startswith(f"toy_corpus_v{toy_corpus.VERSION}")


def test_no_source_means_the_toy_corpus(monkeypatch, capsys, tmp_path: Path):
    full_build = toy_corpus.ensure_toy_corpus
    monkeypatch.setattr(toy_corpus, "ensure_toy_corpus", lambda: full_build(num_clips=6))
    items = list_audio(None)
    assert len(items) == 6 and all(item.path.is_file() and item.num_samples for item in items)
    said = capsys.readouterr().out
    assert said.count("\n") == 1 and "toy corpus" in said
    list_audio(None, quiet=True)
    assert capsys.readouterr().out == ""
    folder = tmp_path / "folder"
    folder.mkdir()
    _write(folder / "a.wav", 1600)
    assert [item.path.name for item in list_audio(folder)] == ["a.wav"]  # a source: read by maebench.manifest


def test_toy_corpus_is_disjoint_from_every_toy_evaluation_set(tmp_path: Path, monkeypatch):
    """The corpus speaks words and sentences and plays environmental sounds, but no voice, word or sound-generator
    stream of any toy evaluation set: a pretrained model is never tested on what it heard. Every (text, voice)
    sent to the synthesiser and the generator state of every procedural sound are recorded for the six toy builds
    and a corpus build (audio stubbed: only what would be rendered matters)."""
    from maebench.downstream import sounds, toy
    from maebench.downstream.datasets import TASKS, build_toy

    spoken: dict[str, list] = {"toy": [], "corpus": []}
    streams: dict[str, set] = {"toy": set(), "corpus": set()}
    side = ["toy"]

    def synthesize(jobs, backend):
        spoken[side[0]].extend(jobs)
        return [np.full(1600, 0.1, np.float32) for _ in jobs]

    def render_sound(name, rng, seconds, sample_rate=16000):
        streams[side[0]].add(repr(rng.bit_generator.state["state"]))
        return np.full(int(seconds * sample_rate), 0.1, np.float32)

    for module in (toy, sounds):
        monkeypatch.setattr(module, "synthesize", synthesize)
        monkeypatch.setattr(module, "render_sound", render_sound)
    monkeypatch.setattr(toy, "render_noise", lambda kind, rng, seconds: np.full(int(seconds * 16000), 0.01))
    for name in TASKS:
        build_toy(name, tmp_path / name, speech_backend="procedural", size="small")
    side[0] = "corpus"
    corpus = toy_corpus.ensure_toy_corpus(tmp_path / "corpus", num_clips=20)
    kinds = {item.path.stem.split("_", 1)[1] for item in read_manifest(toy_corpus.toy_manifest(corpus))}
    assert {"words", "sentence", "sound", "mix"} <= kinds

    words = {side: {w for text, _ in jobs for w in text.split()} for side, jobs in spoken.items()}
    voices = {side: {voice.variant for _, voice in jobs} for side, jobs in spoken.items()}
    assert len(words["corpus"]) > 30 and not words["corpus"] & words["toy"]
    assert words["toy"] <= toy.EVAL_WORDS  # the list check_disjoint guards covers everything the toys say
    assert voices["corpus"] and not voices["corpus"] & voices["toy"]
    assert max(voices["toy"]) < len(sounds.ESPEAK_VARIANTS) <= min(voices["corpus"])
    assert len(streams["corpus"]) >= 4 and len(streams["toy"]) >= 50 and not streams["corpus"] & streams["toy"]
    # a recipe edit that would leak a toy word into the corpus is refused before anything is built
    monkeypatch.setattr(toy_corpus, "CORPUS_WORDS", toy_corpus.CORPUS_WORDS | {"marvin"})
    with pytest.raises(MaebenchError, match="marvin"):
        toy_corpus.ensure_toy_corpus(tmp_path / "leaky", num_clips=2)
