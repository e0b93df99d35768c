"""Pretraining configuration: dataclasses are the single source of truth for every default.

A recipe (YAML) overrides some fields, `--set section.key=value` overrides on top, and every run writes the fully
resolved config next to its outputs. The no-argument default (`PretrainConfig()`) is the tiny demo, and
`recipes/demo_tiny.yaml` equals it. `OptimConfig()` alone is the paper's optimisation (MAE-AST's fairseq config:
Adam(0.9, 0.98) with decoupled weight decay 0.01, eps 1e-6, lr 1e-4, 32k warm-up steps then polynomial decay,
clipping 10); the demo keeps all of it but the peak lr and warm-up length, which a 600-step run cannot use.
Overrides are typed and checked by maebench.settings, the same rules the probe settings of `maebench eval` use.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.resources
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from maebench.errors import MaebenchError
from maebench.settings import parse_scalar, set_field, split_assignment

MODEL_NAMES = ("mae_ast_patch", "mae_ast_frame", "ssast_patch", "ssast_frame")
MODEL_SIZES = ("tiny", "small", "base")
# A recipe value meaning "must be given" (the data path of the paper recipes): --data PATH or --set data.source=PATH.
REQUIRED = "???"
# The top-level recipes/ folder, installed as the package maebench.recipes (editable and normal installs).
RECIPES_DIR = Path(importlib.resources.files("maebench.recipes"))  # type: ignore[arg-type]


# The default's model settings for a run of a few hundred steps, measured on the built-in corpus (why each is what it
# is: recipes/demo_tiny.yaml): a 4-layer encoder and a 1-layer decoder, none of the paper's regularisers. The paper
# recipes set `overrides: {}` (the released architecture and regularisers).
SHORT_RUN_OVERRIDES: dict[str, Any] = {"depth": 4, "decoder_depth": 1, "dropout": 0.0, "attn_dropout": 0.0,
                                       "dropout_input": 0.0, "layerdrop": 0.0, "shared_mask": False}


@dataclass
class ModelConfig:
    name: Literal["mae_ast_patch", "mae_ast_frame", "ssast_patch", "ssast_frame"] = "mae_ast_patch"
    size: Literal["tiny", "small", "base"] = "tiny"
    # Fields of the model family's own config (MaeAstConfig / SsastConfig), e.g. {"depth": 6}; see model_overrides.
    overrides: dict[str, Any] = field(default_factory=lambda: dict(SHORT_RUN_OVERRIDES))


@dataclass
class DataConfig:
    """What a pretraining batch holds (see maebench.pretrain_data and the README's Pretraining section)."""

    # None = the built-in toy corpus; else a .tsv manifest, an AST-style .json list or a directory of audio files.
    source: str | None = None
    # The longest clip: longer files are randomly cropped to it. With batch_length "fixed" also the shortest
    # (shorter clips are zero-padded): SSAST's fixed input (its target_length frames).
    clip_seconds: float = 1.0
    # Files shorter than this are skipped. The paper recipes use the public MAE-AST's min_sample_size 32,000
    # samples = 2 s (config/pretrain/mae_ast.yaml line 30); the default is lower so short clips of your own (and
    # the tests' 0.56-1 s tones) still train; the toy corpus (2-4 s clips) never meets it.
    min_seconds: float = 0.5
    # "shortest": crop every clip of a batch to the batch's shortest (no padding; MAE-AST, pad_audio: false in
    # config/pretrain/mae_ast.yaml line 33); "fixed": crop or zero-pad to clip_seconds (SSAST's dataloader);
    # "auto": the model family's own way (shortest for mae_ast_*, fixed for ssast_*).
    batch_length: Literal["auto", "shortest", "fixed"] = "auto"
    # With "shortest": build batches from clips of similar recorded length (needs a .tsv manifest's lengths;
    # fairseq's size-sorted batching in the public code). Off in the demo, whose clips all exceed clip_seconds.
    bucket: bool = False
    # With "fixed": where a longer file is cut. "start" keeps its first clip_seconds of fbank frames, as SSAST's
    # dataloader.py keeps the first target_length frames of the whole file's fbank; "random": a random offset.
    fixed_crop: Literal["start", "random"] = "start"
    # The validation clips of optim.schedule "plateau" (SSAST's): `valid_clips` held out of the pretraining list,
    # or, with valid_source, a list of its own (the authors validated on AudioSet's eval split, eval_data.json).
    valid_clips: int = 0
    valid_source: str | None = None
    # Decoding workers: processes for the "torch" loader (a DataLoader), threads for "fairseq2" (fairseq2's C++
    # pipeline in the training process; the `fairseq2` extra). Both deliver the same batches (maebench.fairseq2_data);
    # `maebench bench data` measures which is faster on a machine.
    loader: Literal["torch", "fairseq2"] = "torch"
    num_workers: int = 1


@dataclass
class OptimConfig:
    """The paper's optimisation (MAE-AST fairseq config); the demo default (PretrainConfig) shortens it."""

    # fairseq's "adam" (the MAE-AST recipe) decouples weight decay, i.e. it is AdamW; SSAST used coupled Adam.
    name: Literal["adam", "adamw"] = "adamw"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01
    warmup_steps: int = 32000
    # 0: the warm-up rises every step; N: in stairs of N steps from 0, as SSAST's traintest_mask.py (every 50 steps
    # lr = step / 1000 * lr, so the first 50 steps do not move the weights)
    warmup_stairs: int = 0
    # after warm-up: polynomial decay to end_lr (power 1 = linear), cosine to end_lr, constant, or "plateau":
    # constant, times plateau_factor whenever the held-out plateau_metric (data.valid_clips clips, checked every
    # plateau_every steps) has not improved for more than plateau_patience checks (SSAST's traintest_mask.py:
    # ReduceLROnPlateau(mode max, factor 0.5, patience 2) on the validation InfoNCE accuracy every 4,000 steps)
    schedule: Literal["polynomial", "cosine", "constant", "plateau"] = "polynomial"
    plateau_every: int = 4000
    plateau_patience: int = 2
    plateau_factor: float = 0.5
    plateau_metric: str = "nce_acc"  # a stat of the model's pretrain_loss, or "loss"
    plateau_mode: Literal["max", "min"] = "max"
    power: float = 1.0
    end_lr: float = 0.0
    clip_grad_norm: float = 10.0  # 0 = no clipping


@dataclass
class TrainConfig:
    batch_size: int = 16  # clips per optimizer step, over all processes and accumulation steps together
    max_steps: int = 600
    grad_accum: int = 1
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    # torch.compile the transformer blocks (upstream.blocks.compile_blocks); auto = on for CUDA, off on CPU
    compile: bool | Literal["auto"] = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 100
    keep_last: int = 2
    tensorboard: bool = False  # also write the metrics as TensorBoard events to RUN/tensorboard/ (needs tensorboard)
    # Probe curve (maebench.probe_curve): at step 0, every probe_every steps (0 = off) and at the end, a snapshot of
    # the encoder is scored by the logreg probe on a fixed subset of each task in probe_tasks (names as `maebench
    # eval --task`, hear:PATH included), by a background process, into RUN/probes.jsonl.
    probe_every: int = 0
    probe_tasks: tuple[str, ...] = ()
    probe_data: str | None = None  # dataset root, ROOT/<task> holding each task; None = the toy look-alikes
    probe_examples: int = 64  # items of each task's train and test subsets (dev: half as many)
    probe_device: str = "cpu"  # the probe process's torch device (e.g. cuda:1); the CPU keeps the GPU for training
    probe_max_share: float = 0.1  # the loop waits for the last points at most this share of the run's wall time


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # The demo runs 600 steps, not 400k: a 10x larger peak lr and a 30-step warm-up make it learn in that time.
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=30))
    train: TrainConfig = field(default_factory=TrainConfig)
    run_dir: str | None = None  # None = runs/pretrain/<model>-<size> under the current directory

    def default_run_dir(self) -> Path:
        if self.run_dir:
            return Path(self.run_dir)
        return Path("runs") / "pretrain" / f"{self.model.name}-{self.model.size}"


def model_overrides(cfg: PretrainConfig) -> dict[str, Any]:
    """The model.overrides the model is built with. A short-run default for a part the family does not have (SSAST:
    no decoder, no dropout) is left out, so `maebench pretrain --model ssast_patch` keeps the defaults that apply
    (its 4 layers); any other field is passed on, and one the family does not know is an error there."""
    from maebench.upstream.mae_ast import MaeAstConfig
    from maebench.upstream.ssast import SsastConfig

    known = {f.name for f in dataclasses.fields(SsastConfig if cfg.model.name.startswith("ssast") else MaeAstConfig)}
    return {key: value for key, value in cfg.model.overrides.items()
            if key in known or key not in SHORT_RUN_OVERRIDES or value != SHORT_RUN_OVERRIDES[key]}


def batch_length(cfg: PretrainConfig) -> str:
    """ "shortest" or "fixed": `data.batch_length`, with "auto" resolved by the model family."""
    if cfg.data.batch_length != "auto":
        return cfg.data.batch_length
    return "fixed" if cfg.model.name.startswith("ssast") else "shortest"


# Fields that change how a run is observed or stored, not what it computes: editing them keeps the run resumable.
_OPERATIONAL_FIELDS = {
    "run_dir", "data.num_workers", "train.compile", "train.log_every", "train.ckpt_every", "train.keep_last",
    "data.loader", "train.tensorboard",  # both loaders deliver the same batches: switching keeps a run resumable
    "train.probe_every", "train.probe_tasks", "train.probe_data", "train.probe_examples", "train.probe_device",
    "train.probe_max_share",  # probes watch the run, they do not change it
}


# ---------------------------------------------------------------------------------------------------- conversion


def to_dict(cfg: PretrainConfig) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), fit for YAML and JSON."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def to_yaml(cfg: PretrainConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def from_dict(data: dict[str, Any], *, origin: str = "config") -> PretrainConfig:
    """Defaults overridden by a nested mapping (a recipe, or a run's saved config.yaml); types checked."""
    cfg = PretrainConfig()
    if not isinstance(data, dict):
        raise MaebenchError(f"{origin}: expected a mapping of sections (model, data, optim, train), got {data!r}")
    if isinstance(data.get("model"), dict) and "overrides" in data["model"]:
        cfg.model.overrides = {}  # listed whole (the paper recipes: {}): the default's short-run ones do not leak in
    for key, value in _flatten(data, origin):
        _set(cfg, key, value, origin, from_text=False)
    return cfg


def config_hash(cfg: PretrainConfig) -> str:
    """Identity of what a run computes: equal hashes = a rerun of the same run, so it resumes silently."""
    flat = dict(_flatten(to_dict(cfg), "config"))
    identity = {k: v for k, v in flat.items() if k not in _OPERATIONAL_FIELDS and not k.startswith("model.overrides.")}
    identity["model.overrides"] = cfg.model.overrides
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def diff(old: PretrainConfig, new: PretrainConfig) -> list[str]:
    """Human-readable `key: old -> new` lines for the fields that differ."""
    a, b = dict(_flatten(to_dict(old), "old")), dict(_flatten(to_dict(new), "new"))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


# ---------------------------------------------------------------------------------------------------- recipes


def resolve_recipe_path(recipe: str | Path) -> Path:
    """A YAML path, or the bare name of a bundled recipe (`demo_tiny` -> recipes/demo_tiny.yaml)."""
    path = Path(recipe)
    if path.is_file():
        return path
    bundled = RECIPES_DIR / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if path.parent == Path(".") and bundled.is_file():
        return bundled
    names = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))) or "none found"
    raise MaebenchError(f"recipe {recipe} not found: give a YAML file path or a bundled recipe name ({names})")


def read_recipe_yaml(recipe: str | Path) -> tuple[Path, Any]:
    """(path, parsed YAML) of a recipe file or bundled name; unreadable YAML is a one-line error."""
    path = resolve_recipe_path(recipe)
    try:
        return path, yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise MaebenchError(f"recipe {path} could not be read as YAML ({detail}): fix the file") from None


def load_recipe(recipe: str | Path) -> PretrainConfig:
    """The defaults overridden by a recipe file (nested YAML mapping of sections)."""
    path, data = read_recipe_yaml(recipe)
    return from_dict(data, origin=f"recipe {path}")


def apply_overrides(cfg: PretrainConfig, overrides: list[str], *, origin: str = "--set") -> PretrainConfig:
    """A copy of `cfg` with `key.sub=value` strings applied (type-checked; unknown key -> MaebenchError naming it)."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        key, value = split_assignment(item, origin=origin, example="optim.lr=3e-4")
        _set(cfg, key, value, origin, from_text=True)
    return cfg


def check_required(cfg: PretrainConfig) -> None:
    """Placeholders (???) left by a recipe must be filled before a run starts."""
    if cfg.data.source == REQUIRED:
        raise MaebenchError(
            "data.source is required by this recipe: pass --data PATH (a .tsv manifest, a .json list or an audio "
            "directory) or --set data.source=PATH"
        )


def validate(cfg: PretrainConfig) -> None:
    """Value checks that types alone cannot express."""
    t, o = cfg.train, cfg.optim
    positive = {"train.batch_size": t.batch_size, "train.max_steps": t.max_steps, "train.grad_accum": t.grad_accum,
                "train.log_every": t.log_every, "train.ckpt_every": t.ckpt_every, "train.keep_last": t.keep_last,
                "data.clip_seconds": cfg.data.clip_seconds, "optim.lr": o.lr, "optim.plateau_every": o.plateau_every}
    for key, value in positive.items():
        if value <= 0:
            raise MaebenchError(f"{key}={value} must be positive: set it with --set {key}=...")
    non_negative = {"optim.warmup_steps": o.warmup_steps, "optim.weight_decay": o.weight_decay,
                    "optim.clip_grad_norm": o.clip_grad_norm, "optim.end_lr": o.end_lr, "data.num_workers":
                    cfg.data.num_workers, "optim.eps": o.eps, "data.min_seconds": cfg.data.min_seconds,
                    "data.valid_clips": cfg.data.valid_clips, "optim.plateau_patience": o.plateau_patience,
                    "optim.warmup_stairs": o.warmup_stairs}
    for key, value in non_negative.items():
        if value < 0:
            raise MaebenchError(f"{key}={value} must not be negative: set it with --set {key}=...")
    if o.schedule == "plateau" and cfg.data.valid_clips == 0 and not cfg.data.valid_source:
        raise MaebenchError("optim.schedule=plateau checks a held-out metric: hold out clips with --set "
                            "data.valid_clips=N or name a validation list with --set data.valid_source=PATH")
    if not 0 < o.plateau_factor < 1:
        raise MaebenchError(f"optim.plateau_factor={o.plateau_factor} must be between 0 and 1 (SSAST: 0.5)")
    if t.probe_every < 0 or t.probe_max_share < 0:
        raise MaebenchError(f"train.probe_every={t.probe_every} (0 = off) and train.probe_max_share="
                            f"{t.probe_max_share} must not be negative")
    if t.probe_every and not t.probe_tasks:
        raise MaebenchError("train.probe_every is set but train.probe_tasks is empty: name the tasks, e.g. "
                            "--probe-tasks ks2,esc50")
    if cfg.data.clip_seconds < 0.2:  # a 16x16 patch needs 16 fbank frames = 0.175 s
        raise MaebenchError(f"data.clip_seconds={cfg.data.clip_seconds} is too short for a 16-frame patch: use >= 0.2")
    if batch_length(cfg) == "shortest" and cfg.data.min_seconds < 0.2:  # the batch is as long as its shortest clip
        raise MaebenchError(f"data.min_seconds={cfg.data.min_seconds} lets a batch shrink below one 16-frame patch "
                            "(batches are cropped to their shortest clip): use >= 0.2")


# ---------------------------------------------------------------------------------------------------- internals


def _flatten(data: dict[str, Any], origin: str, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mapping -> [("optim.lr", 1e-4), ...]; model.overrides stays one dict-valued key per entry."""
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if name == "model.overrides":
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise MaebenchError(f"{origin}: model.overrides must be a mapping of model config fields")
            items.extend((f"{name}.{k}", v) for k, v in value.items())
            if not value:
                items.append((name, {}))
        elif isinstance(value, dict) and name in ("model", "data", "optim", "train"):
            items.extend(_flatten(value, origin, f"{name}."))
        else:
            items.append((name, value))
    return items


def _set(cfg: PretrainConfig, key: str, value: Any, origin: str, *, from_text: bool) -> None:
    """One override: `model.overrides[.FIELD]` (free-form model fields) here, every other key by the typed rules
    of maebench.settings."""
    parts = key.split(".")
    if parts[:2] != ["model", "overrides"]:
        set_field(cfg, key, value, origin=origin)
        return
    if len(parts) == 2:  # the whole mapping
        parsed = yaml.safe_load(value) if from_text else value
        if parsed in (None, ""):
            parsed = {}
        if not isinstance(parsed, dict):
            raise MaebenchError(f"{origin} model.overrides={value!r}: expected a mapping, e.g. {{depth: 2}}")
        if any(":" in str(k) and v is None for k, v in parsed.items()):
            raise MaebenchError(f"{origin} model.overrides={value!r}: YAML needs a space after each colon, "
                                "e.g. {dim: 32, depth: 2}")
        cfg.model.overrides = {str(k): v for k, v in parsed.items()}
        return
    if len(parts) != 3 or not parts[2]:
        raise MaebenchError(f"{origin}: unknown config key {key!r}; use model.overrides.FIELD=value")
    cfg.model.overrides[parts[2]] = parse_scalar(value) if from_text else value
