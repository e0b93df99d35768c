"""The `hear` probe: hear-eval-kit's downstream protocol (HEAR 2021), so a maebench number sits next to a HEAR
leaderboard number. Settings and their sources: `HearSettings`.

Scene tasks: one embedding per clip (the upstream's cached masked-mean features, averaged over layers as
`maebench.hear` does, or one layer). Event tasks (`task.events`): one instance per frame of the timestamp
embeddings, targets from the event lists, validation and test scored on events after post-processing.

Protocol, per hear-eval-kit's task_predictions.py: the grid (sklearn ParameterGrid order, shuffled with
`grid_seed`, first `grid_points` taken) is trained on the first fold; each grid point keeps its best validation
check; the best grid point (first on ties) gives the first fold's test score and its settings train every other
fold, whose test score is again that of its best validation check. The selection is remembered per (upstream,
task, settings, seed), so the evaluation's fold loop reuses it.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maebench.downstream.event_metrics import EVENT_SCORES, event_score, frame_targets, predictions_to_events
from maebench.downstream.feature_cache import fold_features
from maebench.downstream.frame_features import frame_features, frame_timestamps_ms
from maebench.downstream.metrics import task_score
from maebench.downstream.probes.result import ProbeResult
from maebench.downstream.probes.settings import HearSettings, resolve_settings, settings_dict
from maebench.downstream.probes.training import eval_labels, state_copy, targets_for
from maebench.errors import MaebenchError
from maebench.upstream.interface import Upstream

__all__ = ["HearData", "HearSplit", "grid_confs", "hear_mlp", "hear_probe", "train_grid_point"]


@dataclass
class HearSplit:
    """Instances of one split: x (N, D), targets (N, C); for event tasks also each frame's file and time, and the
    reference events per file."""

    x: Tensor
    y: Tensor
    labels: np.ndarray | None = None  # what task_score expects (scene tasks)
    files: list[str] | None = None
    times: np.ndarray | None = None
    events: dict[str, list[dict]] | None = None


@dataclass
class HearData:
    train: HearSplit
    dev: HearSplit
    test: HearSplit
    multilabel: bool
    metric: str  # the task's primary score: accuracy / mAP, or a key of EVENT_SCORES
    num_classes: int


def grid_confs(settings: HearSettings) -> list[dict[str, Any]]:
    """The grid points tried: sklearn's ParameterGrid order (sorted keys, last varying fastest, as hear-eval-kit's
    grid whose other keys have one value), shuffled by random.Random(grid_seed), the first `grid_points`."""
    from sklearn.model_selection import ParameterGrid

    grid = {"dropout": list(settings.dropout), "hidden_dim": list(settings.hidden_dim),
            "hidden_layers": list(settings.hidden_layers), "initialization": list(settings.initialization),
            "lr": list(settings.lr)}
    confs = list(ParameterGrid(grid))
    random.Random(settings.grid_seed).shuffle(confs)
    return confs[: settings.grid_points]


def _init(weight: Tensor, scheme: str, last_activation: str) -> None:
    if scheme.startswith("xavier"):
        gain = nn.init.calculate_gain(last_activation)
        (nn.init.xavier_uniform_ if scheme == "xavier_uniform" else nn.init.xavier_normal_)(weight, gain=gain)
    else:
        init = nn.init.kaiming_uniform_ if scheme == "kaiming_uniform" else nn.init.kaiming_normal_
        init(weight, nonlinearity=last_activation)


def hear_mlp(in_dim: int, num_classes: int, conf: dict[str, Any]) -> nn.Sequential:
    """hear-eval-kit's FullyConnectedPrediction: per hidden layer Linear -> BatchNorm1d -> Dropout -> ReLU, then a
    Linear; weights initialised with the gain of the activation before them (linear first, then ReLU)."""
    layers: list[nn.Module] = []
    width, last = in_dim, "linear"
    for _ in range(conf["hidden_layers"]):
        linear = nn.Linear(width, conf["hidden_dim"])
        _init(linear.weight, conf["initialization"], last)
        layers += [linear, nn.BatchNorm1d(conf["hidden_dim"]), nn.Dropout(conf["dropout"]), nn.ReLU()]
        width, last = conf["hidden_dim"], "relu"
    projection = nn.Linear(width, num_classes)
    _init(projection.weight, conf["initialization"], last)
    return nn.Sequential(*layers, projection)


def _probabilities(model: nn.Module, x: Tensor, multilabel: bool, chunk: int = 65536) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + chunk]) for i in range(0, len(x), chunk)]) if len(x) else x
    probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)
    return probs.float().cpu().numpy()


def _postprocessing_grid(settings: HearSettings) -> list[dict[str, float]]:
    return [{"median_filter_ms": m, "min_duration_ms": d} for m in settings.median_filter_ms
            for d in settings.min_duration_ms]


def _predicted_events(probs: np.ndarray, split: HearSplit, post: dict[str, float]) -> dict[str, list[dict]]:
    assert split.files is not None and split.times is not None and split.events is not None
    events: dict[str, list[dict]] = {file: [] for file in split.events}
    files = np.asarray(split.files)
    for file in events:
        rows = np.flatnonzero(files == file)
        if len(rows):
            events[file] = predictions_to_events(probs[rows], split.times[rows], **post)
    return events


def score_split(model: nn.Module, split: HearSplit, data: HearData, settings: HearSettings,
                post: dict[str, float] | None = None) -> tuple[float, dict[str, float] | None]:
    """(the primary score in percent, the post-processing used): for event tasks the best of the post-processing
    grid unless `post` is given (the one chosen on validation)."""
    probs = _probabilities(model, split.x, data.multilabel)
    if data.metric not in EVENT_SCORES:
        return task_score(data.metric, probs, split.labels), None
    higher = EVENT_SCORES[data.metric]["higher"]
    best: tuple[float, dict[str, float]] | None = None
    for candidate in [post] if post is not None else _postprocessing_grid(settings):
        value = event_score(data.metric, split.events, _predicted_events(probs, split, candidate), data.num_classes)
        value = 0.0 if math.isnan(value) else 100.0 * value
        if best is None or (value > best[0] if higher else value < best[0]):
            best = (value, candidate)
    assert best is not None
    return best


@dataclass
class GridPointRun:
    conf: dict[str, Any]
    model: nn.Module
    dev_score: float
    epoch: int  # 1-based epoch of the kept check
    postprocessing: dict[str, float] | None
    epochs_run: int


def train_grid_point(conf: dict[str, Any], data: HearData, settings: HearSettings, seed: int) -> GridPointRun:
    """Train one grid point: Adam, `batch_size` batches, a validation check every `check_every` epochs, early
    stopping after `patience` checks without a strict improvement; returns the best check's model."""
    device = data.train.x.device
    higher = EVENT_SCORES[data.metric]["higher"] if data.metric in EVENT_SCORES else True
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = hear_mlp(data.train.x.shape[1], data.num_classes, conf).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=conf["lr"])
        x, y = data.train.x, data.train.y
        classes = y.argmax(dim=1)
        best: tuple[float, int, list, dict | None] | None = None
        waited, epoch = 0, 0
        for epoch in range(1, settings.max_epochs + 1):
            model.train()
            order = torch.randperm(len(x), device=device) if settings.shuffle else torch.arange(len(x), device=device)
            for start in range(0, len(x), settings.batch_size):
                batch = order[start : start + settings.batch_size]
                if len(batch) < 2 and conf["hidden_layers"]:
                    continue  # BatchNorm cannot train on one item (hear-eval-kit would stop with an error)
                logits = model(x[batch])
                loss = F.binary_cross_entropy_with_logits(logits, y[batch]) if data.multilabel else \
                    F.cross_entropy(logits, classes[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if epoch % settings.check_every:
                continue
            score, post = score_split(model, data.dev, data, settings)
            if not math.isfinite(score):
                break
            if best is None or (score > best[0] if higher else score < best[0]):
                best, waited = (score, epoch, state_copy(model), post), 0
            else:
                waited += 1
                if waited >= settings.patience:
                    break
    if best is None:  # fewer epochs than one check: keep the last model, scored once
        score, post = score_split(model, data.dev, data, settings)
        best = (score, epoch, state_copy(model), post)
    model.load_state_dict(best[2][0])
    return GridPointRun(conf, model, best[0], best[1], best[3], epoch)


# ---- data ---------------------------------------------------------------------------------------------------


def _layer_mean(features: np.ndarray, layer: str) -> np.ndarray:
    """(N, L, D) -> (N, D): mean over layers, or one layer."""
    if layer == "mean":
        return np.asarray(features, dtype=np.float32).mean(axis=1)
    index = _layer_index(layer, features.shape[1])
    return np.asarray(features[:, index], dtype=np.float32)


def _layer_index(layer: str, num_layers: int) -> int:
    try:
        index = int(layer)
    except ValueError:
        raise MaebenchError(f"hear probe layer={layer!r}: use 'mean' or a layer index") from None
    if not -num_layers <= index < num_layers:
        raise MaebenchError(f"hear probe layer={layer}: the upstream has {num_layers} layers")
    return index


def _scene_data(upstream: Upstream, task, fold, settings: HearSettings, device: torch.device, quiet: bool,
                cache_options: dict | None) -> HearData:
    splits = fold_features(upstream, task, fold, quiet=quiet, cache_options=cache_options)
    if "dev" not in splits:
        raise MaebenchError(f"{task.name} {fold.name}: the hear probe needs a validation split (it stops early "
                            "and picks its grid point on it)")

    def split(name: str) -> HearSplit:
        features = splits[name]
        x = torch.from_numpy(_layer_mean(features.features, settings.layer)).to(device)
        return HearSplit(x, targets_for(features.labels, task).to(device), eval_labels(features.labels, task))

    return HearData(split("train"), split("dev"), split("test"), task.multilabel, task.metric, task.num_classes)


def _event_split(upstream: Upstream, task, examples, settings: HearSettings, device: torch.device,
                 quiet: bool) -> HearSplit:
    if settings.layer != "mean":
        _layer_index(settings.layer, upstream.num_layers)
    frames = frame_features(upstream, task, examples, layer=settings.layer, quiet=quiet)
    xs, ys, files, times, events = [], [], [], [], {}
    for example, feats in zip(examples, frames, strict=True):
        stamps = frame_timestamps_ms(upstream, len(feats))
        events[example.key] = list(task.events[example.key])
        xs.append(feats)
        ys.append(frame_targets(events[example.key], stamps, task.num_classes))
        files += [example.key] * len(feats)
        times.append(stamps)
    x = torch.from_numpy(np.concatenate(xs)).to(device)
    return HearSplit(x, torch.from_numpy(np.concatenate(ys)).to(device), None, files, np.concatenate(times), events)


def timestamp_upstream(upstream: Upstream) -> Upstream:
    """The upstream whose frames are timestamp embeddings: a `hear:` module loaded for scene embeddings (one
    frame per clip, the default) is loaded again for its timestamp embeddings, as hear-eval-kit asks event tasks."""
    from maebench.upstream.foreign_hear import HearUpstream

    if isinstance(upstream, HearUpstream) and upstream.embedding == "scene":
        twin = HearUpstream(upstream.module_name, upstream.weights, embedding="timestamp",
                            chunk_seconds=upstream.chunk_seconds, batch_size=upstream.batch_size,
                            min_seconds=upstream.min_seconds, **upstream.options)
        return twin.to(next(iter(upstream.parameters()), torch.empty(0)).device)
    return upstream


def _event_data(upstream: Upstream, task, fold, settings: HearSettings, device: torch.device, quiet: bool
                ) -> HearData:
    if not fold.dev:
        raise MaebenchError(f"{task.name} {fold.name}: the hear probe needs a validation split")
    upstream = timestamp_upstream(upstream)
    splits = {name: _event_split(upstream, task, examples, settings, device, quiet)
              for name, examples in (("train", fold.train), ("dev", fold.dev), ("test", fold.test))}
    return HearData(splits["train"], splits["dev"], splits["test"], True, task.metric, task.num_classes)


def _fold_data(upstream: Upstream, task, fold, settings: HearSettings, quiet: bool, cache_options: dict | None
               ) -> HearData:
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if getattr(task, "events", None) is not None:
        return _event_data(upstream, task, fold, settings, device, quiet)
    return _scene_data(upstream, task, fold, settings, device, quiet, cache_options)


# ---- the probe ----------------------------------------------------------------------------------------------


@dataclass
class GridSelection:
    best: GridPointRun
    rows: list[dict[str, Any]]
    data: HearData  # the first fold's


_SELECTIONS: dict[str, GridSelection] = {}  # the current evaluation's grid selection, reused across its folds


def _selection_key(upstream: Upstream, task, settings: HearSettings, seed: int, cache_options: dict | None) -> str:
    fingerprint = (cache_options or {}).get("upstream_fingerprint")
    if fingerprint is None:
        from maebench.upstream.registry import fingerprint as upstream_fingerprint

        fingerprint = upstream_fingerprint(upstream)
    return json.dumps([fingerprint, task.name, task.data_fingerprint(), settings_dict(settings), seed])


def select_grid_point(upstream: Upstream, task, settings: HearSettings, seed: int, *, quiet: bool = True,
                      cache_options: dict | None = None) -> GridSelection:
    """Train every grid point on the task's first fold; the best validation score wins (first on ties)."""
    key = _selection_key(upstream, task, settings, seed, cache_options)
    if key in _SELECTIONS:
        return _SELECTIONS[key]
    data = _fold_data(upstream, task, task.folds[0], settings, quiet, cache_options)
    higher = EVENT_SCORES[data.metric]["higher"] if data.metric in EVENT_SCORES else True
    runs = [train_grid_point(conf, data, settings, 1000 * seed + i) for i, conf in enumerate(grid_confs(settings))]
    best = runs[0]
    for run in runs[1:]:
        if run.dev_score > best.dev_score if higher else run.dev_score < best.dev_score:
            best = run
    rows = [{**run.conf, "dev": round(run.dev_score, 4), "epoch": run.epoch} for run in runs]
    _SELECTIONS.clear()  # one evaluation at a time: keep memory bounded
    _SELECTIONS[key] = GridSelection(best, rows, data)
    return _SELECTIONS[key]


def hear_probe(upstream: Upstream, task, fold, *, seed: int = 0, settings: HearSettings | None = None,
               quiet: bool = True, cache_options: dict | None = None) -> ProbeResult:
    """hear-eval-kit's protocol on one fold (the grid is searched on the first fold and reused)."""
    settings = settings if settings is not None else resolve_settings("hear", task)
    start = time.perf_counter()
    selection = select_grid_point(upstream, task, settings, seed, quiet=quiet, cache_options=cache_options)
    if fold.name == task.folds[0].name:
        run, data = selection.best, selection.data
    else:
        data = _fold_data(upstream, task, fold, settings, quiet, cache_options)
        run = train_grid_point(selection.best.conf, data, settings, 1000 * seed + 999)
    test_score, _ = score_split(run.model, data.test, data, settings, run.postprocessing)
    details: dict[str, Any] = {"best_step": run.epoch, "selection": "hear-eval-kit grid on the first fold",
                               "grid": selection.rows, "epochs_run": run.epochs_run}
    if data.metric in EVENT_SCORES:
        details["postprocessing"] = run.postprocessing
        probs = _probabilities(run.model, data.test.x, True)
        predicted = _predicted_events(probs, data.test, run.postprocessing)
        details["test_scores"] = {name: round(100.0 * event_score(name, data.test.events, predicted,
                                                                  data.num_classes), 4) for name in EVENT_SCORES}
    return ProbeResult(
        probe="hear", score=test_score, dev_score=run.dev_score, layers={},
        hparams={**settings_dict(settings), "selected": {k: v for k, v in run.conf.items()}},
        timings={"extract_s": 0.0, "train_s": time.perf_counter() - start}, details=details,
    )
