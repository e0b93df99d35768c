"""Probe curves while pretraining (`maebench pretrain --probe-every N --probe-tasks ...`) and after (`maebench
probe RUN`): fixed subsets, the step-0 point against a separate `maebench eval`, resume without duplicates, a dying
probe worker, the figure.

A 2-layer, 32-wide MAE-AST trains on 0.5 s tone clips for a few steps; the probe tasks are small procedural toy
look-alikes (KS2, ESC-50) built once per module, probed on 12-item subsets.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections import Counter
from pathlib import Path

import pytest
from helpers import TINY_MODEL, one_thread, write_tone_clips  # noqa: F401 (one_thread: a fixture)

from maebench import probe_curve as pc
from maebench import probe_worker as pw
from maebench.cli import main
from maebench.config import PretrainConfig, apply_overrides
from maebench.downstream.datasets import load_task
from maebench.downstream.subset import apply_subset, select_subset
from maebench.downstream.toy import build_toy
from maebench.trainer import build_model, seed_everything, train
from maebench.upstream import save_upstream

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return write_tone_clips(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    """ROOT/<task> for ks2 and esc50 (what train.probe_data names)."""
    root = tmp_path_factory.mktemp("toy")
    for task in ("ks2", "esc50"):
        build_toy(task, root / task, speech_backend="procedural", size="small")
    return root


def probe_config(clips: Path, toy_root: Path, run_dir: Path, *extra: str) -> PretrainConfig:
    settings = [
        f"data.source={clips}", "data.clip_seconds=0.5", "data.num_workers=0", "train.batch_size=4",
        "train.max_steps=4", "train.log_every=1", "train.ckpt_every=2", "train.keep_last=5", "train.device=cpu",
        "optim.lr=2e-3", "optim.warmup_steps=2", f"run_dir={run_dir}", TINY_MODEL,
        "train.probe_every=2", "train.probe_tasks=ks2", f"train.probe_data={toy_root}", "train.probe_examples=12",
        "train.probe_max_share=1000",  # a test waits for every point
        *extra,
    ]
    return apply_overrides(PretrainConfig(), settings)


def scores(run_dir: Path) -> dict[tuple[int, str], float]:
    return {(p["step"], p["task"]): p["score"] for p in pc.read_points(run_dir)}


# ---------------------------------------------------------------------------------------------------- subsets


def test_subset_is_fixed_per_task_and_seed(toy_root):
    ks2 = load_task("ks2", toy_root / "ks2")
    first = select_subset(ks2, examples=12, seed=0)
    again = select_subset(load_task("ks2", toy_root / "ks2"), examples=12, seed=0)
    assert first == again
    other_seed = select_subset(ks2, examples=12, seed=1)
    assert other_seed["splits"]["train"] != first["splits"]["train"]
    assert len(first["splits"]["train"]) == 12 and len(first["splits"]["dev"]) == 6
    assert len(first["splits"]["test"]) == 12
    # class-balanced: 12 of KS2's 12 classes' items -> one per class where the split has them all
    fold = ks2.folds[0]
    labels = {ex.key: ex.label for ex in fold.train}
    counts = Counter(labels[key] for key in first["splits"]["train"])
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    # the subset task holds exactly the recorded items, and a different task's subset differs
    reduced = apply_subset(ks2, first)
    assert [ex.key for ex in reduced.folds[0].test] == first["splits"]["test"]
    assert reduced.data_fingerprint() != ks2.data_fingerprint()
    esc50 = select_subset(load_task("esc50", toy_root / "esc50"), examples=12, seed=0)
    assert esc50["task"] == "esc50" and esc50["splits"]["test"] != first["splits"]["test"]


def test_subset_is_chosen_once_and_recorded(toy_root, tmp_path):
    spec = pc.CurveSpec(("ks2",), str(toy_root), examples=12, seed=3)
    path = pc.ensure_subset(tmp_path, "ks2", spec)
    record = json.loads(path.read_text())
    assert path.name == "ks2.seed3.json" and record["seed"] == 3
    # chance = the most frequent class's share of the test subset, counted by hand here
    task = load_task("ks2", toy_root / "ks2")
    by_key = {ex.key: ex.label for fold in task.folds for ex in fold.test}
    test = Counter(by_key[k] for k in record["splits"]["test"])
    assert record["chance"] == pytest.approx(100 * max(test.values()) / 12)
    record["splits"]["test"] = record["splits"]["test"][:5]  # a recorded subset is reused, never redrawn
    path.write_text(json.dumps(record))
    assert json.loads(pc.ensure_subset(tmp_path, "ks2", spec).read_text())["splits"]["test"] == record["splits"]["test"]


# ---------------------------------------------------------------------------------------------------- the curve


def test_step0_point_equals_a_separate_eval_and_offline_probe_gives_the_same_curve(
        clips, toy_root, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    cfg = probe_config(clips, toy_root, run_dir)
    result = train(cfg, quiet=True)
    points = pc.read_points(run_dir)
    assert sorted((p["step"], p["task"]) for p in points) == [(0, "ks2"), (2, "ks2"), (4, "ks2")]
    assert result.probes["points"] == 3 and result.probes["pending_snapshots"] == []
    assert not any(pc.pending_snapshots(run_dir))  # every snapshot was deleted once probed
    assert "probes: 3 point(s)" in capsys.readouterr().out
    step0 = next(p for p in points if p["step"] == 0)
    assert step0["metric"] == "accuracy" and 0 <= step0["best_layer"] and step0["chance"] > 0

    # the init rebuilt as the trainer builds it (seed, then build), evaluated by the CLI with the recorded subset,
    # in a fresh feature cache (so the features are computed again, not read back)
    seed_everything(cfg.train.seed)
    init = save_upstream(build_model(cfg), tmp_path / "init")
    monkeypatch.setenv("MAEBENCH_CACHE", str(tmp_path / "other_cache"))
    subset = run_dir / step0["subset"]
    assert main(["eval", "--task", "ks2", "--upstream", str(init), "--data", str(toy_root / "ks2"), "--probe",
                 "logreg", "--subset", str(subset), "--out", str(tmp_path / "evals"), "--quiet"]) == 0
    record = json.loads(next((tmp_path / "evals").rglob("results.json")).read_text())
    assert record["score"] == step0["score"]
    assert record["runs"][0]["selected_layer"] == step0["best_layer"]
    assert len(record["runs"]) == 1 and record["subset"] == str(subset.resolve())

    # offline: the same curve from the kept checkpoints and the rebuilt step 0
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(pc.PROBES_FILE, ".lock"))
    assert main(["probe", str(copy), "--quiet"]) == 0
    assert scores(copy) == scores(run_dir)
    assert main(["probe", str(copy), "--quiet"]) == 0  # nothing left to do: nothing added
    assert len(pc.read_points(copy)) == 3

    # the report draws probes.png
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / pc.PROBES_FIGURE).stat().st_size > 10_000
    assert main(["compare", "--curves", str(run_dir), str(copy), "--against", "time", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "probes.png").is_file()


def test_resume_continues_the_curve_without_duplicates(clips, toy_root, tmp_path):
    run_dir = tmp_path / "run"
    train(probe_config(clips, toy_root, run_dir), quiet=True)
    before = scores(run_dir)
    assert sorted(before) == [(0, "ks2"), (2, "ks2"), (4, "ks2")]
    # what a kill -9 may leave: the point of step 4 not yet written (its snapshot still pending), a line cut short,
    # and a snapshot of a step past the checkpoint the run resumes from (step 5 is redone)
    lines = (run_dir / pc.PROBES_FILE).read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["step"] != 4]
    (run_dir / pc.PROBES_FILE).write_text("\n".join(kept) + '\n{"step": 4, "task": "ks')
    seed_everything(0)
    pc.write_snapshot(build_model(probe_config(clips, toy_root, run_dir)), run_dir, 4)
    shutil.copytree(pc.snapshot_dir(run_dir, 4), pc.snapshot_dir(run_dir, 5))
    # the pending step-4 snapshot holds other weights than the run's step 4: its point must come from it, once
    expected_4 = pc.probe_point(pc.snapshot_dir(run_dir, 4), 4, "ks2",
                                pc.CurveSpec(("ks2",), str(toy_root), 12, 0), run_dir)["score"]

    result = train(probe_config(clips, toy_root, run_dir, "train.max_steps=6"), resume=True, quiet=True)
    points = pc.read_points(run_dir)
    steps = [p["step"] for p in points]
    assert sorted(steps) == [0, 2, 4, 6] and len(set(steps)) == len(steps)  # no duplicate, no step 5
    after = scores(run_dir)
    assert after[(0, "ks2")] == before[(0, "ks2")] and after[(2, "ks2")] == before[(2, "ks2")]
    assert after[(4, "ks2")] == expected_4
    assert result.probes["points"] == 2  # step 4 (pending) and step 6: nothing redone
    assert not (run_dir / pc.SNAPSHOTS_DIR / "step_00000005").exists()


# ---------------------------------------------------------------------------------------------------- the worker


def test_dead_probe_worker_is_reported_and_restarted(toy_root, tmp_path, capsys):
    spec = pc.CurveSpec(("ks2",), str(toy_root), examples=12)
    worker = pw.ProbeWorker(tmp_path, spec, every=2, max_steps=4, start_step=0, max_share=0.1)
    try:
        for attempt in range(1, pw.MAX_RESTARTS + 1):
            pid = worker.process.pid
            os.kill(pid, signal.SIGKILL)
            worker.process.wait()
            worker.check()
            assert "probe worker died" in capsys.readouterr().err
            assert worker.restarts == attempt and worker.process.pid != pid  # a new one
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait()
        worker.check()
        err = capsys.readouterr().err
        assert "probe worker stopped" in err and f"maebench probe {tmp_path}" in err
        assert worker.failed
    finally:
        worker.stop()


def test_probe_worker_user_error_is_reported_once_and_training_goes_on(tmp_path, capsys):
    seed_everything(0)
    model = build_model(apply_overrides(PretrainConfig(), [TINY_MODEL]))
    pc.write_snapshot(model, tmp_path, 0)
    spec = pc.CurveSpec(("ks2",), str(tmp_path / "no_such_root"), examples=12)
    worker = pw.ProbeWorker(tmp_path, spec, every=2, max_steps=4, start_step=0, max_share=0.1)
    try:
        assert worker.process.wait(timeout=300) == pw.USER_ERROR
        worker.after_step(2, model)  # what the training loop calls: no exception, the snapshot is written
        err = capsys.readouterr().err
        assert "probe worker stopped (maebench: error:" in err and "no_such_root" in err
        assert worker.restarts == 0 and pc.snapshot_dir(tmp_path, 2).is_dir()
        summary = worker.finish(wall_s=10.0)
        assert summary["pending_snapshots"] == [0, 2] and summary["worker"].startswith("probe worker stopped")
        assert "still to probe" in pw.describe(summary, tmp_path)
    finally:
        worker.stop()
