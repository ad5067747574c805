"""`[routes.NAME]` tables: variants, and the optional canary, shadow and fallback tables. Frozen dataclasses;
every bad value raises ConfigError naming its dotted key (at start-up, or when SIGHUP re-reads the file).

A variant's version may be an MLflow alias (`version = "@challenger"`) when its model comes from an MLflow
registry: the server then follows that alias as a companion model named `MODEL@ALIAS` (see `with_aliases`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference_server.config import toml
from inference_server.config.model import ModelConfig, check_source, version_number
from inference_server.errors import ConfigError

MAX_WEIGHT = 1e9  # weights are relative; a bound keeps their sum finite


@dataclass(frozen=True, slots=True)
class VariantConfig:
    name: str
    model: str
    version: str  # a version number, or "" for the model's default version
    weight: float
    alias: str = ""  # "@challenger": the MLflow alias this variant follows (model is then MODEL@ALIAS)


@dataclass(frozen=True, slots=True, kw_only=True)
class CanaryConfig:
    """Ramp one variant automatically, judged each window from the server's own per-variant measurements."""
    candidate: str
    steps_percent: tuple[float, ...] = (10.0, 25.0, 50.0, 100.0)  # the candidate's share at each step; ends at 100
    interval_s: float = 60.0  # evaluation window
    min_requests: int = 100  # fewer candidate requests in a window: hold (neither step nor fail)
    max_error_ratio: float = 0.01  # the candidate's server-side error share (client errors excluded)
    max_p99_ms: float | None = None  # the candidate's p99 bound...
    max_p99_ratio: float | None = None  # ...and/or against the other variants' p99 in the same window
    failed_windows_to_rollback: int = 1  # failed windows in a row that roll the candidate back to 0 %


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowConfig:
    """Mirror a share of the route's requests to another model version; the answers are recorded, never
    returned."""
    model: str
    version: str = ""  # "" = the model's default version
    percent: float = 100.0
    queue_size: int = 64  # copies waiting for the shadow; more are dropped and counted
    concurrency: int = 1  # shadow requests running at once
    pause_above_in_flight: int = 4  # copies wait while more real requests are in flight (0: never wait)...
    pause_above_loop_busy_percent: float = 50.0  # ...or while the event loop is busier than this (100: never)


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackConfig:
    """Answer from here when the routed variant fails (internal error, unavailable, queue full, breaker open)."""
    model: str | None = None
    version: str = ""
    outputs: Mapping[str, Any] | None = None  # constant answers by output name (instead of a model)
    breaker_failures: int = 5  # server-side failures in a row that open a variant's circuit breaker
    breaker_cooldown_s: float = 10.0  # how long an open breaker sends the variant's requests to the fallback


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    """`[routes.NAME]`: requests for model NAME with an empty version are split over the variants."""
    name: str
    variants: tuple[VariantConfig, ...]
    routing_key: str = "routing_key"  # the request parameter hashed for stickiness
    canary: CanaryConfig | None = None
    shadow: ShadowConfig | None = None
    fallback: FallbackConfig | None = None

    def variant(self, name: str) -> VariantConfig | None:
        return next((v for v in self.variants if v.name == name), None)


# What the parsers give a key a table leaves out: the dataclasses' own defaults.
ROUTE_DEFAULTS = toml.field_defaults(RouteConfig)
CANARY_DEFAULTS = toml.field_defaults(CanaryConfig)
SHADOW_DEFAULTS = toml.field_defaults(ShadowConfig)


def parse_routes(table: Any) -> tuple[RouteConfig, ...]:
    if not isinstance(table, dict):
        raise ConfigError("routes", f"expected a table of routes, got {table!r}")
    return tuple(parse_route(name, t) for name, t in table.items())


def parse_route(name: str, table: Any) -> RouteConfig:
    prefix = f"routes.{name}."
    if not isinstance(table, dict):
        raise ConfigError(prefix.rstrip("."), f"expected a table, got {table!r}")
    toml.reject_unknown(table, ["variants", "routing_key", "canary", "shadow", "fallback"], prefix)
    variants = toml.get(table, "variants", prefix, list, None)
    if not variants:
        raise ConfigError(f"{prefix}variants", "is required: a list of { name, version, weight }")
    parsed = [_variant(v, f"{prefix}variants[{i}].", name) for i, v in enumerate(variants)]
    names = [v.name for v in parsed]
    if len(set(names)) != len(names):
        raise ConfigError(f"{prefix}variants", f"variant names must be unique, got {names}")
    canary = _canary(toml.get(table, "canary", prefix, dict, None), f"{prefix}canary.", parsed)
    if canary is None and not any(v.weight > 0 for v in parsed):
        raise ConfigError(f"{prefix}variants", "at least one variant needs a weight > 0")
    shadow = _shadow(toml.get(table, "shadow", prefix, dict, None), f"{prefix}shadow.", name)
    if shadow is not None:
        for v in parsed:
            if v.model == shadow.model and (not shadow.version or not v.version or v.version == shadow.version):
                raise ConfigError(f"{prefix}shadow.version", f"the shadow may be variant '{v.name}' itself "
                                  f"({v.model}{' v' + v.version if v.version else ''}): its copies would wait in "
                                  "the same queue as the real requests. Name another version or model")
    return RouteConfig(name=name, variants=tuple(parsed),
                       routing_key=toml.get(table, "routing_key", prefix, str, ROUTE_DEFAULTS["routing_key"]),
                       canary=canary,
                       shadow=shadow,
                       fallback=_fallback(toml.get(table, "fallback", prefix, dict, None), f"{prefix}fallback."))


def _version(raw: Any, key: str, aliases: bool) -> str:
    """A version number; with `aliases`, also "@ALIAS" (an MLflow alias)."""
    if aliases and isinstance(raw, str) and raw.startswith("@"):
        if len(raw) < 2 or "/" in raw or "@" in raw[1:]:
            raise ConfigError(key, f"an MLflow alias is '@' and a name, got {raw!r}")
        return raw
    version = version_number(raw)
    if version is None:
        raise ConfigError(key, f"must be a version number{' or an MLflow alias (@name)' if aliases else ''}, "
                               f"got {raw!r}")
    return version


def _variant(v: Any, where: str, route: str) -> VariantConfig:
    if not isinstance(v, dict):
        raise ConfigError(where.rstrip("."), f"expected a table, got {v!r}")
    toml.reject_unknown(v, ["name", "model", "version", "weight"], where)
    version = _version(v["version"], f"{where}version", aliases=True) if "version" in v else ""
    weight = toml.get(v, "weight", where, (int, float), None)
    if weight is None or not 0 <= weight <= MAX_WEIGHT:
        raise ConfigError(f"{where}weight", f"must be a number from 0 to {MAX_WEIGHT:g}, got {weight!r}")
    model = toml.get(v, "model", where, str, route)
    default = version[1:] if version.startswith("@") else f"v{version}" if version else model
    return VariantConfig(name=toml.get(v, "name", where, str, None) or default, model=model, version=version,
                         weight=float(weight))


def _percent(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 100:
        raise ConfigError(key, f"must be a number in (0, 100], got {value!r}")
    return float(value)


def _canary(table: dict[str, Any] | None, prefix: str, variants: Sequence[VariantConfig]) -> CanaryConfig | None:
    if table is None:
        return None
    toml.reject_unknown(table, [f.name for f in dataclasses.fields(CanaryConfig)], prefix)
    candidate = toml.get(table, "candidate", prefix, str, None)
    names = [v.name for v in variants]
    if candidate not in names:
        raise ConfigError(f"{prefix}candidate", f"must name one of the route's variants ({', '.join(names)}), got "
                                                f"{candidate!r}")
    if not any(v.weight > 0 for v in variants if v.name != candidate):
        raise ConfigError(f"{prefix}candidate", "the route needs another variant with a weight > 0 to compare the "
                                                "candidate with and to serve the rest")
    d = CANARY_DEFAULTS
    steps = [_percent(s, f"{prefix}steps_percent")
             for s in toml.get(table, "steps_percent", prefix, list, list(d["steps_percent"]))]
    if not steps or steps != sorted(set(steps)) or steps[-1] != 100:
        raise ConfigError(f"{prefix}steps_percent", f"must rise strictly and end at 100, got {steps}")
    ratio = toml.get(table, "max_error_ratio", prefix, (int, float), d["max_error_ratio"])
    if not 0 <= ratio <= 1:
        raise ConfigError(f"{prefix}max_error_ratio", f"must be between 0 and 1, got {ratio}")
    p99_ratio = toml.seconds(table, "max_p99_ratio", prefix, d["max_p99_ratio"], minimum=1.0)  # against the others
    interval = toml.seconds(table, "interval_s", prefix, d["interval_s"])
    if interval <= 0:
        raise ConfigError(f"{prefix}interval_s", f"must be > 0, got {interval}")
    p99_ms = toml.seconds(table, "max_p99_ms", prefix, d["max_p99_ms"])
    if p99_ms is not None and p99_ms <= 0:
        raise ConfigError(f"{prefix}max_p99_ms", f"must be > 0, got {p99_ms}")
    return CanaryConfig(candidate=candidate, steps_percent=tuple(steps), interval_s=interval,
                        min_requests=toml.count(table, "min_requests", prefix, d["min_requests"], minimum=1),
                        max_error_ratio=float(ratio), max_p99_ms=p99_ms, max_p99_ratio=p99_ratio,
                        failed_windows_to_rollback=toml.count(table, "failed_windows_to_rollback", prefix,
                                                              d["failed_windows_to_rollback"], minimum=1))


def _shadow(table: dict[str, Any] | None, prefix: str, route: str) -> ShadowConfig | None:
    if table is None:
        return None
    toml.reject_unknown(table, [f.name for f in dataclasses.fields(ShadowConfig)], prefix)
    d = SHADOW_DEFAULTS
    version = _version(table["version"], f"{prefix}version", aliases=False) if "version" in table else d["version"]
    return ShadowConfig(model=toml.get(table, "model", prefix, str, route), version=version,
                        percent=_percent(table.get("percent", d["percent"]), f"{prefix}percent"),
                        queue_size=toml.count(table, "queue_size", prefix, d["queue_size"], minimum=1, maximum=1 << 20),
                        concurrency=toml.count(table, "concurrency", prefix, d["concurrency"], minimum=1, maximum=256),
                        pause_above_in_flight=toml.count(table, "pause_above_in_flight", prefix,
                                                         d["pause_above_in_flight"]),
                        pause_above_loop_busy_percent=_percent(table.get("pause_above_loop_busy_percent",
                                                                         d["pause_above_loop_busy_percent"]),
                                                               f"{prefix}pause_above_loop_busy_percent"))


def _fallback(table: dict[str, Any] | None, prefix: str) -> FallbackConfig | None:
    if table is None:
        return None
    toml.reject_unknown(table, [f.name for f in dataclasses.fields(FallbackConfig)], prefix)
    model = toml.get(table, "model", prefix, str, None)
    outputs = toml.get(table, "outputs", prefix, dict, None)
    if (model is None) == (outputs is None):
        raise ConfigError(prefix.rstrip("."), "needs either `model` (a model to answer from) or `outputs` (constant "
                                              "answers by output name), not both")
    if outputs is not None:
        if not outputs:
            raise ConfigError(f"{prefix}outputs", "needs at least one output")
        for key, value in outputs.items():
            if not _constant(value):
                raise ConfigError(f"{prefix}outputs.{key}", f"must be a number, a boolean, a string or a (nested, "
                                                            f"rectangular) list of one kind of them, got {value!r}")
    d = FallbackConfig()
    version = _version(table["version"], f"{prefix}version", aliases=False) if "version" in table else d.version
    if version and model is None:
        raise ConfigError(f"{prefix}version", "names a version of the fallback `model`, which is not set")
    cooldown = toml.seconds(table, "breaker_cooldown_s", prefix, d.breaker_cooldown_s)
    return FallbackConfig(model=model, version=version, outputs=outputs,
                          breaker_failures=toml.count(table, "breaker_failures", prefix, d.breaker_failures, minimum=1),
                          breaker_cooldown_s=cooldown)


def _constant(value: Any) -> bool:
    """One kind of scalar, in a rectangular array (what an output tensor can hold), within int64 for integers."""
    def scalars(v: Any) -> list[Any]:
        return [x for item in v for x in scalars(item)] if isinstance(v, list) else [v]
    try:
        array = np.asarray(value)
    except (ValueError, OverflowError):  # ragged lists
        return False
    found = scalars(value)
    kinds = {bool if isinstance(x, bool) else (int | float) if isinstance(x, int | float) else type(x) for x in found}
    return (array.size > 0 and array.dtype.kind in "biufU" and len(kinds) == 1 and kinds <= {bool, int | float, str}
            and all(abs(x) < 2**63 for x in found if isinstance(x, int) and not isinstance(x, bool)))


def with_aliases(routes: Sequence[RouteConfig], models: Sequence[ModelConfig]
                 ) -> tuple[tuple[RouteConfig, ...], tuple[ModelConfig, ...]]:
    """Variants that name an MLflow alias become variants of a companion model `MODEL@ALIAS`, a copy of the
    model's MLflow entry that follows that alias (and does not hold back the server's readiness). Returns the
    routes and the companions to add to the models."""
    entries = {m.name: m for m in models}
    companions: dict[str, ModelConfig] = {}
    out = []
    for route in routes:
        variants = []
        for i, v in enumerate(route.variants):
            if not v.version.startswith("@"):
                variants.append(v)
                continue
            entry = entries.get(v.model)
            key = f"routes.{route.name}.variants[{i}].version"
            if entry is None or entry.source is None:
                raise ConfigError(key, f"an MLflow alias needs model '{v.model}' to come from an MLflow registry "
                                       "(a [[models]] entry with source = \"models:/…\")")
            registered, _ = check_source(entry.source, key)
            name = f"{v.model}{v.version}"
            companions.setdefault(name, dataclasses.replace(entry, name=name, version="1",
                                                            source=f"models:/{registered}{v.version}",
                                                            required=False))
            variants.append(dataclasses.replace(v, model=name, version="", alias=v.version))
        out.append(dataclasses.replace(route, variants=tuple(variants)))
    return tuple(out), tuple(companions.values())
