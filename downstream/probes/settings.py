"""Typed settings of each probe: the fields, their types and the defaults shared by every task.

Per-task values (budgets, batch sizes, learning rates, with the reference each comes from) are instances of these
classes in `maebench.downstream.tasks.probe_settings`; `--set key=value` overrides go through the same typed rules
as the pretraining config (`maebench.settings`). A class default is the value every task shares (or the neutral
one, e.g. no clipping); a field without a default must be given by each task. results.json records a probe's
settings as the plain dict of these fields (`settings_dict`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from maebench.errors import MaebenchError
from maebench.settings import from_mapping, set_field, to_plain

PROBES = ("linear", "finetune", "logreg", "hear")


@dataclass(kw_only=True)
class LinearSettings:
    """SUPERB's utterance-level probe of a frozen upstream. Class defaults: s3prl downstream/*/config.yaml (Adam
    lr 1e-4, 256-d projector, gradient clipping 1, cross entropy); batch and step budget per task."""

    lr: float = 1e-4
    optimizer: Literal["adam"] = "adam"
    batch_size: int
    grad_accum: int = 1
    max_steps: int
    eval_every: int  # dev evaluation interval in updates (0: only after the last one)
    grad_clip: float = 1.0  # max gradient norm (0: no clipping)
    projector_dim: int = 256
    loss: Literal["ce", "bce"] = "ce"  # multi-label tasks always train with "bce"
    balanced_sampling: bool = False  # draw training items by the task's sample_weights (s3prl's KS1 sampler)
    balanced_dev: bool = False  # score dev on a class-balanced draw with replacement (s3prl's KS1 dev loader)
    train_crop_seconds: float = 0.0  # train on one seeded random crop of this length per longer clip (0: whole)
    source: str = ""  # the reference the task's values come from


@dataclass(kw_only=True)
class StepDecay:
    """SSAST's MultiStepLR (`lrscheduler_start/step/decay`): times `decay` at epoch `start` and every `step`
    epochs after."""

    start: int
    step: int
    decay: float


@dataclass(kw_only=True)
class FinetuneSettings:
    """What both fine-tuning recipes share (upstream trainable, Adam, warm-up, SpecAugment, mixup). Neutral class
    defaults: torch's Adam, no clipping, no augmentation; `fbank_mean` / `fbank_std` record the dataset
    statistics of the reference recipe."""

    recipe: str
    optimizer: Literal["adam"] = "adam"
    lr: float
    batch_size: int
    grad_accum: int = 1
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    head_lr_mult: float = 1.0  # the head's lr is lr times this
    grad_clip: float = 0.0  # max gradient norm (0: no clipping)
    warmup_steps: int = 0  # linear warm-up over this many updates
    loss: Literal["ce", "bce"] = "ce"  # multi-label tasks always train with "bce"
    mixup: float = 0.0  # probability of waveform mixup per item
    freqm: int = 0  # SpecAugment frequency mask width bound (fbank bins)
    timem: int = 0  # SpecAugment time mask width bound (fbank frames)
    noise_augment: bool = False  # SSAST's noise + time roll on the normalised input
    target_length: int | None = None  # "model": train crop in fbank frames; "global": the one input's length
    balanced_sampling: bool = False
    # "model": the upstream's own geometry (SSAST: s3prl's windows); "global": SSAST's fine-tuning input, one
    # target_length input normalised with fbank_mean / fbank_std (other families: target_length is a crop)
    input_geometry: Literal["model", "global"] = "model"
    normalise_padding: bool = True  # global input: pad then normalise (SSAST dataloader) or normalise then pad
    feature_layout: Literal["frames", "tokens"] = "frames"  # per time step, or the model's token sequence
    dev_holdout: bool = True  # False: train on train + dev, no model selection (the reference has no dev set)
    # AudioSet: an AST-format json whose labels replace the training clips' (matched by file name), e.g. PSLA's
    # label-enhanced balanced_train_data_type1_2_mean.json that SSAST trains AS-20K on (None: the labels as shipped)
    train_labels: str | None = None
    fbank_mean: float | None = None
    fbank_std: float | None = None
    source: str = ""


@dataclass(kw_only=True)
class SsastFinetuneSettings(FinetuneSettings):
    """SSAST's fine-tuning (AS, ESC-50, KS2): epochs, `ft_avgtok` head, MultiStepLR, optional weight averaging.
    Optimiser defaults from SSAST src/traintest.py: Adam betas (0.95, 0.999), weight decay 5e-7."""

    recipe: Literal["ssast"] = "ssast"
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 5e-7
    epochs: int
    lr_schedule: StepDecay | None = None
    weight_averaging: tuple[int, int] | None = None  # average the weights of epochs [first, last] (1-based)
    # "final": the weights the recipe ends with (weight average, best dev, or last epoch), no test data used;
    # "test_epoch_mean": every fold scored on test after each epoch, all folds reported at the epoch with the best
    # fold-mean test score (SSAST src/finetune/esc50/get_esc_result.py): selection on test, flagged as such
    model_selection: Literal["final", "test_epoch_mean"] = "final"


@dataclass(kw_only=True)
class SuperbFinetuneSettings(FinetuneSettings):
    """MAE-AST's SUPERB fine-tuning (KS1, SID, ER through s3prl): the SUPERB head over a trainable upstream, a
    fixed step budget, gradient clipping 1 (s3prl's default), model picked on dev."""

    recipe: Literal["superb"] = "superb"
    grad_clip: float = 1.0
    max_steps: int
    eval_every: int = 0  # dev evaluation interval in updates (0: once per epoch)
    projector_dim: int = 256
    layers: Literal["all", "last"] = "all"  # s3prl `-s hidden_states` (weighted sum) or `-s last_hidden_state`
    balanced_dev: bool = False  # score dev on a class-balanced draw with replacement (s3prl's KS1 dev loader)


@dataclass(kw_only=True)
class LogregSettings:
    """scikit-learn logistic regression per layer; layer and C picked on dev. Class defaults: a log-spaced grid of
    inverse regularisation strengths and lbfgs's iteration cap."""

    Cs: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
    max_iter: int = 1000


@dataclass(kw_only=True)
class HearSettings:
    """hear-eval-kit's downstream protocol (2021.1.3, heareval/predictions/task_predictions.py PARAM_GRID and
    runner.py): an MLP per grid point (Linear -> BatchNorm1d -> Dropout -> ReLU blocks, then a Linear), Adam,
    full-batch-1024 epochs in file order, the task's first score on the validation split checked every
    `check_every` epochs, early stopping after `patience` checks without a strict improvement, the best check's
    model kept. `grid_points` of the grid (shuffled with `grid_seed`) are tried on the first fold; the best one's
    settings train the other folds. Event tasks: frame-level, post-processing grid picked per check on validation."""

    hidden_layers: tuple[int, ...] = (1, 2)
    hidden_dim: tuple[int, ...] = (1024,)
    dropout: tuple[float, ...] = (0.1,)
    lr: tuple[float, ...] = (3.2e-3, 1e-3, 3.2e-4, 1e-4)
    initialization: tuple[Literal["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"], ...] = (
        "xavier_uniform", "xavier_normal")
    grid_points: int = 8  # heareval.predictions.runner --grid-points default
    grid_seed: int = 42  # seed_everything(42) before random.shuffle of the grid (deterministic runs)
    batch_size: int = 1024
    max_epochs: int = 500
    check_every: int = 3  # check_val_every_n_epoch
    patience: int = 20  # validation checks without improvement
    shuffle: bool = False  # hear-eval-kit's train loader does not shuffle (its check compares a list to "train")
    layer: str = "mean"  # the embedding: mean over the upstream's layers (maebench.hear's default) or an index
    median_filter_ms: tuple[float, ...] = (250.0,)  # EVENT_POSTPROCESSING_GRID (event tasks)
    min_duration_ms: tuple[float, ...] = (125.0, 250.0)
    source: str = "hear-eval-kit 2021.1.3 heareval/predictions/task_predictions.py PARAM_GRID"


ProbeSettings = LinearSettings | FinetuneSettings | LogregSettings | HearSettings
FINETUNE_RECIPES: dict[str, type[FinetuneSettings]] = {"ssast": SsastFinetuneSettings,
                                                       "superb": SuperbFinetuneSettings}


def settings_class(probe: str, recipe: str | None = None) -> type:
    """The settings class of `probe` (of the fine-tuning `recipe`, default "ssast")."""
    if probe == "linear":
        return LinearSettings
    if probe == "logreg":
        return LogregSettings
    if probe == "hear":
        return HearSettings
    if probe == "finetune":
        recipe = recipe or "ssast"
        if recipe not in FINETUNE_RECIPES:
            raise MaebenchError(f"unknown fine-tuning recipe {recipe!r}; use 'ssast' or 'superb'")
        return FINETUNE_RECIPES[recipe]
    raise MaebenchError(f"unknown probe {probe!r}; use one of {', '.join(PROBES)}")


def settings_from_dict(probe: str, data: Mapping[str, Any] | ProbeSettings, *, origin: str) -> ProbeSettings:
    """Settings of `probe` from a plain mapping (a task's defaults, a results.json record), parsed by the typed
    rules; a settings instance passes through (copied)."""
    if not isinstance(data, Mapping):
        return copy.deepcopy(data)
    cls = settings_class(probe, data.get("recipe") if probe == "finetune" else None)
    return from_mapping(cls, data, origin=origin, kind=f"{probe} setting")


def settings_dict(settings: ProbeSettings) -> dict[str, Any]:
    """The plain dict results.json records (tuples as lists, the schedule as a mapping)."""
    return to_plain(settings)


def family_defaults(task, probe: str, family: str | None) -> tuple[dict[str, Any], str]:
    """(the task's default settings of `probe` for an upstream `family`, the key they were found under).

    `family` is the protocol key of the upstream ("ssast_patch", "mae_ast_frame", ...; see `protocol_family`):
    `task.probe_defaults["by_family"]` is searched for it, then for its family alone ("ssast"), then the task's
    plain defaults apply (key "default")."""
    by_family = task.probe_defaults.get("by_family") or {}
    base = family.rsplit("_", 1)[0] if family and family.endswith(("_patch", "_frame")) else family
    for key in ([family, base] if family else []):
        if probe in by_family.get(key, {}):
            return by_family[key][probe], key
    return task.probe_defaults.get(probe, {}), "default"


def protocol_family(upstream) -> str | None:
    """"<family>_<tokenizer>" of an upstream whose config names a tokenizer (MAE-AST, SSAST), else its family."""
    family = getattr(upstream, "family", "") or None
    tokenizer = upstream.to_config().get("tokenizer") if family else None
    return f"{family}_{tokenizer}" if family and tokenizer else family


def resolve_settings(probe: str, task, overrides: Mapping[str, Any] | None = None, *, origin: str = "--set",
                     family: str | None = None) -> ProbeSettings:
    """The task's settings for `probe` (for an upstream of `family`, see `family_defaults`) with `overrides`
    applied: `{"lr": "1e-3", "linear.max_steps": 50}` (text or values, coerced to each field's type; a `<probe>.`
    prefix is allowed). An unknown key is a MaebenchError listing the known ones."""
    if probe not in PROBES:
        raise MaebenchError(f"unknown probe {probe!r}; use one of {', '.join(PROBES)}")
    defaults, _ = family_defaults(task, probe, family)
    settings = settings_from_dict(probe, defaults, origin=f"{task.name} {probe} defaults")
    for key, value in (overrides or {}).items():
        set_field(settings, key.removeprefix(f"{probe}."), value, origin=origin, kind=f"{probe} setting",
                  scope=f"{task.name} {probe}")
    check_settings(settings, origin=origin)
    for key in overrides or {}:
        check_used(settings, key.removeprefix(f"{probe}."), task, probe, origin=origin)
    return settings


# value ranges types cannot express (as `maebench.config.validate` for pretraining)
_POSITIVE = ("lr", "batch_size", "grad_accum", "max_steps", "projector_dim", "head_lr_mult", "epochs", "max_iter",
             "target_length", "fbank_std", "grid_points", "hidden_dim", "max_epochs", "check_every")
_NON_NEGATIVE = ("patience", "eval_every", "grad_clip", "warmup_steps", "weight_decay", "freqm", "timem",
                 "train_crop_seconds")


def check_settings(settings: ProbeSettings, *, origin: str = "--set") -> None:
    """A one-line MaebenchError for the first setting out of its range (a batch of 0, a negative learning rate,
    a probability over 1): caught before any feature is extracted, not a crash or a silent no-op mid-run."""

    def bad(key: str, value: Any, wanted: str) -> MaebenchError:
        return MaebenchError(f"{origin} {key}={value}: must be {wanted}")

    values = settings_dict(settings)
    for key in _POSITIVE:  # a grid (the hear probe's lr, hidden_dim) must be non-empty and positive throughout
        value = values.get(key)
        numbers = value if isinstance(value, list) else [value]
        if value is not None and (not numbers or min(numbers) <= 0):
            raise bad(key, value, "positive")
    for key in _NON_NEGATIVE:
        if values.get(key) is not None and values[key] < 0:
            raise bad(key, values[key], "0 or more")
    if "hidden_layers" in values:  # the hear probe's grids
        if not values["hidden_layers"] or min(values["hidden_layers"]) < 0:
            raise bad("hidden_layers", values["hidden_layers"], "0 or more hidden layers, e.g. 1,2")
        if not values["dropout"] or not all(0 <= p < 1 for p in values["dropout"]):
            raise bad("dropout", values["dropout"], "probabilities in [0, 1), e.g. 0.1")
        if not values["initialization"]:
            raise bad("initialization", values["initialization"], "one or more of xavier_uniform, xavier_normal")
    if not 0.0 <= values.get("mixup", 0.0) <= 1.0:
        raise bad("mixup", values["mixup"], "a probability in [0, 1]")
    if "betas" in values and not all(0.0 <= beta < 1.0 for beta in values["betas"]):
        raise bad("betas", ",".join(map(str, values["betas"])), "two numbers in [0, 1), e.g. 0.9,0.999")
    if "Cs" in values and (not values["Cs"] or min(values["Cs"]) <= 0):
        raise bad("Cs", ",".join(map(str, values["Cs"])), "positive numbers, e.g. 0.01,0.1,1")
    schedule = values.get("lr_schedule")
    if schedule and (schedule["start"] < 0 or schedule["step"] < 1 or not 0 < schedule["decay"] <= 1):
        raise bad("lr_schedule", schedule, "{start: >= 0, step: >= 1, decay: in (0, 1]}")
    averaging = values.get("weight_averaging")
    if averaging and not 1 <= averaging[0] <= averaging[1]:
        raise bad("weight_averaging", ",".join(map(str, averaging)), "first,last epochs with 1 <= first <= last")
    if values.get("model_selection") == "test_epoch_mean" and averaging:
        raise bad("model_selection", "test_epoch_mean", "used without weight_averaging (it picks one epoch; set "
                  "weight_averaging=null)")


def check_used(settings: ProbeSettings, key: str, task, probe: str, *, origin: str = "--set") -> None:
    """A MaebenchError when `--set key=...` would change nothing the probe does (results.json would record a
    setting that was never applied)."""
    field = key.split(".")[0]
    reason = None
    if field == "source":
        reason = "it records where the task's default values come from"
    elif field == "loss" and task.multilabel:
        reason = f"{task.name} is multi-label and always trains with bce"
    elif field == "balanced_sampling" and task.sample_weights is None:
        reason = f"{task.name} has no sampling weights (only ks1 and as2m do)"
    elif field == "train_labels" and task.name not in ("as20k", "as2m"):
        reason = "label files replace AudioSet training labels only (as20k, as2m)"
    elif field == "balanced_dev" and (task.multilabel or not any(fold.dev for fold in task.folds)):
        reason = f"{task.name} has no single-label dev split to resample"
    elif field in ("fbank_mean", "fbank_std", "normalise_padding") and \
            getattr(settings, "input_geometry", None) != "global":
        reason = "it applies only with input_geometry=global"
    elif field in ("weight_averaging", "epochs") and getattr(settings, "weight_averaging", None) and \
            settings.weight_averaging[0] > settings.epochs:
        reason = (f"weight_averaging starts at epoch {settings.weight_averaging[0]}, after the last one "
                  f"({settings.epochs}); set weight_averaging within the epochs, or null")
    if reason:
        raise MaebenchError(f"{origin} {key}: the {probe} probe does not use this setting here ({reason}); "
                            "leave it out")
