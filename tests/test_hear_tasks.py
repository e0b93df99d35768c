"""HEAR 2021 tasks (`--task hear:PATH`): the preprocessed folder format, hear-eval-kit's folds, the task's own
metric, the toy builder, `maebench data check/toy`, `maebench eval` and `maebench compare` with foreign upstreams."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import TOY_HEAR_MODULE, one_line_error, write_toy_hear_module, write_wav

from maebench.cli import main
from maebench.downstream.datasets import check_layout, load_task
from maebench.downstream.hear_toy import build_hear_toy
from maebench.errors import MaebenchError


def write_task(root: Path, meta: dict, splits: dict[str, dict], vocabulary: list[str]) -> Path:
    """A HEAR task folder written by hand from the format's description (not by the code under test)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "task_metadata.json").write_text(json.dumps(meta))
    (root / "labelvocabulary.csv").write_text("idx,label\n" + "".join(f"{i},{v}\n" for i, v in enumerate(vocabulary)))
    for split, labels in splits.items():
        (root / f"{split}.json").write_text(json.dumps(labels))
        for name in labels:
            write_wav(root / "16000" / split / name, np.full(1600, 0.1, dtype=np.float32))
    return root


SCENE = {"task_name": "handmade", "embedding_type": "scene", "prediction_type": "multiclass",
         "split_mode": "trainvaltest", "splits": ["train", "valid", "test"], "evaluation": ["top1_acc", "mAP"]}


@pytest.fixture
def handmade(tmp_path) -> Path:
    return write_task(tmp_path / "handmade", SCENE, {
        "train": {"a.wav": ["dog"], "b.wav": ["cat"], "c.wav": [3]},  # HEAR labels may be numbers
        "valid": {"d.wav": ["cat"]}, "test": {"e.wav": ["dog"]},
    }, ["cat", "dog", "bird", "3"])


def test_reads_the_format_as_written(handmade):
    task = load_task(f"hear:{handmade}")
    assert task.name == "hear-handmade" and task.metric == "accuracy" and not task.multilabel
    assert task.class_names == ["cat", "dog", "bird", "3"] and not task.is_toy
    fold = task.folds[0]
    assert [(ex.key, ex.label) for ex in fold.train] == [("train/a.wav", 1), ("train/b.wav", 0), ("train/c.wav", 3)]
    assert [ex.key for ex in fold.dev] == ["valid/d.wav"] and [ex.key for ex in fold.test] == ["test/e.wav"]
    assert fold.train[0].path == handmade / "16000" / "train" / "a.wav"
    assert task.probe_defaults.keys() == {"linear", "logreg"}


def test_kfold_follows_hear_eval_kit(tmp_path):
    """Sorted folds; test fold i, dev fold i + 1 (cyclically), train the others (hear-eval-kit
    data_splits_from_folds)."""
    folds = {f"fold0{k}": {f"{k}.wav": ["x" if k % 2 else "y"]} for k in (2, 0, 1, 3)}
    root = write_task(tmp_path / "k", {**SCENE, "split_mode": "new_split_kfold", "splits": list(folds)}, folds,
                      ["x", "y"])
    task = load_task(f"hear:{root}")
    got = [(f.name, [e.key for e in f.dev], sorted(e.key for e in f.train)) for f in task.folds]
    assert got == [
        ("fold00", ["fold01/1.wav"], ["fold02/2.wav", "fold03/3.wav"]),
        ("fold01", ["fold02/2.wav"], ["fold00/0.wav", "fold03/3.wav"]),
        ("fold02", ["fold03/3.wav"], ["fold00/0.wav", "fold01/1.wav"]),
        ("fold03", ["fold00/0.wav"], ["fold01/1.wav", "fold02/2.wav"]),
    ]


def test_multilabel_is_scored_by_map(tmp_path):
    root = write_task(tmp_path / "ml", {**SCENE, "prediction_type": "multilabel", "evaluation": ["mAP", "d_prime"]},
                      {"train": {"a.wav": ["b", "a"], "b.wav": []}, "valid": {"c.wav": ["a"]},
                       "test": {"d.wav": ["b"]}}, ["a", "b"])
    task = load_task(f"hear:{root}")
    assert task.metric == "mAP" and task.multilabel
    assert [ex.label for ex in task.folds[0].train] == [(0, 1), ()]


@pytest.mark.parametrize("change, needles", [
    ({"embedding_type": "event", "evaluation": ["event_onset_100ms_fms"]},
     ("handmade", "event_onset_100ms_fms", "not supported")),
    ({"embedding_type": "event", "evaluation": ["event_onset_200ms_fms"]},  # labels are not events
     ("train.json", "a.wav", "start")),
    ({"evaluation": ["chroma_acc"]}, ("chroma_acc", "not yet supported")),
    ({"split_mode": "by_speaker"}, ("split_mode", "by_speaker")),
])
def test_unsupported_tasks_are_named(handmade, change, needles):
    (handmade / "task_metadata.json").write_text(json.dumps({**SCENE, **change}))
    with pytest.raises(MaebenchError) as err:
        load_task(f"hear:{handmade}")
    one_line_error(err, *needles)


def test_broken_folders_give_one_line_errors(handmade, tmp_path):
    with pytest.raises(MaebenchError) as err:
        load_task(f"hear:{tmp_path / 'nowhere'}")
    one_line_error(err, "nowhere", "does not exist")
    (handmade / "train.json").write_text(json.dumps({"a.wav": ["dog", "cat"]}))
    with pytest.raises(MaebenchError) as err:
        load_task(f"hear:{handmade}")
    one_line_error(err, "train.json", "a.wav", "multiclass")
    (handmade / "train.json").write_text(json.dumps({"a.wav": ["wolf"]}))
    with pytest.raises(MaebenchError) as err:
        load_task(f"hear:{handmade}")
    one_line_error(err, "'wolf'", "labelvocabulary.csv")
    (handmade / "train.json").write_text(json.dumps({"gone.wav": ["dog"]}))
    with pytest.raises(MaebenchError) as err:
        check_layout(f"hear:{handmade}")
    one_line_error(err, "gone.wav")
    (handmade / "labelvocabulary.csv").unlink()
    with pytest.raises(MaebenchError) as err:
        load_task(f"hear:{handmade}")
    one_line_error(err, "labelvocabulary.csv")


def test_toy_builder_variants(tmp_path):
    plain = load_task(f"hear:{build_hear_toy(tmp_path / 'a')}")
    assert plain.is_toy and plain.metric == "accuracy" and len(plain.folds) == 1
    assert [len(s) for s in plain.folds[0].splits().values()] == [48, 18, 18]
    multi = load_task(f"hear:{build_hear_toy(tmp_path / 'b', multilabel=True, folds=4)}")
    assert multi.metric == "mAP" and len(multi.folds) == 4
    assert any(len(ex.label) == 2 for ex in multi.examples())
    assert len({ex.key for f in multi.folds for ex in f.test}) == len(multi.examples())  # each clip tested once


def test_cli_toy_check_and_eval(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(["data", "toy", "--task", "hear", "-o", str(out)]) == 0
    task = f"hear:{out / 'hear'}"
    assert main(["data", "check", "--task", task, "--deep"]) == 0
    assert "layout OK" in capsys.readouterr().out
    assert main(["data", "check", "--task", f"hear:{out / 'hear_events'}", "--deep"]) == 0  # the event task
    assert "layout OK" in capsys.readouterr().out
    runs = tmp_path / "runs"
    for probe in ("logreg", "linear"):
        assert main(["eval", "--task", task, "--upstream", "mae_ast_frame:tiny", "--probe", probe,
                     "--out", str(runs), "--quiet", "--set", "max_steps=100" if probe == "linear" else "Cs=[1.0]"]) == 0
    records = [json.loads(p.read_text()) for p in sorted(runs.glob("*/results.json"))]
    assert [(r["task"], r["metric"], r["probe"]["name"]) for r in records] == [
        ("hear-toy_sounds", "accuracy", "linear"), ("hear-toy_sounds", "accuracy", "logreg")]
    assert all(0 <= r["score"] <= 100 for r in records)
    assert main(["eval", "--task", task, "--upstream", "mae_ast_frame:tiny", "--probe", "finetune"]) == 2
    assert "frozen probes" in capsys.readouterr().err
    assert main(["data", "toy", "--task", "hear", "-o", str(out)]) == 2  # an existing toy needs --overwrite


@pytest.mark.slow
def test_compare_renders_foreign_upstreams_and_hear_tasks(tmp_path, monkeypatch, capsys):
    """One table: a maebench preset and a HEAR module on toy KS2 and the toy HEAR task; a second compare reuses
    every result (nothing re-evaluated)."""
    pytest.importorskip("sklearn")
    monkeypatch.setenv("MAEBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(write_toy_hear_module(tmp_path / "mods")))
    monkeypatch.delitem(sys.modules, TOY_HEAR_MODULE, raising=False)
    hear_task = build_hear_toy(tmp_path / "hear")
    args = ["compare", "--upstream", "mae_ast_frame:tiny", "--upstream", f"hear:{TOY_HEAR_MODULE}",
            "--task", "ks2", "--task", f"hear:{hear_task}", "--probe", "logreg", "--out", str(tmp_path / "cmp"),
            "--no-png", "--quiet"]
    assert main(args) == 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "hear-toy_sounds" in table and "KS2" in table and f"hear:{TOY_HEAR_MODULE}" in table
    evals = sorted((tmp_path / "cmp" / "evals").glob("*/results.json"))
    assert len(evals) == 4
    capsys.readouterr()
    assert main([*args[:-1], str(tmp_path / "cmp"), "--quiet"]) == 0  # results dir given: all four found
    assert len(sorted((tmp_path / "cmp" / "evals").glob("*/results.json"))) == 4
