"""Redis goes away while requests flow, and comes back: the server (a real process) answers every request
correctly throughout, its circuit opens, and once Redis is back the cache serves hits again."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.integration.test_metrics import scrape_port
from tests.support import redis_server as redis_process
from tests.support.server_process import free_port

pytestmark = pytest.mark.system
INPUTS = [np.random.default_rng(i).uniform(0, 16, (1, 64)).astype(np.float32) for i in range(20)]


class Traffic:
    """One client sending the same 20 inputs round and round from a thread, checking every answer."""

    def __init__(self, url: str, expected: list[dict[str, np.ndarray]]) -> None:
        self.url, self.expected = url, expected
        self.answered = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with grpcclient.InferenceServerClient(self.url) as client:
            i = 0
            while not self._stop.is_set():
                try:
                    got = ask(client, i % len(INPUTS))
                except Exception as e:  # noqa: BLE001 (every failure is recorded and fails the test)
                    self.failures.append(f"request {i}: {e}")
                else:
                    want = self.expected[i % len(INPUTS)]
                    if not all(np.array_equal(got[k], want[k]) for k in want):
                        self.failures.append(f"request {i}: a wrong answer")
                    self.answered += 1
                i += 1

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)


def ask(client: grpcclient.InferenceServerClient, i: int) -> dict[str, np.ndarray]:
    t = grpcclient.InferInput("pixels", [1, 64], "FP32")
    t.set_data_from_numpy(INPUTS[i])
    result = client.infer("digits", [t], client_timeout=10)  # a hang guard, not a latency claim
    return {name: result.as_numpy(name) for name in ("label", "probabilities")}


def cache_state(port: int) -> tuple[float, float, str]:
    """(hits, Redis errors (lookups and writes), circuit state)"""
    samples = scrape_port(port)
    hits = samples.get(("inference_cache_requests_total", (("model", "digits"), ("result", "hit"),
                                                           ("version", "1"))), 0.0)
    errors = sum(samples[("inference_cache_errors_total", (("operation", op),))] for op in ("get", "put"))
    (state,) = [dict(labels)["state"] for (name, labels), v in samples.items()
                if name == "inference_cache_circuit_state" and v == 1]
    return hits, errors, state


def wait_until(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        time.sleep(0.05)


@pytest.mark.skipif(not redis_process.available(), reason="redis-server is not installed")
def test_every_request_is_answered_through_a_redis_outage_and_the_cache_comes_back(launch, tmp_path):
    redis = redis_process.RedisServer(tmp_path).start()
    try:
        config = tmp_path / "server.toml"
        config.write_text("[cache]\ntimeout_s = 0.05\nbreaker_failures = 3\nbreaker_cooldown_s = 0.5\n")
        metrics_port = free_port()
        server = launch("--config", str(config), "--cache", redis.url, "--metrics-port", str(metrics_port))
        with grpcclient.InferenceServerClient(server.url) as client:
            expected = [ask(client, i) for i in range(len(INPUTS))]  # misses: the model's own answers

        with Traffic(server.url, expected) as traffic:
            wait_until(lambda: cache_state(metrics_port)[0] >= 100, 30, "hits from Redis")
            hits, errors, state = cache_state(metrics_port)
            assert (errors, state) == (0, "closed")

            redis.kill()
            wait_until(lambda: cache_state(metrics_port)[2] != "closed", 30, "the circuit opening")
            answered = traffic.answered
            wait_until(lambda: traffic.answered >= answered + 200, 30, "requests answered while Redis is gone")
            down_hits, down_errors, _ = cache_state(metrics_port)
            assert down_errors >= 3  # breaker_failures in a row opened it

            redis.start()  # the same port, empty: entries come back as requests miss and write them
            wait_until(lambda: cache_state(metrics_port)[0] >= down_hits + 100, 30, "hits again after Redis returns")
            assert cache_state(metrics_port)[2] == "closed"
        assert traffic.failures == []
        assert traffic.answered > 400
        samples = scrape_port(metrics_port)
        assert samples[("inference_cache_circuit_opened_total", ())] >= 1
        assert server.terminate() == 0
        log = server.log()
        assert "circuit open" in log and "reachable again; circuit closed" in log  # one line per transition
    finally:
        redis.stop()
