"""`[tracing]`: OpenTelemetry tracing, configured the way every OpenTelemetry SDK is, by the standard `OTEL_*`
environment variables, so that a platform's injection (KServe's `spec.tracing`) works on any image. The TOML table
gives the same settings; a variable that is set wins over it.

- On when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, or `enabled = true`;
  `OTEL_SDK_DISABLED=true` always turns it off.
- `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`, else `protocol`: `grpc` or
  `http/protobuf` (the specification's default).
- The endpoint: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it is; else `OTEL_EXPORTER_OTLP_ENDPOINT`, else `endpoint`,
  a base URL to which HTTP adds `/v1/traces` (as the OTLP exporters do); else the protocol's localhost default.
- `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, else `sampler` / `sampler_arg` (default
  `parentbased_always_on`; a ratio sampler without an argument samples everything, as the specification says).

The exporters read the rest of their `OTEL_EXPORTER_OTLP_*` settings (headers, certificates, compression, timeout)
themselves, and the resource its `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (observability/tracing.py).
A bad value in the TOML fails the start, naming the key. A variable's value that is not recognised (a sampler or
protocol this server does not have, such as `jaeger_remote` or `http/json`, or an argument that is not a ratio) is
logged as a warning naming the variable and ignored, as the OpenTelemetry specification asks of an SDK: a platform
that injects one setting into every pod must not stop them from starting. Names are read case-insensitively.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from inference_server.config import toml
from inference_server.errors import ConfigError

log = logging.getLogger(__name__)

GRPC, HTTP_PROTOBUF = "grpc", "http/protobuf"
PROTOCOLS = (GRPC, HTTP_PROTOBUF)
SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
            "parentbased_traceidratio")
RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")
DEFAULT_ENDPOINTS = {GRPC: "http://localhost:4317", HTTP_PROTOBUF: "http://localhost:4318"}
TRACES_PATH = "v1/traces"  # what OTLP/HTTP adds to a base endpoint

SDK_DISABLED = "OTEL_SDK_DISABLED"
ENDPOINT, TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
PROTOCOL, TRACES_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
SAMPLER, SAMPLER_ARG = "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingConfig:
    """The `[tracing]` table; after `with_environment`, the settings the server runs with."""
    enabled: bool = False
    endpoint: str = ""  # "": the protocol's default (after with_environment: where spans go, in full)
    protocol: str = HTTP_PROTOBUF
    sampler: str = "parentbased_always_on"
    sampler_arg: float | None = None  # the ratio of the ratio samplers; None: 1.0


def parse_tracing(table: Mapping[str, Any], prefix: str = "tracing.") -> TracingConfig:
    toml.reject_unknown(table, [f.name for f in dataclasses.fields(TracingConfig)], prefix)
    d = TracingConfig()
    arg = toml.get(table, "sampler_arg", prefix, (int, float), None)
    return TracingConfig(
        enabled=toml.get(table, "enabled", prefix, bool, d.enabled),
        endpoint=toml.get(table, "endpoint", prefix, str, d.endpoint),
        protocol=toml.choice(table, "protocol", prefix, PROTOCOLS, d.protocol),
        sampler=toml.choice(table, "sampler", prefix, SAMPLERS, d.sampler),
        sampler_arg=None if arg is None else ratio(arg, f"{prefix}sampler_arg"),
    )


def ratio(value: Any, key: str) -> float:
    """A sampling ratio: a number in [0, 1]."""
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(key, f"must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= number <= 1.0:  # NaN fails too
        raise ConfigError(key, f"must be between 0 and 1, got {value!r}")
    return number


def _choice(environ: Mapping[str, str], names: tuple[str, ...], choices: tuple[str, ...],
            default: str) -> str:
    """The first of `names` set in the environment to one of `choices` (any case); else `default`. A value that is
    none of them is ignored with a warning."""
    for name in names:
        if value := environ.get(name, "").strip():
            if value.lower() in choices:
                return value.lower()
            log.warning("tracing: %s=%r is not one of %s: ignored", name, value, ", ".join(choices))
    return default


def _ratio_variable(environ: Mapping[str, str], default: float | None) -> float | None:
    """`OTEL_TRACES_SAMPLER_ARG` as a ratio; one that is not a ratio is ignored with a warning."""
    arg = environ.get(SAMPLER_ARG, "").strip()
    if not arg:
        return default
    try:
        return ratio(arg, SAMPLER_ARG)
    except ConfigError as e:
        log.warning("tracing: %s: ignored", e)
        return default


def traces_endpoint(base: str) -> str:
    """The OTLP/HTTP traces URL of a base endpoint (the exporters' rule: `/v1/traces` appended)."""
    return f"{base.removesuffix('/')}/{TRACES_PATH}"


def with_environment(cfg: TracingConfig, environ: Mapping[str, str]) -> TracingConfig:
    """The settings the server runs with: the `OTEL_*` variables that are set over the TOML's."""
    if environ.get(SDK_DISABLED, "").strip().lower() == "true":
        return dataclasses.replace(cfg, enabled=False)
    traces_url, base_url = environ.get(TRACES_ENDPOINT, "").strip(), environ.get(ENDPOINT, "").strip()
    if not (cfg.enabled or traces_url or base_url):
        return cfg
    protocol = _choice(environ, (TRACES_PROTOCOL, PROTOCOL), PROTOCOLS, cfg.protocol)
    sampler = _choice(environ, (SAMPLER,), SAMPLERS, cfg.sampler)
    # The argument is the sampler variable's: read only for a ratio sampler, and not when that variable named one
    # this server does not have (it means something else to them: jaeger_remote's endpoint).
    named = environ.get(SAMPLER, "").strip().lower()
    sampler_arg = cfg.sampler_arg
    if sampler in RATIO_SAMPLERS and (not named or named in SAMPLERS):
        sampler_arg = _ratio_variable(environ, cfg.sampler_arg)
    if traces_url:
        endpoint = traces_url
    else:
        base = base_url or cfg.endpoint or DEFAULT_ENDPOINTS[protocol]
        endpoint = traces_endpoint(base) if protocol == HTTP_PROTOBUF else base
    return TracingConfig(enabled=True, endpoint=endpoint, protocol=protocol, sampler=sampler, sampler_arg=sampler_arg)
