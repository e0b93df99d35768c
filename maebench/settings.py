"""Typed `key=value` settings on dataclasses: the one parser for pretraining configs and probe settings.

A dataclass is the single source of truth for the fields, their types and their defaults; values arrive as text
(`--set optim.lr=3e-4`, `--set max_steps=500`) or as parsed YAML / JSON (recipes, saved configs, task tables), and
both go through the same rules:

- bool: true/false, yes/no, on/off, 1/0; int: an integral number (`1e3` is 1000, `1.5` is an error); float: any
  finite number (YAML 1.1 misses `3e-4`, so it is read here; nan and inf are errors); str: as given;
  Literal[...]: one of the choices; a union (`bool | Literal["auto"]`): the first type
  that takes the value; Optional: `null` / `none` / `~` is None; tuple[X, X]: exactly that many
  comma-separated values (`0.9,0.98`, `[0.9, 0.98]`); tuple[X, ...]: any number of them; dict: a mapping (YAML
  flow syntax from text; dict[K, V] checks each value as V); a dataclass: a mapping of its fields (parsed by
  these rules, unknown keys rejected).
- an unknown key is a MaebenchError listing the keys that exist there; a bad value names the key and what it wants.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import yaml

from maebench.errors import MaebenchError

T = TypeVar("T")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def parse_scalar(text: str) -> Any:
    """YAML scalar parsing, plus floats YAML 1.1 misses (3e-4 without a dot)."""
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def split_assignment(item: str, *, origin: str, example: str) -> tuple[str, str]:
    """`key=value` -> (key, value), stripped; anything else is a MaebenchError showing `example`."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise MaebenchError(f"{origin} {item!r}: expected key=value, e.g. {example}")
    return key.strip(), value.strip()


def set_field(obj: Any, key: str, value: Any, *, origin: str, kind: str = "config key", scope: str = "top level"
              ) -> None:
    """Set the dotted `key` of the dataclass `obj` (nested dataclasses are sections) to `value`, coerced to the
    field's type. `kind` names what a key is in errors ("config key", "linear setting"); `scope` names `obj`."""
    parts = key.split(".")
    target: Any = obj
    for depth, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(target)} if dataclasses.is_dataclass(target) else {}
        if part not in fields:
            where = ".".join(parts[:depth]) or scope
            known = ", ".join(fields) if fields else "(not a section)"
            raise MaebenchError(f"{origin}: unknown {kind} {key!r} ({where} has: {known})")
        if depth == len(parts) - 1:
            hint = typing.get_type_hints(type(target))[part]
            if dataclasses.is_dataclass(hint):
                raise MaebenchError(f"{origin}: {key!r} is a section; set one of its fields, e.g. {key}.FIELD=value")
            setattr(target, part, coerce(value, hint, key, origin))
            return
        target = getattr(target, part)


def from_mapping(cls: type[T], data: Any, *, origin: str, kind: str = "setting", prefix: str = "") -> T:
    """An instance of the dataclass `cls` from a flat mapping of its fields (values coerced, defaults filled in);
    an unknown key, or a field without a default left out, is a MaebenchError."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise MaebenchError(f"{origin} {prefix.rstrip('.') or cls.__name__}={data!r}: expected a mapping of {kind}s")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        if key not in fields:
            where = prefix.rstrip(".") or cls.__name__
            raise MaebenchError(f"{origin}: unknown {kind} {prefix + str(key)!r} ({where} has: {', '.join(fields)})")
        values[key] = coerce(value, hints[key], prefix + key, origin)
    missing = [name for name, f in fields.items() if name not in values and _required(f)]
    if missing:
        raise MaebenchError(f"{origin}: no value for {', '.join(prefix + m for m in missing)} (a {kind} without "
                            "a default)")
    return cls(**values)


def to_plain(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain nested dict of JSON types (tuples as lists), fit for YAML and JSON."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def coerce(value: Any, hint: Any, key: str, origin: str) -> Any:
    """`value` (text or parsed YAML/JSON) as the type `hint`, by the rules in the module docstring."""
    origin_type, args = typing.get_origin(hint), typing.get_args(hint)
    if origin_type in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("null", "none",
                                                                                                "~"))):
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):  # the first type that takes the value (bool | "auto")
            try:
                return coerce(value, arg, key, origin)
            except MaebenchError as err:
                errors.append(str(err).partition(": expected ")[2])
        raise _bad(value, key, origin, ", or ".join(errors))
    if origin_type is Literal:
        text = value if isinstance(value, str) else str(value)
        if text not in args:
            raise _bad(value, key, origin, "one of " + ", ".join(map(str, args)))
        return text
    if hint in (bool, int, float, str):
        return _scalar(value, hint, key, origin)
    if origin_type is tuple:
        return _tuple(value, args, key, origin)
    if origin_type is dict or hint is dict:
        parsed = dict(_mapping(value, key, origin))
        if len(args) == 2 and args[1] is not Any:  # dict[str, int]: every value checked too
            return {name: coerce(item, args[1], f"{key}.{name}", origin) for name, item in parsed.items()}
        return parsed
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_mapping(hint, _mapping(value, key, origin), origin=origin,
                                                                  prefix=f"{key}.")
    raise _bad(value, key, origin, f"a value of type {hint}")  # pragma: no cover - every field type is handled


def _bad(value: Any, key: str, origin: str, expected: str) -> MaebenchError:
    return MaebenchError(f"{origin} {key}={value!r}: expected {expected}")


def _mapping(value: Any, key: str, origin: str) -> dict:
    """A mapping, or YAML flow text of one (`{start: 5, step: 1}`)."""
    try:
        parsed = yaml.safe_load(value) if isinstance(value, str) else value
    except yaml.YAMLError:
        parsed = None
    if not isinstance(parsed, dict):
        raise _bad(value, key, origin, "a mapping, e.g. {name: value}")
    return parsed


def _scalar(value: Any, hint: type, key: str, origin: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise _bad(value, key, origin, "true or false")
    if hint is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise _bad(value, key, origin, "a string")
        return str(value)
    number = parse_scalar(value) if isinstance(value, str) else value
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise _bad(value, key, origin, "an integer" if hint is int else "a number")
    if not math.isfinite(number):  # nan / inf / .inf: never a meaningful learning rate, length or weight
        raise _bad(value, key, origin, "a finite integer" if hint is int else "a finite number")
    if hint is int:
        if float(number) != int(number):
            raise _bad(value, key, origin, "an integer")
        return int(number)
    return float(number)


def _tuple(value: Any, args: tuple, key: str, origin: str) -> tuple:
    """tuple[X, Y] (exactly that many values) or tuple[X, ...] (any number), from a list or comma-separated text."""
    items = value
    if isinstance(value, str):
        items = [parse_scalar(v) for v in value.strip("()[] ").split(",") if v.strip()]
    variable = len(args) == 2 and args[1] is Ellipsis
    if not isinstance(items, list | tuple) or (not variable and len(items) != len(args)):
        wanted = "comma-separated values, e.g. 0.1,1,10" if variable else \
            f"{len(args)} comma-separated values, e.g. 0.9,0.98"
        raise _bad(value, key, origin, wanted)
    types_ = [args[0]] * len(items) if variable else list(args)
    return tuple(coerce(v, a, key, origin) for v, a in zip(items, types_, strict=True))
