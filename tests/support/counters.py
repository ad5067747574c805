"""Counters that must never go back: two scrapes of a metrics endpoint compared sample by sample.

Prometheus reads any drop of a counter as a reset (the process restarted) and turns it into a burst in rate()
and increase(). Cumulative here: every sample of a counter family (its `_total`; `_created` is a timestamp), a
histogram's or summary's `_count`, `_sum` and `_bucket` (a summary's quantiles are not), and every untyped family
(the server exports only Triton's cumulative `nv_inference_*` and `nv_cache_*` counters untyped, under Triton's
names, which a counter type would change with a `_total`).
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def cumulative(text: str) -> Samples:
    """The cumulative samples of an exposition, by (sample name, sorted labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            if family.type == "counter" or family.type == "unknown" or (
                    family.type in ("histogram", "summary")
                    and sample.name.endswith(("_count", "_sum", "_bucket"))):
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def went_back(before: str, after: str) -> list[str]:
    """Every cumulative sample present in both scrapes, with the same labels, that is lower in `after`."""
    old, new = cumulative(before), cumulative(after)
    return [f"{name}{dict(labels)}: {old[(name, labels)]:g} -> {new[(name, labels)]:g}"
            for name, labels in sorted(old.keys() & new.keys())
            if not new[(name, labels)] >= old[(name, labels)]]


def assert_monotonic(before: str, after: str, what: str) -> None:
    """No cumulative sample of `before` is lower in `after` (every one that is, named in the message)."""
    back = went_back(before, after)
    assert not back, f"{len(back)} counter sample(s) went back across {what}:\n" + "\n".join(back)


def sample_value(text: str, name: str, **labels: str) -> float | None:
    """The sample `name` with exactly these labels in an exposition, or None."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None
