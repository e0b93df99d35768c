"""The stage runner (`maebench run`, `maebench demo`) and its report.

Pretraining is real (a one-layer model, ten steps, in the child process the runner starts); evaluations are
replaced by a stand-in that writes results.json files with chosen scores, so the runner's bookkeeping (skip,
resume, failure isolation) is tested in seconds. The report's `wins` is checked on hand-made results against a
count worked out by hand.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from helpers import one_line_error, write_tone_clips

from maebench import pipeline, report
from maebench.errors import MaebenchError

TINY = """\
pipeline: 1
description: a tiny pipeline for the tests
pretrain:
  m:
    data: {data}
    set: [model.name=mae_ast_patch, "model.overrides={{depth: 1, decoder_depth: 1}}", train.batch_size=2,
          train.log_every=1, train.ckpt_every=2, data.clip_seconds=0.5, data.num_workers=0]
    budget_seconds: 0.001   # below the 4 timed steps: 4 steps, then the 10-step floor: the same on every machine
    calibration_steps: 4
    gpu_hours: 2.5
{extra}evals:
  tasks: [ks2, esc50]
  probes: [logreg]
  upstreams: [{upstreams}]
  seeds: 3
  gpu_hours: {{logreg: 0.25}}
"""


def write_recipe(tmp_path: Path, *, extra: str = "", upstreams: str = "m, m@init") -> Path:
    data = write_tone_clips(tmp_path / "clips", count=8)
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(data=data, extra=extra, upstreams=upstreams))
    return path


class FakeEvaluate:
    """Stands in for maebench.downstream.evaluate.evaluate: writes a results.json whose score depends on the
    upstream (pretrained 60, init 50), records each call, and fails on the (upstream, task) pairs in `fail`."""

    def __init__(self, fail: set[tuple[str, str]] = frozenset()) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = fail

    def __call__(self, task, upstream, *, out_dir, probe, seeds, **_):
        kind = "init" if Path(upstream).name == "init" else "pretrained"
        self.calls.append((kind, task))
        if (kind, task) in self.fail:
            raise RuntimeError(f"{task}: broken on purpose")  # not even a MaebenchError: still recorded
        out = Path(out_dir) / f"{task}-{Path(upstream).name}-{probe}"
        out.mkdir(parents=True)
        record = {"maebench_results": 1, "task": task, "metric": "accuracy", "upstream": {"name": str(upstream)},
                  "score": 60.0 if kind == "pretrained" else 50.0, "std": 1.0, "probe": {"name": probe},
                  "runs": [{"seed": s} for s in range(seeds)], "layers": {"test_scores": [40.0, 55.0]}}
        (out / "results.json").write_text(json.dumps(record))
        return {**record, "results_path": str(out / "results.json")}


@pytest.fixture
def fake_eval(monkeypatch):
    import maebench.downstream.datasets as datasets
    import maebench.downstream.evaluate as evaluate

    fake = FakeEvaluate()
    monkeypatch.setattr(evaluate, "evaluate", fake)
    monkeypatch.setattr(datasets, "load_task", lambda name, root=None: types.SimpleNamespace(
        folds=[types.SimpleNamespace(test=[0] * 100)]))
    return fake


def make_runner(recipe: Path, run_dir: Path) -> pipeline.Runner:
    parsed, stages, path = pipeline.load_pipeline(recipe)
    return pipeline.Runner(parsed, stages, run_dir, path, quiet=True)


def test_dry_run_prints_the_plan_with_gpu_hours_and_writes_nothing(tmp_path, capsys):
    from maebench.cli import main

    recipe = write_recipe(tmp_path)
    assert main(["run", str(recipe), "--run-dir", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    keys = ["pretrain/m", "eval/m/ks2/logreg", "eval/m/esc50/logreg", "eval/m@init/ks2/logreg",
            "eval/m@init/esc50/logreg", "compare", "report"]
    assert [line.split()[1] for line in out.splitlines()[1:-1]] == keys
    assert "seeds 3" in out and "seeds 1" in out  # one split: the recipe's seeds; esc50's folds: one each
    assert "estimated GPU hours still to run: 3.5" in out  # 2.5 + 4 x 0.25
    assert not (tmp_path / "run").exists()


def test_a_second_run_skips_finished_stages_and_an_interrupted_pretraining_resumes_exactly(tmp_path, fake_eval,
                                                                                          monkeypatch):
    run_dir = tmp_path / "run"
    runner = make_runner(write_recipe(tmp_path), run_dir)
    assert runner.run() == 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert all(entry["status"] == "done" for entry in manifest["stages"].values()), manifest
    pretrain = manifest["stages"]["pretrain/m"]
    assert pretrain["steps"] == 10 and pretrain["calibration"]["max_steps"] == 10
    assert pretrain["calibration"]["timed_steps"] == 4
    final = run_dir / "pretrain" / "m" / "checkpoints" / "step_00000010" / "model.safetensors"
    finished_weights = final.read_bytes()
    assert (run_dir / "pretrain" / "m" / "init" / "model.safetensors").exists()
    assert len(fake_eval.calls) == 4

    # everything done: nothing runs again, from another working directory too (outputs are run-relative)
    assert not Path(manifest["stages"]["eval/m/ks2/logreg"]["outputs"]["results"]).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert make_runner(write_recipe(tmp_path), run_dir).run() == 0
    assert len(fake_eval.calls) == 4
    assert final.read_bytes() == finished_weights

    # the same pipeline interrupted by Ctrl-C mid-pretraining, then run again: the same final weights
    other = tmp_path / "interrupted"
    command = [sys.executable, "-m", "maebench", "run", str(write_recipe(tmp_path)), "--run-dir", str(other)]
    first = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = other / "pretrain" / "m" / "checkpoints" / "step_00000006"  # after the 4 timed steps
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the runner and its pretraining child
    assert first.wait(timeout=120) == 130, first.stderr.read().decode()
    stages = json.loads((other / "manifest.json").read_text())["stages"]
    assert "pretrain/m" not in stages  # not recorded as done
    assert not (other / "pretrain" / "m" / "checkpoints" / "step_00000010").exists()
    assert make_runner(write_recipe(tmp_path), other).run() == 0
    resumed = json.loads((other / "manifest.json").read_text())["stages"]["pretrain/m"]
    assert resumed["result"]["start_step"] >= 6  # resumed, not started again, with the recorded step count
    final_again = other / "pretrain" / "m" / "checkpoints" / "step_00000010" / "model.safetensors"
    assert final_again.read_bytes() == finished_weights


def test_a_failed_stage_leaves_the_others_results_and_a_rerun_retries_only_it(tmp_path, fake_eval):
    broken = f"  broken:\n    data: {tmp_path / 'no_such_dir'}\n"
    recipe = write_recipe(tmp_path, extra=broken, upstreams="m, m@init, broken")
    fake_eval.fail = {("init", "esc50")}
    run_dir = tmp_path / "run"
    bad = make_runner(recipe, run_dir).run()
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert stages["pretrain/broken"]["status"] == "failed"
    assert "no_such_dir" in stages["pretrain/broken"]["error"]
    assert stages["eval/broken/ks2/logreg"]["status"] == "blocked"
    assert stages["eval/m@init/esc50/logreg"]["status"] == "failed"
    assert "broken on purpose" in stages["eval/m@init/esc50/logreg"]["error"]
    assert bad == 4  # the broken pretraining, its two evaluations, one evaluation
    done = [k for k, e in stages.items() if e["status"] == "done"]
    assert set(done) == {"pretrain/m", "eval/m/ks2/logreg", "eval/m/esc50/logreg", "eval/m@init/ks2/logreg",
                         "compare", "report"}
    for key in done:
        for output in stages[key].get("outputs", {}).values():
            assert (run_dir / output).exists(), (key, output)

    fake_eval.fail = set()
    calls = len(fake_eval.calls)
    make_runner(recipe, run_dir).run()
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert stages["eval/m@init/esc50/logreg"]["status"] == "done"
    assert fake_eval.calls[calls:] == [("init", "esc50")]  # only the failed evaluation ran again


def test_a_pipeline_refuses_a_pretraining_recipe_and_unknown_keys(tmp_path):
    with pytest.raises(MaebenchError) as excinfo:
        pipeline.load_pipeline("demo_tiny")
    one_line_error(excinfo, "not a pipeline", "maebench pretrain --recipe")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline: 1\nevals: {taskz: [ks2]}\n")
    with pytest.raises(MaebenchError) as excinfo:
        pipeline.load_pipeline(bad)
    one_line_error(excinfo, "taskz", str(bad))
    bad.write_text("pipeline: 1\nevals: {tasks: [ks2], upstreams: [x@init]}\n")
    with pytest.raises(MaebenchError) as excinfo:
        pipeline.load_pipeline(bad)
    one_line_error(excinfo, "x@init", "no pretrain stage")


def test_a_folder_of_other_files_is_refused(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(MaebenchError) as excinfo:
        make_runner(write_recipe(tmp_path), mine).run()
    one_line_error(excinfo, str(mine), "another --run-dir")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_bundled_pipelines_plan(capsys):
    """demo and the paper recipes parse and plan: four upstreams x six tasks x their probes."""
    for name, probes in (("demo", 2), ("paper_linear", 1), ("paper_finetune", 1)):
        recipe, stages, _ = pipeline.load_pipeline(name)
        planned = pipeline.plan(recipe, stages)
        assert sum(s.kind == "eval" for s in planned) == 4 * 6 * probes, name
        if name.startswith("paper"):
            assert sum(s.gpu_hours for s in planned) > 0


PARALLEL = """\
pipeline: 1
evals:
  tasks: [ks2, ks1]
  probes: [logreg, linear]
  upstreams: [{a}, {b}]
  jobs: {jobs}
  set:
    logreg: {{Cs: [0.1, 1.0]}}
    linear: {{max_steps: 20, eval_every: 10}}
compare: false
feature_stats: {stats}
report: {stats}
"""


def test_parallel_evaluations_give_the_serial_scores_in_plan_order(tmp_path):
    """evals.jobs = 2: real probes in two worker processes record what one process does, in plan order; then the
    feature statistics stage and the report that shows them."""
    import torch

    from maebench.upstream import registry

    specs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        specs.append(str(registry.save_upstream(registry.preset("mae_ast_patch:tiny", depth=1, decoder_depth=1),
                                                tmp_path / f"up{seed}")))
    stages = {}
    for jobs in (1, 2):
        recipe = tmp_path / f"jobs{jobs}.yaml"
        recipe.write_text(PARALLEL.format(a=specs[0], b=specs[1], jobs=jobs, stats=str(jobs == 2).lower()))
        runner = make_runner(recipe, tmp_path / f"run{jobs}")
        assert runner.run() == 0
        stages[jobs] = json.loads((tmp_path / f"run{jobs}" / "manifest.json").read_text())["stages"]
    evals = [s.key for s in runner.stages if s.kind == "eval"]
    assert len(evals) == 8 and list(stages[2])[:8] == evals
    assert [stages[2][k]["status"] for k in evals] == ["done"] * 8
    assert [stages[2][k]["score"] for k in evals] == pytest.approx([stages[1][k]["score"] for k in evals])
    assert len({stages[2][k]["score"] for k in evals}) > 2  # the probes really ran: not one constant
    assert "stats" not in stages[1] and stages[2]["stats"]["status"] == "done"
    stats = json.loads((tmp_path / "run2" / stages[2]["stats"]["outputs"]["stats"]).read_text())
    assert list(stats["upstreams"]) == specs and stats["task"] == "ks2"
    assert all(len(rows) == 1 and 0 < rows[0]["effective_dim"] for rows in stats["upstreams"].values())
    assert "## Feature statistics" in (tmp_path / "run2" / "report" / "report.md").read_text()


def test_ctrl_c_during_parallel_evaluations_keeps_the_finished_ones_and_a_rerun_does_the_rest(tmp_path):
    import torch

    from maebench.upstream import registry

    specs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        specs.append(str(registry.save_upstream(registry.preset("mae_ast_patch:tiny", depth=1, decoder_depth=1),
                                                tmp_path / f"up{seed}")))
    recipe = tmp_path / "jobs2.yaml"
    recipe.write_text(PARALLEL.format(a=specs[0], b=specs[1], jobs=2, stats="false"))
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "maebench", "run", str(recipe), "--run-dir", str(run_dir)]
    first = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = run_dir / "manifest.json"
    deadline = time.monotonic() + 240

    def finished() -> int:
        try:
            return sum(e["status"] == "done" for e in json.loads(manifest.read_text())["stages"].values())
        except (OSError, ValueError):
            return 0

    while finished() < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C: the runner and both evaluation workers
    assert first.wait(timeout=60) == 130, first.stderr.read().decode()
    done_before = {k: e["outputs"] for k, e in json.loads(manifest.read_text())["stages"].items()
                   if e["status"] == "done"}
    assert 2 <= len(done_before) < 8
    runner = make_runner(recipe, run_dir)
    assert runner.run() == 0
    stages = json.loads(manifest.read_text())["stages"]
    assert list(stages) == [s.key for s in runner.stages] and all(e["status"] == "done" for e in stages.values())
    assert all(stages[k]["outputs"] == outputs for k, outputs in done_before.items())  # kept, not redone


# ---------------------------------------------------------------------------------------------------- the report


def _results(tmp_path: Path, upstream: str, task: str, score: float, std: float, metric: str = "accuracy") -> str:
    path = tmp_path / f"{upstream}-{task}" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"maebench_results": 1, "task": task, "metric": metric, "score": score, "std": std,
                                "upstream": {"name": upstream}, "probe": {"name": "logreg"},
                                "layers": {"scores": [30.0, score]}}))
    return str(path)


def test_report_counts_wins_by_hand_and_writes_its_files(tmp_path):
    # (task, metric, pretrained score, std, init score, std, test items) and the hand-worked verdict:
    cases = [
        ("ks2", "accuracy", 70.0, 1.0, 50.0, 2.0, 400, True),    # +20 > max(1, 2, se 100*sqrt(.46/400)=3.39)
        ("ks1", "accuracy", 52.0, 0.0, 50.0, 0.0, 400, False),   # +2 < se 100*sqrt((.2496+.25)/400) = 3.53
        ("sid", "accuracy", 60.0, 0.0, 50.0, 0.0, 400, True),    # +10 > se 100*sqrt((.24+.25)/400) = 3.50
        ("esc50", "accuracy", 60.0, 12.0, 50.0, 3.0, 200, False),  # +10 < std 12 over folds
        ("er", "accuracy", 40.0, 1.0, 50.0, 1.0, 250, False),    # worse
        ("as20k", "mAP", 30.0, 1.5, 27.0, 1.0, 200, True),        # mAP: std only, +3 > 1.5
    ]
    stages = {"pretrain/mae": {"status": "done", "model": "mae_ast_patch:tiny", "steps": 10, "step_s": 0.5,
                               "clips_per_s": 32.0, "loss_curve": [[5, 2.0], [10, 1.5]],
                               "result": {"peak_memory_bytes": 2**30}},
              "pretrain/ss": {"status": "done", "model": "ssast_patch:tiny", "steps": 4, "step_s": 1.25,
                              "clips_per_s": 12.8, "loss_curve": [[2, 3.0], [4, 2.5]], "result": {}}}
    for task, metric, s1, d1, s0, d0, n, _ in cases:
        for upstream, score, std in (("mae", s1, d1), ("mae@init", s0, d0)):
            stages[f"eval/{upstream}/{task}/logreg"] = {
                "status": "done", "upstream": upstream, "test_items": n,
                "outputs": {"results": _results(tmp_path, upstream, task, score, std, metric)}}
    manifest = {"recipe": "hand", "stages": stages}
    path = report.write_report(tmp_path / "run", manifest, "hand-made")
    summary = json.loads((path.parent / "summary.json").read_text())
    assert summary["wins"] == sum(case[-1] for case in cases) == 3
    assert {t for t, d in summary["per_stage"]["mae"]["tasks"].items() if d["win"]} == {"ks2", "sid", "as20k"}
    assert summary["ssast_over_mae_ast_step_time"] == pytest.approx(2.5)
    for name in ("report.md", "summary.json", "loss.png", "scores_logreg.png", "layers.png"):
        assert (path.parent / name).stat().st_size > 0, name
    text = path.read_text()
    assert "3 of 6 tasks" in text and "2.50x" in text and "| mae | logreg |" in text


def test_the_reading_gives_the_linear_probes_wins_beside_the_rule(tmp_path):
    stages = {"pretrain/mae": {"status": "done", "model": "mae_ast_patch:tiny", "steps": 10, "step_s": 0.5,
                               "clips_per_s": 32.0, "loss_curve": [[5, 2.0], [10, 1.5]], "result": {}}}
    # (task, probe, pretrained score, std, init score, std): ks2 linear +12 > max(2, 1, se 4.8) wins; sid linear
    # +3 < se 100*sqrt((.63*.37+.6*.4)/200) = 4.8 does not; the logreg cells tie (no logreg wins)
    cases = [("ks2", "linear", 42.0, 2.0, 30.0, 1.0), ("sid", "linear", 63.0, 0.5, 60.0, 0.5),
             ("ks2", "logreg", 40.0, 0.0, 40.0, 0.0), ("sid", "logreg", 60.0, 0.0, 60.0, 0.0)]
    for task, probe, s1, d1, s0, d0 in cases:
        for upstream, score, std in (("mae", s1, d1), ("mae@init", s0, d0)):
            path = tmp_path / f"{upstream}-{task}-{probe}" / "results.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps({"task": task, "metric": "accuracy", "score": score, "std": std,
                                        "probe": {"name": probe}, "layers": {}}))
            stages[f"eval/{upstream}/{task}/{probe}"] = {"status": "done", "upstream": upstream, "test_items": 200,
                                                         "outputs": {"results": str(path)}}
    summary = report.summarize({"stages": stages}, tmp_path)
    assert summary["wins"] == 0 and summary["per_stage"]["mae"]["linear_wins"] == 1
    assert "With the linear probe (beside the rule, not part of it) it wins on 1 of 2 (ks2)" in report.reading(summary)
