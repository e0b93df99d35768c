"""The `hear` probe (hear-eval-kit's protocol): its MLP, grid order, early stopping and grid reuse on hand-worked
data; the toy HEAR event task end to end; and, when hear-eval-kit is installed, both tools on the same
embeddings."""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_line_error, one_thread  # noqa: F401 (fixture)

from maebench.cli import main
from maebench.downstream.datasets import load_task
from maebench.downstream.hear_toy import build_hear_event_toy, build_hear_toy
from maebench.downstream.probes import run_probe
from maebench.downstream.probes.hear_mlp import (
    HearData,
    HearSplit,
    grid_confs,
    hear_mlp,
    score_split,
    train_grid_point,
)
from maebench.downstream.probes.settings import HearSettings
from maebench.errors import MaebenchError

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = {"hidden_dim": "64", "max_epochs": "30", "grid_points": "2", "lr": "1e-2,1e-3", "hidden_layers": "1",
         "initialization": "xavier_uniform"}  # a CPU-sized grid


def test_default_grid_is_hear_eval_kits():
    confs = grid_confs(HearSettings())
    assert len(confs) == 8  # 8 of the 16 points of 2 depths x 2 initialisations x 4 learning rates
    assert len({json.dumps(c, sort_keys=True) for c in confs}) == 8
    assert {c["hidden_dim"] for c in confs} == {1024} and {c["dropout"] for c in confs} == {0.1}
    assert {c["lr"] for c in confs} <= {3.2e-3, 1e-3, 3.2e-4, 1e-4}
    everything = grid_confs(HearSettings(grid_points=100))
    assert len(everything) == 16


def test_grid_points_are_the_ones_hear_eval_kit_tries():
    """hear-eval-kit: seed_everything(42), ParameterGrid(PARAM_GRID), random.shuffle, the first 8 (runner.py)."""
    tp = pytest.importorskip("heareval.predictions.task_predictions")
    import random

    from sklearn.model_selection import ParameterGrid

    random.seed(42)
    theirs = list(ParameterGrid(tp.PARAM_GRID))
    random.shuffle(theirs)
    picked = [(c["hidden_layers"], c["hidden_dim"], c["dropout"], c["lr"], c["initialization"].__name__.rstrip("_"))
              for c in theirs[:8]]
    ours = [(c["hidden_layers"], c["hidden_dim"], c["dropout"], c["lr"], c["initialization"])
            for c in grid_confs(HearSettings())]
    assert ours == picked


def test_mlp_blocks_and_initialisation_gains():
    torch.manual_seed(0)
    conf = {"hidden_layers": 2, "hidden_dim": 512, "dropout": 0.1, "initialization": "xavier_uniform", "lr": 1e-3}
    model = hear_mlp(256, 10, conf)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Linear", "BatchNorm1d", "Dropout", "ReLU"] * 2 + ["Linear"]
    # xavier uniform bound = gain * sqrt(6 / (fan_in + fan_out)); gain 1 for the first layer (nothing known about
    # the embedding's activation), sqrt(2) (ReLU) for those after a ReLU
    for layer, fan_in, fan_out, gain in ((model[0], 256, 512, 1.0), (model[4], 512, 512, math.sqrt(2)),
                                          (model[8], 512, 10, math.sqrt(2))):
        bound = gain * math.sqrt(6 / (fan_in + fan_out))
        top = layer.weight.abs().max().item()
        assert 0.95 * bound < top <= bound
    assert model[2].p == 0.1


def _separable(n_per_class: int, seed: int) -> HearSplit:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * n_per_class, 8, generator=g)
    labels = torch.arange(2).repeat_interleave(n_per_class)
    x[:, 0] += 6.0 * (2 * labels - 1)  # classes 12 standard deviations apart along one axis
    return HearSplit(x, torch.nn.functional.one_hot(labels, 2).float(), labels.numpy())


def test_early_stopping_on_a_separable_problem_is_predictable():
    data = HearData(_separable(20, 0), _separable(10, 1), _separable(10, 2), False, "accuracy", 2)
    settings = HearSettings(max_epochs=100, check_every=10, patience=2)
    conf = {"hidden_layers": 1, "hidden_dim": 16, "dropout": 0.1, "initialization": "xavier_uniform", "lr": 5e-2}
    run = train_grid_point(conf, data, settings, seed=0)
    # 100% at the first check (epoch 10) can never be strictly beaten: checks at 20 and 30 wait, then it stops
    assert run.dev_score == 100.0 and run.epoch == 10 and run.epochs_run == 30
    assert score_split(run.model, data.test, data, settings)[0] == 100.0
    # patience counts checks, not epochs
    run = train_grid_point(conf, data, HearSettings(max_epochs=100, check_every=10, patience=3), seed=0)
    assert (run.epoch, run.epochs_run) == (10, 40)
    # max_epochs cuts a run short of its patience
    run = train_grid_point(conf, data, HearSettings(max_epochs=25, check_every=10, patience=3), seed=0)
    assert (run.epoch, run.epochs_run) == (10, 25)


def test_grid_is_picked_on_the_first_fold_and_reused(tmp_path):
    root = build_hear_toy(tmp_path / "k", folds=3)
    task = load_task(f"hear:{root}")
    from maebench.upstream import load

    torch.manual_seed(0)
    upstream = load("mae_ast_frame:tiny")
    # lr 1e-7 cannot move from a random start in 12 epochs; lr 1e-2 can: the grid must pick 1e-2 on fold 0
    settings = HearSettings(hidden_dim=(64,), hidden_layers=(1,), initialization=("xavier_uniform",),
                            lr=(1e-7, 1e-2), grid_points=2, grid_seed=0, max_epochs=12, check_every=3, patience=5)
    results = [run_probe("hear", upstream, task, fold, settings=settings) for fold in task.folds]
    grids = [r.details["grid"] for r in results]
    assert grids[0] == grids[1] == grids[2]  # searched once, on the first fold
    assert {row["lr"] for row in grids[0]} == {1e-7, 1e-2}
    best = max(grids[0], key=lambda row: row["dev"])
    assert best["lr"] == 1e-2
    assert all(r.hparams["selected"]["lr"] == 1e-2 for r in results)
    # the first fold's model is the grid point's own
    assert results[0].dev_score == pytest.approx(best["dev"], abs=1e-4)
    assert all(0.0 <= r.score <= 100.0 for r in results)


def test_perfect_frame_embeddings_give_perfect_events():
    """Frames whose embedding is their target (plus noise) -> the probe recovers every event within the collar."""
    from maebench.downstream.event_metrics import frame_targets

    rng = np.random.default_rng(0)

    def split(count: int, prefix: str) -> HearSplit:
        xs, ys, files, times, events = [], [], [], [], {}
        stamps = np.arange(200) * 20.0 + 10.0
        for i in range(count):
            start = float(rng.uniform(100, 2000))
            events[f"{prefix}{i}"] = [{"label": int(rng.integers(2)), "start": start, "end": start + 800.0}]
            target = frame_targets(events[f"{prefix}{i}"], stamps, 2)
            xs.append(np.concatenate([target, rng.normal(0, 0.05, (200, 6))], axis=1).astype(np.float32))
            ys.append(target)
            files += [f"{prefix}{i}"] * 200
            times.append(stamps)
        return HearSplit(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)), None, files,
                         np.concatenate(times), events)

    data = HearData(split(12, "tr"), split(4, "va"), split(4, "te"), True, "event_onset_200ms_fms", 2)
    settings = HearSettings(max_epochs=60, check_every=3, patience=5)
    conf = {"hidden_layers": 1, "hidden_dim": 32, "dropout": 0.1, "initialization": "xavier_normal", "lr": 1e-2}
    run = train_grid_point(conf, data, settings, seed=0)
    assert run.postprocessing in ({"median_filter_ms": 250.0, "min_duration_ms": 125.0},
                                  {"median_filter_ms": 250.0, "min_duration_ms": 250.0})
    assert score_split(run.model, data.test, data, settings, run.postprocessing)[0] == 100.0


def test_event_task_end_to_end(tmp_path, capsys):
    root = build_hear_event_toy(tmp_path / "ev")
    task = load_task(f"hear:{root}")
    assert task.metric == "event_onset_200ms_fms" and task.multilabel and task.events
    first = task.folds[0].train[0]
    meta = json.loads((root / "train.json").read_text())[first.path.name]
    assert [e["start"] for e in task.events[first.key]] == [e["start"] for e in meta]
    # the frozen utterance probes cannot score events: a one-line error, not a crash
    with pytest.raises(MaebenchError) as err:
        run_probe("linear", None, task, task.folds[0])
    one_line_error(err, "event", "--probe hear")
    sets = [x for key, value in SMALL.items() for x in ("--set", f"{key}={value}")]
    assert main(["eval", "--task", f"hear:{root}", "--upstream", "mae_ast_frame:tiny", "--probe", "hear",
                 "--out", str(tmp_path / "runs"), *sets]) == 0
    record = json.loads(next((tmp_path / "runs").glob("*/results.json")).read_text())
    assert record["metric"] == "event_onset_200ms_fms" and 0.0 <= record["score"] <= 100.0
    assert record["probe"]["name"] == "hear" and record["probe"]["hparams"]["max_epochs"] == 30
    (run,) = record["runs"]
    assert run["selected"]["lr"] in (1e-2, 1e-3) and run["postprocessing"]["median_filter_ms"] == 250.0
    assert set(run["test_scores"]) == {"event_onset_200ms_fms", "event_onset_50ms_fms",
                                       "event_onset_offset_50ms_20perc_fms", "segment_1s_er"}
    assert run["test_scores"]["event_onset_200ms_fms"] == pytest.approx(record["score"], abs=1e-3)


def test_event_tasks_use_a_hear_modules_timestamp_embeddings(tmp_path, monkeypatch):
    from helpers import TOY_HEAR_MODULE, write_toy_hear_module

    from maebench.downstream.frame_features import frame_timestamps_ms
    from maebench.downstream.probes.hear_mlp import timestamp_upstream
    from maebench.upstream import load

    monkeypatch.syspath_prepend(str(write_toy_hear_module(tmp_path / "mods")))
    scene = load(f"hear:{TOY_HEAR_MODULE}")
    frames = timestamp_upstream(scene)
    assert scene.embedding == "scene" and frames.embedding == "timestamp"
    assert frames.downsample_rate < scene.downsample_rate
    timestamped = load(f"hear:{TOY_HEAR_MODULE}", embedding="timestamp")
    assert timestamp_upstream(timestamped) is timestamped
    # frame times: centres of the hops, the module's own timestamps for this toy module
    hop_ms = 1000.0 * frames.downsample_rate / 16000
    assert frame_timestamps_ms(frames, 3).tolist() == pytest.approx([hop_ms / 2, 1.5 * hop_ms, 2.5 * hop_ms])


# ---- hear-eval-kit itself, on the same embeddings (only where it is installed) --------------------------------


def _write_heareval_embeddings(task, upstream, out: Path) -> None:
    """hear-eval-kit's embedding folder (task_embeddings.py memmap_embeddings) of the scene embeddings maebench
    feeds its own probe: the mean over layers of the cached masked-mean features."""
    import shutil

    from maebench.downstream.feature_cache import cached_features

    out.mkdir(parents=True)
    for name in ("task_metadata.json", "labelvocabulary.csv"):
        shutil.copy(Path(task.root) / name, out / name)
    for fold in task.folds:
        features = cached_features(upstream, task, fold.test)
        emb = np.asarray(features.features, dtype=np.float32).mean(axis=1)
        memmap = np.memmap(out / f"{fold.name}.embeddings.npy", dtype=np.float32, mode="w+", shape=emb.shape)
        memmap[:] = emb
        memmap.flush()
        (out / f"{fold.name}.embedding-dimensions.json").write_text(json.dumps(list(emb.shape)))
        labels = [[task.class_names[c] for c in (ex.label if task.multilabel else [ex.label])] for ex in fold.test]
        with open(out / f"{fold.name}.target-labels.pkl", "wb") as handle:
            pickle.dump(labels, handle)


def test_agrees_with_hear_eval_kit_on_the_same_embeddings(tmp_path, monkeypatch):
    """Same toy 5-fold task, same embeddings: both tools' mean test accuracy within the fold noise. The CPU grid
    is reduced; MAEBENCH_HEAR_FULL_GRID=1 runs hear-eval-kit's default grid in both."""
    tp = pytest.importorskip("heareval.predictions.task_predictions")
    import logging

    from maebench.downstream.evaluate import evaluate
    from maebench.upstream import load

    full = os.environ.get("MAEBENCH_HEAR_FULL_GRID") == "1"
    if not full:  # the same reduction in both tools
        monkeypatch.setitem(tp.PARAM_GRID, "hidden_dim", [64])
        monkeypatch.setitem(tp.PARAM_GRID, "max_epochs", [60])
        monkeypatch.setitem(tp.PARAM_GRID, "hidden_layers", [1])
    overrides = {} if full else {"hidden_dim": "64", "max_epochs": "60", "hidden_layers": "1"}
    root = build_hear_toy(tmp_path / "task", folds=5)
    task = load_task(f"hear:{root}")
    torch.manual_seed(0)
    upstream = load("mae_ast_frame:tiny")
    ours = evaluate(f"hear:{root}", upstream, probe="hear", overrides=overrides, quiet=True,
                    out_dir=tmp_path / "runs", device="cpu")
    embeddings = tmp_path / "embeddings"
    _write_heareval_embeddings(task, upstream, embeddings)
    monkeypatch.chdir(tmp_path)  # its CSV logs go under ./logs
    # it reads back its own Lightning checkpoints (written just now) with torch.load's pre-2.6 default
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    tp.task_predictions(embedding_path=embeddings, embedding_size=upstream.hidden_size, grid_points=8, gpus=None,
                        in_memory=True, deterministic=True, grid="default", logger=logging.getLogger("heareval"))
    theirs = json.loads((embeddings / "test.predicted-scores.json").read_text())
    their_mean = 100 * theirs["aggregated_scores"]["test_top1_acc_mean"]
    their_std = 100 * theirs["aggregated_scores"]["test_top1_acc_std"]
    print(f"maebench --probe hear {ours['score']:.2f} +- {ours['std']:.2f}; "
          f"hear-eval-kit {their_mean:.2f} +- {their_std:.2f}")
    assert abs(ours["score"] - their_mean) <= 2 * max(ours["std"], their_std, 2.0)


@pytest.mark.parametrize("key, value, needle", [
    ("lr", "0,1e-3", "must be positive"), ("dropout", "1.5", "dropout"), ("hidden_layers", "-1", "hidden_layers"),
    ("initialization", "orthogonal", "orthogonal"), ("max_epochs", "0", "must be positive"),
])
def test_bad_grid_settings_are_one_line_errors(key, value, needle):
    from maebench.downstream.probes.settings import resolve_settings

    class Task:  # what resolve_settings reads of a task
        name, probe_defaults, multilabel, sample_weights = "hear-x", {}, False, None

    with pytest.raises(MaebenchError) as err:
        resolve_settings("hear", Task(), {key: value})
    one_line_error(err, needle)
