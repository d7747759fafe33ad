"""Typed settings from plain data: YAML text, environment overrides, and the coercion of
values into frozen dataclasses by their type hints.

Generic on purpose: `gateway.config` declares the sections, this module reads them. Every
mistake raises `ConfigError` whose message starts with the dotted name of the setting.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

ENV_PREFIX = "GATEWAY__"


class ConfigError(Exception):
    """A setting is missing, unknown or invalid; the message names it."""


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r}: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {str(path)!r}: not valid YAML{where}") from None
    except ValueError:  # a number Python will not read (an int of over 4,300 digits)
        raise ConfigError(f"config file {str(path)!r}: a number too long to read") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}: expected a mapping of sections")
    return data


def apply_environment(
    data: dict[str, Any], env: Mapping[str, str], top_level: Collection[str] = ()
) -> None:
    """Apply `GATEWAY__<SECTION>__<KEY>` variables (and `GATEWAY__<NAME>` for the
    `top_level` settings that are not sections) to `data`."""
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(parts) or (len(parts) < 2 and parts[0] not in top_level):
            raise ConfigError(f"{name}: expected GATEWAY__<SECTION>__<KEY>")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, ValueError):  # not YAML, or a number too long to read
            value = raw
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"{'.'.join(parts)}: set by {name}, but its parent is not a section"
                )
            node = child
        node[parts[-1]] = value
    database_url = env.get("DATABASE_URL")
    if database_url:
        data.setdefault("database", {})
        if not isinstance(data["database"], dict):
            raise ConfigError("database: expected a mapping")
        data["database"]["url"] = database_url


def build(cls: type[Any], data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        name = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"{name}: unknown setting")
    values = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else str(key)
        values[key] = _coerce(hints[key], value, name)
    return cls(**values)


def _coerce(hint: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(typing.cast(type[Any], hint), value, name)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true or false, got {_kind(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected an integer, got {_kind(value)}")
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {_kind(value)}")
        # YAML reads `.nan`, `.inf` and `1.0e+400` as floats; no setting means either.
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            raise ConfigError(f"{name}: expected a finite number, got one too large") from None
        if not math.isfinite(number):
            raise ConfigError(f"{name}: expected a finite number, got {number!r}")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name}: expected a string, got {_kind(value)}")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value in choices:
            return value
        raise ConfigError(f"{name}: expected one of {', '.join(map(str, choices))}, got {value!r}")
    if origin is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {_kind(value)}")
        return tuple(_coerce(item, v, f"{name}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or origin is getattr(types, "MappingProxyType", None):
        _, vtype = typing.get_args(hint)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping, got {_kind(value)}")
        return types.MappingProxyType(
            {str(k): _coerce(vtype, v, f"{name}.{k}") for k, v in value.items()}
        )
    raise TypeError(f"unsupported config type {hint!r} for {name}")  # programming error


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({value!r})"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


# The longest a duration setting may be, by the unit its name ends in: far past any use,
# and short of what Postgres timestamps and Python's timedelta can add to now
# (`webhooks.give_up_after_seconds: 1e13` made every failed delivery's update fail).
LONGEST = {"_seconds": 366 * 24 * 3600, "_days": 100 * 366}


def positive(name: str, value: float) -> None:
    _bounded(name, value)
    if value <= 0:
        raise ConfigError(f"{name}: must be greater than 0, got {value!r}")


def non_negative(name: str, value: float) -> None:
    _bounded(name, value)
    if value < 0:
        raise ConfigError(f"{name}: must be 0 or more, got {value!r}")


def _bounded(name: str, value: float) -> None:
    # NaN compares false with everything, so `value <= 0` alone would let it through.
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    for unit, longest in LONGEST.items():
        if name.endswith(unit) and value > longest:
            raise ConfigError(f"{name}: must be at most {longest}, got {value!r}")


def between(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name}: must be from {low} to {high}, got {value!r}")


def readable_file(name: str, path: str) -> None:
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path!r}: {exc.strerror or exc}") from None


def port(name: str, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ConfigError(f"{name}: not a TCP port: {value!r}")
