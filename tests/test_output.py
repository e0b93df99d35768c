"""Output a person can read wherever it lands: tables whole off a terminal and names whole on a narrow one, a
pipeline's own start/end lines (the stage's chatter in its log file), the latest-run pointer left alone by a
pipeline, and plain fresh / --resume messages.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from helpers import TINY_MODEL, write_tone_clips
from rich.console import Console
from test_compare import write_result
from test_pipeline import fake_eval  # noqa: F401  (the stand-in evaluation, a fixture)

from maebench.cli import main
from maebench.compare import build_comparison, find_results, render_rich
from maebench.paths import latest_pretrain_run, record_latest_pretrain_run

# upstream names that differ only in their last characters: cut or folded, the rows could not be told apart
NAMES = [f"runs/pretrain/mae_ast_patch-base-lr1e-4-400k-steps-seed{seed}" for seed in (0, 1)]


def _long_named_results(root: Path) -> None:
    for seed, name in enumerate(NAMES):
        for task, score in (("esc50", 85.25), ("ks2", 97.5), ("ks1", 95.75), ("sid", 61.5), ("er", 59.25)):
            write_result(root, f"{seed}-{task}", task, score + seed, 0.5, upstream=name)


def _table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line[:1] in "┏┃┡│└"]


def test_compare_off_a_terminal_is_written_whole_at_the_default_width(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    _long_named_results(tmp_path / "runs")
    assert main(["compare", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--no-png"]) == 0
    out = capsys.readouterr().out
    lines = _table_lines(out)
    assert len({len(line) for line in lines}) == 1, out  # every row as wide as the border: nothing cut
    assert len(lines[0]) > 80  # wider than the 80 columns a pipe is given: it was not squeezed into them
    for name, scores in zip(NAMES, (("85.2", "97.5", "61.5"), ("86.2", "98.5", "62.5")), strict=True):
        row = next(line for line in lines if name in line)  # the name whole, on one line, with its scores
        assert all(score in row for score in scores), row


def test_eval_summary_off_a_terminal_keeps_long_names_whole(capsys, monkeypatch):
    from maebench.downstream.evaluate import print_results_table

    monkeypatch.delenv("COLUMNS", raising=False)
    records = [{"task": "ks2", "upstream": {"name": name}, "probe": {"name": "logreg"}, "metric": "accuracy",
                "score": 90.0 + i, "std": 0.25, "runs": [{}, {}], "timings": {"total_s": 12.0}}
               for i, name in enumerate(NAMES)]
    print_results_table(records)
    lines = _table_lines(capsys.readouterr().out)
    assert len({len(line) for line in lines}) == 1
    for i, name in enumerate(NAMES):
        row = next(line for line in lines if name in line)
        assert f"{90.0 + i:.2f}" in row and "12.0s" in row


@pytest.mark.parametrize("width", [110, 40])
def test_on_a_narrow_terminal_the_names_stay_whole(tmp_path, width):
    """110 columns (the table needs 125): it fits by wrapping the score columns; 40, narrower than a name: still
    whole (the terminal wraps the long lines, no name is cut)."""
    _long_named_results(tmp_path / "runs")
    comparison = build_comparison(find_results([tmp_path / "runs"]))
    console = Console(file=io.StringIO(), force_terminal=True, width=width, color_system=None)
    render_rich(comparison, console)
    text = console.file.getvalue()
    assert all(name in text for name in NAMES), text
    assert "…" not in text
    if width == 110:
        assert max(len(line) for line in text.splitlines()) <= width
        assert "85.2 ±" in text and "97.5 ±" in text  # the scores wrapped, not cut


# ---------------------------------------------------------------------------------------------------- pipelines

STAGE = "mae_ast_with_a_rather_long_stage_name"
RECIPE = """\
pipeline: 1
pretrain:
  {stage}:
    data: {data}
    set: [model.name=mae_ast_patch, "model.overrides={{depth: 1, decoder_depth: 1}}", train.batch_size=2,
          train.log_every=1, train.ckpt_every=2, data.clip_seconds=0.5, data.num_workers=0]
    budget_seconds: 0.001   # 4 timed steps, then the 10-step floor
    calibration_steps: 4
{rest}
"""
EVALS = """\
evals:
  tasks: [ks2]
  probes: [logreg]
  upstreams: [{stage}, {stage}@init]
"""


@pytest.mark.usefixtures("fake_eval")
def test_a_pipeline_prints_its_stage_lines_keeps_the_child_log_and_leaves_the_latest_run(tmp_path, capsys,
                                                                                          monkeypatch):
    monkeypatch.setenv("MAEBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("COLUMNS", raising=False)
    mine = tmp_path / "my_own_pretraining"
    mine.mkdir()
    record_latest_pretrain_run(mine)
    data = write_tone_clips(tmp_path / "clips", count=8)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE.format(stage=STAGE, data=data, rest=EVALS.format(stage=STAGE)))
    run_dir = tmp_path / "run"
    assert main(["run", str(recipe), "--run-dir", str(run_dir)]) == 0
    captured = capsys.readouterr()
    out, both = captured.out, captured.out + captured.err
    key = f"pretrain/{STAGE}"
    assert f"{key}: started (mae_ast_patch:tiny, batch 2, 0.001 s budget)" in out
    assert f"{key}: done in " in out and "10 steps, loss " in out
    assert f"eval/{STAGE}@init/ks2/logreg: done in " in out and "accuracy 50.0 ± 1.0" in out
    for chatter in ("next:", "latest pretraining run", "resum", "calibrat", "nothing to do", "checkpoint:"):
        assert chatter not in both.lower(), chatter
    row = next(line for line in _table_lines(out) if f"{STAGE}@init" in line)  # the final table, whole
    assert "50.0 ± 1.0" in row

    entry = json.loads((run_dir / "manifest.json").read_text())["stages"][key]
    assert entry["log"] == f"pretrain/{STAGE}.log"
    child_log = (run_dir / entry["log"]).read_text()
    assert "done: step 10 (" in child_log  # the trainer's own summary went there
    assert latest_pretrain_run() == mine  # a pipeline does not move the pointer...

    again = tmp_path / "again.yaml"  # ...unless its recipe says so
    again.write_text(RECIPE.format(stage=STAGE, data=data, rest=f"set_latest: {STAGE}\ncompare: false\n"
                                   "report: false"))
    assert main(["run", str(again), "--run-dir", str(tmp_path / "run2")]) == 0
    assert latest_pretrain_run() == (tmp_path / "run2" / "pretrain" / STAGE).resolve()
    assert f"{key}: now the latest pretraining run" in capsys.readouterr().out


def test_fresh_runs_say_nothing_of_resuming_and_resume_on_a_fresh_directory_says_it_starts_fresh(tmp_path, capsys,
                                                                                                 monkeypatch):
    monkeypatch.setenv("MAEBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = write_tone_clips(tmp_path / "clips", count=4)

    def pretrain(run: str, steps: int = 2, *more: str) -> str:
        assert main(["pretrain", "--data", str(data), "--batch-size", "2", "--max-steps", str(steps), "--quiet",
                     "--set", TINY_MODEL, "--set", "data.clip_seconds=0.5", "--set", "data.num_workers=0",
                     "--run-dir", str(tmp_path / run), *more]) == 0
        return capsys.readouterr().out

    out = pretrain("fresh")
    assert "resum" not in out.lower() and "done: step 2 (2 this run" in out
    assert "it is now the latest pretraining run" in out  # a stand-alone run still moves the pointer, and says so

    out = pretrain("fresh_resume", 2, "--resume")
    assert "nothing to resume" in out and "starting a fresh run" in out and "resuming from" not in out

    out = pretrain("fresh", 3, "--resume")  # a real resume names what changed
    assert "resuming from" in out and "train.max_steps: 2 -> 3" in out


# ---------------------------------------------------------------------------------------------------- loss figure


def test_the_loss_curve_carries_training_seconds_across_a_resume_and_the_figure_plots_both_axes(tmp_path):
    """Seconds are the logging windows' durations (clips / clips_per_s) added up: 160/80 = 2, 160/40 = 4, then a
    resumed process (its elapsed_s starts again from 0) 160/160 = 1: 2, 6, 7 s."""
    from PIL import Image

    from maebench import report
    from maebench.pipeline import training_speed

    records = [(10, 2.0, 80.0, 2.0), (20, 1.5, 40.0, 6.0), (30, 1.25, 160.0, 1.0)]
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"step": step, "loss": loss, "clips": 160, "clips_per_s": rate, "elapsed_s": elapsed}) + "\n"
        for step, loss, rate, elapsed in records))
    curve = training_speed(tmp_path, batch_size=16)["loss_curve"]
    assert curve == [[10, 2.0, 2.0], [20, 1.5, 6.0], [30, 1.25, 7.0]]

    summary = {"loss_curves": {"mae_ast": curve, "ssast": [[5, 3.0, 4.0], [10, 2.5, 8.0]]}, "scores": []}
    (tmp_path / "timed").mkdir()
    report.write_figures(summary, tmp_path / "timed")
    old = {"loss_curves": {"mae_ast": [[10, 2.0], [20, 1.5]]}, "scores": []}  # a run from before seconds were kept
    (tmp_path / "old").mkdir()
    report.write_figures(old, tmp_path / "old")
    two_panels = Image.open(tmp_path / "timed" / "loss.png").size
    one_panel = Image.open(tmp_path / "old" / "loss.png").size
    assert two_panels[0] > 1.5 * one_panel[0] and two_panels[1] == one_panel[1]
