"""AudioSet in the AST/SSAST data-file format: AS-20K (balanced train) and AS-2M (balanced + unbalanced train).

Layout of ROOT: `balanced_train.json`, `eval.json`, optional `unbalanced_train.json` (needed by as2m), each
`{"data": [{"wav": path, "labels": "/m/..,/m/.."}, ...]}` with wav paths absolute or relative to ROOT, and
`class_labels_indices.csv` (`index,mid,display_name`; quoted display names may contain commas).
Multi-label, mAP. Dev = 10% of the balanced training clips (seeded hash, deterministic).
AS-2M trains on balanced + unbalanced (SSAST's "full" set) with AST/PSLA sampling weights: per-class weight
1000 / (count + 0.01), a clip's weight = the sum over its labels.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from maebench.errors import MaebenchError

from .base import Example, Fold, Task, holdout, read_csv_rows, read_text_file, relative_key

LABELS_CSV = "class_labels_indices.csv"
BALANCED = "balanced_train.json"
UNBALANCED = "unbalanced_train.json"
EVAL = "eval.json"
DEV_FRACTION = 0.1


def read_class_labels(path: Path) -> tuple[list[str], list[str]]:
    """(mids, display names) in index order from `class_labels_indices.csv`."""
    rows = read_csv_rows(path, ("index", "mid", "display_name"), "AudioSet class list")
    entries = {}
    for line, row in enumerate(rows, start=2):
        try:
            index = int(row["index"])
        except ValueError as err:
            raise MaebenchError(f"malformed {path} line {line}: index {row['index']!r} is not an integer") from err
        if index in entries or None in row.values():
            raise MaebenchError(f"malformed {path} line {line}: duplicate index or wrong number of fields")
        entries[index] = (row["mid"], row["display_name"])
    if sorted(entries) != list(range(len(entries))):
        raise MaebenchError(f"malformed {path}: indices must be 0..{len(entries) - 1} without gaps")
    return [entries[i][0] for i in range(len(entries))], [entries[i][1] for i in range(len(entries))]


def read_datafile(path: Path, root: Path, mid_index: dict[str, int]) -> list[Example]:
    """Examples of one AST-format json data file (labels as sorted class-index tuples)."""
    text = read_text_file(path, "AudioSet data file")
    try:
        data = json.loads(text)["data"]
        if not isinstance(data, list):
            raise TypeError("'data' is not a list")
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise MaebenchError(f"malformed AudioSet data file {path} ({err}); expected "
                            '{"data": [{"wav": ..., "labels": "/m/..,/m/.."}]}') from err
    examples = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or "wav" not in item or "labels" not in item:
            raise MaebenchError(f"malformed entry {i} in {path}: needs 'wav' and 'labels'")
        for field in ("wav", "labels"):
            if not isinstance(item[field], str) or not item[field].strip():
                raise MaebenchError(f"malformed entry {i} in {path}: {field!r} is {item[field]!r}, expected "
                                    + ("a path (text)" if field == "wav" else 'text such as "/m/09x0r,/m/05zppz"'))
        wav = Path(item["wav"])
        wav = wav if wav.is_absolute() else root / wav
        mids = [m.strip() for m in item["labels"].split(",") if m.strip()]
        if not mids:
            raise MaebenchError(f"entry {i} ({item['wav']}) in {path} has no labels")
        unknown = [m for m in mids if m not in mid_index]
        if unknown:
            raise MaebenchError(f"entry {i} in {path} has label {unknown[0]} not in {root / LABELS_CSV}")
        examples.append(Example(wav, tuple(sorted({mid_index[m] for m in mids})), key=relative_key(wav, root)))
    if not examples:
        raise MaebenchError(f"AudioSet data file {path} has no entries")
    return examples


def label_frequency_weights(examples: list[Example], num_classes: int) -> list[float]:
    """AST/PSLA sampling weights: sum over a clip's labels of 1000 / (label count + 0.01)."""
    counts = [0] * num_classes
    for ex in examples:
        for c in ex.label:
            counts[c] += 1
    per_class = [1000.0 / (n + 0.01) for n in counts]
    return [sum(per_class[c] for c in ex.label) for ex in examples]


def load_audioset(name: str, root: Path, probe_defaults: dict, is_toy: bool) -> Task:
    """`as20k` (balanced train) or `as2m` (balanced + unbalanced train, weighted sampler)."""
    mids, display = read_class_labels(root / LABELS_CSV)
    mid_index = {m: i for i, m in enumerate(mids)}
    balanced = read_datafile(root / BALANCED, root, mid_index)
    test = read_datafile(root / EVAL, root, mid_index)
    train, dev = holdout(balanced, DEV_FRACTION, salt="audioset-dev")
    weights = None
    if name == "as2m":
        dev_keys = {ex.key for ex in dev}
        seen = {ex.key for ex in train} | dev_keys
        extra = [ex for ex in read_datafile(root / UNBALANCED, root, mid_index) if ex.key not in seen]
        train = train + extra
        weights = label_frequency_weights(train, len(mids))
    fold = Fold("default", train, dev, test)
    return Task(name, root, "mAP", display, True, [fold], None, None, probe_defaults, is_toy,
                sample_weights=weights)


# SSAST trains AS-20K on PSLA's label-enhanced balanced set (ssast src/finetune/audioset/run_as.sh tr_data); the file
# is not public in a form maebench can fetch, so a user supplies it (finetune setting `train_labels`).
ENHANCED_LABELS = "balanced_train_data_type1_2_mean.json"


def relabel(task: Task, examples: list[Example], label_file: str | Path) -> tuple[list[Example], int]:
    """(`examples` with the labels `label_file` gives their clips, how many were relabelled). Clips are matched by
    file name (the enhanced file lists the authors' own paths); a clip it does not list keeps its label. A file
    that matches none of `examples` is a MaebenchError (it is not a label file for this data)."""
    path = Path(label_file).expanduser()
    mids, _ = read_class_labels(Path(task.root) / LABELS_CSV)
    listed = read_datafile(path, Path(task.root), {m: i for i, m in enumerate(mids)})
    by_name = {ex.path.name: ex.label for ex in listed}
    out = [dataclasses.replace(ex, label=by_name[ex.path.name]) if ex.path.name in by_name else ex
           for ex in examples]
    matched = sum(ex.path.name in by_name for ex in examples)
    if examples and not matched:
        raise MaebenchError(f"label file {path} names none of the {len(examples)} training clips of {task.root} "
                            "(clips are matched by file name); pass the label file of this AudioSet copy")
    return out, matched


def relabelled_task(task: Task, label_file: str | Path) -> Task:
    """`task` with the training and dev clips of every fold (all from the balanced training file) taking the labels
    of `label_file` (`relabel`); test clips keep theirs."""
    folds = []
    for fold in task.folds:
        relabelled, _ = relabel(task, fold.train + fold.dev, label_file)
        folds.append(dataclasses.replace(fold, train=relabelled[: len(fold.train)],
                                         dev=relabelled[len(fold.train):]))
    return dataclasses.replace(task, folds=folds, _fingerprint=None)


def train_labels_record(task: Task, settings) -> dict:
    """results.json protocol "labels": which training labels were used, how many clips a label file changed,
    and what the reference used."""
    label_file = getattr(settings, "train_labels", None)
    if task.name not in ("as20k", "as2m"):
        return {"train": "as shipped"}
    reference = f"SSAST: PSLA's label-enhanced {ENHANCED_LABELS} (ssast src/finetune/audioset/run_as.sh tr_data)"
    if not label_file:
        return {"train": f"as shipped ({BALANCED}): NOT the reference's labels", "reference": reference}
    train = [ex for fold in task.folds for ex in fold.train + fold.dev]
    _, matched = relabel(task, train, label_file)
    return {"train": f"label file {Path(label_file).expanduser().resolve()}", "relabelled": matched,
            "clips": len(train), "reference": reference}
