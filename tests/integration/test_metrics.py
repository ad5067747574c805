"""The Prometheus endpoint, scraped over HTTP and parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import urllib.request
from collections import Counter

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.integration.test_statistics import send

pytestmark = pytest.mark.integration


def scrape(server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, keyed by (sample name, sorted labels)."""
    return scrape_port(server.app.metrics.port)


def scrape_port(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def mlp(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"model": "mlp", "version": "1", **labels}.items()))


def test_histograms_and_counters_grow_by_what_was_served(server):
    before = scrape(server)
    batches_before = Counter(server.batches("mlp"))
    rows = [1] * 16 + [2] * 8  # 24 requests, 32 rows
    asyncio.run(send(server.url, rows))
    with grpcclient.InferenceServerClient(server.url) as client, pytest.raises(InferenceServerException):
        bad = grpcclient.InferInput("x", [1, 3], "FP32")
        bad.set_data_from_numpy(np.ones((1, 3), np.float32))
        client.infer("mlp", [bad])
    after = scrape(server)
    batches = Counter(server.batches("mlp")) - batches_before

    def grew(name: str, labels: tuple = mlp()) -> float:
        return after.get((name, labels), 0) - before.get((name, labels), 0)

    assert grew("inference_request_duration_seconds_count", mlp(code="OK")) == 24
    assert grew("inference_requests_total", mlp(code="OK")) == 24
    assert grew("inference_request_duration_seconds_count", mlp(code="INVALID_ARGUMENT")) == 1
    assert grew("inference_request_failures_total", mlp(reason="OTHER")) == 1
    assert grew("inference_queue_wait_seconds_count") == 24
    assert grew("inference_compute_infer_seconds_count") == sum(batches.values()) < 24
    # The batch-size histogram holds exactly the batches the server formed.
    assert grew("inference_batch_rows_count") == sum(batches.values())
    assert grew("inference_batch_rows_sum") == 32 == sum(size * n for size, n in batches.items())
    for le in ("1.0", "2.0", "4.0", "8.0", "16.0", "32.0", "64.0"):
        want = sum(n for size, n in batches.items() if size <= float(le))
        assert grew("inference_batch_rows_bucket", mlp(le=le)) == want, le
    # Triton's names, for its dashboards and HPA rules.
    assert grew("nv_inference_request_success") == 24
    assert grew("nv_inference_count") == 32
    assert grew("nv_inference_exec_count") == sum(batches.values())
    assert grew("nv_inference_request_failure", mlp(reason="OTHER")) == 1
    assert grew("nv_inference_queue_duration_us") >= 0 and grew("nv_inference_compute_infer_duration_us") > 0
    assert after[("nv_inference_pending_request_count", mlp())] == 0
    assert after[("inference_pending_requests", mlp())] == 0
    assert after[("inference_max_queue_size", mlp())] == 256  # the default bound; 0 would be unbounded


def test_sub_millisecond_requests_land_in_sub_millisecond_buckets(server):
    """The buckets resolve a cheap model's overheads: its queue waits are not all lumped into one bucket."""
    asyncio.run(send(server.url, [1]))
    samples = scrape(server)
    buckets = sorted(float(dict(labels)["le"]) for name, labels in samples
                     if name == "inference_queue_wait_seconds_bucket" and dict(labels)["model"] == "mlp")
    assert [b for b in buckets if b < 0.001][:4] == [0.00005, 0.0001, 0.00025, 0.0005]


def test_the_metrics_port_answers_only_at_metrics(server):
    """A probe pointed at the metrics port by mistake must fail, not pass on a 200 with metrics text."""
    import urllib.error

    base = f"http://127.0.0.1:{server.app.metrics.port}"
    for path in ("/", "/v2/health/ready", "/v2/health/live", "/metrics/extra"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + path, timeout=5)
        assert e.value.code == 404
    assert urllib.request.urlopen(base + "/metrics", timeout=5).status == 200
