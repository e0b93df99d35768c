"""ESC-50: 2,000 5 s clips, 50 classes, 5 predefined folds; 5-fold cross-validation, accuracy mean and std.

Fold k tests on meta fold k and trains on the other four. Dev (for probes that select a checkpoint or a
regularisation strength) is 10% of the training clips, per class, grouped by source recording (`src_file`, whose
takes A/B/C must never straddle train and dev), chosen by a seeded hash; the rest is train. This keeps the training
set close to the standard four folds (a whole dev fold would cut it by a quarter).
"""

from __future__ import annotations

from pathlib import Path

from maebench.errors import MaebenchError

from .base import Example, Fold, Task, holdout, read_csv_rows, require_dir

META = "meta/esc50.csv"
COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
NUM_FOLDS = 5
DEV_FRACTION = 0.1


def load_esc50(root: Path, probe_defaults: dict, is_toy: bool) -> Task:
    require_dir(root / "audio", "ESC-50 audio folder")
    meta = root / META
    rows = read_csv_rows(meta, COLUMNS, "ESC-50 metadata file")
    categories: dict[int, str] = {}
    by_fold: dict[int, list[Example]] = {k: [] for k in range(1, NUM_FOLDS + 1)}
    sources: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        try:
            fold, target = int(row["fold"]), int(row["target"])
        except ValueError as err:
            raise MaebenchError(f"malformed {meta} line {line}: fold/target not integers ({row})") from err
        if fold not in by_fold:
            raise MaebenchError(f"malformed {meta} line {line}: fold {fold} is not 1..5")
        if categories.setdefault(target, row["category"]) != row["category"]:
            raise MaebenchError(f"malformed {meta} line {line}: target {target} is both "
                                f"{categories[target]!r} and {row['category']!r}")
        rel = f"audio/{row['filename']}"
        by_fold[fold].append(Example(root / rel, target, key=rel))
        sources[rel] = row["src_file"]
    empty = [k for k, clips in by_fold.items() if not clips]
    if empty:  # a fold without clips would test on nothing (and fail deep inside a probe)
        raise MaebenchError(f"malformed {meta}: no clips in fold {', '.join(map(str, empty))} (ESC-50 has 400 clips "
                            f"in each of folds 1..{NUM_FOLDS}); use the file as shipped")
    if sorted(categories) != list(range(len(categories))):
        raise MaebenchError(f"malformed {meta}: targets must be 0..{len(categories) - 1} without gaps")
    class_names = [categories[t] for t in range(len(categories))]
    folds = []
    for k in range(1, NUM_FOLDS + 1):
        pool = [ex for j in range(1, NUM_FOLDS + 1) if j != k for ex in by_fold[j]]
        train, dev = holdout(pool, DEV_FRACTION, salt=f"esc50-fold{k}", stratum=lambda ex: ex.label,
                             group=lambda ex: sources[ex.key])
        folds.append(Fold(f"fold{k}", train, dev, by_fold[k]))
    return Task("esc50", root, "accuracy", class_names, False, folds, None, None, probe_defaults, is_toy)
