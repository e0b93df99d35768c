"""Build, load and save Upstreams by name or path: the one place that knows every model family.

`load` accepts
- a preset `mae_ast_patch | mae_ast_frame | ssast_patch | ssast_frame`, optionally `:tiny|:small|:base` (default
  base): a freshly initialised model;
- a native checkpoint directory (config.json + model.safetensors);
- a training run directory: its newest `checkpoints/step_XXXXXXXX/`;
- an official SSAST .pth / MAE-AST fairseq .pt file (handed to `maebench.upstream.official.load_official`);
- `s3prl:NAME[:PATH]` (any s3prl upstream, `foreign_s3prl`) or `hear:MODULE[:WEIGHTS]` (any HEAR module,
  `foreign_hear`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maebench.errors import MaebenchError

from . import checkpoint
from .interface import Upstream
from .vocabulary import merged

FAMILIES = ("mae_ast", "ssast")
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"dim": 192, "num_heads": 3, "ffn_dim": 768},
    "small": {"dim": 384, "num_heads": 6, "ffn_dim": 1536},
    "base": {"dim": 768, "num_heads": 12, "ffn_dim": 3072},
}
DEFAULT_SIZE = "base"
# preset name -> (family, config fields beyond the size); depths are the families' defaults (12-layer encoders).
# Field names are the vocabulary both families share (maebench.upstream.vocabulary).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "mae_ast_patch": ("mae_ast", {"tokenizer": "patch", "mask_type": "chunk"}),
    "mae_ast_frame": ("mae_ast", {"tokenizer": "frame", "mask_type": "random"}),
    "ssast_patch": ("ssast", {"tokenizer": "patch"}),
    "ssast_frame": ("ssast", {"tokenizer": "frame"}),
}


def family_class(family: str) -> type[Upstream]:
    """The model class of a family, imported on first use (so MAE-AST works without the SSAST module, and back)."""
    if family == "mae_ast":
        from .mae_ast import MaeAst

        return MaeAst
    if family == "ssast":
        from .ssast import Ssast

        return Ssast
    raise MaebenchError(f"unknown upstream family {family!r}; known families: {', '.join(FAMILIES)}")


def build(family: str, config: dict[str, Any]) -> Upstream:
    """A freshly initialised model of `family` from its config dict (unknown fields -> MaebenchError)."""
    return family_class(family).from_config(dict(config))


def parse_preset(name: str) -> tuple[str, str]:
    """'mae_ast_patch:tiny' -> ('mae_ast_patch', 'tiny'); the size defaults to base."""
    base, _, size = name.partition(":")
    size = size or DEFAULT_SIZE
    if base not in PRESETS:
        raise MaebenchError(
            f"unknown upstream {name!r}: not an existing path and not a preset ({', '.join(PRESETS)}, "
            f"optionally with :{'|:'.join(SIZES)})"
        )
    if size not in SIZES:
        raise MaebenchError(f"unknown size {size!r} in preset {name!r}; sizes: {', '.join(SIZES)}")
    return base, size


def preset_config(name: str, **overrides: Any) -> tuple[str, dict[str, Any]]:
    """(family, config dict) of a preset with `overrides` (current or 0.1.0 field names) applied on top."""
    base, size = parse_preset(name)
    family, fields = PRESETS[base]
    return family, merged(family, SIZES[size], fields, overrides)


def preset(name: str, **overrides: Any) -> Upstream:
    """A freshly initialised preset model (in training mode, like any new nn.Module)."""
    return build(*preset_config(name, **overrides))


def _looks_like_preset(spec: str) -> bool:
    return spec.partition(":")[0] in PRESETS


def find_run_checkpoint(run_dir: str | Path) -> Path:
    """The newest `checkpoints/step_XXXXXXXX/` of a training run directory (checkpoint.latest_checkpoint)."""
    latest = checkpoint.latest_checkpoint(run_dir)
    if latest is None:
        raise MaebenchError(f"{run_dir}: training run without checkpoints (no checkpoints/step_*/config.json)")
    return latest


def load_native(directory: str | Path, **overrides: Any) -> Upstream:
    """Rebuild a model from a native checkpoint directory; overrides change config fields (e.g. dropout).

    A config.json written by maebench 0.1.0 (the old field names) loads too: names are mapped on read.
    """
    directory = Path(directory)
    meta = checkpoint.read_metadata(directory)
    config_path = directory / checkpoint.CONFIG_FILE
    try:
        model = build(meta["family"], merged(meta["family"], meta["config"], overrides))
    except MaebenchError as err:
        raise MaebenchError(f"{config_path}: {err}") from None
    _check_frontend(model, meta.get("frontend"), config_path)
    checkpoint.load_weights_into(model, checkpoint.read_weights(directory), directory / checkpoint.WEIGHTS_FILE)
    return model.eval()


def _check_frontend(model: Upstream, stored: Any, source: Path) -> None:
    """A checkpoint written for a different filterbank would silently give wrong features: refuse it."""
    current = getattr(model, "frontend", None)
    if stored is None or current is None:
        return
    if not isinstance(stored, dict):
        raise MaebenchError(f'{source}: "frontend" must be an object')
    mine = dataclasses.asdict(current)
    differ = sorted(k for k, v in stored.items() if k in mine and mine[k] != v)
    if differ:
        raise MaebenchError(
            f"{source}: front end differs from this maebench's {model.family} front end in {', '.join(differ)}"
        )


def load(path_or_preset: str | Path, **overrides: Any) -> Upstream:
    """A ready model from a preset name or a path (see the module docstring), in eval mode (feature extraction);
    call `.train()` to train it."""
    spec = str(path_or_preset)
    if spec.startswith(("s3prl:", "hear:")):  # foreign upstreams: upstream/foreign_{s3prl,hear}.py
        from .foreign_hear import load_hear
        from .foreign_s3prl import load_s3prl

        return (load_s3prl if spec.startswith("s3prl:") else load_hear)(spec, **overrides).eval()
    path = Path(spec).expanduser()
    if not path.exists() and _looks_like_preset(spec):
        return preset(spec, **overrides).eval()
    if path.is_dir():
        if checkpoint.is_native_checkpoint(path):
            return load_native(path, **overrides)
        if checkpoint.is_run_dir(path):
            return load_native(find_run_checkpoint(path), **overrides)
        raise MaebenchError(
            f"{path}: directory is neither a maebench checkpoint (config.json + model.safetensors) nor a training "
            "run (checkpoints/step_*)"
        )
    if path.is_file():
        try:
            from .official import load_official
        except ModuleNotFoundError as err:
            if err.name not in ("maebench.upstream.official",):
                raise
            raise MaebenchError(
                f"{path}: official checkpoint support is not installed (maebench.upstream.official is missing)"
            ) from None
        return load_official(path, **overrides).eval()
    parse_preset(spec)  # raises the "unknown upstream" message listing the presets
    raise AssertionError("unreachable")  # pragma: no cover


def save_upstream(model: Upstream, directory: str | Path, provenance: dict[str, Any] | None = None) -> Path:
    """Write `model` as a native checkpoint directory (atomically); returns its path."""
    frontend = getattr(model, "frontend", None)
    return checkpoint.write_checkpoint(
        directory,
        family=model.family,
        config=model.to_config(),
        state_dict=model.state_dict(),
        frontend=dataclasses.asdict(frontend) if dataclasses.is_dataclass(frontend) else None,
        provenance=provenance,
    )


def config_hash(model: Upstream) -> str:
    """sha256 of the family and architecture config (identity of the architecture, not of the weights)."""
    text = json.dumps({"family": model.family, "config": model.to_config()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(model: nn.Module) -> str:
    """sha256 over family, config and every state-dict tensor (name, dtype, shape, bytes): the weights' identity."""
    digest = hashlib.sha256()
    family = getattr(model, "family", type(model).__name__)
    config = model.to_config() if hasattr(model, "to_config") else {}
    digest.update(json.dumps({"family": family, "config": config}, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
