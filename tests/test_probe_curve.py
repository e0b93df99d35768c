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
from maebench.downstream.subset import SUBSET_VERSION, apply_subset, read_subset, select_subset
from maebench.downstream.tasks.base import Example, Fold, Task
from maebench.downstream.toy import build_toy
from maebench.errors import MaebenchError
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
    assert len(first["splits"]["train"]) == 12 and len(first["splits"]["test"]) == 12
    assert 0 < len(first["splits"]["dev"]) <= 6  # the toy's dev split has few items of each class
    # class-balanced over the recorded classes, the same in every split
    fold = ks2.folds[0]
    labels = {ex.key: ex.label for ex in fold.train + fold.dev + fold.test}
    counts = Counter(labels[key] for key in first["splits"]["train"])
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    assert set(counts) == set(first["classes"]) >= {labels[key] for key in first["splits"]["test"]}
    # the subset task holds exactly the recorded items, and a different task's subset differs
    reduced = apply_subset(ks2, first)
    assert [ex.key for ex in reduced.folds[0].test] == first["splits"]["test"]
    assert reduced.data_fingerprint() != ks2.data_fingerprint()
    esc50 = select_subset(load_task("esc50", toy_root / "esc50"), examples=12, seed=0)
    assert esc50["task"] == "esc50" and esc50["splits"]["test"] != first["splits"]["test"]


def many_class_task(classes: int = 35, per_class: dict[str, int] | None = None) -> Task:
    """An in-memory single-label task with `classes` classes (KS2's 35) and per_class items of each in each split,
    interleaved so that no split lists its classes in order."""
    per_class = per_class or {"train": 10, "dev": 5, "test": 10}
    splits = {split: [Example(Path(f"{split}/{i}_{c}.wav"), c, key=f"{split}/{i}_{c}.wav")
                      for i in range(n) for c in range(classes)] for split, n in per_class.items()}
    return Task("ks2", Path("/nowhere"), "accuracy", [f"class{c}" for c in range(classes)], False,
                [Fold("default", **splits)], None, None, {}, _fingerprint="in-memory")


def test_small_subset_of_a_35_class_task_tests_only_classes_it_trains_on():
    """Pins the fix of subsets smaller than the classes (version 1 drew each split's classes on its own: a 16-item
    subset of KS2 tested mostly classes it never trained on, under chance at every point)."""
    task = many_class_task()
    record = select_subset(task, examples=16, seed=0)
    label = {ex.key: ex.label for split in task.folds[0].splits().values() for ex in split}
    counts = {split: Counter(label[k] for k in keys) for split, keys in record["splits"].items()}
    assert set(counts["test"]) <= set(counts["train"]) and set(counts["dev"]) <= set(counts["train"])
    # 16 items, at least 4 training items per class -> the first 16 // 4 = 4 classes of one seeded order, 4 each
    assert record["version"] == SUBSET_VERSION == 2 and record["min_per_class"] == 4
    assert len(record["classes"]) == 4 and set(counts["train"]) == set(record["classes"])
    assert counts["train"] == {c: 4 for c in record["classes"]} == counts["test"]
    assert counts["dev"] == {c: 2 for c in record["classes"]}
    assert record["chance"] == 25.0  # 4 of the 16 test items in the majority class, by hand
    assert select_subset(many_class_task(), examples=16, seed=0) == record
    assert select_subset(task, examples=16, seed=1)["classes"] != record["classes"]
    # room for 4 per class: every class, round-robin; 200 = 35 * 5 + 25 -> 25 classes have 6 test items, 10 have 5
    big = select_subset(task, examples=200, seed=0)
    assert sorted(big["classes"]) == list(range(35))
    test = Counter(label[k] for k in big["splits"]["test"])
    assert sorted(Counter(test.values()).items()) == [(5, 10), (6, 25)]
    assert big["chance"] == 3.0  # 6 / 200
    # a class without test items is left out of the order, so no training item is spent on it
    lopsided = many_class_task(3, {"train": 10, "dev": 0, "test": 10})
    lopsided.folds[0].test = [ex for ex in lopsided.folds[0].test if ex.label != 2]
    assert sorted(select_subset(lopsided, examples=16, seed=0)["classes"]) == [0, 1]


def test_logreg_in_the_span_of_few_training_items_is_the_dense_fit():
    """The probe's cheap fit (fewer items than dimensions: logistic regression in the span of the training items)
    has the solution of plain scikit-learn on all dimensions, both solved to convergence; only the cost differs."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from maebench.downstream.probes.logreg import _fit_logreg
    from maebench.downstream.probes.settings import LogregSettings

    rng = np.random.default_rng(0)
    x, x_new = rng.normal(size=(24, 80)), rng.normal(size=(10, 80))
    labels = rng.integers(0, 4, size=24)
    task = many_class_task(4)
    fitted = _fit_logreg(task, x, labels, 0.3, LogregSettings(max_iter=20_000), seed=0)
    assert fitted.basis.shape == (80, 23)  # 24 centred items span 23 dimensions: 23 weights per class, not 80
    fitted.model.set_params(tol=1e-10).fit(fitted.scaler.transform(x) @ fitted.basis, labels)
    scale = fitted.scaler  # the reference: the same standardisation, every dimension
    dense = LogisticRegression(C=0.3, max_iter=20_000, tol=1e-10).fit(scale.transform(x), labels)
    np.testing.assert_allclose(fitted.scores(x_new), dense.decision_function(scale.transform(x_new)), atol=1e-4)


def test_subset_records_of_another_version_or_size(toy_root, tmp_path):
    spec = pc.CurveSpec(("ks2",), str(toy_root), examples=12, seed=0)
    path = pc.ensure_subset(tmp_path, "ks2", spec)
    record = json.loads(path.read_text())
    old = {k: v for k, v in record.items() if k not in ("classes", "min_per_class")} | {"version": 1}
    path.write_text(json.dumps(old))  # a run resumed with a version-1 record keeps it
    assert json.loads(pc.ensure_subset(tmp_path, "ks2", spec).read_text()) == old
    reduced = apply_subset(load_task("ks2", toy_root / "ks2"), read_subset(path))
    assert [ex.key for ex in reduced.folds[0].train] == old["splits"]["train"]
    with pytest.raises(MaebenchError, match="drawn for 12 examples.*probe_examples=16"):
        pc.ensure_subset(tmp_path, "ks2", pc.CurveSpec(("ks2",), str(toy_root), examples=16, seed=0))
    path.write_text(json.dumps(record | {"version": SUBSET_VERSION + 1}))
    with pytest.raises(MaebenchError, match="newer than this maebench reads"):
        read_subset(path)


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
    features = Path(os.environ["MAEBENCH_CACHE"]) / "features"  # a snapshot's features are not kept in the cache
    assert not features.is_dir() or not any(features.iterdir())

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


def test_tensorboard_shows_each_probe_point_as_written_to_probes_jsonl(clips, toy_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    train(probe_config(clips, toy_root, run_dir, "train.tensorboard=true"), quiet=True)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert "probe/ks2" in events.Tags()["scalars"]
    shown = [(event.step, event.value) for event in events.Scalars("probe/ks2")]
    written = sorted((p["step"], p["score"]) for p in pc.read_points(run_dir))
    assert [step for step, _ in shown] == [0, 2, 4] == [step for step, _ in written]
    assert [value for _, value in shown] == pytest.approx([score for _, score in written], rel=1e-6)  # float32


def test_ddp_run_probes_on_rank_0_only(toy_root, tmp_path):
    """Two gloo processes under torchrun (as tests/test_ddp.py): one probe worker (rank 0's), each point once."""
    from test_ddp import torchrun

    clips = write_tone_clips(tmp_path / "clips", count=32, seed=1)
    run_dir = tmp_path / "ddp"
    done = torchrun(run_dir, clips, "--max-steps", "4", "--probe-every", "2", "--probe-tasks", "ks2", "--probe-data",
                    str(toy_root), "--set=train.probe_examples=12", "--set=train.probe_max_share=1000")
    assert done.returncode == 0, done.stdout + done.stderr
    keys = [(p["step"], p["task"]) for p in pc.read_points(run_dir)]
    assert sorted(keys) == [(0, "ks2"), (2, "ks2"), (4, "ks2")]  # each point once
    log = (run_dir / pc.SNAPSHOTS_DIR / pw.LOG_FILE).read_text()
    assert log.count("probe worker started") == 1, log  # rank 1 started none
    assert done.stdout.count("probes: 3 point(s)") == 1  # and only rank 0 reports the curve's cost


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


def test_probe_worker_whose_training_process_died_before_it_started_exits(tmp_path):
    """Pins a fix: a training process killed while its worker was still importing torch left a worker that took
    init for its parent, polled forever and kept the lock the resumed run's worker waits for."""
    import subprocess
    import sys

    seed_everything(0)
    pc.write_snapshot(build_model(apply_overrides(PretrainConfig(), [TINY_MODEL])), tmp_path, 0)
    spec = pc.CurveSpec(("ks2",), None, examples=12)
    (tmp_path / pc.SNAPSHOTS_DIR / pw.WORKER_SPEC).write_text(json.dumps({"spec": spec.to_json()}))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # the "training process": dead before the worker looks
    worker = subprocess.Popen([sys.executable, "-m", "maebench.probe_worker", str(tmp_path), str(gone.pid)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output = worker.communicate(timeout=120)[0]
    finally:
        worker.kill()
    assert worker.returncode == 0, output
    assert "probe worker started" in output and not pc.read_points(tmp_path)  # nothing probed for nobody
    assert pc.pending_snapshots(tmp_path)  # the snapshot waits for the resumed run


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
