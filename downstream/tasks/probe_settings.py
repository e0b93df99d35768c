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
    LinearSettings,
    LogregSettings,
    ProbeSettings,
    SsastFinetuneSettings,
    StepDecay,
    SuperbFinetuneSettings,
    settings_dict,
)

# SUPERB (s3prl downstream/*/config.yaml): Adam lr 1e-4, utterance-level head with a 256-d projector, gradient
# clipping 1 (LinearSettings' defaults); speech_commands: batch 32, 200k steps, eval every 4k; voxceleb1: batch 8 x
# accum 4, 200k steps, eval every 4k; emotion: batch 4 x accum 8, 30k steps, eval every 1k.
# as20k / esc50 are not SUPERB tasks: same optimiser and head, batch 32, a budget of about 100 epochs for ESC-50
# (1,440 train clips per fold -> 5k steps) and about 30 epochs for AS-20K (~18k clips -> 20k steps); AS-2M 100k steps
# through the label-frequency weighted sampler (our choice, in the spirit of SUPERB's fixed step budgets).
_LINEAR: dict[str, LinearSettings] = {
    "ks2": LinearSettings(batch_size=32, max_steps=200_000, eval_every=4000,
                          source="SUPERB speech_commands config (s3prl)"),
    "ks1": LinearSettings(batch_size=32, max_steps=200_000, eval_every=4000, balanced_sampling=True,
                          source="SUPERB speech_commands config + class-balanced sampler (s3prl)"),
    "sid": LinearSettings(batch_size=8, grad_accum=4, max_steps=200_000, eval_every=4000,
                          source="SUPERB voxceleb1 config (s3prl)"),
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

# Fine-tuning. AudioSet / ESC-50 / KS2: SSAST's recipes (YuanGongND/ssast src/finetune/audioset/run_as.sh,
# esc50/run_esc_patch.sh, speechcommands_v2_35/run_sc.sh; optimiser Adam betas (0.95, 0.999), weight decay 5e-7,
# warm-up = linear over the first 1000 steps when enabled, src/traintest.py: SsastFinetuneSettings' defaults). The
# MAE-AST paper fine-tunes on these tasks following SSAST. KS1 / SID / ER: MAE-AST's SUPERB fine-tuning configs
# (AlanBaade/MAE-AST-Public s3prl/config/*/config.yaml and s3prl/README.md run commands: upstream unfrozen, s3prl
# head, Adam, grad clip 1: SuperbFinetuneSettings' defaults); SSAST's equivalents (src/finetune/superb/*) use ks1
# lr 5e-5 batch 32 20k steps, sid lr 1e-4 4 x 8 40k steps, er lr 1e-4 4 x 8 10k steps.
_AUDIOSET_STATS: dict[str, Any] = {"fbank_mean": -4.2677393, "fbank_std": 4.5689974}
_AUDIOSET = dict(mixup=0.5, freqm=48, timem=192, loss="bce", weight_averaging=(6, 25), target_length=1024,
                 lr_schedule=StepDecay(start=10, step=5, decay=0.5), **_AUDIOSET_STATS)
_FINETUNE: dict[str, SsastFinetuneSettings | SuperbFinetuneSettings] = {
    "as20k": SsastFinetuneSettings(lr=5e-5, epochs=25, batch_size=12, **_AUDIOSET,
                                   source="SSAST src/finetune/audioset/run_as.sh (set=balanced)"),
    "as2m": SsastFinetuneSettings(lr=1e-5, epochs=5, batch_size=12, **_AUDIOSET, balanced_sampling=True,
                                  source="SSAST src/finetune/audioset/run_as.sh (set=full)"),
    "esc50": SsastFinetuneSettings(lr=1e-4, epochs=50, batch_size=48,
                                   lr_schedule=StepDecay(start=6, step=1, decay=0.85), freqm=24, timem=96,
                                   target_length=512, fbank_mean=-6.6268077, fbank_std=5.358466, noise_augment=True,
                                   source="SSAST src/finetune/esc50/run_esc_patch.sh"),
    "ks2": SsastFinetuneSettings(lr=2.5e-4, epochs=30, batch_size=128, warmup_steps=1000,
                                 lr_schedule=StepDecay(start=5, step=1, decay=0.85), mixup=0.6, freqm=48, timem=48,
                                 loss="bce", target_length=128, fbank_mean=-6.845978, fbank_std=5.5654526,
                                 noise_augment=True, source="SSAST src/finetune/speechcommands_v2_35/run_sc.sh"),
    "ks1": SuperbFinetuneSettings(lr=1e-5, batch_size=512, balanced_sampling=True, max_steps=10_000, eval_every=100,
                                  **_AUDIOSET_STATS,
                                  source="MAE-AST-Public s3prl/config/speech_commands/config.yaml + README (lr 1e-5)"),
    "sid": SuperbFinetuneSettings(lr=1e-4, batch_size=4, grad_accum=4, max_steps=60_000, eval_every=500,
                                  **_AUDIOSET_STATS,
                                  source="MAE-AST-Public s3prl/config/voxceleb1/config.yaml + README (lr 1e-4)"),
    "er": SuperbFinetuneSettings(lr=1e-4, batch_size=6, grad_accum=5, max_steps=3000, eval_every=150,
                                 **_AUDIOSET_STATS,
                                 source="MAE-AST-Public s3prl/config/emotion/config.yaml + README (lr 1e-4)"),
}
# Toy data: a few optimiser steps, small batches, no warm-up, so a CPU run finishes in seconds.
_FINETUNE_TOY_SSAST = {"epochs": 3, "batch_size": 8, "warmup_steps": 0, "lr_schedule": None, "weight_averaging": None}
_FINETUNE_TOY_SUPERB = {"max_steps": 40, "eval_every": 20, "batch_size": 8, "grad_accum": 1}

# scikit-learn LogisticRegression: LogregSettings' defaults (a log-spaced C grid picked on dev per layer) for every
# task; toy data gets a shorter grid and iteration cap.
_LOGREG = LogregSettings()
_LOGREG_TOY = {"Cs": (1e-2, 1e-1, 1.0, 10.0), "max_iter": 300}


def probe_settings(task: str, is_toy: bool) -> dict[str, ProbeSettings]:
    """Fresh (copied) settings of every probe for `task` on real or toy data."""
    linear, finetune, logreg = copy.deepcopy((_LINEAR[task], _FINETUNE[task], _LOGREG))
    if is_toy:
        linear = dataclasses.replace(linear, **_LINEAR_TOY)
        toy = _FINETUNE_TOY_SSAST if isinstance(finetune, SsastFinetuneSettings) else _FINETUNE_TOY_SUPERB
        finetune = dataclasses.replace(finetune, **toy)
        logreg = dataclasses.replace(logreg, **_LOGREG_TOY)
    return {"linear": linear, "finetune": finetune, "logreg": logreg}


def probe_defaults(task: str, is_toy: bool) -> dict[str, dict]:
    """`probe_settings` as plain dicts: what a `Task` carries (and results.json records)."""
    return {probe: settings_dict(settings) for probe, settings in probe_settings(task, is_toy).items()}
