"""The evaluation protocol: how the fine-tuning probe puts an upstream into its family's input geometry, and the
record of what an evaluation actually used (results.json "protocol"), compared with the paper's protocol per task.

The paper's numbers are all fine-tuned, each model family by its own authors' recipe; the protocol behind each is
written down, with sources, in `maebench.downstream.paper_protocols` (independent of maebench's defaults in
`maebench.downstream.tasks.probe_settings`). `PROTOCOL_FIELDS` are what defines a protocol (budgets and learning
rates are not among them: they change with the data, e.g. the toy budgets), including how the reported weights are
selected and which training labels were used.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from maebench.downstream.paper_protocols import differences as paper_differences
from maebench.downstream.paper_protocols import paper_protocol
from maebench.downstream.probes.settings import (
    FinetuneSettings,
    HearSettings,
    LinearSettings,
    ProbeSettings,
    SsastFinetuneSettings,
    SuperbFinetuneSettings,
    settings_dict,
)
from maebench.errors import MaebenchError
from maebench.upstream.interface import Upstream
from maebench.upstream.mae_ast import MaeAst
from maebench.upstream.ssast import GlobalInput, Ssast

PROTOCOL_FIELDS = ("probe", "recipe", "input_geometry", "target_length", "normalise_padding", "feature_layout",
                   "layers", "fbank_mean", "fbank_std", "dev_holdout", "selection", "train_labels")

# Where each task's dev split comes from, and whether the reference recipes have one.
DEV_SOURCES = {
    "as20k": "maebench: 10% of the balanced training clips (SSAST's AS-20K recipe has no dev split)",
    "as2m": "maebench: 10% of the balanced training clips (SSAST's AS-2M recipe has no dev split)",
    "esc50": "maebench: 10% of the four training folds by source recording (SSAST's recipe has no dev split)",
    "ks2": "Speech Commands v0.02 validation_list.txt (as SSAST's run_sc.sh)",
    "ks1": "Speech Commands hash rule, validation range (s3prl speech_commands); with balanced_dev scored on a "
           "class-balanced draw with replacement per evaluation (s3prl's _get_balanced_dev_dataloader)",
    "sid": "VoxCeleb1 iden_split.txt split 2 (s3prl voxceleb1)",
    "er": "s3prl emotion expert.py: torch.manual_seed(0); random_split(train, [int(0.8 * n), rest]) over the "
          "training sessions in the order of ROOT/meta_data/SessionK/train_meta_data.json (s3prl's "
          "IEMOCAP_preprocess.py) when present, else sorted label files (that script's os.listdir order may differ)",
}


def apply_input_protocol(upstream: Upstream, settings: FinetuneSettings) -> None:
    """Put `upstream` into the settings' input geometry and feature layout before fine-tuning (in place).

    input_geometry "global": SSAST's fine-tuning input, for SSAST (`Ssast.use_global_input`) and for MAE-AST as
    its authors fine-tuned it under the SSAST library (`MaeAst.use_global_input`); MAE-AST with feature_layout
    "tokens": its token sequence (`MaeAst.token_features`). Other upstreams keep their own input."""
    if isinstance(upstream, (Ssast, MaeAst)):
        spec = None
        if settings.input_geometry == "global":
            if settings.target_length is None or settings.fbank_mean is None or settings.fbank_std is None:
                raise MaebenchError("input_geometry=global needs target_length, fbank_mean and fbank_std settings; "
                                    "set them with --set or use input_geometry=model")
            spec = GlobalInput(settings.target_length, settings.fbank_mean, settings.fbank_std,
                               normalise_padding=settings.normalise_padding, layout=settings.feature_layout)
        upstream.use_global_input(spec)
    if isinstance(upstream, MaeAst):
        upstream.token_features = settings.feature_layout == "tokens"


def training_fold(fold, settings: FinetuneSettings):
    """`fold`, or with dev_holdout False its dev clips returned to training and no dev split (no model selection),
    as the reference recipes that train on the full training set do."""
    if settings.dev_holdout or not fold.dev:
        return fold
    return dataclasses.replace(fold, train=fold.train + fold.dev, dev=[])


def _input(upstream: Upstream, task, settings: ProbeSettings) -> dict[str, Any]:
    """Input geometry: what one model input is, the training crop and the evaluation crop."""
    finetune = isinstance(settings, FinetuneSettings)
    if isinstance(upstream, Ssast) and finetune and settings.input_geometry == "global":
        frames = settings.target_length
        geometry = f"global: one input of {frames} frames ({frames / 100:g} s), clips cut from the start or padded"
        source = ("ssast src/dataloader.py _wav2fbank, src/models/ast_models.py ASTModel(pretrain_stage=False)"
                  if settings.normalise_padding else "ssast src/finetune/superb/upstream/ast/audio.py + hubconf.py")
    elif isinstance(upstream, Ssast):
        geometry = f"windows of {upstream.config.window_secs:g} s, each padded, outputs joined in time"
        source = "s3prl upstream ssast (window_secs)"
    elif isinstance(upstream, MaeAst) and finetune and settings.input_geometry == "global":
        frames = settings.target_length
        geometry = (f"global: one input of {frames} frames ({frames / 100:g} s), clips cut from the start or padded, "
                    "no padding mask")
        source = ("MAE-AST-Public README (AS / ESC-50 / KS2 'evaluated under the SSAST library with no settings "
                  "changed'): ssast src/dataloader.py _wav2fbank + MAE-AST-Public mae_ast/models/mae_ast.py forward")
    elif isinstance(upstream, MaeAst):
        geometry, source = "whole clip, variable length (key-padding mask)", "MAE-AST-Public s3prl/mae_ast/expert.py"
    else:
        geometry, source = "the upstream's own", "upstream"
    # linear: its train_crop_seconds setting (SID: s3prl's 8 s); logreg trains on whole clips
    crop = task.train_crop_seconds if finetune else getattr(settings, "train_crop_seconds", 0.0) or None
    if finetune and settings.target_length and settings.input_geometry != "global":
        crop = min(crop or float("inf"), settings.target_length / 100)
    return {"geometry": geometry, "train_crop_seconds": crop, "eval_crop_seconds": task.max_eval_seconds,
            "source": source}


def _normalisation(upstream: Upstream, settings: ProbeSettings) -> str:
    finetune = isinstance(settings, FinetuneSettings)
    if isinstance(upstream, Ssast) and finetune and settings.input_geometry == "global":
        where = "after" if settings.normalise_padding else "before"
        return f"(x - {settings.fbank_mean}) / (2 * {settings.fbank_std}) {where} padding"
    if isinstance(upstream, Ssast):
        return f"(x - {upstream.config.norm_mean}) / (2 * {upstream.config.norm_std}) per window (s3prl)"
    if isinstance(upstream, MaeAst):
        stats = "batch statistics in training, running in evaluation" if finetune else "running statistics"
        if finetune and settings.input_geometry == "global":
            return (f"SSAST loader (x - {settings.fbank_mean}) / (2 * {settings.fbank_std}) after padding, then the "
                    f"model's BatchNorm2d(affine=False) * 0.5, {stats}")
        return f"BatchNorm2d(affine=False) * 0.5, {stats}"
    return "the upstream's own"


def _layers(upstream: Upstream, probe: str, settings: ProbeSettings) -> str:
    if probe == "logreg":
        return "one layer, picked on dev"
    if isinstance(settings, HearSettings):
        return ("mean of all layers (maebench.hear's embedding)" if settings.layer == "mean"
                else f"layer {settings.layer}")
    if isinstance(settings, SsastFinetuneSettings):
        if isinstance(upstream, Ssast) and settings.input_geometry == "global":
            return "ft_avgtok: mean of every token of the final-normed output (v.norm)"
        if isinstance(upstream, MaeAst) and settings.input_geometry == "global":
            return "ft_avgtok: mean of every token of the last (post-LN) encoder layer, padding included"
        return "ft_avgtok: mean of the last layer's valid tokens"
    if isinstance(settings, SuperbFinetuneSettings) and settings.layers == "last":
        return "last layer (s3prl -s last_hidden_state)"
    return f"softmax-weighted sum of all {upstream.num_layers} layers (s3prl -s hidden_states)"


def _augmentation(settings: ProbeSettings) -> list[str]:
    if not isinstance(settings, FinetuneSettings):
        return []
    out = []
    if settings.freqm or settings.timem:
        out.append(f"SpecAugment freqm {settings.freqm} timem {settings.timem} (before normalisation)")
    if settings.mixup:
        out.append(f"waveform mixup p={settings.mixup} Beta(10, 10)")
    if settings.noise_augment:
        out.append("noise U(0, 1) x U(0, 0.1) and roll [-10, 9] frames per clip (after normalisation)")
    return out


def _budget(settings: ProbeSettings) -> dict[str, Any]:
    if isinstance(settings, SsastFinetuneSettings):
        return {"epochs": settings.epochs, "batch_size": settings.batch_size, "grad_accum": settings.grad_accum}
    if isinstance(settings, HearSettings):
        return {"grid_points": settings.grid_points, "max_epochs": settings.max_epochs,
                "batch_size": settings.batch_size, "check_every": settings.check_every, "patience": settings.patience}
    if isinstance(settings, (SuperbFinetuneSettings, LinearSettings)):
        return {"steps": settings.max_steps, "batch_size": settings.batch_size, "grad_accum": settings.grad_accum}
    return {"Cs": list(settings.Cs), "max_iter": settings.max_iter}


def selection_rule(probe: str, settings: ProbeSettings, *, has_dev: bool = True) -> str:
    """What picks the reported weights, in the vocabulary of `maebench.downstream.paper_protocols`."""
    if probe == "logreg":
        return "best dev (layer and C)"
    if isinstance(settings, SsastFinetuneSettings):
        if settings.model_selection == "test_epoch_mean":
            return "best mean test epoch"
        if settings.weight_averaging:
            return "weight averaging"
    has_dev = has_dev and getattr(settings, "dev_holdout", True)
    if not has_dev:
        return "last epoch" if isinstance(settings, SsastFinetuneSettings) else "last step"
    return "best dev (class-balanced resampled)" if getattr(settings, "balanced_dev", False) else "best dev"


def protocol_fields(probe: str, settings: ProbeSettings, *, has_dev: bool = True) -> dict[str, Any]:
    """The values of `PROTOCOL_FIELDS` (None where a probe has no such setting); `has_dev`: the task has a dev
    split."""
    plain = settings_dict(settings)
    fields = {"probe": probe, **{name: plain.get(name) for name in PROTOCOL_FIELDS if name != "probe"}}
    fields["selection"] = selection_rule(probe, settings, has_dev=has_dev)
    fields["train_labels"] = "psla enhanced" if getattr(settings, "train_labels", None) else "as shipped"
    return fields


def describe_protocol(upstream: Upstream, task, probe: str, settings: ProbeSettings, family: str | None,
                      settings_key: str) -> dict[str, Any]:
    """The results.json "protocol" record: what was used, where each default comes from, and how it differs from
    the protocol of the paper's number for this task and family (`maebench.downstream.paper_protocols`)."""
    has_dev = bool(any(fold.dev for fold in task.folds))
    fields = protocol_fields(probe, settings, has_dev=has_dev)
    paper = paper_protocol(family, task.name)
    finetune = isinstance(settings, FinetuneSettings)
    holdout = has_dev and (not finetune or settings.dev_holdout)
    dev = DEV_SOURCES.get(task.name, "the task's dev split") if holdout else "none: trains on train + dev"
    inputs = _input(upstream, task, settings)
    diffs = paper_differences(fields, paper)
    return {
        "family": family, "settings_for": settings_key, "probe": probe,
        "recipe": getattr(settings, "recipe", None), "fields": fields,
        "input": inputs, "normalisation": _normalisation(upstream, settings),
        "layers": _layers(upstream, probe, settings), "augmentation": _augmentation(settings),
        "budget": _budget(settings), "dev": dev, "selection": _selection(fields["selection"]),
        "sources": {"settings": getattr(settings, "source", "") or "maebench (scikit-learn LogisticRegression)",
                    "input": inputs["source"], "dev": dev},
        "paper": None if paper is None else {"fields": paper.fields, "sources": paper.sources},
        "paper_protocol": None if paper is None else not diffs,
        "paper_differences": diffs,
    }


def _selection(rule: str) -> dict[str, Any]:
    """results.json "selection": the rule, and whether test data chose the reported weights."""
    on_test = rule == "best mean test epoch"
    source = ("ssast src/finetune/esc50/get_esc_result.py (SELECTED ON TEST DATA)" if on_test else
              "maebench: no test data is used to select (default)")
    return {"rule": rule, "on_test": on_test, "source": source}
