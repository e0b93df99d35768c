"""HEAR 2021 tasks (hearbenchmark.com) in their preprocessed format, as maebench tasks: `--task hear:PATH`.

A task folder, as hear-preprocess writes it:
    task_metadata.json     task_name, embedding_type (scene | event), prediction_type (multiclass | multilabel),
                           split_mode (trainvaltest | new_split_kfold | presplit_kfold), splits, evaluation
    labelvocabulary.csv    idx,label
    <split>.json           {"<file name>": ["label", ...]} for each split of `splits`
    <rate>/<split>/<file>  the audio at one or more sample rates: 16000/ is read when present, otherwise the
                           lowest rate there (Zenodo's release has only 48000/), resampled to 16 kHz on reading

Folds follow hear-eval-kit: `trainvaltest` is one fold (train / valid / test); with k-fold split modes the sorted
folds take turns as test, the next one (cyclically) is the dev set and the rest train, the score being the mean
over the k. The task's metric is the first of its `evaluation` list, computed by maebench's metrics: top1_acc
(and pitch_acc) as accuracy, mAP as mean average precision over the classes present, both in percent (HEAR reports
fractions). Event (timestamp) tasks (embedding_type "event": each file's labels are events {"label", "start", "end"}
in ms) keep their events in `Task.events`, score by HEAR's event scores (`maebench.downstream.event_metrics`) and
take only the `hear` probe (frame-level, as hear-eval-kit).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from maebench.downstream.event_metrics import EVENT_SCORES
from maebench.downstream.probes.settings import LinearSettings, LogregSettings, settings_dict
from maebench.errors import MaebenchError

from .base import Example, Fold, Task, is_toy_root, require_dir, require_file

__all__ = ["PREFIX", "hear_task_name", "is_hear_task", "load_hear_task", "read_metadata"]

PREFIX = "hear:"
METADATA = "task_metadata.json"
VOCABULARY = "labelvocabulary.csv"
AUDIO_RATE_DIR = "16000"
# HEAR's score name -> maebench metric
METRICS = {"top1_acc": "accuracy", "pitch_acc": "accuracy", "mAP": "mAP"}


def is_hear_task(name: str) -> bool:
    return str(name).startswith(PREFIX)


def _folder(name: str) -> Path:
    path = Path(str(name)[len(PREFIX):]).expanduser()
    if not str(name)[len(PREFIX):]:
        raise MaebenchError("--task hear: needs the task folder: --task hear:PATH (a HEAR 2021 preprocessed task, "
                            "or one from `maebench data toy --task hear`)")
    if not path.is_dir():
        raise MaebenchError(f"HEAR task folder {path} does not exist; pass the folder holding {METADATA}")
    return path


def read_metadata(folder: Path) -> dict[str, Any]:
    path = require_file(folder / METADATA, "HEAR task metadata")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MaebenchError(f"malformed {path}: not JSON ({err}); use the file hear-preprocess wrote") from None
    if not isinstance(meta, dict):
        raise MaebenchError(f"malformed {path}: expected a JSON object, got {type(meta).__name__}; use the file "
                            "hear-preprocess wrote")
    missing = [k for k in ("task_name", "embedding_type", "prediction_type", "split_mode", "evaluation")
               if k not in meta]
    if missing:
        raise MaebenchError(f"malformed {path}: missing {', '.join(missing)}; use the file hear-preprocess wrote")
    for key in ("task_name", "embedding_type", "prediction_type", "split_mode"):
        if not isinstance(meta[key], str) or not meta[key]:
            raise MaebenchError(f"malformed {path}: {key} must be a non-empty string, got {meta[key]!r}")
    if not _plain_name(meta["task_name"]):
        raise MaebenchError(f"malformed {path}: task_name {meta['task_name']!r} must be a plain name (no '/', not "
                            "'.' or '..'): it names the results folder")
    evaluation = meta["evaluation"] if isinstance(meta["evaluation"], list) else [meta["evaluation"]]
    if not evaluation or not all(isinstance(score, str) for score in evaluation):
        raise MaebenchError(f"malformed {path}: evaluation must be a non-empty list of score names such as "
                            f"[\"top1_acc\"], got {meta['evaluation']!r}")
    splits = meta.get("splits")
    if splits is not None and not (isinstance(splits, list) and all(_plain_name(x) for x in splits)):
        raise MaebenchError(f"malformed {path}: splits must be a list of split names such as [\"fold00\", "
                            f"\"fold01\"], got {splits!r}")
    return meta


def _plain_name(name: Any) -> bool:
    """A plain file name: no folder part, not '.' or '..', not absolute (what a split file may name)."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name \
        and "\0" not in name


def hear_task_name(name: str) -> str:
    """The task name results.json records for `hear:PATH`: hear-<task_name> (file-name safe)."""
    return f"hear-{read_metadata(_folder(name))['task_name']}"


def _metric(meta: dict[str, Any], path: Path) -> str:
    if meta["embedding_type"] not in ("scene", "event"):
        raise MaebenchError(f"malformed {path}: embedding_type {meta['embedding_type']!r} is neither scene nor event")
    if meta["prediction_type"] not in ("multiclass", "multilabel"):
        raise MaebenchError(f"malformed {path}: prediction_type {meta['prediction_type']!r} is neither multiclass "
                            "nor multilabel")
    evaluation = meta["evaluation"] if isinstance(meta["evaluation"], list) else [meta["evaluation"]]
    if meta["embedding_type"] == "event":
        if not evaluation or evaluation[0] not in EVENT_SCORES:
            raise MaebenchError(f"HEAR event task {meta['task_name']}: its primary score {evaluation[:1]} is not "
                                f"supported (maebench scores {', '.join(EVENT_SCORES)})")
        return evaluation[0]
    if not evaluation or evaluation[0] not in METRICS:
        raise MaebenchError(f"HEAR task {meta['task_name']}: its primary score {evaluation[:1]} is not yet "
                            f"supported (maebench scores {', '.join(METRICS)})")
    metric = METRICS[evaluation[0]]
    if metric == "accuracy" and meta["prediction_type"] != "multiclass":
        raise MaebenchError(f"malformed {path}: {evaluation[0]} needs a multiclass task")
    return metric


def _vocabulary(folder: Path) -> list[str]:
    path = require_file(folder / VOCABULARY, "HEAR label vocabulary")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except UnicodeDecodeError as err:
        raise MaebenchError(f"malformed {path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    if not rows or not {"idx", "label"} <= set(rows[0]):
        raise MaebenchError(f"malformed {path}: expected the columns idx,label and at least one row")
    try:
        by_index = {int(row["idx"]): str(row["label"]) for row in rows}
    except ValueError:
        raise MaebenchError(f"malformed {path}: idx values must be integers") from None
    if len(by_index) != len(rows):
        raise MaebenchError(f"malformed {path}: an idx appears more than once ({len(rows)} rows, {len(by_index)} "
                            "distinct idx); give each label its own idx")
    if len(set(by_index.values())) != len(by_index):
        raise MaebenchError(f"malformed {path}: a label appears more than once; give each label one row")
    if sorted(by_index) != list(range(len(by_index))):
        raise MaebenchError(f"malformed {path}: idx must run 0..{len(by_index) - 1} without gaps")
    return [by_index[i] for i in range(len(by_index))]


def _event(value: Any, filename: str, path: Path, index: dict[str, int]) -> dict:
    """One event of a HEAR event task as {label index, start ms, end ms}."""
    try:
        label, start, end = str(value["label"]), float(value["start"]), float(value["end"])
    except (TypeError, KeyError, ValueError):
        raise MaebenchError(f"{path}: {filename} has an event {value!r}; expected {{\"label\", \"start\", \"end\"}} "
                            "(ms)") from None
    if label not in index:
        raise MaebenchError(f"{path}: {filename} has label {label!r}, which is not in {VOCABULARY}")
    if not 0 <= start <= end:
        raise MaebenchError(f"{path}: {filename} has an event from {start} to {end} ms; needs 0 <= start <= end")
    return {"label": index[label], "start": start, "end": end}


def audio_rate_dir(folder: Path) -> str:
    """The sample-rate folder to read: 16000/ (maebench's rate) if the task has it, else the lowest rate present
    (hear-preprocess writes 16000, 22050, 32000, 44100 and 48000; the Zenodo release ships only 48000)."""
    rates = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)
    if not rates:
        raise MaebenchError(f"HEAR task {folder} has no audio folder (16000/ or another sample rate, e.g. 48000/); "
                            "pass a complete task folder")
    return AUDIO_RATE_DIR if int(AUDIO_RATE_DIR) in rates else str(rates[0])


def _split(folder: Path, split: str, index: dict[str, int], multilabel: bool,
           events: dict[str, list[dict]] | None = None) -> list[Example]:
    """The examples of one split; for an event task (`events` given) each file's events are added to `events`."""
    path = require_file(folder / f"{split}.json", f"HEAR {split} label file")
    rate = audio_rate_dir(folder)
    audio = require_dir(folder / rate / split, f"HEAR {rate} Hz audio folder of {split}")
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MaebenchError(f"malformed {path}: not JSON ({err})") from None
    if not isinstance(labels, dict):
        raise MaebenchError(f"malformed {path}: expected an object mapping file names to label lists")
    examples = []
    for filename, names in sorted(labels.items()):
        if not _plain_name(filename):  # never read outside the task's audio folder
            raise MaebenchError(f"{path}: {filename!r} is not a plain file name inside {audio}; a split file names "
                                "only the audio files of its own folder")
        names = names if isinstance(names, list) else [names]
        if events is not None:
            file_events = [_event(value, filename, path, index) for value in names]
            events[f"{split}/{filename}"] = file_events
            label_set = sorted({e["label"] for e in file_events})
            examples.append(Example(audio / filename, tuple(label_set), key=f"{split}/{filename}"))
            continue
        unknown = [str(n) for n in names if str(n) not in index]
        if unknown:
            raise MaebenchError(f"{path}: {filename} has label {unknown[0]!r}, which is not in {VOCABULARY}")
        classes = sorted({index[str(n)] for n in names})
        if not multilabel and len(classes) != 1:
            raise MaebenchError(f"{path}: {filename} has {len(classes)} labels in a multiclass task (needs one)")
        label = tuple(classes) if multilabel else classes[0]
        examples.append(Example(audio / filename, label, key=f"{split}/{filename}"))
    return examples


def _folds(meta: dict[str, Any], splits: dict[str, list[Example]], path: Path) -> list[Fold]:
    empty = [name for name, examples in splits.items() if not examples]
    if empty:
        raise MaebenchError(f"malformed {path}: split {empty[0]} has no examples ({empty[0]}.json is empty); every "
                            "split needs audio to train or score on")
    if meta["split_mode"] == "trainvaltest":
        return [Fold("default", splits["train"], splits["valid"], splits["test"])]
    names = sorted(splits)
    if len(names) < 3:
        raise MaebenchError(f"malformed {path}: k-fold split mode with {len(names)} folds (needs at least 3)")
    folds = []
    for i, test in enumerate(names):  # hear-eval-kit: test fold i, dev fold i + 1, train the rest
        dev = names[(i + 1) % len(names)]
        train = [ex for name in names if name not in (test, dev) for ex in splits[name]]
        folds.append(Fold(test, train, splits[dev], splits[test]))
    return folds


def _probe_defaults(num_train: int, is_toy: bool, multilabel: bool) -> dict[str, dict]:
    """maebench's budgets for HEAR tasks (HEAR's own protocol is an MLP grid search): the SUPERB linear head with
    Adam, batch 32, about 50 epochs (500-20k steps, dev every tenth); the logreg C grid. Toy: 300 steps, lr 1e-3."""
    loss = "bce" if multilabel else "ce"
    if is_toy:
        linear = LinearSettings(batch_size=32, max_steps=300, eval_every=50, lr=1e-3, loss=loss,
                                source="maebench toy budget")
        logreg = LogregSettings(Cs=(1e-2, 1e-1, 1.0, 10.0), max_iter=300)
    else:
        steps = min(20_000, max(500, math.ceil(50 * num_train / 32)))
        linear = LinearSettings(batch_size=32, max_steps=steps, eval_every=max(1, steps // 10), loss=loss,
                                source="SUPERB optimiser/head, maebench budget (~50 epochs) for HEAR tasks")
        logreg = LogregSettings()
    return {"linear": settings_dict(linear), "logreg": settings_dict(logreg)}


def load_hear_task(name: str, root: str | Path | None = None) -> Task:
    """`hear:PATH` as a Task (scene or event). `root`, if given, must be the same folder."""
    folder = _folder(name)
    if root is not None and Path(root).expanduser().resolve() != folder.resolve():
        raise MaebenchError(f"--task {name} already names its folder; drop --data {root}")
    meta = read_metadata(folder)
    metric = _metric(meta, folder / METADATA)
    multilabel = meta["prediction_type"] == "multilabel" or meta["embedding_type"] == "event"
    class_names = _vocabulary(folder)
    index = {label: i for i, label in enumerate(class_names)}
    split_names = meta.get("splits") or (["train", "valid", "test"] if meta["split_mode"] == "trainvaltest" else [])
    if meta["split_mode"] == "trainvaltest" and sorted(split_names) != ["test", "train", "valid"]:
        raise MaebenchError(f"malformed {folder / METADATA}: trainvaltest needs the splits train, valid, test")
    if meta["split_mode"] not in ("trainvaltest", "new_split_kfold", "presplit_kfold"):
        raise MaebenchError(f"malformed {folder / METADATA}: unknown split_mode {meta['split_mode']!r}")
    events: dict[str, list[dict]] | None = {} if meta["embedding_type"] == "event" else None
    splits = {split: _split(folder, split, index, multilabel, events) for split in split_names}
    folds = _folds(meta, splits, folder / METADATA)
    is_toy = is_toy_root(folder)
    defaults = _probe_defaults(len(folds[0].train), is_toy, multilabel)
    return Task(f"hear-{meta['task_name']}", folder, metric, class_names, multilabel, folds, None, None, defaults,
                is_toy, events=events)
