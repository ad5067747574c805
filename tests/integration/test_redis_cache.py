"""The Redis tier against real redis-servers of its own: passwords (from the URL or $REDIS_PASSWORD, never
logged), a cache shared by two servers, TLS (rediss://), and a wrong password, a plain client on a TLS port and a
hung Redis (all fail open)."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time

import numpy as np
import pytest

from inference_server.config.server import CacheConfig
from tests.conftest import ServerThread, server_config
from tests.integration.test_cache import executions, infer, settled
from tests.integration.test_metrics import scrape
from tests.support import redis_server as redis_process

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not redis_process.available(), reason="redis-server is not installed")]
PASSWORD = "s3cret-Pw"  # noqa: S105 (a test Redis on 127.0.0.1)
FAST = CacheConfig(timeout_s=0.05, breaker_failures=2, breaker_cooldown_s=0.3)


@pytest.fixture
def protected(tmp_path):
    redis = redis_process.RedisServer(tmp_path, password=PASSWORD).start()
    yield redis
    redis.stop()


def serve(repository, url: str, password: str | None = None, cache_config: CacheConfig = FAST) -> ServerThread:
    cfg = dataclasses.replace(server_config(repository, cache=url), redis_password=password,
                              cache_config=cache_config)
    return ServerThread(cfg).start()


def circuit(thread: ServerThread) -> str:
    (state,) = [dict(labels)["state"] for (name, labels), v in scrape(thread).items()
                if name == "inference_cache_circuit_state" and v == 1]
    return state


def test_a_password_from_the_url_or_the_environment_works_is_shared_and_never_logged(repository, protected, caplog):
    caplog.set_level(logging.DEBUG)
    x = np.random.default_rng(20).standard_normal((1, 8)).astype(np.float32)
    # Lookups may take their time here: this test is about the password, and a 50 ms lookup that times out on a
    # loaded machine is a miss (the second server then computes; seen once in a full run).
    patient = dataclasses.replace(FAST, timeout_s=2.0)
    first = serve(repository, protected.url, cache_config=patient)  # redis://:PASSWORD@127.0.0.1:port/0
    try:
        answer = infer(first.url, x)
        settled(first)
    finally:
        first.stop()
    # A second server (another replica), the password from $REDIS_PASSWORD: the first one's entry is a hit.
    second = serve(repository, protected.url.replace(f":{PASSWORD}@", ""), password=PASSWORD, cache_config=patient)
    try:
        again = infer(second.url, x)
        assert executions(second) == 0
        np.testing.assert_array_equal(again["y"], answer["y"])
    finally:
        second.stop()
    assert f"response cache: redis at redis://127.0.0.1:{protected.port}/0" in caplog.text
    assert PASSWORD not in caplog.text


def test_a_wrong_password_fails_open_and_says_so(repository, protected, caplog):
    caplog.set_level(logging.DEBUG)
    thread = serve(repository, protected.url.replace(PASSWORD, "wrong-one"))
    try:
        x = np.random.default_rng(21).standard_normal((3, 8)).astype(np.float32)
        answers = [infer(thread.url, x)["y"] for _ in range(4)]
        assert all(np.array_equal(a, answers[0]) for a in answers)
        assert executions(thread) == 4 and circuit(thread) != "closed"
    finally:
        thread.stop()
    assert "does not answer" in caplog.text and "wrong-one" not in caplog.text


def test_a_hung_redis_never_hangs_a_request_and_the_cache_resumes_after_it(repository, tmp_path):
    redis = redis_process.RedisServer(tmp_path).start()
    thread = serve(repository, redis.url)
    try:
        x = np.random.default_rng(22).standard_normal((1, 8)).astype(np.float32)
        expected = infer(thread.url, x)["y"]
        settled(thread)
        redis.pause()  # connections stay open; nothing is answered
        deadline = time.monotonic() + 10
        while circuit(thread) == "closed":  # each failed call (a lookup, a write) takes timeout_s to fail
            assert time.monotonic() < deadline, "the circuit did not open within 10 s of Redis hanging"
            np.testing.assert_array_equal(infer(thread.url, x)["y"], expected)
        for _ in range(3):
            np.testing.assert_array_equal(infer(thread.url, x)["y"], expected)
        samples = scrape(thread)
        assert sum(samples[("inference_cache_errors_total", (("operation", op),))] for op in ("get", "put")) >= 2
        redis.resume()
        deadline = time.monotonic() + 10
        while circuit(thread) != "closed":  # the next probe after the cool-down closes it
            assert time.monotonic() < deadline, "the circuit did not close within 10 s of Redis resuming"
            infer(thread.url, x)
            time.sleep(0.02)
        ran = executions(thread)
        np.testing.assert_array_equal(infer(thread.url, x)["y"], expected)
        assert executions(thread) == ran  # a hit again
    finally:
        thread.stop()
        redis.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
def test_tls_with_rediss_and_a_plain_client_on_the_tls_port_fails_open(repository, tmp_path):
    redis = redis_process.RedisServer(tmp_path, tls=True).start()
    try:
        x = np.random.default_rng(23).standard_normal((1, 8)).astype(np.float32)
        thread = serve(repository, redis.url)  # rediss://127.0.0.1:port/0?ssl_ca_certs=.../ca.crt
        try:
            expected = infer(thread.url, x)["y"]
            settled(thread)
            np.testing.assert_array_equal(infer(thread.url, x)["y"], expected)
            assert executions(thread) == 1 and circuit(thread) == "closed"  # the second was a hit over TLS
        finally:
            thread.stop()
        plain = serve(repository, f"redis://127.0.0.1:{redis.port}/0")
        try:
            for _ in range(3):
                np.testing.assert_array_equal(infer(plain.url, x)["y"], expected)
            assert executions(plain) == 3 and circuit(plain) != "closed"
        finally:
            plain.stop()
    finally:
        redis.stop()
