"""What every probe returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ProbeResult:
    """One probe run on one fold with one seed."""

    probe: str
    score: float  # test metric, percent
    dev_score: float | None  # the selection metric on dev, percent (None without a dev split)
    layers: dict[str, list[float]]  # {"weights": softmax layer weights} (linear) or {"scores": dev per layer}
    hparams: dict[str, Any]  # the settings as a plain dict, plus what the probe selected (layer, C, head)
    timings: dict[str, float]  # extract_s, train_s
    details: dict[str, Any] = field(default_factory=dict)
