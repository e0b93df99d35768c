"""Default probe settings per task, from the recipes the paper's numbers come from (sources inline and in each
entry's `source`).

The fields, their types and the values every task shares are the settings classes of
`maebench.downstream.probes.settings`; this table holds what differs per task. Real data gets the published budgets;
toy data gets the same settings with a small step/epoch budget so a toy run takes seconds.

`probe_settings(task, is_toy)` returns {"linear": LinearSettings, "finetune": SsastFinetuneSettings |
SuperbFinetuneSettings, "logreg": LogregSettings}; `probe_defaults(task, is_toy)` the same as plain dicts (what a
`Task` carries and results.json records).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from maebench.downstream.probes.settings import (
    FinetuneSettings,
    LinearSettings,
    LogregSettings,
    ProbeSettings,
    SsastFinetuneSettings,
    StepDecay,
    SuperbFinetuneSettings,
    settings_dict,
)

from .voxceleb import TRAIN_CROP_SECONDS

# SUPERB (s3prl downstream/*/config.yaml): Adam lr 1e-4, utterance-level head with a 256-d projector, gradient
# clipping 1 (LinearSettings' defaults); speech_commands: batch 32, 200k steps, eval every 4k; voxceleb1: batch 8 x
# accum 4, 200k steps, eval every 4k, training utterances cropped to max_timestep 128000 samples (8 s) at a random
# offset (downstream/voxceleb1/dataset.py __getitem__; expert.py passes max_timestep to the train set only, dev and
# test are whole utterances); emotion: batch 4 x accum 8, 30k steps, eval every 1k.
# KS1's dev checkpoint is picked through s3prl's class-balanced dev loader (speech_commands/expert.py
# `_get_balanced_dev_dataloader`: a WeightedRandomSampler of len(dev) draws with replacement), `balanced_dev`; ER's
# dev split is s3prl's random_split seeded 0 (downstream/tasks/iemocap.py `dev_split`).
# s3prl draws a new crop each time a clip is loaded; the linear probe trains on cached features, so it draws one
# crop per clip and seed (`maebench.downstream.probes.linear.train_crops`).
# as20k / esc50 are not SUPERB tasks: same optimiser and head, batch 32, a budget of about 100 epochs for ESC-50
# (1,440 train clips per fold -> 5k steps) and about 30 epochs for AS-20K (~18k clips -> 20k steps); AS-2M 100k steps
# through the label-frequency weighted sampler (our choice, in the spirit of SUPERB's fixed step budgets).
_LINEAR: dict[str, LinearSettings] = {
    "ks2": LinearSettings(batch_size=32, max_steps=200_000, eval_every=4000,
                          source="SUPERB speech_commands config (s3prl)"),
    "ks1": LinearSettings(batch_size=32, max_steps=200_000, eval_every=4000, balanced_sampling=True,
                          balanced_dev=True, source="SUPERB speech_commands config + class-balanced train sampler "
                                                    "and dev loader (s3prl expert.py)"),
    "sid": LinearSettings(batch_size=8, grad_accum=4, max_steps=200_000, eval_every=4000,
                          train_crop_seconds=TRAIN_CROP_SECONDS,
                          source="SUPERB voxceleb1 config (s3prl): train on random 8 s crops (config.yaml "
                                 "max_timestep 128000; dataset.py crops at random.randint(0, length - 128000))"),
    "er": LinearSettings(batch_size=4, grad_accum=8, max_steps=30_000, eval_every=1000,
                         source="SUPERB emotion config (s3prl)"),
    "esc50": LinearSettings(batch_size=32, max_steps=5000, eval_every=500,
                            source="SUPERB optimiser/head, maebench budget (~100 epochs)"),
    "as20k": LinearSettings(loss="bce", batch_size=32, max_steps=20_000, eval_every=2000,
                            source="SUPERB optimiser/head, maebench budget (~30 epochs), BCE for multi-label"),
    "as2m": LinearSettings(loss="bce", batch_size=32, max_steps=100_000, eval_every=10_000, balanced_sampling=True,
                           source="SUPERB optimiser/head, maebench budget, label-frequency sampler"),
}
# toy budgets are ~1000x shorter than SUPERB's 200k steps, so the step size is 10x larger to still converge
_LINEAR_TOY = {"max_steps": 300, "eval_every": 50, "lr": 1e-3}

# Fine-tuning, chosen per (model family, task); `by_family` in `probe_defaults` holds the family entries.
#
# AudioSet / ESC-50 / KS2: SSAST's recipes (YuanGongND/ssast src/finetune/audioset/run_as.sh,
# esc50/run_esc_patch.sh + run_esc_frame.sh, speechcommands_v2_35/run_sc.sh; optimiser Adam betas (0.95, 0.999),
# weight decay 5e-7, warm-up = linear over the first 1000 steps when enabled, src/traintest.py:
# SsastFinetuneSettings' defaults). The MAE-AST paper fine-tunes on these tasks following SSAST.
# - SSAST upstreams: SSAST's own input (input_geometry "global"): one target_length input (1024 / 512 / 128 frames,
#   run_*.sh `target_length`), global attention, positions fitted to that grid (src/models/ast_models.py lines
#   192-204), the task's fbank statistics `(x - mean) / (2 * std)` after padding (src/dataloader.py lines 129-199),
#   noise after normalisation (lines 204-206).
# - MAE-AST: the same SSAST input (input_geometry "global"), as MAE-AST-Public's README says these tasks were
#   "evaluated under the SSAST library with no settings changed" (it names "AudioSet, Librispeech, and KS2"; the
#   paper's ESC-50 column is the other SSAST-library task). Under that library the model receives SSAST's
#   normalised fixed-length fbank, and MAE-AST's own `forward` (mae_ast/models/mae_ast.py lines 379-385) applies
#   `batch_norm(source) * 0.5` to any input that is not pre-patched, so the BatchNorm stays: in training it uses
#   batch statistics (which cancel the dataset statistics up to its eps) and updates its running statistics,
#   which evaluation uses. No padding mask (the loader gives one fixed-size spectrogram); the head averages every
#   token of the last encoder layer (ft_avgtok). The authors' fine-tuning wrapper is not public: the wrapper
#   itself (e.g. layerdrop off) is inferred. `--set input_geometry=model` is the native MAE-AST pipeline
#   (its own Kaldi fbank, variable length, key-padding mask, BatchNorm only): the named option.
# - Other upstreams: the same optimiser, budget and augmentation on the model's own input.
# Every family trains AS-20K and ESC-50 on the whole training set (dev_holdout False), as the recipe does:
# run_as.sh averages epochs 6-25 (`--wa True`) and picks nothing on dev; run_esc_*.sh trains on the four training
# folds with no dev split (`--data-val` is the test fold, and get_esc_result.py picks the epoch with the best mean
# test accuracy; here the last epoch is kept instead, so no choice is made on test data; `--set
# model_selection=test_epoch_mean` is the reference's choice, flagged in results.json and `maebench compare`).
# AS-20K: run_as.sh trains on PSLA's label-enhanced balanced_train_data_type1_2_mean.json, which maebench cannot
# download; `--set train_labels=FILE` uses it (results without it are marked as differing from the paper's).
_AUDIOSET_STATS: dict[str, Any] = {"fbank_mean": -4.2677393, "fbank_std": 4.5689974}
_AUDIOSET = dict(mixup=0.5, freqm=48, timem=192, loss="bce", weight_averaging=(6, 25), target_length=1024,
                 lr_schedule=StepDecay(start=10, step=5, decay=0.5), **_AUDIOSET_STATS)
_SSAST_RECIPES: dict[str, SsastFinetuneSettings] = {
    "as20k": SsastFinetuneSettings(lr=5e-5, epochs=25, batch_size=12, **_AUDIOSET,
                                   dev_holdout=False, source="SSAST src/finetune/audioset/run_as.sh (set=balanced)"),
    "as2m": SsastFinetuneSettings(lr=1e-5, epochs=5, batch_size=12, **_AUDIOSET, balanced_sampling=True,
                                  source="SSAST src/finetune/audioset/run_as.sh (set=full)"),
    "esc50": SsastFinetuneSettings(lr=1e-4, epochs=50, batch_size=48,
                                   lr_schedule=StepDecay(start=6, step=1, decay=0.85), freqm=24, timem=96,
                                   target_length=512, fbank_mean=-6.6268077, fbank_std=5.358466, noise_augment=True,
                                   dev_holdout=False, source="SSAST src/finetune/esc50/run_esc_patch.sh"),
    "ks2": SsastFinetuneSettings(lr=2.5e-4, epochs=30, batch_size=128, warmup_steps=1000,
                                 lr_schedule=StepDecay(start=5, step=1, decay=0.85), mixup=0.6, freqm=48, timem=48,
                                 loss="bce", target_length=128, fbank_mean=-6.845978, fbank_std=5.5654526,
                                 noise_augment=True, source="SSAST src/finetune/speechcommands_v2_35/run_sc.sh"),
}

# KS1 / SID / ER through s3prl (SUPERB head over a trainable upstream, Adam, gradient clipping 1: the defaults of
# SuperbFinetuneSettings), each family by its own authors' recipe:
# - MAE-AST: AlanBaade/MAE-AST-Public s3prl/config/{speech_commands,voxceleb1,emotion}/config.yaml and the run
#   commands in s3prl/README.md: `-s last_hidden_state` for KS1 and ER, `-s hidden_states` for SID; the expert's
#   token sequence (s3prl/mae_ast/expert.py returns results["x"], 768-wide tokens, downsample 320).
# - SSAST: YuanGongND/ssast src/finetune/superb/{speechcommands_v1,voxceleb,iemocap}/config_*.yaml + run_*.sh
#   (`-s hidden_states`; ks1 lr 5e-5 in run_ks.sh for the frame model, the config's 1e-4 otherwise; sid batch 4 x
#   accumulation 8, 40k steps; er 4 x 8, 10k steps) with upstream/ast/hubconf.py's ssast_frame_base_{1,6,10}s: one
#   input of 100 / 600 / 1000 frames, AudioSet statistics, normalised before zero padding (upstream/ast/audio.py).
_MAE_AST_SUPERB: dict[str, SuperbFinetuneSettings] = {
    "ks1": SuperbFinetuneSettings(lr=1e-5, batch_size=512, balanced_sampling=True, max_steps=10_000, eval_every=100,
                                  balanced_dev=True, layers="last", feature_layout="tokens",
                                  source="MAE-AST-Public s3prl/config/speech_commands/config.yaml + s3prl/README.md "
                                         "(lr 1e-5, -s last_hidden_state)"),
    "sid": SuperbFinetuneSettings(lr=1e-4, batch_size=4, grad_accum=4, max_steps=60_000, eval_every=500,
                                  feature_layout="tokens",
                                  source="MAE-AST-Public s3prl/config/voxceleb1/config.yaml + s3prl/README.md "
                                         "(lr 1e-4, -s hidden_states)"),
    "er": SuperbFinetuneSettings(lr=1e-4, batch_size=6, grad_accum=5, max_steps=3000, eval_every=150,
                                 layers="last", feature_layout="tokens",
                                 source="MAE-AST-Public s3prl/config/emotion/config.yaml + s3prl/README.md "
                                        "(lr 1e-4, -s last_hidden_state)"),
}
_SSAST_GLOBAL_SUPERB = dict(input_geometry="global", normalise_padding=False, feature_layout="tokens",
                            **_AUDIOSET_STATS)
_SSAST_SUPERB: dict[str, SuperbFinetuneSettings] = {
    "ks1": SuperbFinetuneSettings(lr=5e-5, batch_size=32, balanced_sampling=True, max_steps=20_000, eval_every=500,
                                  balanced_dev=True, target_length=100, **_SSAST_GLOBAL_SUPERB,
                                  source="SSAST src/finetune/superb/speechcommands_v1/config_ks.yaml + run_ks.sh "
                                         "(lr 5e-5, ssast_frame_base_1s)"),
    "sid": SuperbFinetuneSettings(lr=1e-4, batch_size=4, grad_accum=8, max_steps=40_000, eval_every=500,
                                  target_length=1000, **_SSAST_GLOBAL_SUPERB,
                                  source="SSAST src/finetune/superb/voxceleb/config_sid.yaml + run_sid.sh "
                                         "(ssast_frame_base_10s)"),
    "er": SuperbFinetuneSettings(lr=1e-4, batch_size=4, grad_accum=8, max_steps=10_000, eval_every=200,
                                 target_length=600, **_SSAST_GLOBAL_SUPERB,
                                 source="SSAST src/finetune/superb/iemocap/config_er.yaml + run_er.sh "
                                        "(ssast_frame_base_6s)"),
}
# run_ks.sh's 5e-5 is the frame model's; the patch model keeps config_ks.yaml's lr 1e-4
_SSAST_PATCH_SUPERB = {"ks1": {"lr": 1e-4, "source": "SSAST src/finetune/superb/speechcommands_v1/config_ks.yaml "
                                                     "(lr 1e-4, patch model)"}}


def _finetune_by_family(task: str) -> dict[str, FinetuneSettings]:
    """{"default": ..., "mae_ast": ..., "ssast": ..., "ssast_patch": ...} fine-tuning settings of `task`."""
    if task in _SSAST_RECIPES:
        default = _SSAST_RECIPES[task]
        own = dataclasses.replace(default, input_geometry="global")
        mae_ast = dataclasses.replace(default, input_geometry="global",
                                      source=f"{default.source} under MAE-AST-Public README ('evaluated under the "
                                             "SSAST library with no settings changed')")
        return {"default": default, "ssast": own, "mae_ast": mae_ast}
    out: dict[str, FinetuneSettings] = {"default": _MAE_AST_SUPERB[task], "ssast": _SSAST_SUPERB[task]}
    if task in _SSAST_PATCH_SUPERB:
        out["ssast_patch"] = dataclasses.replace(_SSAST_SUPERB[task], **_SSAST_PATCH_SUPERB[task])
    return out


# Toy data: a few optimiser steps, small batches, no warm-up, so a CPU run finishes in seconds.
_FINETUNE_TOY_SSAST = {"epochs": 3, "batch_size": 8, "warmup_steps": 0, "lr_schedule": None, "weight_averaging": None}
_FINETUNE_TOY_SUPERB = {"max_steps": 40, "eval_every": 20, "batch_size": 8, "grad_accum": 1}

# scikit-learn LogisticRegression: LogregSettings' defaults (a log-spaced C grid picked on dev per layer) for every
# task; toy data gets a shorter grid and iteration cap.
_LOGREG = LogregSettings()
_LOGREG_TOY = {"Cs": (1e-2, 1e-1, 1.0, 10.0), "max_iter": 300}


def _toy_finetune(settings: FinetuneSettings) -> FinetuneSettings:
    toy = _FINETUNE_TOY_SSAST if isinstance(settings, SsastFinetuneSettings) else _FINETUNE_TOY_SUPERB
    return dataclasses.replace(settings, **toy)


def probe_settings(task: str, is_toy: bool, family: str = "default") -> dict[str, ProbeSettings]:
    """Fresh (copied) settings of every probe for `task` on real or toy data; `family` picks the fine-tuning
    recipe ("default", "mae_ast", "ssast", "ssast_patch"; unknown ones get the default)."""
    by_family = _finetune_by_family(task)
    finetune = by_family.get(family) or by_family.get(family.rsplit("_", 1)[0]) or by_family["default"]
    linear, finetune, logreg = copy.deepcopy((_LINEAR[task], finetune, _LOGREG))
    if is_toy:
        linear = dataclasses.replace(linear, **_LINEAR_TOY)
        finetune = _toy_finetune(finetune)
        logreg = dataclasses.replace(logreg, **_LOGREG_TOY)
    return {"linear": linear, "finetune": finetune, "logreg": logreg}


def probe_defaults(task: str, is_toy: bool) -> dict[str, dict]:
    """`probe_settings` as plain dicts: what a `Task` carries (and results.json records), with the fine-tuning
    settings of each model family under "by_family" (see `maebench.downstream.probes.settings.family_defaults`)."""
    plain: dict[str, Any] = {probe: settings_dict(s) for probe, s in probe_settings(task, is_toy).items()}
    plain["by_family"] = {
        family: {"finetune": settings_dict(_toy_finetune(s) if is_toy else copy.deepcopy(s))}
        for family, s in _finetune_by_family(task).items() if family != "default"
    }
    return plain
