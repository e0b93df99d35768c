"""The pretraining loop: exact resume, crash safety (SIGKILL), divergence handling, run-dir rules, the CLI.

Everything runs on CPU with a 2-layer, 32-wide MAE-AST on 0.5 s clips written here with soundfile, so each
training run takes a second or two. Dropout and layerdrop stay as configured (0.1 / 0.05): exact resume must
restore the RNG streams, not avoid them.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import TINY_MODEL, one_line_error, one_thread, write_tone_clips  # noqa: F401 (one_thread: a fixture)
from safetensors.torch import load_file

from maebench import run_checkpoint as ckpt
from maebench import trainer
from maebench.cli import main
from maebench.config import PretrainConfig, apply_overrides, from_dict
from maebench.errors import MaebenchError
from maebench.upstream.checkpoint import latest_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return write_tone_clips(tmp_path_factory.mktemp("clips"))


def tiny_settings(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        f"data.source={data}", "data.clip_seconds=0.5", "data.num_workers=0", "train.batch_size=4",
        "train.max_steps=8", "train.log_every=1", "train.ckpt_every=4", "train.keep_last=5", "train.device=cpu",
        "optim.lr=2e-3", "optim.warmup_steps=2", f"run_dir={run_dir}", TINY_MODEL, *extra,
    ]


def tiny_config(data: Path, run_dir: Path, *extra: str) -> PretrainConfig:
    return apply_overrides(PretrainConfig(), tiny_settings(data, run_dir, *extra))


def metric_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------- schedule


def test_lr_schedule_matches_hand_values():
    cfg = apply_overrides(PretrainConfig(), ["optim.warmup_steps=4", "train.max_steps=14", "optim.end_lr=1e-5",
                                             "optim.lr=1e-4"])
    factors = [trainer.lr_factor(s, cfg) for s in range(14)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # linear decay from 1 at step 4 to end_lr/lr = 0.1 at step 14: step 9 is half way
    assert factors[9] == pytest.approx(0.1 + 0.9 * 0.5)
    cfg.optim.schedule = "cosine"
    assert trainer.lr_factor(9, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    cfg.optim.schedule = "constant"
    assert trainer.lr_factor(12, cfg) == 1.0


# ---------------------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_equals_uninterrupted(clips, tmp_path, grad_accum):
    """N steps, stop, resume N steps == 2N steps in one go (bitwise), across an epoch boundary."""
    extra = [f"train.grad_accum={grad_accum}"]
    whole = tmp_path / "whole"
    result = trainer.train(tiny_config(clips, whole, *extra), quiet=True)
    assert result.steps == 8 and result.checkpoint.name == "step_00000008"
    assert all(math.isfinite(loss) for _, loss in result.losses)

    # the interrupted run: the first 4 steps (identical by construction), then a fresh process state resumes
    half = tmp_path / "half"
    shutil.copytree(whole / "checkpoints/step_00000004", half / "checkpoints/step_00000004")
    torch.manual_seed(123)  # a resumed process starts with unrelated RNG state
    np.random.seed(123)
    resumed = trainer.train(tiny_config(clips, half, *extra), quiet=True)
    assert resumed.start_step == 4 and resumed.steps == 8
    assert metric_steps(half) == [5, 6, 7, 8]

    a = load_file(whole / "checkpoints/step_00000008/model.safetensors")
    b = load_file(half / "checkpoints/step_00000008/model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses_whole = dict(result.losses)
    for step, loss in resumed.losses:
        assert loss == losses_whole[step]
    opt_a = ckpt.load_trainer_state(whole / "checkpoints/step_00000008")["optimizer"]["state"]
    opt_b = ckpt.load_trainer_state(half / "checkpoints/step_00000008")["optimizer"]["state"]
    for index in opt_a:
        assert torch.equal(opt_a[index]["exp_avg_sq"], opt_b[index]["exp_avg_sq"])


def test_checkpoint_contents_load_with_weights_only(clips, tmp_path):
    run = tmp_path / "run"
    trainer.train(tiny_config(clips, run, "train.keep_last=1"), quiet=True)
    assert [p.name for p in ckpt.resumable_checkpoints(run)] == ["step_00000008"]  # keep_last pruned step 4
    step_dir = run / "checkpoints/step_00000008"
    state = torch.load(step_dir / "trainer.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (8, 1, 2)  # 24 clips / 4 = 6 per epoch
    assert state["config_hash"] and state["world_size"] == 1 and len(state["rng"]) == 1
    assert state["scheduler"]["last_epoch"] == 8
    import maebench.upstream as upstream

    model = upstream.load(run)  # the run dir resolves to its newest checkpoint
    feats = model(torch.randn(1, 8000), torch.tensor([8000]))
    assert feats.hidden_states[0].shape[-1] == 8 * 32
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 8
    assert from_dict(yaml.safe_load((run / "config.yaml").read_text())) == tiny_config(clips, run, "train.keep_last=1")


def test_trainer_and_registry_read_one_run_layout(clips, tmp_path):
    """The trainer resumes from, and `maebench.upstream.load(RUN)` loads, the same newest checkpoint; a step dir
    stripped of trainer.pt (weights shared without optimizer state) still loads as an upstream but never resumes."""
    from maebench.upstream.registry import find_run_checkpoint

    run = tmp_path / "run"
    trainer.train(tiny_config(clips, run), quiet=True)
    assert find_run_checkpoint(run) == latest_checkpoint(run) == latest_checkpoint(run, resumable=True)
    stripped = shutil.copytree(run / "checkpoints/step_00000008", run / "checkpoints/step_00000012")
    (stripped / "trainer.pt").unlink()
    (run / "checkpoints/.staging-1234").mkdir()  # a killed write: never a checkpoint
    assert find_run_checkpoint(run) == latest_checkpoint(run) == stripped
    newest_resumable = run / "checkpoints/step_00000008"
    assert latest_checkpoint(run, resumable=True) == ckpt.resumable_checkpoints(run)[-1] == newest_resumable
    assert latest_checkpoint(tmp_path / "nowhere") is None


def test_sigkill_loses_only_steps_since_last_checkpoint(clips, tmp_path):
    """Kill -9 while the run checkpoints every step; every checkpoint left is complete and the rerun resumes."""
    run = tmp_path / "run"
    settings = tiny_settings(clips, run, "train.max_steps=40", "train.ckpt_every=1", "train.keep_last=3")
    command = [sys.executable, "-m", "maebench", "pretrain", "--quiet"] + [f"--set={s}" for s in settings]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 90
    try:
        while not ckpt.resumable_checkpoints(run) and time.time() < deadline and process.poll() is None:
            time.sleep(0.02)
        time.sleep(0.3)  # let it get into the middle of later checkpoint writes
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, process.stdout.read().decode()
    saved = ckpt.resumable_checkpoints(run)
    assert saved, "no checkpoint appeared before the kill"
    import maebench.upstream as upstream

    for step_dir in saved:  # every complete-looking checkpoint really loads
        upstream.load(step_dir)
        ckpt.load_trainer_state(step_dir)
    for path in (run / "checkpoints").iterdir():  # nothing half-written under a step_ name
        assert not path.name.startswith("step_") or path in saved
    last = int(saved[-1].name.split("_")[1])

    # re-running the same command resumes from the newest checkpoint and finishes
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {saved[-1]}" in resumed.stdout
    steps = metric_steps(run)
    assert steps == list(range(1, 41)), "metrics lost or repeated steps"  # lines past the checkpoint were redone
    assert latest_checkpoint(run, resumable=True).name == "step_00000040"
    assert not list((run / "checkpoints").glob(".staging-*"))
    assert last >= 1


def test_pruning_killed_midway_leaves_no_half_checkpoint(clips, tmp_path, monkeypatch):
    """A kill while an old checkpoint is deleted must not leave a partial directory under a step_ name."""
    run = tmp_path / "run"
    trainer.train(tiny_config(clips, run), quiet=True)  # checkpoints at steps 4 and 8

    def killed_mid_delete(path, ignore_errors=False):
        next(p for p in Path(path).iterdir() if p.is_file()).unlink()  # one file gone, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_mid_delete)
    with pytest.raises(KeyboardInterrupt):
        ckpt.prune(run, keep_last=1)
    monkeypatch.undo()
    step_dirs = [p for p in (run / "checkpoints").iterdir() if p.name.startswith("step_")]
    assert step_dirs == ckpt.resumable_checkpoints(run) == [run / "checkpoints/step_00000008"]
    ckpt.remove_stale_staging(run)  # the next start clears the leftover
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000008"]


def test_failed_checkpoint_write_keeps_previous(clips, tmp_path, monkeypatch):
    """A full disk at a checkpoint: a one-line error naming the intact previous checkpoint, which still loads."""
    run = tmp_path / "run"
    real_write = ckpt._write_durably

    def flaky(path, obj):
        if obj["step"] == 8:
            raise OSError(28, "No space left on device", str(path))
        real_write(path, obj)

    monkeypatch.setattr(ckpt, "_write_durably", flaky)
    with pytest.raises(MaebenchError) as excinfo:
        trainer.train(tiny_config(clips, run), quiet=True)
    one_line_error(excinfo, "No space left on device", f"cannot write to run directory {run}",
                   "checkpoints/step_00000004 is intact")
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000004"]
    ckpt.load_trainer_state(run / "checkpoints/step_00000004")


# ---------------------------------------------------------------------------------------------------- divergence


def test_nan_loss_stops_and_keeps_last_good_checkpoint(clips, tmp_path, monkeypatch, capsys):
    real_build = trainer.build_model
    calls = {"n": 0}

    def build_poisoned(cfg):
        model = real_build(cfg)
        real_loss = model.pretrain_loss

        def pretrain_loss(wavs, lens):
            out = real_loss(wavs, lens)
            calls["n"] += 1
            if calls["n"] >= 6:  # step 6 of 8: after the step-4 checkpoint, before the step-8 one
                out.loss = out.loss * float("nan")
            return out

        model.pretrain_loss = pretrain_loss
        return model

    monkeypatch.setattr(trainer, "build_model", build_poisoned)
    run = tmp_path / "run"
    with pytest.raises(MaebenchError, match=r"NaN/inf before step 6.*Last good checkpoint: .*step_00000004"):
        trainer.train(tiny_config(clips, run), quiet=True)
    assert [p.name for p in ckpt.resumable_checkpoints(run)] == ["step_00000004"]
    weights = load_file(run / "checkpoints/step_00000004/model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    assert metric_steps(run) == [1, 2, 3, 4, 5]  # the bad window is never logged as if it were fine


# ---------------------------------------------------------------------------------------------------- run dirs


def test_run_dir_rules(clips, tmp_path, capsys):
    run = tmp_path / "run"
    first = trainer.train(tiny_config(clips, run, "train.max_steps=4"), quiet=True)
    (run / "notes.txt").write_text("mine")

    again = trainer.train(tiny_config(clips, run, "train.max_steps=4"), quiet=True)  # same command: resumes
    assert again.start_step == 4 and again.steps == 4 and again.checkpoint == first.checkpoint
    assert "nothing to do" in capsys.readouterr().out

    other = tiny_config(clips, run, "train.max_steps=4", "optim.lr=1e-3")
    with pytest.raises(MaebenchError, match=r"holds checkpoints of a different configuration.*--resume.*--overwrite"):
        trainer.train(other, quiet=True)
    with pytest.raises(MaebenchError, match="contradict"):
        trainer.train(other, quiet=True, resume=True, overwrite=True)

    changed = tiny_config(clips, run, "train.max_steps=6", "optim.lr=5e-4")
    longer = trainer.train(changed, quiet=True, resume=True)
    assert (longer.start_step, longer.steps) == (4, 6)
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    assert lrs[5] == pytest.approx(5e-4 * trainer.lr_factor(5, changed))  # the new settings, not the saved ones

    capsys.readouterr()
    fresh = trainer.train(other, quiet=True, overwrite=True)
    out = capsys.readouterr().out
    assert "--overwrite: deleted" in out and "checkpoints/step_00000006" in out and "metrics.jsonl" in out
    assert fresh.start_step == 0 and fresh.steps == 4
    assert (run / "notes.txt").read_text() == "mine"  # nothing of the user's is touched
    assert [p.name for p in ckpt.resumable_checkpoints(run)] == ["step_00000004"]
    assert metric_steps(run) == [1, 2, 3, 4]


def test_resume_with_bigger_batch_past_the_new_epoch_end(clips, tmp_path):
    """24 clips: batch 4 stops at batch 4 of 6; batch 8 has only 3 per epoch, so the run goes on with epoch 1."""
    run = tmp_path / "run"
    trainer.train(tiny_config(clips, run, "train.max_steps=4"), quiet=True)
    assert ckpt.load_trainer_state(run / "checkpoints/step_00000004")["batch_in_epoch"] == 4
    longer = trainer.train(tiny_config(clips, run, "train.max_steps=5", "train.batch_size=8"), quiet=True,
                           resume=True)
    assert (longer.start_step, longer.steps) == (4, 5)
    saved = ckpt.load_trainer_state(run / "checkpoints/step_00000005")
    assert (saved["epoch"], saved["batch_in_epoch"]) == (1, 1)


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_end_to_end_with_bad_files(clips, tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    for wav in sorted(clips.glob("*.wav"))[:12]:
        (data / wav.name).write_bytes(wav.read_bytes())
    (data / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    (data / "empty.wav").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    rc = main(["pretrain", "--data", str(data), "--max-steps", "3", "--batch-size", "4", "--quiet",
               "--set", "data.clip_seconds=0.5", "--set", "data.num_workers=0", "--set", TINY_MODEL,
               "--set", "train.device=cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    run = Path("runs/pretrain/mae_ast_patch-tiny")  # the default run dir, under the current directory
    assert latest_checkpoint(run, resumable=True).name == "step_00000003"
    assert f"checkpoint: {run / 'checkpoints/step_00000003'}" in out
    assert "next: maebench eval --task ks2" in out
    assert "skipped 2 " in out and "corrupt.wav" in out and "empty.wav" in out
    from maebench.paths import latest_pretrain_run

    assert latest_pretrain_run() == run.resolve()
    state = ckpt.load_trainer_state(run / "checkpoints/step_00000003")
    assert state["num_skipped"] == 2


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["pretrain", "--set", "optim.lrr=1", "--run-dir", str(tmp_path / "r")]) == 2
    assert "unknown config key 'optim.lrr'" in capsys.readouterr().err
    assert main(["pretrain", "--recipe", "mae_ast_patch_base_paper", "--run-dir", str(tmp_path / "r")]) == 2
    assert "--data PATH" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(tmp_path / "missing"), "--run-dir", str(tmp_path / "r")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["pretrain", "--batch-size", "6", "--set", "train.grad_accum=4",
                 "--run-dir", str(tmp_path / "r")]) == 2
    assert "multiple of 4" in capsys.readouterr().err
