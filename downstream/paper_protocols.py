"""The protocol behind each number of the MAE-AST paper's table, per (model family, task), with its sources.

This table is written from the references, not from maebench's defaults, so `paper_protocol` in results.json (and
`maebench compare --strict`) can fail where maebench's defaults deliberately differ (ESC-50 model selection,
AS-20K labels) or where a run changes a setting. All the paper's numbers are fine-tuned.

Each entry names only the protocol fields its reference fixes (`maebench.downstream.probes.protocol`
PROTOCOL_FIELDS); a field it does not name is not compared. Field values:
- selection: what picks the reported weights: "weight averaging", "best dev", "best dev (class-balanced
  resampled)", "best mean test epoch" (selected on test data), "last epoch";
- train_labels: "as shipped", or "psla enhanced" (PSLA's label-enhanced AudioSet file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("mae_ast", "ssast")

_AUDIOSET_STATS = {"fbank_mean": -4.2677393, "fbank_std": 4.5689974}


@dataclass(frozen=True)
class PaperProtocol:
    fields: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- AS-20K, ESC-50, KS2: SSAST's fine-tuning library
_SSAST_LIBRARY = {"probe": "finetune", "recipe": "ssast", "input_geometry": "global", "normalise_padding": True}
_SSAST_LIBRARY_TASKS: dict[str, PaperProtocol] = {
    "as20k": PaperProtocol(
        {**_SSAST_LIBRARY, "target_length": 1024, **_AUDIOSET_STATS, "dev_holdout": False,
         "selection": "weight averaging", "train_labels": "psla enhanced"},
        {"recipe": "ssast src/finetune/audioset/run_as.sh (set=balanced)",
         "input": "ssast src/dataloader.py _wav2fbank / __getitem__ (target_length 1024, AudioSet statistics)",
         "selection": "run_as.sh --wa True --wa_start 6 --wa_end 25 (no dev split; src/traintest.py validate_wa)",
         "train_labels": "run_as.sh tr_data=.../enhance_label/datafiles_local/balanced_train_data_type1_2_mean.json "
                         "(PSLA's label-enhanced balanced set)"}),
    "esc50": PaperProtocol(
        {**_SSAST_LIBRARY, "target_length": 512, "fbank_mean": -6.6268077, "fbank_std": 5.358466,
         "dev_holdout": False, "selection": "best mean test epoch", "train_labels": "as shipped"},
        {"recipe": "ssast src/finetune/esc50/run_esc_patch.sh, run_esc_frame.sh",
         "input": "ssast src/dataloader.py (target_length 512, ESC-50 statistics)",
         "selection": "run_esc_*.sh --data-val = the test fold; get_esc_result.py reports every fold at the epoch "
                      "with the best 5-fold-mean test accuracy",
         "train_labels": "ESC-50 meta/esc50.csv via prep_esc50.py"}),
    "ks2": PaperProtocol(
        {**_SSAST_LIBRARY, "target_length": 128, "fbank_mean": -6.845978, "fbank_std": 5.5654526,
         "dev_holdout": True, "selection": "best dev", "train_labels": "as shipped"},
        {"recipe": "ssast src/finetune/speechcommands_v2_35/run_sc.sh",
         "input": "ssast src/dataloader.py (target_length 128, Speech Commands statistics)",
         "selection": "src/run.py: best_audio_model.pth picked on the validation list, then scored on the test list",
         "train_labels": "Speech Commands v0.02 folders via prep_sc.py"}),
}
_MAE_AST_UNDER_SSAST = ("MAE-AST-Public README: AS / ESC-50 / KS2 'evaluated under the SSAST library with no "
                        "settings changed' (the fine-tuning wrapper itself is not public)")

# ------------------------------------------------------------------------- KS1, SID, ER: s3prl's SUPERB runner
_S3PRL_DEV = {
    "ks1": ("best dev (class-balanced resampled)",
            "s3prl downstream/speech_commands/expert.py _get_balanced_dev_dataloader (WeightedRandomSampler over "
            "len(dev) / class count) + log_records dev-best.ckpt"),
    "sid": ("best dev", "s3prl downstream/voxceleb1: iden_split.txt split 2, dev-best.ckpt"),
    "er": ("best dev", "s3prl downstream/emotion/expert.py: torch.manual_seed(0); random_split(train, "
                       "[int(0.8 * n), n - int(0.8 * n)]), dev-best.ckpt"),
}
_MAE_AST_LAYERS = {"ks1": "last", "sid": "all", "er": "last"}
_SSAST_SUPERB_LENGTH = {"ks1": 100, "sid": 1000, "er": 600}


def _superb(family: str, task: str) -> PaperProtocol:
    selection, selection_source = _S3PRL_DEV[task]
    common = {"probe": "finetune", "recipe": "superb", "feature_layout": "tokens", "dev_holdout": True,
              "selection": selection, "train_labels": "as shipped"}
    if family == "mae_ast":
        return PaperProtocol(
            {**common, "input_geometry": "model", "layers": _MAE_AST_LAYERS[task]},
            {"recipe": "MAE-AST-Public s3prl/config/*/config.yaml + s3prl/README.md run commands",
             "input": "MAE-AST-Public s3prl/mae_ast/expert.py (its own fbank, variable length, results['x'] tokens)",
             "layers": "s3prl/README.md: -s last_hidden_state for KS1 and ER, -s hidden_states for SID",
             "selection": selection_source})
    return PaperProtocol(
        {**common, "input_geometry": "global", "target_length": _SSAST_SUPERB_LENGTH[task], "normalise_padding": False,
         "layers": "all", **_AUDIOSET_STATS},
        {"recipe": "ssast src/finetune/superb/*/config_*.yaml + run_*.sh (-s hidden_states)",
         "input": "ssast src/finetune/superb/upstream/ast/audio.py + hubconf.py ssast_frame_base_{1,10,6}s",
         "selection": selection_source})


def paper_protocol(family: str | None, task: str) -> PaperProtocol | None:
    """The protocol of the paper's number for `family` ("mae_ast", "ssast", or "<family>_<tokenizer>") on `task`;
    None where the paper reports no such number."""
    base = _family(family)
    if base is None:
        return None
    if task in _SSAST_LIBRARY_TASKS:
        entry = _SSAST_LIBRARY_TASKS[task]
        if base == "mae_ast":
            return PaperProtocol(entry.fields, {**entry.sources, "family": _MAE_AST_UNDER_SSAST})
        return entry
    if task in _S3PRL_DEV:
        return _superb(base, task)
    return None


def _family(family: str | None) -> str | None:
    if not family:
        return None
    for base in FAMILIES:
        if family == base or family.startswith(f"{base}_"):
            return base
    return None


def differences(fields: dict[str, Any], paper: PaperProtocol | None) -> list[str]:
    """"name: ours (paper: theirs)" for each field the paper's protocol fixes that the run's `fields` do not
    match (a field the run did not record reads "unrecorded")."""
    if paper is None:
        return []
    return [f"{name}: {fields[name] if name in fields else 'unrecorded'} (paper: {value})"
            for name, value in paper.fields.items() if fields.get(name, _MISSING) != value]


_MISSING = object()
