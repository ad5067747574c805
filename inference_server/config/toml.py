"""Reading values out of parsed TOML tables (and Triton's JSON-mapped configs, which have the same shape).

Each reader takes the table, the key, and the dotted `prefix` of the table (e.g. "server.", "models[0].batching."),
and raises ConfigError naming `{prefix}{key}` for a value of the wrong type or out of range. An absent key gives
`default`, unchecked. The parsers in config/ and lifecycle/ read every setting through these.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from inference_server.errors import ConfigError


def read_toml(path: Path, key: str) -> dict[str, Any]:
    """A TOML file's document; ConfigError keyed `key` when it cannot be read or parsed."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(key, f"{path} is not valid TOML: {e}") from None


def get(table: Mapping[str, Any], key: str, prefix: str, kind: type | tuple[type, ...], default: Any) -> Any:
    """The value of `key`, of type `kind` (a bool is never taken for an int or a float)."""
    if key not in table:
        return default
    value = table[key]
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise ConfigError(f"{prefix}{key}", f"expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def count(table: Mapping[str, Any], key: str, prefix: str, default: Any, minimum: int = 0,
          maximum: int | None = None) -> Any:
    """An integer within [minimum, maximum]."""
    value = get(table, key, prefix, int, default)
    if value is not None and (value < minimum or maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"{prefix}{key}", f"must be {bounds}, got {value}")
    return value


def seconds(table: Mapping[str, Any], key: str, prefix: str, default: float | None = 0.0,
            minimum: float = 0.0) -> Any:
    """A number >= minimum, as a float (None stays None)."""
    value = get(table, key, prefix, (int, float), default)
    if value is not None and value < minimum:
        raise ConfigError(f"{prefix}{key}", f"must be >= {minimum}, got {value}")
    return None if value is None else float(value)


def choice(table: Mapping[str, Any], key: str, prefix: str, choices: Sequence[str], default: str) -> str:
    """One of `choices`."""
    value = get(table, key, prefix, str, default)
    if value not in choices:
        raise ConfigError(f"{prefix}{key}", f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def positive_ints(table: Mapping[str, Any], key: str, prefix: str, default: Sequence[int]) -> list[int]:
    """A list of integers > 0."""
    values = get(table, key, prefix, list, list(default))
    if not all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in values):
        raise ConfigError(f"{prefix}{key}", f"must be positive integers, got {values}")
    return values


def names(table: Mapping[str, Any], key: str, prefix: str) -> list[str]:
    """A list of non-empty strings (model names)."""
    found = get(table, key, prefix, list, [])
    if not all(isinstance(n, str) and n for n in found):
        raise ConfigError(f"{prefix}{key}", f"must be model names, got {found}")
    return found


def path(table: Mapping[str, Any], key: str, prefix: str) -> Path | None:
    """A file's path (not an empty string), or None when absent."""
    value = get(table, key, prefix, str, None)
    if value == "":
        raise ConfigError(f"{prefix}{key}", "must be a file's path, got an empty string")
    return Path(value) if value is not None else None


def reject_unknown(table: Mapping[str, Any], allowed: Sequence[str], prefix: str) -> None:
    """ConfigError for the first key of `table` not in `allowed`."""
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{prefix}{key}", f"unknown key (allowed: {', '.join(allowed)})")


def field_defaults(cls: type) -> dict[str, Any]:
    """A dataclass's defaults by field name (default factories called): what a reader falls back to when a key is
    absent, so that each default is stated once, on its field. Fields without a default are left out."""
    found = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            found[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            found[f.name] = f.default_factory()
    return found
