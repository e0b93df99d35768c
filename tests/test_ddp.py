"""`maebench pretrain` under `torchrun --nproc_per_node=2` on CPU (gloo): finishes, writes one set of checkpoints from
rank 0, learns like one process, and resumes under DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import write_tone_clips

from maebench import run_checkpoint as ckpt
from maebench import trainer
from maebench.config import PretrainConfig, apply_overrides
from maebench.upstream.checkpoint import latest_checkpoint

SETTINGS = [
    "data.clip_seconds=0.5", "data.num_workers=0", "train.batch_size=8", "train.log_every=2", "train.ckpt_every=6",
    "train.keep_last=5", "train.device=cpu", "optim.lr=2e-3", "optim.warmup_steps=2",
    "model.overrides={dim: 32, num_heads: 2, ffn_dim: 64, depth: 2, decoder_depth: 1}",
]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return write_tone_clips(tmp_path_factory.mktemp("ddp_clips"), count=32, seed=1)


def torchrun(run_dir: Path, data: Path, *extra: str, timeout: float = 150) -> subprocess.CompletedProcess:
    sets = [f"--set={s}" for s in [*SETTINGS, f"data.source={data}", f"run_dir={run_dir}"]]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "maebench", "pretrain", "--quiet", *sets, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def test_ddp_two_processes_train_checkpoint_and_resume(clips, tmp_path, monkeypatch):
    run = tmp_path / "ddp"
    done = torchrun(run, clips, "--max-steps", "12")
    assert done.returncode == 0, done.stdout + done.stderr

    # one set of checkpoints, written once (by rank 0), holding both ranks' RNG streams
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000006", "step_00000012"]
    state = ckpt.load_trainer_state(run / "checkpoints/step_00000012")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # ranks draw different masks
    assert done.stdout.count("done: step 12") == 1  # only rank 0 reports
    ddp_losses = losses(run)
    assert sorted(ddp_losses) == [2, 4, 6, 8, 10, 12]  # one metrics line per logging step, not one per rank

    # the same global batches in one process learn the same way (different mask draws: compare loosely)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    single = tmp_path / "single"
    cfg = apply_overrides(PretrainConfig(), [*SETTINGS, f"data.source={clips}", f"run_dir={single}",
                                             "train.max_steps=12"])
    trainer.train(cfg, quiet=True)
    one_losses = losses(single)
    assert ddp_losses[12] < 0.8 * ddp_losses[2] and one_losses[12] < 0.8 * one_losses[2]
    for step in ddp_losses:
        assert ddp_losses[step] == pytest.approx(one_losses[step], rel=0.15), (ddp_losses, one_losses)

    # resume under DDP with more steps: continues from step 12 with both ranks' state
    more = torchrun(run, clips, "--max-steps", "16", "--resume")
    assert more.returncode == 0, more.stdout + more.stderr
    assert "resuming from" in more.stdout and "done: step 16 (4 this run" in more.stdout
    assert sorted(losses(run)) == [2, 4, 6, 8, 10, 12, 14, 16]
    assert latest_checkpoint(run, resumable=True).name == "step_00000016"


def test_ddp_user_error_stops_every_rank(tmp_path):
    """A bad data path seen by rank 0 ends both processes with the one-line error, no hang until the timeout."""
    bad = torchrun(tmp_path / "run", tmp_path / "missing", "--max-steps", "2", timeout=90)
    assert bad.returncode != 0
    assert bad.stderr.count("maebench: error:") == 2 and "missing" in bad.stderr
    assert not (tmp_path / "run").exists()


def test_ddp_fairseq2_loader_resumes_exactly(clips, tmp_path):
    """`--loader fairseq2` under torchrun (2 gloo processes): 6 steps in one go == 3 steps, then a resume (bitwise
    weights and losses), across the epoch boundary at step 4 (32 clips / 8 per step)."""
    from safetensors.torch import load_file

    from maebench.fairseq2_data import INSTALL_HINT, fairseq2_available

    if not fairseq2_available():
        pytest.skip(INSTALL_HINT)  # names the missing fairseq2n wheel on Python >= 3.13

    extra = ("--loader", "fairseq2", "--set", "data.num_workers=2", "--set", "train.ckpt_every=3", "--max-steps", "6")
    whole = torchrun(tmp_path / "whole", clips, *extra)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    half = tmp_path / "half"
    shutil.copytree(tmp_path / "whole/checkpoints/step_00000003", half / "checkpoints/step_00000003")
    resumed = torchrun(half, clips, *extra)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from" in resumed.stdout and "done: step 6 (3 this run" in resumed.stdout
    assert losses(half) == {s: v for s, v in losses(tmp_path / "whole").items() if s > 3}
    a = load_file(tmp_path / "whole/checkpoints/step_00000006/model.safetensors")
    b = load_file(half / "checkpoints/step_00000006/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
