"""SSAST's plateau schedule (issue 20 item 3): the rule against PyTorch's ReduceLROnPlateau (what the authors'
traintest_mask.py calls), the held-out split, and a pretraining run that checks, records and resumes exactly."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from helpers import one_thread, write_tone_clips  # noqa: F401 (one_thread: a fixture)
from safetensors.torch import load_file

from maebench import run_checkpoint as ckpt
from maebench import trainer
from maebench.config import PretrainConfig, apply_overrides, validate
from maebench.errors import MaebenchError
from maebench.plateau import PlateauLR, PlateauRule, split_validation

pytestmark = pytest.mark.usefixtures("one_thread")


def _torch_lrs(metrics: list[float], base_lr: float, patience: int, factor: float = 0.5) -> list[float]:
    """The lr after each check under torch.optim.lr_scheduler.ReduceLROnPlateau(mode='max', ...), as the
    reference builds it (defaults otherwise)."""
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=base_lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=factor, patience=patience)
    lrs = []
    for metric in metrics:
        scheduler.step(metric)
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("patience", [0, 1, 2])
def test_rule_matches_reduce_lr_on_plateau(patience):
    """Improvements, flat stretches, gains below the 1e-4 relative threshold, drops; and a long flat tail where the
    lr stops shrinking once a cut would be under 1e-8."""
    metrics = [0.1, 0.2, 0.2, 0.20001, 0.19, 0.3, 0.3, 0.3, 0.3, 0.31, 0.31003, 0.30, 0.29, 0.5, 0.4]
    metrics += [0.4] * 60
    rule, lrs = PlateauRule(patience=patience), []
    for metric in metrics:
        rule.update(metric, 1e-4)
        lrs.append(1e-4 * rule.scale)
    assert lrs == pytest.approx(_torch_lrs(metrics, 1e-4, patience), rel=1e-12, abs=0)
    assert lrs[-1] < 1e-7  # the cuts happened


def test_scheduler_applies_warmup_times_scale_and_resumes():
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([param], lr=1e-3)
    scheduler = PlateauLR(optimizer, lambda step: min(1.0, (step + 1) / 4), factor=0.5, patience=0, mode="max")
    lrs = []
    for step in range(10):
        optimizer.step()
        scheduler.step()
        if step in (5, 6):  # step 5: a first value (best); step 6: no better -> cut at once (patience 0)
            scheduler.report(0.5)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[:3] == pytest.approx([5e-4, 7.5e-4, 1e-3])
    assert lrs[5] == pytest.approx(1e-3) and lrs[6:] == pytest.approx([5e-4] * 4)
    state = scheduler.state_dict()
    torch.save(state, buffer := io.BytesIO())
    buffer.seek(0)
    fresh = PlateauLR(torch.optim.Adam([param], lr=1e-3), lambda step: 1.0, factor=0.5, patience=0, mode="max")
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.rule.state() == {"best": 0.5, "bad_checks": 0, "scale": 0.5}


def test_split_validation_is_a_pure_disjoint_split():
    items = [f"clip{i}" for i in range(50)]
    train, held = split_validation(items, 7, seed=3)
    assert len(held) == 7 and len(train) == 43 and not set(train) & set(held)
    assert (train, held) == split_validation(items, 7, seed=3)
    assert held != split_validation(items, 7, seed=4)[1]
    assert split_validation(items, 0, seed=3) == (items, [])
    with pytest.raises(MaebenchError, match="valid_clips"):
        split_validation(items, 50, seed=3)


def test_plateau_schedule_needs_validation_clips():
    cfg = apply_overrides(PretrainConfig(), ["optim.schedule=plateau"])
    with pytest.raises(MaebenchError, match="data.valid_clips"):
        validate(cfg)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return write_tone_clips(tmp_path_factory.mktemp("clips"), count=20)


def _config(data: Path, run_dir: Path) -> PretrainConfig:
    return apply_overrides(PretrainConfig(), [
        f"data.source={data}", "data.clip_seconds=0.5", "data.num_workers=0", "data.valid_clips=4",
        "train.batch_size=4", "train.max_steps=8", "train.log_every=4", "train.ckpt_every=4", "train.keep_last=5",
        "train.device=cpu", "optim.lr=2e-3", "optim.warmup_steps=1", "optim.schedule=plateau",
        "optim.plateau_every=1", "optim.plateau_patience=0", f"run_dir={run_dir}",
        "model.name=ssast_patch", "model.overrides={dim: 32, num_heads: 2, ffn_dim: 64, depth: 1}",
    ])


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_pretraining_checks_records_cuts_and_resumes_exactly(clips, tmp_path):
    """A check after every step (patience 0): each is recorded; the lr follows ReduceLROnPlateau fed the recorded
    metrics; a run resumed from step 4 equals the uninterrupted one bit for bit (plateau state from trainer.pt)."""
    cfg = _config(clips, tmp_path / "whole")
    assert cfg.model.name == "ssast_patch"
    whole = trainer.train(cfg, quiet=True)
    records = _records(tmp_path / "whole")
    assert [r["step"] for r in records] == list(range(1, 9))  # every check is logged
    metrics = [r["valid_nce_acc"] for r in records]
    assert all(0.0 <= m <= 1.0 for m in metrics) and all(math.isfinite(r["valid_loss"]) for r in records)
    assert [r["lr"] for r in records] == pytest.approx(_torch_lrs(metrics, 2e-3, patience=0), rel=1e-9)
    assert any(r["lr_cut"] for r in records)

    half = tmp_path / "half"
    shutil.copytree(tmp_path / "whole/checkpoints/step_00000004", half / "checkpoints/step_00000004")
    torch.manual_seed(123)
    resumed = trainer.train(_config(clips, half), quiet=True)
    assert resumed.start_step == 4 and whole.steps == resumed.steps == 8
    a = load_file(tmp_path / "whole/checkpoints/step_00000008/model.safetensors")
    b = load_file(half / "checkpoints/step_00000008/model.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)
    timings = ("clips_per_s", "elapsed_s")
    assert [{k: v for k, v in r.items() if k not in timings} for r in _records(half)] == [
        {k: v for k, v in r.items() if k not in timings} for r in records[4:]]
    saved = ckpt.load_trainer_state(tmp_path / "whole/checkpoints/step_00000004")["scheduler"]["plateau"]
    assert saved["scale"] == pytest.approx(records[3]["lr"] / 2e-3)


def test_validation_list_of_its_own(clips, tmp_path):
    """data.valid_source (the authors' way: a separate list, AudioSet's eval split) instead of held-out clips: all
    of the pretraining list trains and the checks run on the other list."""
    held_out = write_tone_clips(tmp_path / "valid", count=3, seed=9)
    cfg = apply_overrides(_config(clips, tmp_path / "run"), [
        "data.valid_clips=0", f"data.valid_source={held_out}", "optim.plateau_every=4", "train.max_steps=4"])
    trainer.train(cfg, quiet=True)
    records = _records(tmp_path / "run")
    assert [r["step"] for r in records] == [4] and 0.0 <= records[0]["valid_nce_acc"] <= 1.0


def test_stair_warmup_is_the_reference_loop():
    """traintest_mask.py's warm-up, run as its loop: before each step, if global_step <= 1000 and global_step % 50
    == 0, lr = global_step / 1000 * lr; the lr each of the first 1,200 steps uses equals optim.lr * lr_factor."""
    cfg = apply_overrides(PretrainConfig(), ["optim.lr=1e-4", "optim.warmup_steps=1000", "optim.warmup_stairs=50",
                                             "optim.schedule=plateau", "data.valid_clips=1", "train.max_steps=2000"])
    lr, used = 1e-4, []
    for global_step in range(1200):
        if global_step <= 1000 and global_step % 50 == 0:
            lr = global_step / 1000 * 1e-4
        used.append(lr)
    assert [1e-4 * trainer.lr_factor(step, cfg) for step in range(1200)] == pytest.approx(used, rel=1e-12, abs=0)
    assert used[:50] == [0.0] * 50 and used[999] == pytest.approx(0.95e-4) and used[1000] == 1e-4
