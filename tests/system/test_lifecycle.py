"""SIGTERM/SIGINT drain of a real server process, and start-up failures that must be loud."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2
from tritonclient.utils import InferenceServerException

from tests.support import onnx_models
from tests.support.server_process import ROOT, ServerProcess, free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.system


@pytest.fixture
def slow_repository(tmp_path):
    onnx_models.write_model(tmp_path / "repo", "slow", onnx_models.slow(2048), "[batching]\nmax_batch_size = 1\n")
    return tmp_path / "repo"


def slow_input() -> grpcclient.InferInput:
    x = grpcclient.InferInput("x", [1, 1], "FP32")
    x.set_data_from_numpy(np.ones((1, 1), np.float32))
    return x


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_in_flight_requests_refuses_new_ones_and_exits_0(launch, slow_repository, sig,
                                                                       grpc_engine):
    server = launch("--model-repository", str(slow_repository), "--grpc-engine", grpc_engine)
    results: list[object] = []
    errors: list[Exception] = []
    started = threading.Barrier(9)

    def call() -> None:
        with grpcclient.InferenceServerClient(server.url) as client:
            started.wait()
            try:
                results.append(client.infer("slow", [slow_input()], client_timeout=60).as_numpy("y"))
            except InferenceServerException as e:
                errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    started.wait()
    # The eight requests are in, queued behind one another (one row per batch): seven counted, one executing.
    wait_until(lambda: server.accepted("slow") >= 7, "the eight requests to arrive")
    server.proc.send_signal(sig)
    wait_until(lambda: server.health() == health_pb2.HealthCheckResponse.NOT_SERVING, "the drain to begin")
    assert server.proc.poll() is None  # still draining what it accepted
    with grpcclient.InferenceServerClient(server.url) as client:
        with pytest.raises(InferenceServerException) as refused:
            client.infer("slow", [slow_input()], client_timeout=10)
    assert refused.value.status() == "StatusCode.UNAVAILABLE"
    assert "shutting down" in refused.value.message()
    for t in threads:
        t.join(60)
    assert errors == [] and len(results) == 8  # every accepted request was answered
    assert server.proc.wait(30) == 0, server.log()
    assert "draining" in server.log()


def run_server(*args: str) -> subprocess.CompletedProcess:
    """The server run to its exit. Every port is 0 (picked by the kernel; no HTTP front end) unless `args` name one
    (the last of a repeated option wins), so it never meets a server on the default ports 8000-8002."""
    return subprocess.run([sys.executable, "-m", "inference_server", "--port", "0", "--metrics-port", "0",
                           "--http-port", "0", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_bad_config_fails_fast_naming_the_key(tmp_path):
    cfg = tmp_path / "server.toml"
    cfg.write_text("[batching]\nmax_queue_delay_us = -1\n")
    done = run_server("--config", str(cfg))
    assert done.returncode == 2 and "batching.max_queue_delay_us" in done.stderr


def test_required_cuda_without_a_gpu_fails_at_start_with_exit_on_error(tmp_path):
    done = run_server("--device", "cuda", "--exit-on-error")
    assert done.returncode == 1 and "device 'cuda' is required" in done.stderr


def test_a_model_that_cannot_load_leaves_the_server_up_but_not_ready(tmp_path):
    """--exit-on-error is false by default: the model is UNAVAILABLE with its reason, ServerReady (and health)
    false under strict readiness; with --strict-readiness=false the server reports ready."""
    for strict, serving in (("true", health_pb2.HealthCheckResponse.NOT_SERVING),
                            ("false", health_pb2.HealthCheckResponse.SERVING)):
        server = ServerProcess(["--device", "cuda", f"--strict-readiness={strict}"], tmp_path / f"{strict}.log")
        try:
            deadline = time.monotonic() + 60
            while " serving " not in server.log() and time.monotonic() < deadline:  # the start-up loads are done
                assert server.proc.poll() is None, server.log()
                time.sleep(0.1)
            assert server.health() == serving
            with grpcclient.InferenceServerClient(server.url) as client:
                assert client.is_server_live() and client.is_server_ready() is (strict == "false")
                assert not client.is_model_ready("digits")
                (entry,) = client.get_model_repository_index(as_json=True)["models"]
                assert entry["name"] == "digits" and entry["state"] == "UNAVAILABLE"
                assert "device 'cuda' is required" in entry["reason"]
                x = grpcclient.InferInput("input", [1, 64], "FP32")
                x.set_data_from_numpy(np.zeros((1, 64), np.float32))
                with pytest.raises(InferenceServerException) as e:
                    client.infer("digits", [x])
                assert e.value.status() == "StatusCode.UNAVAILABLE" and "cuda" in e.value.message()
            assert "device 'cuda' is required" in server.log()
        finally:
            assert server.terminate() == 0


def listening_sockets(count: int) -> list[socket.socket]:
    """Sockets listening on ports the kernel picks on 127.0.0.1: ports in use, as another server's would be."""
    held = []
    for _ in range(count):
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        held.append(holder)
    return held


def start_failure(done: subprocess.CompletedProcess) -> str:
    """The one ERROR line a start that cannot listen logs, after checking it exits 1 without a traceback."""
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert done.returncode == 1 and len(errors) == 1, done.stderr
    assert "Traceback" not in done.stderr and "add_port" not in done.stderr, done.stderr
    assert "drain" not in done.stderr  # nothing was running: no misleading drain warning
    return errors[0]


def test_every_port_in_use_is_named_with_its_flag_in_one_message():
    """The ports are all checked before any is bound: both clashes in one line, each with its flag."""
    held = listening_sockets(2)
    try:
        http, metrics = (h.getsockname()[1] for h in held)
        error = start_failure(run_server("--http-port", str(http), "--metrics-port", str(metrics)))
    finally:
        for holder in held:
            holder.close()
    assert (f"cannot listen: 127.0.0.1:{http} (--http-port) is in use; "
            f"127.0.0.1:{metrics} (--metrics-port) is in use") in error


@pytest.mark.parametrize("flag", ["--port", "--http-port", "--metrics-port"])
def test_a_port_in_use_is_named_with_its_flag(flag):
    (holder,) = listening_sockets(1)
    with holder:
        port = holder.getsockname()[1]
        error = start_failure(run_server(flag, str(port)))
    assert f"cannot listen: 127.0.0.1:{port} ({flag}) is in use" in error
    assert error.count("is in use") == 1


def test_a_pods_ports_in_use_are_named_by_its_supervisor():
    """--workers: the supervisor checks the workers' ports and its own metrics port before starting any worker."""
    held = listening_sockets(2)
    try:
        http, metrics = (h.getsockname()[1] for h in held)
        done = run_server("--workers", "2", "--port", str(free_port()), "--http-port", str(http),
                          "--metrics-port", str(metrics))
    finally:
        for holder in held:
            holder.close()
    error = start_failure(done)
    assert "inference_server.pod.workers" in error and "started 2 worker" not in done.stderr
    assert f"127.0.0.1:{http} (--http-port) is in use; 127.0.0.1:{metrics} (--metrics-port) is in use" in error


def test_a_port_of_a_running_server_is_named_and_that_server_is_unharmed(launch):
    first = launch()
    error = start_failure(run_server("--port", str(first.port)))
    assert f"cannot listen: 127.0.0.1:{first.port} (--port) is in use" in error
    with grpc.insecure_channel(first.url) as channel:  # the first server is unharmed
        grpc.channel_ready_future(channel).result(timeout=5)


def test_each_configured_model_that_cannot_load_is_an_error_naming_it_and_why(tmp_path):
    """A --load-model name with a typo, a repository model whose model.onnx is broken and a [[models]] entry
    whose file is broken: each is one ERROR line naming the model and the reason, and the start-up summary names
    the models that are not loaded."""
    repo = tmp_path / "repo"
    onnx_models.write_model(repo, "linear", onnx_models.mlp([4, 2]))
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    (tmp_path / "listed.onnx").write_bytes(b"not one either")
    (tmp_path / "server.toml").write_text(f'[[models]]\nname = "listed"\npath = "{tmp_path / "listed.onnx"}"\n')
    server = ServerProcess(["--config", str(tmp_path / "server.toml"), "--model-repository", str(repo),
                            "--model-control-mode", "explicit", "--load-model", "lineer", "--load-model", "broken",
                            "--load-model", "listed", "--load-model", "linear"], tmp_path / "server.log")
    try:
        wait_until(lambda: " serving " in server.log() or server.proc.poll() is not None, "the start-up loads",
                   timeout_s=60)
        log = server.log()
    finally:
        assert server.terminate() == 0
    errors = [line for line in log.splitlines() if " ERROR " in line]
    typo = [line for line in errors if "'lineer'" in line]
    assert len(typo) == 1 and f"not in the model repository {repo}" in typo[0], errors
    assert "known models: broken, linear, listed" in typo[0]
    for name, path in (("broken", repo / "broken" / "1" / "model.onnx"), ("listed", tmp_path / "listed.onnx")):
        (error,) = [line for line in errors if f"model '{name}' version 1 failed to load" in line]
        assert f"ONNX Runtime cannot load {path}" in error and "INVALID_PROTOBUF" in error
    assert len(errors) == 3, errors
    assert "serving 1 model(s)" in log and "(not ready: not loaded: broken, lineer, listed;" in log


def test_version_and_the_cache_tier_at_start(launch):
    from inference_server import __version__

    done = subprocess.run([sys.executable, "-m", "inference_server", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"python -m inference_server {__version__}"
    assert "response cache: in-process memory, 16 MiB" in launch("--cache", "memory:16").log()


def test_json_log_format_writes_one_object_per_line(launch):
    server = launch("--log-format", "json")
    assert server.terminate() == 0
    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert any(line["message"].startswith("serving 1 model(s)") for line in lines)
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)


def test_missing_model_repository_fails_fast_naming_the_key(tmp_path):
    done = run_server("--model-repository", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "server.model_repository" in done.stderr


def test_readiness_stays_false_until_a_slow_warmup_has_run(tmp_path):
    """The server binds first and answers health NOT_SERVING / ServerReady false while the model warms up
    (about a second here); it turns ready only after the warmup, which the log shows finishing first."""
    onnx_models.write_model(tmp_path / "repo", "warm", onnx_models.slow(1024),
                            "[batching]\nmax_batch_size = 1\n[warmup]\nbatch_sizes = [1]\ncount = 80\n")
    server = ServerProcess(["--model-repository", str(tmp_path / "repo")], tmp_path / "server.log")
    try:
        observed: list[tuple[int | None, bool]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert server.proc.poll() is None, server.log()
            status = server.health()
            if status is None:
                time.sleep(0.02)
                continue
            with grpcclient.InferenceServerClient(server.url) as client:
                observed.append((status, client.is_server_ready(), client.is_model_ready("warm")))
            if status == health_pb2.HealthCheckResponse.SERVING:
                break
            time.sleep(0.05)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert observed[-1] == (serving, True, True)
        # Not ready (and health not SERVING) while it warmed up; health follows ServerReady a moment later, so a
        # probe may see ready before SERVING, never SERVING before ready, and readiness never goes back.
        not_ready = [o for o in observed if o[1:] == (False, False)]
        assert not_ready and all(o[0] != serving for o in not_ready), observed
        assert [o[1] for o in observed] == sorted(o[1] for o in observed), observed
        log = server.log()
        assert "model 'warm' version 1 ready" in log and "(warmup" in log
        assert log.index("model 'warm' version 1 ready") < log.index(" serving 1 model(s)")
    finally:
        assert server.terminate() == 0


def test_a_stop_signal_while_models_load_ends_the_start_cleanly(tmp_path):
    onnx_models.write_model(tmp_path / "repo", "warm", onnx_models.slow(1024),
                            "[batching]\nmax_batch_size = 1\n[warmup]\nbatch_sizes = [1]\ncount = 400\n")
    server = ServerProcess(["--model-repository", str(tmp_path / "repo")], tmp_path / "server.log")
    deadline = time.monotonic() + 60
    while server.health() != health_pb2.HealthCheckResponse.NOT_SERVING:  # bound, still warming up
        assert time.monotonic() < deadline and server.proc.poll() is None, server.log()
        time.sleep(0.05)
    assert server.terminate(timeout_s=30) == 0
    log = server.log()
    assert "shutdown signal received while starting" in log
    assert "version 1 ready" not in log  # the warmup (several seconds of it) was cut short
