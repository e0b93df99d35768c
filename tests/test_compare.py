"""`maebench compare`: tables from hand-made results.json files, Markdown/CSV contents, the PNG, the paper rows."""

from __future__ import annotations

import builtins
import csv
import io
import json
from pathlib import Path

import pytest

from maebench.cli import main as cli_main
from maebench.compare import PAPER, build_comparison, find_results, render_csv, render_markdown, write_outputs
from maebench.errors import MaebenchError


def write_result(root: Path, name: str, task: str, score: float, std: float | None = 0.5, *,
                 upstream: str = "mae_ast_patch:base", family: str = "mae_ast", path: str | None = None,
                 probe: str = "linear", created: str = "2026-01-01T00:00:00", toy: bool = False,
                 protocol: dict | None = None) -> Path:
    """One results.json in the CONTRACTS format."""
    directory = root / name
    directory.mkdir(parents=True)
    record = {
        "maebench_results": 1, "task": task, "metric": "mAP" if task == "as20k" else "accuracy",
        "score": score, "std": std, "runs": [{"fold": "default", "seed": 0, "score": score}],
        "upstream": {"name": upstream, "path": path, "family": family, "config_hash": "c", "fingerprint": None},
        "probe": {"name": probe, "hparams": {}}, "layers": {"weights": [0.5, 0.5]},
        "data": {"root": None, "toy": toy}, "timings": {"total_s": 1.0}, "versions": {"maebench": "0.1.0"},
        "created": created,
    }
    if protocol is not None:
        record["protocol"] = protocol
    (directory / "results.json").write_text(json.dumps(record))
    return directory / "results.json"


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    write_result(root, "a", "ks2", 97.1, 0.3)
    write_result(root, "b", "esc50", 85.0, 1.25)
    write_result(root, "c", "ks2", 95.0, 0.2, created="2025-01-01T00:00:00")  # older duplicate: ignored
    write_result(root, "d", "ks2", 96.5, 0.1, upstream="ssast_frame:base", family="ssast")
    write_result(root, "e", "sid", 61.0, None, upstream="ssast_frame:base", family="ssast")
    return root


def test_table_values_and_inferred_references(results_dir):
    comparison = build_comparison(find_results([results_dir]))
    assert comparison.tasks == ["esc50", "ks2", "sid"]  # paper column order
    mae, ssast = comparison.rows
    assert mae.label == "mae_ast_patch:base" and mae.reference is PAPER["mae_ast_patch"]
    assert mae.results["ks2"].score == 97.1  # the newest of the two ks2 results
    assert mae.delta("ks2") == pytest.approx(97.1 - 97.9) and mae.delta("esc50") == pytest.approx(85.0 - 90.0)
    assert mae.delta("sid") is None  # no result, and no paper number for 12-layer MAE-AST Patch SID
    assert ssast.reference is PAPER["ssast_frame"]
    assert ssast.delta("sid") == pytest.approx(61.0 - 80.8)
    assert [ref.key for ref in comparison.references] == ["ssast_frame", "mae_ast_patch"]


def test_markdown_and_csv_contents(results_dir):
    comparison = build_comparison(find_results([results_dir]))
    markdown = render_markdown(comparison)
    lines = markdown.splitlines()
    assert lines[0] == "| upstream | ESC-50 | KS2 | SID |"
    assert "| mae_ast_patch:base | 85.0 ± 1.2 | 97.1 ± 0.3 | – |" in lines
    assert "| Δ vs MAE-AST Patch 12L (paper) | -5.0 | -0.8 | – |" in lines
    assert "| ssast_frame:base | – | 96.5 ± 0.1 | 61.0 |" in lines
    assert "| Δ vs SSAST Base Frame-400 (paper) | – | -1.6 | -19.8 |" in lines
    assert "| SSAST Base Frame-400 (paper) | 85.9 | 98.1 | 80.8 |" in lines
    assert "fine-tuned" in markdown
    rows = list(csv.DictReader(io.StringIO(render_csv(comparison))))
    result = next(r for r in rows if r["kind"] == "result" and r["upstream"] == "mae_ast_patch:base")
    assert (result["ks2"], result["ks2_std"], result["esc50"], result["sid"]) == ("97.1", "0.3", "85", "")
    delta = next(r for r in rows if r["kind"] == "delta" and r["upstream"] == "ssast_frame:base")
    assert float(delta["sid"]) == pytest.approx(-19.8)
    paper = [r for r in rows if r["kind"] == "paper"]
    assert {r["reference"] for r in paper} == {"ssast_frame", "mae_ast_patch"}


@pytest.mark.parametrize("depth_name", ["depth", "encoder_layers"])  # encoder_layers: a 0.1.0 config.json
def test_reference_from_checkpoint_config_and_override(tmp_path, depth_name):
    run = tmp_path / "my_run"
    ckpt = run / "checkpoints" / "step_00000100"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text(json.dumps({"family": "mae_ast", "config": {"tokenizer": "frame",
                                                                                   depth_name: 6}}))
    write_result(tmp_path / "r", "x", "er", 55.0, upstream=str(run), path=str(ckpt))
    results = find_results([tmp_path / "r"])
    assert build_comparison(results).rows[0].reference is PAPER["mae_ast_frame_6"]
    assert build_comparison(results, reference="ssast_patch").rows[0].delta("er") == pytest.approx(55.0 - 59.6)
    with pytest.raises(MaebenchError, match="unknown reference 'nope'"):
        build_comparison(results, reference="nope")


def test_probes_and_toy_data_get_their_own_rows(tmp_path):
    write_result(tmp_path, "a", "ks2", 90.0, probe="linear")
    write_result(tmp_path, "b", "ks2", 92.0, probe="finetune")
    write_result(tmp_path, "c", "ks2", 50.0, probe="linear", toy=True)
    comparison = build_comparison(find_results([tmp_path]))
    labels = [row.label for row in comparison.rows]
    assert labels == ["mae_ast_patch:base (linear)", "mae_ast_patch:base (finetune)",
                      "mae_ast_patch:base (linear) [toy data]"]
    from rich.console import Console

    from maebench.compare import render_rich

    console = Console(file=io.StringIO(), width=200)
    render_rich(comparison, console)
    assert "mae_ast_patch:base (linear) [toy data]" in console.file.getvalue()  # not swallowed as markup


def test_png_written_and_missing_matplotlib_is_explained(results_dir, tmp_path, monkeypatch):
    comparison = build_comparison(find_results([results_dir]))
    written = write_outputs(comparison, tmp_path / "out")
    assert written["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert written["png"].stat().st_size > 5000

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    written = write_outputs(comparison, tmp_path / "out2")
    assert "png" not in written and "pip install 'maebench[plot]'" in written["png_skipped"]
    assert (tmp_path / "out2" / "compare.md").is_file() and not (tmp_path / "out2" / "compare.png").exists()


def test_cli_writes_the_three_files(results_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert cli_main(["compare", str(results_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "97.1 ± 0.3" in printed and "MAE-AST Patch 12L (paper)" in printed
    assert {p.name for p in out.iterdir()} == {"compare.md", "compare.csv", "compare.png"}
    assert "| mae_ast_patch:base | 85.0 ± 1.2 | 97.1 ± 0.3 | – |" in (out / "compare.md").read_text()


def test_cli_bad_input_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad" / "results.json"
    bad.parent.mkdir()
    bad.write_text('{"maebench_results": 1, "task": "ks2", "metric": "accuracy", "score": "high", "upstream": {}}')
    assert cli_main(["compare", str(tmp_path / "bad"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "score must be a number" in err and str(bad) in err and "\n" not in err
    assert cli_main(["compare", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["compare", "--task", "ks2"]) == 2


def test_cli_runs_only_the_missing_evaluations(results_dir, tmp_path, monkeypatch, capsys):
    import inspect

    import maebench.downstream.evaluate as evaluate_module

    real_signature = inspect.signature(evaluate_module.evaluate)
    calls = []

    def fake_evaluate(task, spec, **kwargs):
        real_signature.bind(task, spec, **kwargs)  # the call must fit the real evaluate()
        calls.append((task, spec, kwargs["probe"], Path(kwargs["out_dir"])))
        out_dir, probe = Path(kwargs["out_dir"]), kwargs["probe"]
        path = write_result(Path(out_dir), f"{task}-{spec}", task, 42.0, upstream=spec, probe=probe)
        return {"results_path": str(path)}

    monkeypatch.setattr(evaluate_module, "evaluate", fake_evaluate)
    out = tmp_path / "cmp"
    code = cli_main(["compare", str(results_dir), "--upstream", "mae_ast_patch:base", "--upstream",
                     "mae_ast_frame:tiny", "--task", "ks2", "--task", "esc50", "--out", str(out), "--no-png"])
    assert code == 0
    # mae_ast_patch:base already has linear ks2 + esc50 results; only the new upstream is evaluated
    assert sorted(c[:3] for c in calls) == [("esc50", "mae_ast_frame:tiny", "linear"),
                                            ("ks2", "mae_ast_frame:tiny", "linear")]
    assert all(c[3] == out / "evals" for c in calls)
    markdown = (out / "compare.md").read_text()
    assert "| mae_ast_frame:tiny | 42.0 ± 0.5 | 42.0 ± 0.5 |" in markdown


def _protocol(task: str, family: str, probe: str = "finetune", **changes) -> dict:
    """The "protocol" record `maebench eval` writes for the family's default settings, with `changes`."""
    from maebench.downstream.probes.protocol import protocol_fields
    from maebench.downstream.tasks.probe_settings import probe_settings

    fields = protocol_fields(probe, probe_settings(task, False, family)[probe])
    return {"probe": probe, "family": family, "fields": {**fields, **changes}}


def test_every_cell_names_its_probe_protocol(tmp_path):
    """Numbers of the four probes on one task are never side by side unmarked: each row names its probe and each
    cell's protocol line starts with it (also for results written before protocols were recorded)."""
    for probe in ("linear", "logreg", "hear"):
        write_result(tmp_path, probe, "esc50", 80.0, upstream="mae_ast_patch:base", family="mae_ast", probe=probe,
                     protocol={"probe": probe, "family": "mae_ast_patch", "fields": {"probe": probe}})
    write_result(tmp_path, "ft", "esc50", 88.0, upstream="mae_ast_patch:base", family="mae_ast", probe="finetune")
    lines = render_markdown(build_comparison(find_results([tmp_path]))).splitlines()
    for probe in ("linear", "logreg", "hear", "finetune"):
        (at,) = [i for i, line in enumerate(lines) if line.startswith(f"| mae_ast_patch:base ({probe}) | ")]
        assert lines[at + 1].startswith(f"| protocol | {probe}")


def test_cells_show_their_protocol_and_differences_from_the_paper_are_marked(tmp_path, capsys):
    """Matching cells plain, differing cells marked † with their differences listed, 0.1.0 cells 'unrecorded';
    --strict refuses the differing ones."""
    write_result(tmp_path, "a", "esc50", 88.0, upstream="ssast_patch:base", family="ssast", probe="finetune",
                 protocol=_protocol("esc50", "ssast_patch"))
    write_result(tmp_path, "b", "ks1", 90.0, upstream="ssast_patch:base", family="ssast", probe="finetune",
                 protocol=_protocol("ks1", "ssast_patch", input_geometry="model", target_length=None))
    write_result(tmp_path, "c", "ks2", 97.0, upstream="ssast_patch:base", family="ssast", probe="finetune")
    comparison = build_comparison(find_results([tmp_path]))
    (row,) = comparison.rows
    # issue 20: maebench's ESC-50 default keeps the last epoch, the paper's number picks an epoch on test
    assert row.paper_differences("esc50") == ["selection: last epoch (paper: best mean test epoch)"]
    assert row.paper_differences("ks2") is None
    assert row.paper_differences("ks1") == ["input_geometry: model (paper: global)",
                                            "target_length: None (paper: 100)"]
    lines = render_markdown(comparison).splitlines()
    assert "| ssast_patch:base | 88.0 ± 0.5 † | 97.0 ± 0.5 | 90.0 ± 0.5 † |" in lines
    assert ("| protocol | finetune ssast global 512f no dev | finetune (protocol unrecorded) "
            "| finetune superb tokens |") in lines
    assert any(line.startswith("- † ssast_patch:base KS1: input_geometry: model (paper: global)") for line in lines)
    rows = list(csv.DictReader(io.StringIO(render_csv(comparison))))
    protocol_row = next(r for r in rows if r["kind"] == "protocol")
    assert protocol_row["esc50_std"].startswith("differs: selection")
    assert protocol_row["ks2"] == "finetune (protocol unrecorded)"
    assert protocol_row["ks1_std"].startswith("differs: input_geometry")
    with pytest.raises(MaebenchError, match="cells whose protocol differs from the paper's: ssast_patch:base ESC-50"):
        build_comparison(find_results([tmp_path]), strict=True)
    assert cli_main(["compare", str(tmp_path), "--strict", "--no-png", "--out", str(tmp_path / "out")]) != 0
    assert "ssast_patch:base KS1" in capsys.readouterr().err


def _with(path: Path, *, root: str | None, hparams: dict) -> None:
    record = json.loads(path.read_text())
    record["data"]["root"], record["probe"]["hparams"] = root, hparams
    path.write_text(json.dumps(record))


def test_merging_results_from_different_data_or_settings_is_said(tmp_path, capsys):
    """Issue 14: a column (or a cell's newest result) put side by side numbers measured on different datasets or
    with different probe settings, and nothing said so."""
    root = tmp_path / "runs"
    _with(write_result(root, "a", "ks2", 97.1, upstream="mae_ast_patch:base"), root="/data/ks2",
          hparams={"max_steps": 200_000, "lr": 1e-4})
    _with(write_result(root, "b", "ks2", 96.5, upstream="ssast_frame:base", family="ssast"), root="/tmp/ks2-small",
          hparams={"max_steps": 50, "lr": 1e-4})
    _with(write_result(root, "c", "ks2", 90.0, upstream="mae_ast_patch:base", created="2025-01-01T00:00:00"),
          root="/data/ks2", hparams={"max_steps": 1000, "lr": 1e-4})
    _with(write_result(root, "d", "esc50", 80.0, upstream="mae_ast_patch:base"), root="/data/esc50",
          hparams={"max_steps": 5000})
    _with(write_result(root, "e", "esc50", 81.0, upstream="ssast_frame:base", family="ssast"), root="/data/esc50",
          hparams={"max_steps": 5000})
    comparison = build_comparison(find_results([root]))
    assert comparison.notes == [
        "KS2 column (linear: mae_ast_patch:base, ssast_frame:base) merges results with different data roots "
        "(/data/ks2 vs /tmp/ks2-small); settings (max_steps: 200000 vs 50)",
        f"mae_ast_patch:base KS2: the newest of 2 results is shown ({root / 'a' / 'results.json'}); the others had "
        "different settings (max_steps: 200000 vs 1000)",
    ]  # ESC-50: same data root and settings, nothing to say
    markdown = render_markdown(comparison)
    assert "merges results with different data roots" in markdown and "the newest of 2 results" in markdown
    assert cli_main(["compare", str(root), "--out", str(tmp_path / "cmp"), "--no-png"]) == 0
    assert "max_steps: 200000 vs 50" in capsys.readouterr().out

    alike = tmp_path / "alike"  # the same data and settings everywhere: no note
    for name, upstream in (("a", "mae_ast_patch:base"), ("b", "ssast_frame:base")):
        _with(write_result(alike, name, "ks2", 95.0, upstream=upstream), root="/data/ks2", hparams={"lr": 1e-4})
    assert build_comparison(find_results([alike])).notes == []


def test_names_are_printed_whole_when_not_on_a_terminal(tmp_path, capsys):
    """Issue 14: piped output (not a terminal: rich assumes 80 columns) cut long upstream names to 'ma…'."""
    long_name = "runs/pretrain/mae_ast_patch_base_librispeech_960h_seed3/checkpoints/step_00400000"
    root = tmp_path / "runs"
    for i, task in enumerate(("as20k", "esc50", "ks2", "ks1", "sid", "er")):
        write_result(root, f"r{i}", task, 50.0 + i, upstream=long_name)
    assert cli_main(["compare", str(root), "--out", str(tmp_path / "cmp"), "--no-png"]) == 0
    printed = capsys.readouterr().out
    assert long_name in printed and "…" not in printed
    row = next(line for line in printed.splitlines() if long_name in line)
    assert all(score in row for score in ("50.0 ± 0.5", "55.0 ± 0.5"))  # the whole row on one line


def test_recorded_baselines_show_as_random_init_and_chance_lines(tmp_path):
    """results.json from `maebench eval` with a baseline: the row gets its init's score with the difference and
    noise, and the chance level; rows without them get no such lines."""
    root = tmp_path / "runs"
    path = write_result(root, "a", "ks2", 35.0, 0.0, upstream="runs/pretrain/x", family="mae_ast")
    record = json.loads(path.read_text())
    record["chance"] = {"score": 2.9, "per_fold": {"default": 2.9}, "definition": "majority class"}
    record["baseline"] = {"kind": "init", "score": 31.4, "std": 0.0, "difference": 3.6, "noise": 1.5,
                          "beats": True, "upstream": {"name": "runs/pretrain/x/init"}}
    path.write_text(json.dumps(record))
    write_result(root, "b", "esc50", 50.0, 1.0, upstream="runs/pretrain/x", family="mae_ast")  # no baselines
    write_result(root, "c", "ks2", 30.0, 0.0, upstream="ssast_frame:base", family="ssast")
    comparison = build_comparison(find_results([root]))
    lines = render_markdown(comparison).splitlines()
    assert "| random init (Δ ± noise) | – | 31.4 (+3.6 ± 1.5) |" in lines
    assert "| chance | – | 2.9 |" in lines
    assert sum(line.startswith("| random init") for line in lines) == 1  # the ssast row recorded none
    rows = list(csv.DictReader(io.StringIO(render_csv(comparison))))
    init = next(r for r in rows if r["kind"] == "init")
    assert (init["upstream"], init["ks2"], init["ks2_std"], init["esc50"]) == ("runs/pretrain/x", "31.4", "0", "")
    assert next(r for r in rows if r["kind"] == "chance")["ks2"] == "2.9"
