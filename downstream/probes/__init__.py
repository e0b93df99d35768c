"""The three probes that turn an upstream into task scores, one module each:

- `linear` (linear.py): SUPERB's utterance head on a frozen upstream, trained on cached pooled features.
- `finetune` (finetune.py): the upstream trained with a head, by SSAST's recipe or MAE-AST's SUPERB recipe.
- `logreg` (logreg.py): scikit-learn logistic regression per layer on cached features.
- `hear` (hear_mlp.py): hear-eval-kit's MLP grid search with early stopping (HEAR 2021's protocol; event tasks too).

Their typed settings are in settings.py (per-task values in `maebench.downstream.tasks.probe_settings`). Every probe
returns a `ProbeResult` with the test score in percent; `run_probe` dispatches by name.
"""

from __future__ import annotations

from maebench.downstream.probes.finetune import finetune_probe, predict
from maebench.downstream.probes.hear_mlp import hear_probe
from maebench.downstream.probes.linear import linear_probe, train_superb_head
from maebench.downstream.probes.logreg import logreg_probe
from maebench.downstream.probes.result import ProbeResult
from maebench.downstream.probes.settings import (
    PROBES,
    FinetuneSettings,
    HearSettings,
    LinearSettings,
    LogregSettings,
    ProbeSettings,
    SsastFinetuneSettings,
    StepDecay,
    SuperbFinetuneSettings,
    resolve_settings,
    settings_dict,
    settings_from_dict,
)
from maebench.errors import MaebenchError
from maebench.upstream.interface import Upstream

__all__ = [
    "PROBES", "FinetuneSettings", "HearSettings", "LinearSettings", "LogregSettings", "ProbeResult", "ProbeSettings",
    "SsastFinetuneSettings", "StepDecay", "SuperbFinetuneSettings", "finetune_probe", "hear_probe", "linear_probe",
    "logreg_probe", "predict", "resolve_settings", "run_probe", "settings_dict", "settings_from_dict",
    "train_superb_head",
]


def run_probe(
    probe: str, upstream: Upstream, task, fold, *, seed: int = 0, settings: ProbeSettings | None = None,
    quiet: bool = True, cache_options: dict | None = None, num_workers: int = 0,
) -> ProbeResult:
    """Run one probe on one fold with one seed (`settings` None: the task's defaults)."""
    if getattr(task, "events", None) is not None and probe != "hear":
        raise MaebenchError(f"{task.name} is an event (timestamp) task: only --probe hear scores events")
    settings = settings if settings is not None else resolve_settings(probe, task)
    if probe == "hear":
        return hear_probe(upstream, task, fold, seed=seed, settings=settings, quiet=quiet, cache_options=cache_options)
    if probe == "linear":
        return linear_probe(upstream, task, fold, seed=seed, settings=settings, quiet=quiet,
                            cache_options=cache_options)
    if probe == "logreg":
        return logreg_probe(upstream, task, fold, seed=seed, settings=settings, quiet=quiet,
                            cache_options=cache_options)
    if probe == "finetune":
        return finetune_probe(upstream, task, fold, seed=seed, settings=settings, quiet=quiet,
                              num_workers=num_workers)
    raise MaebenchError(f"unknown probe {probe!r}; use one of {', '.join(PROBES)}")
