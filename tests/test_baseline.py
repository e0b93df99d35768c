"""Every score with its baselines: the task's chance level (hand-worked label sets) and the pretraining run's own
random init (the exact weights step 0 started from, bitwise), evaluated the same way, with the difference's noise."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import TINY_MODEL, write_tone_clips
from safetensors.torch import load_file
from sklearn.metrics import average_precision_score

from maebench.cli import main
from maebench.downstream.baseline import chance_level
from maebench.downstream.datasets import build_toy
from maebench.downstream.metrics import chance_score, difference_noise
from maebench.downstream.tasks.base import Example, Fold, Task
from maebench.trainer import Pretrainer
from maebench.upstream.registry import fingerprint, load

# runs of the same directory twice in one process: no loader worker (a forked worker keeps the run's lock file open
# until it exits, so a second run in this process could find the directory still locked)
NO_WORKERS = "data.num_workers=0"


@pytest.fixture(scope="module")
def toy_ks2(tmp_path_factory) -> Path:
    return build_toy("ks2", tmp_path_factory.mktemp("toy") / "ks2", speech_backend="procedural")


def _task(metric: str, folds: list[list]) -> Task:
    def examples(labels: list) -> list[Example]:
        return [Example(Path(f"clip{i}.wav"), label, key=str(i)) for i, label in enumerate(labels)]

    return Task("hand", Path("."), metric, ["a", "b", "c", "d"], metric == "mAP",
                [Fold(f"fold{i + 1}", [], [], examples(labels)) for i, labels in enumerate(folds)],
                None, None, {})


# ------------------------------------------------------------------------------------------------ chance levels


def test_chance_accuracy_is_the_majority_share_of_the_test_labels():
    assert chance_score("accuracy", [0, 0, 1, 2, 0, 1]) == pytest.approx(50.0)  # class 0: 3 of 6
    assert chance_score("accuracy", [3, 3, 3, 1]) == pytest.approx(75.0)
    assert chance_score("accuracy", [2]) == pytest.approx(100.0)
    # folds: fold1 2 of 3 (66.67), fold2 3 of 4 (75): the mean over folds, as the score is aggregated
    level = chance_level(_task("accuracy", [[0, 0, 1], [1, 1, 1, 0]]))
    assert level["score"] == pytest.approx((200 / 3 + 75) / 2, abs=1e-3)
    assert level["per_fold"] == {"fold1": pytest.approx(66.6667, abs=1e-3), "fold2": pytest.approx(75.0)}
    assert level["definition"].startswith("majority class")


def test_chance_map_is_the_mean_label_prevalence_and_equals_sklearn_ap_of_a_constant_score():
    labels = [(0,), (0, 1), (2,), (0,)]  # prevalence: class 0 3/4, class 1 1/4, class 2 1/4; class 3 has none
    assert chance_score("mAP", labels) == pytest.approx(100 * (0.75 + 0.25 + 0.25) / 3)
    # independent reference: sklearn's AP of a scorer that gives every clip the same score
    targets = torch.zeros(4, 3)
    for row, classes in enumerate(labels):
        targets[row, list(classes)] = 1
    sklearn_map = sum(average_precision_score(targets[:, c].numpy(), [0.5] * 4) for c in range(3)) / 3 * 100
    assert chance_score("mAP", labels) == pytest.approx(sklearn_map)
    assert chance_level(_task("mAP", [labels]))["definition"].startswith("label prevalence")


def test_noise_of_a_difference_is_the_demo_rule():
    # accuracy 60% vs 50% on 100 items: 100 * sqrt((0.24 + 0.25) / 100) = 7.0, larger than the stds
    assert difference_noise("accuracy", 60.0, 1.0, 50.0, 2.0, 100) == pytest.approx(7.0)
    assert difference_noise("accuracy", 60.0, 9.0, 50.0, 2.0, 100) == pytest.approx(9.0)  # a std is larger
    assert difference_noise("mAP", 60.0, 1.0, 50.0, 2.0, 100) == pytest.approx(2.0)  # no binomial for mAP


def test_toy_ks2_results_record_the_majority_share_of_testing_list(toy_ks2, tmp_path):
    """The chance level in results.json equals the majority class counted from the dataset's own testing_list."""
    lines = [line for line in (toy_ks2 / "testing_list.txt").read_text().splitlines() if line.strip()]
    counts: dict[str, int] = {}
    for line in lines:
        counts[line.split("/")[0]] = counts.get(line.split("/")[0], 0) + 1
    out = tmp_path / "out"
    assert main(["eval", "--task", "ks2", "--upstream", "mae_ast_patch:tiny", "--data", str(toy_ks2), "--probe",
                 "logreg", "--set", "Cs=[1.0]", "--set", "max_iter=20", "--out", str(out), "--quiet"]) == 0
    record = json.loads(next(out.glob("*/results.json")).read_text())
    assert record["chance"]["score"] == pytest.approx(100 * max(counts.values()) / len(lines), abs=1e-3)
    assert "baseline" not in record  # a preset is no pretraining run: nothing to compare with


# ------------------------------------------------------------------------------------------------ the random init


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory):
    """A real `maebench pretrain` run (tiny model, 3 steps) and the weights its model held when step 1 began."""
    root = tmp_path_factory.mktemp("run")
    clips = write_tone_clips(root / "clips", count=8)
    run_dir = root / "run"
    seen: list[dict[str, torch.Tensor]] = []
    original = Pretrainer.train_step

    def spy(self):  # the real step, after copying the weights it starts from
        if self.state.step == 0:
            seen.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return original(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Pretrainer, "train_step", spy)
        assert main(["pretrain", "--data", str(clips), "--run-dir", str(run_dir), "--set", TINY_MODEL,
                     "--set", "train.device=cpu", "--max-steps", "3", "--batch-size", "4", "--quiet",
                     "--threads", "1", "--set", NO_WORKERS]) == 0
    return run_dir, clips, seen[0]


def test_pretrain_saves_the_exact_step0_weights_as_the_runs_init(pretrain_run):
    run_dir, clips, step0 = pretrain_run
    saved = load_file(str(run_dir / "init" / "model.safetensors"))
    assert sorted(saved) == sorted(step0)
    assert all(torch.equal(saved[k], step0[k]) and saved[k].dtype == step0[k].dtype for k in step0)  # bitwise
    trained = load_file(str(run_dir / "checkpoints" / "step_00000003" / "model.safetensors"))
    assert any(not torch.equal(trained[k], step0[k]) for k in step0)  # training moved away from it
    before = (run_dir / "init" / "model.safetensors").stat().st_mtime_ns
    # rerun with more steps (a resume): the init is the same and left as it is
    assert main(["pretrain", "--data", str(clips), "--run-dir", str(run_dir), "--set", TINY_MODEL, "--set",
                 "train.device=cpu", "--max-steps", "4", "--batch-size", "4", "--quiet", "--threads", "1",
                 "--resume", "--set", NO_WORKERS]) == 0
    assert (run_dir / "init" / "model.safetensors").stat().st_mtime_ns == before


def test_eval_of_a_run_evaluates_its_init_with_the_same_probe_and_reports_the_difference(pretrain_run, toy_ks2,
                                                                                          tmp_path, capsys):
    run_dir, _, step0 = pretrain_run
    out = tmp_path / "out"
    assert main(["eval", "--task", "ks2", "--upstream", str(run_dir), "--data", str(toy_ks2), "--seeds", "2",
                 "--set", "max_steps=6", "--set", "eval_every=3", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    results = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/results.json")}
    latest = sorted((run_dir / "checkpoints").iterdir())[-1].name
    assert sorted(results) == ["ks2-run-init-linear", f"ks2-run-{latest}-linear"]
    record, init = results[f"ks2-run-{latest}-linear"], results["ks2-run-init-linear"]
    base = record["baseline"]
    assert base["upstream"]["path"] == str((run_dir / "init").resolve())
    model = load(run_dir / "init")
    model.load_state_dict(step0)
    assert base["upstream"]["fingerprint"] == init["upstream"]["fingerprint"] == fingerprint(model)
    assert [(r["fold"], r["seed"]) for r in init["runs"]] == [(r["fold"], r["seed"]) for r in record["runs"]]
    assert init["probe"] == record["probe"]  # the same probe and settings
    assert base["score"] == init["score"] and base["std"] == init["std"]
    n = len([line for line in (toy_ks2 / "testing_list.txt").read_text().splitlines() if line.strip()])
    p1, p2 = record["score"] / 100, init["score"] / 100
    binomial = 100 * math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n)
    assert base["noise"] == pytest.approx(max(record["std"], init["std"], binomial), abs=1e-3)
    assert base["difference"] == pytest.approx(record["score"] - init["score"], abs=1e-3)
    assert base["beats"] == (base["difference"] > base["noise"])
    assert "chance" in printed and "random init" in printed


def test_baseline_flags(pretrain_run, toy_ks2, tmp_path, capsys):
    run_dir, _, _ = pretrain_run
    common = ["eval", "--task", "ks2", "--data", str(toy_ks2), "--probe", "logreg", "--set", "Cs=[1.0]",
              "--set", "max_iter=20", "--quiet"]
    assert main([*common, "--upstream", str(run_dir), "--baseline", "none", "--out", str(tmp_path / "a")]) == 0
    (only,) = list((tmp_path / "a").glob("*/results.json"))
    assert "baseline" not in json.loads(only.read_text())
    capsys.readouterr()
    assert main([*common, "--upstream", "mae_ast_patch:tiny", "--baseline", "init", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("maebench: error: --baseline init:") and len(err.splitlines()) == 1
    assert not (tmp_path / "b").exists()  # refused before any work
    # a step checkpoint of the run has the same init
    step = sorted((run_dir / "checkpoints").iterdir())[0]
    assert main([*common, "--upstream", str(step), "--baseline", "init", "--out", str(tmp_path / "c")]) == 0
    assert len(list((tmp_path / "c").glob("*/results.json"))) == 2


def test_overwrite_deletes_the_old_init_and_writes_the_new_one(tmp_path):
    clips = write_tone_clips(tmp_path / "clips", count=8)
    run_dir = tmp_path / "run"
    common = ["pretrain", "--data", str(clips), "--run-dir", str(run_dir), "--set", TINY_MODEL, "--set",
              "train.device=cpu", "--max-steps", "1", "--batch-size", "4", "--quiet", "--threads", "1", "--set",
              NO_WORKERS]
    assert main(common) == 0
    first = load_file(str(run_dir / "init" / "model.safetensors"))
    assert main([*common, "--set", "train.seed=5", "--overwrite"]) == 0
    second = load_file(str(run_dir / "init" / "model.safetensors"))
    assert any(not torch.equal(first[k], second[k]) for k in first)
    assert json.loads((run_dir / "init" / "config.json").read_text())["provenance"]["seed"] == 5


def test_auto_baseline_is_for_the_frozen_probes_and_init_asks_for_it_anyway(pretrain_run):
    from maebench.downstream.baseline import baseline_upstream

    run_dir = pretrain_run[0]
    init = run_dir / "init"
    assert baseline_upstream(str(run_dir), "auto", "linear") == init
    assert baseline_upstream(str(run_dir), "auto", "logreg") == init
    assert baseline_upstream(str(run_dir), "auto", "finetune") is None  # a second fine-tuning: only when asked
    assert baseline_upstream(str(run_dir), "init", "finetune") == init
    assert baseline_upstream(str(run_dir), "none", "linear") is None
    assert baseline_upstream("mae_ast_patch:tiny", "auto", "linear") is None  # a preset has no run
    assert baseline_upstream(str(init), "auto", "linear") is None  # the init itself has no baseline
