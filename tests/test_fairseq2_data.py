"""`--loader fairseq2`: the same batches as the torch loader, exact resume, clear errors without fairseq2 or
tensorboard, and the TensorBoard events of a run.

The torch loader is the reference: its order, crops and bad-file rules are tested in test_pretrain_data.py, and
its decoding (soundfile) is independent of fairseq2's (FileMapper + AudioDecoder), so equal batches mean the
fairseq2 path reads the same audio and cuts it the same way.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from helpers import TINY_MODEL, one_line_error, one_thread, write_tone_clips  # noqa: F401 (one_thread: a fixture)
from safetensors.torch import load_file

from maebench import trainer
from maebench.config import PretrainConfig, apply_overrides
from maebench.errors import MaebenchError
from maebench.fairseq2_data import INSTALL_HINT, build_fairseq2_loader, fairseq2_available, install_hint
from maebench.manifest import AudioItem, format_manifest, read_manifest
from maebench.pretrain_data import build_pretrain_loader

# on Python >= 3.13 the reason names the missing fairseq2n wheel
needs_fairseq2 = pytest.mark.skipif(not fairseq2_available(), reason=INSTALL_HINT)


pytestmark = pytest.mark.usefixtures("one_thread")


def _write(path: Path, samples: int, *, rate: int = 16000, channels: int = 1, subtype: str | None = None,
           seed: int = 0) -> Path:
    noise = 0.2 * np.random.default_rng(seed).standard_normal((samples, channels))
    soundfile.write(str(path), noise, rate, subtype=subtype)
    return path


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> list[AudioItem]:
    """Every kind of file the loaders meet: 16-bit and float WAV, FLAC, 24-bit, 44.1 kHz stereo (resampled), and
    bad ones (corrupt, empty, missing, too short, NaN), in a fixed order."""
    root = tmp_path_factory.mktemp("mixed")
    files = []
    for i in range(13):
        kind = i % 5
        name, rate, channels, subtype = {
            0: ("pcm16.wav", 16000, 1, "PCM_16"), 1: ("float.wav", 16000, 1, "FLOAT"), 2: ("clip.flac", 16000, 1, None),
            3: ("pcm24.flac", 16000, 1, "PCM_24"), 4: ("stereo44k.flac", 44100, 2, None),
        }[kind]
        files.append(_write(root / f"{i:02d}_{name}", 3000 + 1100 * i, rate=rate, channels=channels, subtype=subtype,
                            seed=i))
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x10\x00\x00WAVEfmt garbage" * 10)
    (root / "empty.flac").write_bytes(b"")
    _write(root / "too_short.wav", 300, seed=99)
    soundfile.write(str(root / "nan.wav"), np.full(8000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    bad = [root / "corrupt.wav", root / "empty.flac", root / "missing.wav", root / "too_short.wav", root / "nan.wav"]
    return [AudioItem(path) for path in files[:7] + bad + files[7:]]


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    return [(b.wavs, b.lens, b.skipped) for b in loader]


def _assert_same(torch_batches, fairseq2_batches) -> None:
    assert len(torch_batches) == len(fairseq2_batches) > 0
    for (wa, la, sa), (wb, lb, sb) in zip(torch_batches, fairseq2_batches, strict=True):
        assert wa.dtype == wb.dtype == torch.float32
        assert torch.equal(wa, wb) and torch.equal(la, lb) and sa == sb


@needs_fairseq2
@pytest.mark.parametrize("crop_to_shortest", [True, False])
def test_both_loaders_deliver_the_same_batches(mixed, crop_to_shortest):
    """Same clips, same crops (or zero padding), same bad files dropped from the same batches, bit for bit, for
    each rank of 2 and from a resumed position, with 1 or 3 decoding threads."""
    options = dict(clip_seconds=0.5, batch_size=3, seed=7, min_seconds=0.1, crop_to_shortest=crop_to_shortest,
                   epoch=2, world_size=2)
    for rank in range(2):
        reference = _batches(build_pretrain_loader(mixed, num_workers=0, rank=rank, **options))
        _assert_same(reference, _batches(build_fairseq2_loader(mixed, num_workers=3, rank=rank, **options)))
        resumed = build_fairseq2_loader(mixed, num_workers=1, rank=rank, batch_in_epoch=1, **options)
        assert len(resumed) == len(reference) - 1
        _assert_same(reference[1:], _batches(resumed))
    both_ranks = [build_fairseq2_loader(mixed, num_workers=2, rank=r, **options) for r in range(2)]
    skipped = sorted(p for loader in both_ranks for _, _, paths in _batches(loader) for p in paths)
    # 18 clips = 3 batches x 3 clips x 2 ranks, none left out: every bad file is met once
    assert [Path(p).name for p in skipped] == sorted(["corrupt.wav", "empty.flac", "missing.wav", "too_short.wav",
                                                      "nan.wav"])


@needs_fairseq2
def test_bucketed_batches_are_the_same(tmp_path: Path):
    """With a .tsv manifest's lengths, both loaders bucket by the one rule (ResumableBatchSampler)."""
    lengths = np.random.default_rng(3).integers(4_000, 20_000, size=20).tolist()
    entries = [(_write(tmp_path / f"v{i:02d}.flac", n, seed=i).name, n) for i, n in enumerate(lengths)]
    (tmp_path / "train.tsv").write_text(format_manifest(tmp_path, entries))
    items = read_manifest(tmp_path / "train.tsv")
    options = dict(clip_seconds=1.0, batch_size=4, seed=1, crop_to_shortest=True, bucket=True)
    reference = _batches(build_pretrain_loader(items, num_workers=0, **options))
    _assert_same(reference, _batches(build_fairseq2_loader(items, num_workers=2, **options)))
    assert max(int(lens.max()) for _, lens, _ in reference) > 2 * min(int(lens.min()) for _, lens, _ in reference)


# ---------------------------------------------------------------------------------------------------- the trainer


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return write_tone_clips(tmp_path_factory.mktemp("clips"))


def tiny_config(data: Path, run_dir: Path, *extra: str) -> PretrainConfig:
    return apply_overrides(PretrainConfig(), [
        f"data.source={data}", "data.clip_seconds=0.5", "data.loader=fairseq2", "data.num_workers=2",
        "train.batch_size=4", "train.max_steps=8", "train.log_every=1", "train.ckpt_every=3", "train.keep_last=5",
        "train.device=cpu", "optim.lr=2e-3", "optim.warmup_steps=2", f"run_dir={run_dir}", TINY_MODEL, *extra,
    ])


def _weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step_{step:08d}" / "model.safetensors")


@needs_fairseq2
def test_fairseq2_resume_equals_uninterrupted_and_the_torch_loader(clips, tmp_path):
    """8 steps in one go == 6 steps, then a resume to 8 (bitwise: weights and losses), across the epoch boundary at
    step 6 (24 clips / 4), and == the same run with the torch loader."""
    whole = trainer.train(tiny_config(clips, tmp_path / "whole"), quiet=True)
    half = tmp_path / "half"
    shutil.copytree(tmp_path / "whole/checkpoints/step_00000006", half / "checkpoints/step_00000006")
    torch.manual_seed(123)  # a resumed process starts with unrelated RNG state
    resumed = trainer.train(tiny_config(clips, half, "train.ckpt_every=4"), quiet=True)  # ckpt_every: operational
    assert resumed.start_step == 6 and [s for s, _ in resumed.losses] == [7, 8]
    assert dict(resumed.losses) == {s: loss for s, loss in whole.losses if s > 6}
    a, b = _weights(tmp_path / "whole", 8), _weights(half, 8)
    assert all(torch.equal(a[k], b[k]) for k in a)

    by_torch = trainer.train(tiny_config(clips, tmp_path / "torch", "data.loader=torch", "data.num_workers=0"),
                             quiet=True)
    assert by_torch.losses == whole.losses
    c = _weights(tmp_path / "torch", 8)
    assert all(torch.equal(a[k], c[k]) for k in a)


@needs_fairseq2
def test_switching_loader_keeps_the_run_resumable(clips, tmp_path, capsys):
    """data.loader is operational (same batches): a torch-loader run resumes with fairseq2 silently and exactly."""
    run = tmp_path / "run"
    whole = trainer.train(tiny_config(clips, tmp_path / "whole", "data.loader=torch", "train.max_steps=5"),
                          quiet=True)
    shutil.copytree(tmp_path / "whole/checkpoints/step_00000003", run / "checkpoints/step_00000003")
    (run / "config.yaml").write_text((tmp_path / "whole/config.yaml").read_text().replace("/whole", "/run"))
    capsys.readouterr()
    resumed = trainer.train(tiny_config(clips, run, "train.max_steps=5"), quiet=True)
    assert "refus" not in capsys.readouterr().out and resumed.start_step == 3
    assert dict(resumed.losses) == {s: loss for s, loss in whole.losses if s > 3}


def test_missing_fairseq2_is_a_one_line_error_before_anything_is_written(clips, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fairseq2.data.data_pipeline", None)  # import fails as if not installed
    with pytest.raises(MaebenchError) as excinfo:
        trainer.train(tiny_config(clips, tmp_path / "run"), quiet=True)
    one_line_error(excinfo, "--loader fairseq2", "pip install -e '.[fairseq2]'")
    assert not (tmp_path / "run").exists()


def test_install_hint_names_the_missing_wheel_on_python_313_and_later():
    for python in ((3, 13), (3, 14, 1)):
        hint = install_hint(python)
        assert f"no wheel for Python {python[0]}.{python[1]}" in hint and "fairseq2n 0.8.1" in hint
        assert "Python 3.10-3.12" in hint and "--loader torch" in hint and "\n" not in hint
    for python in ((3, 10), (3, 12, 4)):
        hint = install_hint(python)
        assert "pip install -e '.[fairseq2]'" in hint and "no wheel" not in hint


# ---------------------------------------------------------------------------------------------------- TensorBoard


needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="TensorBoard comes with the fairseq2 extra (CI installs it)")


def _scalars(run_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    steps = [event.step for event in events.Scalars(tag)]
    assert len(steps) == len(set(steps)), steps  # each step shown once
    return {event.step: event.value for event in events.Scalars(tag)}


@needs_tensorboard
def test_tensorboard_holds_the_metrics_and_a_resume_replaces_redone_steps(clips, tmp_path):
    run = tmp_path / "run"
    trainer.train(tiny_config(clips, run, "train.tensorboard=true", "train.max_steps=6", "data.loader=torch",
                              "data.num_workers=0"), quiet=True)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = _scalars(run, "pretrain/loss")
    assert losses == pytest.approx({r["step"]: r["loss"] for r in records}, rel=1e-6)  # events store float32
    assert _scalars(run, "pretrain/lr") == pytest.approx({r["step"]: r["lr"] for r in records}, rel=1e-6)
    assert set(_scalars(run, "pretrain/clips_per_s")) == set(range(1, 7))

    # the step-6 checkpoint lost: the rerun resumes at 3 and redoes 4-6; TensorBoard shows each step once
    shutil.rmtree(run / "checkpoints/step_00000006")
    trainer.train(tiny_config(clips, run, "train.tensorboard=true", "train.max_steps=6", "data.loader=torch",
                              "data.num_workers=0", "optim.lr=1e-3"), resume=True, quiet=True)
    redone = _scalars(run, "pretrain/lr")
    assert sorted(redone) == list(range(1, 7)) and len(sorted((run / "tensorboard").iterdir())) == 2
    assert redone[3] == pytest.approx(records[2]["lr"]) and redone[5] != pytest.approx(records[4]["lr"])


@needs_tensorboard
def test_tensorboard_folder_counts_as_ours(clips, tmp_path):
    """A run dir holding only what a run wrote (no checkpoint yet, TensorBoard events too) is not foreign, and
    --overwrite deletes the events with the rest."""
    run = tmp_path / "run"
    trainer.train(tiny_config(clips, run, "train.tensorboard=true", "train.max_steps=2", "data.loader=torch",
                              "data.num_workers=0"), quiet=True)
    shutil.rmtree(run / "checkpoints")
    trainer.train(tiny_config(clips, run, "train.max_steps=2", "data.loader=torch", "data.num_workers=0"),
                  overwrite=True, quiet=True)
    assert not (run / "tensorboard").exists() and (run / "checkpoints/step_00000002").is_dir()


def test_missing_tensorboard_is_a_one_line_error(clips, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(MaebenchError) as excinfo:
        trainer.train(tiny_config(clips, tmp_path / "run", "train.tensorboard=true", "data.loader=torch"),
                      quiet=True)
    one_line_error(excinfo, "tensorboard", "pip install")
    assert not (tmp_path / "run").exists()


def test_cli_flags_set_the_loader_and_tensorboard():
    from maebench.cli import build_parser
    from maebench.commands.pretrain import build_config

    args = build_parser().parse_args(["pretrain", "--loader", "fairseq2", "--tensorboard"])
    cfg = build_config(args)
    assert cfg.data.loader == "fairseq2" and cfg.train.tensorboard is True
    default = build_config(build_parser().parse_args(["pretrain"]))
    assert default.data.loader == "torch" and default.train.tensorboard is False


@needs_fairseq2
def test_bench_data_prints_both_loaders_and_their_ratio(tmp_path, capsys):
    from maebench.cli import main
    from maebench.commands.bench_data import core_counts

    assert core_counts("1,1") == [1] and core_counts(None)[0] == 1
    code = main(["bench", "data", "--clips", "6", "--batch-size", "2", "--seconds", "0.5", "--cores", "1",
                 "--format", "flac44k", "--repeats", "1", "--batches", "2", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "flac44k" in out and "load average" in out
    assert re.search(r"\d+\.\d\dx", out), out  # the fairseq2 / torch ratio
    written = sorted((tmp_path / "flac44k").iterdir())
    assert len(written) == 6 and soundfile.info(str(written[0])).samplerate == 44100
    assert soundfile.info(str(written[0])).frames == 22050
