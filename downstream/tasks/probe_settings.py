"""Default probe hyperparameters per task, from the recipes the paper's numbers come from (sources inline).

`probe_defaults(task, is_toy)` returns {"linear": {...}, "finetune": {...}, "logreg": {...}}. Real data gets the
published budgets; toy data gets the same settings with a small step/epoch budget so a toy run takes seconds.

Keys (all optional for a probe to honour, but these are the names):
- linear: lr, optimizer, batch_size, grad_accum, max_steps, eval_every, grad_clip, projector_dim, loss,
  balanced_sampling (draw training items with the task's `sample_weights`: KS1 as in s3prl, AS-2M), source
- finetune: recipe ("ssast": AST-style epochs with SpecAugment/mixup, or "superb": s3prl-style steps, upstream
  unfrozen), lr, batch_size, grad_accum, epochs | max_steps, warmup_steps, lr_schedule (MultiStepLR from epoch
  `start` every `step` epochs times `decay`), mixup, freqm, timem, loss ("bce" | "ce"), weight_averaging
  ([first, last] epoch or None), balanced_sampling, target_length (fbank frames), fbank_mean, fbank_std
  (SSAST dataset statistics), noise_augment, head_lr_mult, grad_clip, source
- logreg: Cs (inverse regularisation grid), max_iter
"""

from __future__ import annotations

import copy

# SUPERB (s3prl downstream/*/config.yaml): Adam lr 1e-4, utterance-level head with a 256-d projector, gradient
# clipping 1; speech_commands: batch 32, 200k steps, eval every 4k; voxceleb1: batch 8 x accum 4, 200k steps,
# eval every 4k; emotion: batch 4 x accum 8, 30k steps, eval every 1k.
# as20k / esc50 are not SUPERB tasks: same optimiser and head, batch 32, a budget of about 100 epochs for ESC-50
# (1,440 train clips per fold -> 5k steps) and about 30 epochs for AS-20K (~18k clips -> 20k steps); AS-2M 100k steps
# through the label-frequency weighted sampler (our choice, in the spirit of SUPERB's fixed step budgets).
_SUPERB = {"lr": 1e-4, "optimizer": "adam", "grad_clip": 1.0, "projector_dim": 256, "loss": "ce"}
_LINEAR: dict[str, dict] = {
    "ks2": {**_SUPERB, "batch_size": 32, "grad_accum": 1, "max_steps": 200_000, "eval_every": 4000,
            "source": "SUPERB speech_commands config (s3prl)"},
    "ks1": {**_SUPERB, "batch_size": 32, "grad_accum": 1, "max_steps": 200_000, "eval_every": 4000,
            "balanced_sampling": True, "source": "SUPERB speech_commands config + class-balanced sampler (s3prl)"},
    "sid": {**_SUPERB, "batch_size": 8, "grad_accum": 4, "max_steps": 200_000, "eval_every": 4000,
            "source": "SUPERB voxceleb1 config (s3prl)"},
    "er": {**_SUPERB, "batch_size": 4, "grad_accum": 8, "max_steps": 30_000, "eval_every": 1000,
           "source": "SUPERB emotion config (s3prl)"},
    "esc50": {**_SUPERB, "batch_size": 32, "grad_accum": 1, "max_steps": 5000, "eval_every": 500,
              "source": "SUPERB optimiser/head, maebench budget (~100 epochs)"},
    "as20k": {**_SUPERB, "loss": "bce", "batch_size": 32, "grad_accum": 1, "max_steps": 20_000, "eval_every": 2000,
              "source": "SUPERB optimiser/head, maebench budget (~30 epochs), BCE for multi-label"},
    "as2m": {**_SUPERB, "loss": "bce", "batch_size": 32, "grad_accum": 1, "max_steps": 100_000, "eval_every": 10_000,
             "balanced_sampling": True, "source": "SUPERB optimiser/head, maebench budget, label-frequency sampler"},
}
# toy budgets are ~1000x shorter than SUPERB's 200k steps, so the step size is 10x larger to still converge
_LINEAR_TOY = {"max_steps": 300, "eval_every": 50, "lr": 1e-3}

# Fine-tuning. AudioSet / ESC-50 / KS2: SSAST's recipes (YuanGongND/ssast src/finetune/audioset/run_as.sh,
# esc50/run_esc_patch.sh, speechcommands_v2_35/run_sc.sh; optimiser Adam betas (0.95, 0.999), weight decay 5e-7,
# warm-up = linear over the first 1000 steps when enabled, src/traintest.py). The MAE-AST paper fine-tunes on these
# tasks following SSAST. KS1 / SID / ER: MAE-AST's SUPERB fine-tuning configs (AlanBaade/MAE-AST-Public
# s3prl/config/*/config.yaml and s3prl/README.md run commands: upstream unfrozen, s3prl head, Adam, grad clip 1);
# SSAST's equivalents (src/finetune/superb/*) use ks1 lr 5e-5 batch 32 20k steps, sid lr 1e-4 4 x 8 40k steps,
# er lr 1e-4 4 x 8 10k steps.
_SSAST_OPT = {"optimizer": "adam", "betas": (0.95, 0.999), "weight_decay": 5e-7, "head_lr_mult": 1.0}
_AUDIOSET_STATS = {"fbank_mean": -4.2677393, "fbank_std": 4.5689974}
_FINETUNE: dict[str, dict] = {
    "as20k": {"recipe": "ssast", **_SSAST_OPT, "lr": 5e-5, "epochs": 25, "batch_size": 12, "grad_accum": 1,
              "warmup_steps": 0, "lr_schedule": {"start": 10, "step": 5, "decay": 0.5}, "mixup": 0.5,
              "freqm": 48, "timem": 192, "loss": "bce", "weight_averaging": [6, 25], "balanced_sampling": False,
              "target_length": 1024, **_AUDIOSET_STATS, "noise_augment": False,
              "source": "SSAST src/finetune/audioset/run_as.sh (set=balanced)"},
    "as2m": {"recipe": "ssast", **_SSAST_OPT, "lr": 1e-5, "epochs": 5, "batch_size": 12, "grad_accum": 1,
             "warmup_steps": 0, "lr_schedule": {"start": 10, "step": 5, "decay": 0.5}, "mixup": 0.5,
             "freqm": 48, "timem": 192, "loss": "bce", "weight_averaging": [6, 25], "balanced_sampling": True,
             "target_length": 1024, **_AUDIOSET_STATS, "noise_augment": False,
             "source": "SSAST src/finetune/audioset/run_as.sh (set=full)"},
    "esc50": {"recipe": "ssast", **_SSAST_OPT, "lr": 1e-4, "epochs": 50, "batch_size": 48, "grad_accum": 1,
              "warmup_steps": 0, "lr_schedule": {"start": 6, "step": 1, "decay": 0.85}, "mixup": 0.0,
              "freqm": 24, "timem": 96, "loss": "ce", "weight_averaging": None, "balanced_sampling": False,
              "target_length": 512, "fbank_mean": -6.6268077, "fbank_std": 5.358466, "noise_augment": True,
              "source": "SSAST src/finetune/esc50/run_esc_patch.sh"},
    "ks2": {"recipe": "ssast", **_SSAST_OPT, "lr": 2.5e-4, "epochs": 30, "batch_size": 128, "grad_accum": 1,
            "warmup_steps": 1000, "lr_schedule": {"start": 5, "step": 1, "decay": 0.85}, "mixup": 0.6,
            "freqm": 48, "timem": 48, "loss": "bce", "weight_averaging": None, "balanced_sampling": False,
            "target_length": 128, "fbank_mean": -6.845978, "fbank_std": 5.5654526, "noise_augment": True,
            "source": "SSAST src/finetune/speechcommands_v2_35/run_sc.sh"},
    "ks1": {"recipe": "superb", "optimizer": "adam", "lr": 1e-5, "batch_size": 512, "grad_accum": 1,
            "balanced_sampling": True,
            "max_steps": 10_000, "eval_every": 100, "grad_clip": 1.0, "loss": "ce", "mixup": 0.0, "freqm": 0,
            "timem": 0, "warmup_steps": 0, "projector_dim": 256, **_AUDIOSET_STATS,
            "source": "MAE-AST-Public s3prl/config/speech_commands/config.yaml + README (lr 1e-5)"},
    "sid": {"recipe": "superb", "optimizer": "adam", "lr": 1e-4, "batch_size": 4, "grad_accum": 4,
            "max_steps": 60_000, "eval_every": 500, "grad_clip": 1.0, "loss": "ce", "mixup": 0.0, "freqm": 0,
            "timem": 0, "warmup_steps": 0, "projector_dim": 256, **_AUDIOSET_STATS,
            "source": "MAE-AST-Public s3prl/config/voxceleb1/config.yaml + README (lr 1e-4)"},
    "er": {"recipe": "superb", "optimizer": "adam", "lr": 1e-4, "batch_size": 6, "grad_accum": 5,
           "max_steps": 3000, "eval_every": 150, "grad_clip": 1.0, "loss": "ce", "mixup": 0.0, "freqm": 0,
           "timem": 0, "warmup_steps": 0, "projector_dim": 256, **_AUDIOSET_STATS,
           "source": "MAE-AST-Public s3prl/config/emotion/config.yaml + README (lr 1e-4)"},
}
# Toy data: a few optimiser steps, small batches, no warm-up, so a CPU run finishes in seconds.
_FINETUNE_TOY_SSAST = {"epochs": 3, "batch_size": 8, "warmup_steps": 0, "lr_schedule": None,
                       "weight_averaging": None}
_FINETUNE_TOY_SUPERB = {"max_steps": 40, "eval_every": 20, "batch_size": 8, "grad_accum": 1}

# scikit-learn LogisticRegression inverse regularisation strengths, log-spaced; picked on dev per layer.
_LOGREG = {"Cs": [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0], "max_iter": 1000}
_LOGREG_TOY = {"Cs": [1e-2, 1e-1, 1.0, 10.0], "max_iter": 300}


def probe_defaults(task: str, is_toy: bool) -> dict[str, dict]:
    """Fresh (deep-copied) default hyperparameters of every probe for `task` on real or toy data."""
    linear = copy.deepcopy(_LINEAR[task])
    finetune = copy.deepcopy(_FINETUNE[task])
    logreg = copy.deepcopy(_LOGREG)
    if is_toy:
        linear.update(_LINEAR_TOY)
        finetune.update(_FINETUNE_TOY_SSAST if finetune["recipe"] == "ssast" else _FINETUNE_TOY_SUPERB)
        logreg.update(_LOGREG_TOY)
    return {"linear": linear, "finetune": finetune, "logreg": logreg}
