"""Model selection on test data, as SSAST reports ESC-50 (src/finetune/esc50/get_esc_result.py): every fold is
scored on its test fold after each epoch, the per-epoch scores are averaged over the folds, and every fold is
reported at the epoch with the best mean ("not the best epoch for each fold", as the reference notes). This selects
on test data, so it is a named option (`model_selection=test_epoch_mean`), never the default, and results.json and
`maebench compare` flag it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from maebench.errors import MaebenchError

SOURCE = "ssast src/finetune/esc50/get_esc_result.py"


def best_mean_epoch(curves: Sequence[Sequence[float]]) -> int:
    """0-based epoch whose test score, averaged over `curves` (one per fold and seed), is highest; the first such
    epoch on ties (np.argmax, as the reference)."""
    lengths = {len(curve) for curve in curves}
    if len(lengths) != 1 or 0 in lengths:
        raise MaebenchError(f"test-epoch selection needs one score per epoch for every fold, got curves of lengths "
                            f"{sorted(lengths)}; run every fold for the same number of epochs")
    return int(np.argmax(np.mean(np.asarray(curves, dtype=np.float64), axis=0)))


def test_selected_scores(curves: Sequence[Sequence[float]]) -> tuple[int, list[float]]:
    """(selected 0-based epoch, each curve's score at it)."""
    epoch = best_mean_epoch(curves)
    return epoch, [float(curve[epoch]) for curve in curves]
