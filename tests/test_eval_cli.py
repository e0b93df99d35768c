"""`maebench eval` end to end on the toy KS2 layout, the evaluate() API, and the no-upstream error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import save_in_run
from test_probes import SpectrumUpstream

from maebench.cli import main
from maebench.downstream.datasets import build_toy
from maebench.downstream.evaluate import evaluate
from maebench.paths import record_latest_pretrain_run
from maebench.upstream.registry import preset

RESULT_FIELDS = {"maebench_results", "task", "metric", "score", "std", "runs", "upstream", "probe", "layers", "data",
                 "timings", "versions", "created"}


@pytest.fixture(scope="module")
def toy_ks2(tmp_path_factory) -> Path:
    return build_toy("ks2", tmp_path_factory.mktemp("toy") / "ks2", speech_backend="procedural")


def _results(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("*/results.json"))}


def test_eval_cli_tiny_preset_linear_then_logreg_reuses_features(toy_ks2, tmp_path, capsys):
    out = tmp_path / "runs"
    common = ["eval", "--task", "ks2", "--upstream", "mae_ast_patch:tiny", "--data", str(toy_ks2),
              "--out", str(out), "--quiet"]
    assert main([*common, "--probe", "linear", "--set", "max_steps=5", "--set", "eval_every=5"]) == 0
    assert main([*common, "--probe", "logreg", "--set", "Cs=[1.0]", "--set", "max_iter=50"]) == 0
    assert main([*common, "--probe", "linear", "--set", "max_steps=2"]) == 0
    results = _results(out)
    assert sorted(results) == ["ks2-mae_ast_patch-tiny-linear", "ks2-mae_ast_patch-tiny-linear-1",
                               "ks2-mae_ast_patch-tiny-logreg"]
    linear, logreg = results["ks2-mae_ast_patch-tiny-linear"], results["ks2-mae_ast_patch-tiny-logreg"]
    for record in (linear, logreg):
        assert RESULT_FIELDS <= set(record)
        assert record["task"] == "ks2" and record["metric"] == "accuracy" and record["data"]["toy"] is True
        assert 0.0 <= record["score"] <= 100.0 and record["runs"][0]["fold"] == "default"
        assert record["upstream"]["name"] == "mae_ast_patch:tiny" and record["upstream"]["path"] is None
        assert record["upstream"]["family"] == "mae_ast" and len(record["upstream"]["fingerprint"]) == 64
    assert len(linear["layers"]["weights"]) == 12 and linear["probe"]["hparams"]["max_steps"] == 5
    protocol = linear["protocol"]  # what was actually used, and how it differs from the paper's fine-tuning
    assert protocol["family"] == "mae_ast_patch" and protocol["probe"] == "linear"
    assert protocol["input"]["geometry"].startswith("whole clip") and "running statistics" in protocol["normalisation"]
    assert protocol["layers"] == "softmax-weighted sum of all 12 layers (s3prl -s hidden_states)"
    assert protocol["budget"] == {"steps": 5, "batch_size": 32, "grad_accum": 1}
    assert protocol["sources"]["settings"].startswith("SUPERB speech_commands")
    assert protocol["dev"].startswith("Speech Commands v0.02 validation_list.txt")
    assert protocol["paper_protocol"] is False and "probe: linear (paper: finetune)" in protocol["paper_differences"]
    assert len(logreg["layers"]["scores"]) == 12
    assert linear["timings"]["extract_s"] > 0 and logreg["timings"]["extract_s"] == 0  # features reused
    printed = capsys.readouterr().out
    assert printed.count("ks2 linear accuracy") == 2 and "results.json" in printed


def test_eval_without_upstream_or_pretrain_run_is_a_one_line_error(capsys):
    assert main(["eval", "--task", "ks2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("maebench: error: no --upstream given") and "maebench pretrain" in err
    assert len(err.splitlines()) == 1


def test_eval_uses_latest_pretrain_run_and_finetunes_it(toy_ks2, tmp_path):
    run_dir = tmp_path / "pretrain_run"
    save_in_run(preset("mae_ast_patch:tiny", depth=2), run_dir, step=10)
    record_latest_pretrain_run(run_dir)
    out = tmp_path / "runs"
    assert main(["eval", "--task", "ks2", "--data", str(toy_ks2), "--probe", "finetune", "--set", "epochs=1",
                 "--set", "batch_size=16", "--out", str(out), "--quiet"]) == 0
    (name, record), = _results(out).items()
    assert name == "ks2-pretrain_run-step_00000010-finetune"
    assert record["upstream"]["path"] == str((run_dir / "checkpoints" / "step_00000010").resolve())
    assert record["probe"]["hparams"]["epochs"] == 1 and 0.0 <= record["score"] <= 100.0
    assert record["protocol"]["paper_protocol"] is True and record["protocol"]["paper_differences"] == []
    assert record["protocol"]["settings_for"] == "mae_ast" and record["runs"][0]["selection"] == "best dev"


def test_ssast_finetune_records_its_own_global_protocol(toy_ks2, tmp_path):
    """An SSAST upstream on KS2 is fine-tuned on SSAST's own input (128 frames, Speech Commands statistics)."""
    from maebench.upstream.ssast import Ssast, SsastConfig

    model = Ssast(SsastConfig(tokenizer="frame", dim=32, num_heads=2, depth=1, target_frames=128))
    record = evaluate("ks2", model, data_root=toy_ks2, probe="finetune", out_dir=tmp_path, quiet=True,
                      overrides={"epochs": 1, "batch_size": 32})
    protocol = record["protocol"]
    assert protocol["family"] == "ssast_frame" and protocol["settings_for"] == "ssast"
    assert protocol["input"]["geometry"].startswith("global: one input of 128 frames")
    assert protocol["normalisation"] == "(x - -6.845978) / (2 * 5.5654526) after padding"
    assert protocol["layers"].startswith("ft_avgtok: mean of every token of the final-normed output")
    assert any("after normalisation" in item for item in protocol["augmentation"])
    assert protocol["paper_protocol"] is True and "run_sc.sh" in protocol["sources"]["settings"]


def test_evaluate_api_aggregates_seeds(toy_ks2, tmp_path):
    record = evaluate("ks2", SpectrumUpstream(), data_root=toy_ks2, probe="linear", seeds=2, out_dir=tmp_path,
                      overrides={"max_steps": 40, "lr": 1e-2}, quiet=True)
    scores = [run["score"] for run in record["runs"]]
    assert [run["seed"] for run in record["runs"]] == [0, 1]
    assert record["score"] == pytest.approx(sum(scores) / 2, abs=1e-3)
    assert record["std"] == pytest.approx(abs(scores[0] - scores[1]) / 2, abs=1e-3)
    assert Path(record["results_path"]).parent.name == "ks2-test_spectrum-linear"
    assert record["score"] > 2 * 100 / 35  # above chance on the (noisy since toy v2) toy words


def test_bench_cache_runs_both_paths_and_reports_equal_accuracy(toy_ks2, capsys):
    """The benchmark script trains the same probe from cached and from live features (same seed, same steps)."""
    assert main(["bench", "cache", "--data", str(toy_ks2), "--steps", "4", "--eval-every", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "speed-up" in out and "accuracy gap 0.00 points" in out
    assert "upstream clip forwards: cached" in out  # the live path re-runs the upstream: its count is reported too


# ---------------------------------------------------------------------------------------------------- issue 14
def test_task_all_checks_every_dataset_before_running_any(toy_ks2, tmp_path, monkeypatch, capsys):
    """`--task all` used to run the first tasks (hours on real data) and only then fail on a missing dataset."""
    from test_tasks import make_audioset

    import maebench.downstream.evaluate as evaluate_module

    root = tmp_path / "data"
    root.mkdir()
    (root / "as20k").symlink_to(make_audioset(tmp_path), target_is_directory=True)  # the first task: fine
    (root / "ks2").symlink_to(toy_ks2, target_is_directory=True)
    (root / "sid").mkdir()  # present but empty
    ran = []

    def recorder(task, *args, **kwargs):
        ran.append(task)
        return {"task": task, "probe": {"name": "linear"}, "metric": "accuracy", "score": 1.0, "std": 0.0,
                "results_path": "unused"}

    monkeypatch.setattr(evaluate_module, "evaluate", recorder)
    assert main(["eval", "--task", "all", "--upstream", "mae_ast_patch:tiny", "--data", str(root),
                 "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert ran == [] and err.count("\n") == 1
    assert "nothing was run, the data of 4 task(s) failed its check" in err
    for task in ("esc50", "ks1", "sid", "er"):
        assert f"{task}: " in err
    assert str(root / "esc50") in err and "as20k:" not in err and "ks2:" not in err


def test_results_json_is_strict_json_even_with_a_nan_score(toy_ks2, tmp_path, monkeypatch):
    """Python writes NaN as the bare word NaN, which is not JSON (jq, JavaScript and strict parsers reject it)."""
    import maebench.downstream.evaluate as evaluate_module
    from maebench.downstream.probes import ProbeResult

    monkeypatch.setattr(evaluate_module, "run_probe", lambda probe, *args, **kwargs: ProbeResult(
        probe, float("nan"), float("inf"), {"weights": [0.5, float("nan")]}, {}, {"extract_s": 0.0}))
    record = evaluate("ks2", SpectrumUpstream(), data_root=toy_ks2, probe="linear", out_dir=tmp_path, quiet=True)

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    written = json.loads(Path(record["results_path"]).read_text(), parse_constant=refuse)
    assert written["score"] is None and written["runs"][0]["dev_score"] is None
    assert written["layers"]["weights"] == [0.5, None]
