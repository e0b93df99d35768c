"""One config vocabulary for every model family, and the maebench 0.1.0 names it replaced.

MaeAstConfig and SsastConfig use the same name for the same thing, so `--set model.overrides.depth=6` (or
`load(spec, depth=6)`) means the same whichever family it is applied to:

    depth                          encoder blocks (= num_layers of the features)
    decoder_depth                  decoder blocks (MAE-AST only: SSAST has no decoder)
    dim, num_heads, ffn_dim        token width, attention heads, MLP hidden width
    mask_type                      "chunk" (square chunks of tokens; the SSAST paper calls them clusters) |
                                   "random" | None (the tokenizer's published default)
    mask_min_side, mask_max_side   chunk sides, in tokens
    mask_chunk_style               "public" (one side per mask, chunks wrap at the grid edge, as MAE-AST-Public
                                   draws them) | "ssast" (the same, never token 0: SSAST's gen_maskid_patch) |
                                   "square" (a side per chunk, clipped); default: each family's own code
    mask_trim                      "lowest" (the references: the lowest covered indices kept) | "random"
    shared_mask                    one mask per batch (MAE-AST only; default: as the public code, chunk only)
    nce_orientation                "code" | "paper": SSAST's InfoNCE as its code or its paper's eq. (1) has it
    dropout_input                  dropout on the token embeddings in pretraining (MAE-AST only: SSAST has none)

Quantities that differ keep different names: MAE-AST's `mask_ratio` (a fraction of each clip's tokens) is not
SSAST's `num_masked` (a count on a fixed grid).

Checkpoints written by 0.1.0 (config.json) and overrides in the old names still work: `modern` maps them on read,
from the tables below and nowhere else; `to_config()` writes the new names.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from typing import Any, TypeVar

from maebench.errors import MaebenchError

__all__ = ["LEGACY_NAMES", "LEGACY_VALUES", "config_from_dict", "merged", "modern"]

# family -> {0.1.0 field name: current name}
LEGACY_NAMES: dict[str, dict[str, str]] = {
    "mae_ast": {
        "encoder_layers": "depth",
        "decoder_layers": "decoder_depth",
        "chunk_min_side": "mask_min_side",
        "chunk_max_side": "mask_max_side",
    },
    "ssast": {},
}
# family -> {current field name: {0.1.0 value: current value}}
LEGACY_VALUES: dict[str, dict[str, dict[Any, Any]]] = {
    "mae_ast": {"mask_type": {"auto": None}},
    "ssast": {"mask_type": {"cluster": "chunk"}},
}

Config = TypeVar("Config")


def modern(family: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `config` in the current vocabulary (0.1.0 names and values replaced); other keys pass unchanged.

    An old name given together with its new name is an error unless both say the same.
    """
    names = LEGACY_NAMES.get(family, {})
    out: dict[str, Any] = {}
    for key, value in config.items():
        new = names.get(key, key)
        values = LEGACY_VALUES.get(family, {}).get(new, {})
        if isinstance(value, str) and value in values:
            value = values[value]
        if new in out and out[new] != value:
            raise MaebenchError(
                f"{family} config: {key!r} is the old name of {new!r} and both are given ({value!r} vs "
                f"{out[new]!r}); use {new!r} only"
            )
        out[new] = value
    return out


def merged(family: str, *configs: Mapping[str, Any]) -> dict[str, Any]:
    """The configs in the current vocabulary, later ones overriding earlier ones (e.g. a 0.1.0 config.json, then
    overrides in the new names)."""
    out: dict[str, Any] = {}
    for config in configs:
        out.update(modern(family, config))
    return out


def config_from_dict(cls: type[Config], family: str, config: Mapping[str, Any]) -> Config:
    """A family's config dataclass from a dict in current or 0.1.0 names; unknown fields are a one-line
    MaebenchError that lists the valid ones."""
    fields = modern(family, config)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise MaebenchError(
            f"{family} config: unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(known))}"
        )
    for field in dataclasses.fields(cls):  # e.g. "depth": "six" in a config.json: a one-line error, not a TypeError
        if field.name in fields and not _has_type(fields[field.name], str(field.type)):
            raise MaebenchError(f"{family} config: {field.name} must be {field.type}, got {fields[field.name]!r}")
    return cls(**fields)


_TYPE_CHECKS = {
    "int": lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str), "bool": lambda v: isinstance(v, bool), "None": lambda v: v is None,
}


def _has_type(value: Any, annotation: str) -> bool:
    """Whether `value` fits a simple field annotation such as "int", "float" or "str | None" (others pass)."""
    checks = [_TYPE_CHECKS.get(name.strip()) for name in annotation.split("|")]
    return any(check is None or check(value) for check in checks)
