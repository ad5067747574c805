"""The Kubernetes probes of k8s/base/deployment.yaml and of the KServe runtime (k8s/kserve) against a real server
process whose repository holds one model that cannot load: the startup and liveness probes (HTTP live) pass, so the
kubelet never restarts the pod; readiness (gRPC health, strict; the runtime's HTTP ready) stays failing, so no
Service routes to it; the other model serves."""

from __future__ import annotations

import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.support import onnx_models
from tests.support.server_process import ROOT, ServerProcess, free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.system


def server_container() -> dict:
    deployment = yaml.safe_load((ROOT / "k8s" / "base" / "deployment.yaml").read_text())
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "inference-server"]
    return container


def kserve_container() -> dict:
    (runtime,) = [d for d in yaml.safe_load_all((ROOT / "k8s" / "kserve" / "cluster-serving-runtime.yaml").read_text())
                  if d and d.get("kind") == "ClusterServingRuntime"]
    (container,) = runtime["spec"]["containers"]
    return container


def http_probe(probe: dict, ports: dict[str, int]) -> int | None:
    """The kubelet's httpGet probe against the local stand-in for the container port: the status, or None."""
    action = probe["httpGet"]
    url = f"http://127.0.0.1:{ports[action['port']]}{action['path']}"
    try:
        with urllib.request.urlopen(url, timeout=probe.get("timeoutSeconds", 1)) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def grpc_probe(probe: dict, port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", ""))
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=probe.get("timeoutSeconds", 1)).status


def test_one_model_that_fails_to_load_keeps_the_pod_alive_and_the_others_serving(tmp_path):
    repo = tmp_path / "models"
    onnx_models.write_model(repo, "good", onnx_models.mlp([4, 8, 2]))
    onnx_models.write_model(repo, "broken", onnx_models.mlp([4, 8, 2])).write_bytes(b"not an ONNX model")
    http_port = free_port()
    # the manifests' choices: strict readiness, one bad model does not end the process
    server = ServerProcess(["--model-repository", str(repo), "--http-port", str(http_port),
                            "--strict-readiness=true", "--exit-on-error=false"], tmp_path / "server.log")
    ports = {"http": http_port, "grpc": server.port}
    container = server_container()
    startup, liveness, readiness = (container[k] for k in ("startupProbe", "livenessProbe", "readinessProbe"))
    try:
        wait_until(lambda: " serving " in server.log() or server.proc.poll() is not None,
                   "the start-up loads to finish", timeout_s=60)
        assert server.proc.poll() is None, server.log()
        # the kubelet: startup passes (so liveness takes over and passes too): no restart, ever
        assert http_probe(startup, ports) == 200
        assert http_probe(liveness, ports) == 200
        # readiness, strict: the broken model keeps the pod out of the Service's endpoints
        assert grpc_probe(readiness, server.port) == health_pb2.HealthCheckResponse.NOT_SERVING
        # the KServe runtime's probes, its container port 8080 being the HTTP port
        runtime = kserve_container()
        kserve_ports = {8080: http_port}
        assert http_probe(runtime["startupProbe"], kserve_ports) == 200
        assert http_probe(runtime["livenessProbe"], kserve_ports) == 200
        status = http_probe(runtime["readinessProbe"], kserve_ports)
        assert status is not None and not 200 <= status < 400, status  # what the kubelet counts as a failure
        with grpcclient.InferenceServerClient(server.url) as client:
            assert client.is_server_live() and not client.is_server_ready()
            assert client.is_model_ready("good") and not client.is_model_ready("broken")
            x = grpcclient.InferInput("x", [2, 4], "FP32")
            x.set_data_from_numpy(np.ones((2, 4), np.float32))
            assert client.infer("good", [x]).as_numpy("y").shape == (2, 2)
            with pytest.raises(InferenceServerException) as failed:
                client.infer("broken", [x])
            assert failed.value.status() == "StatusCode.UNAVAILABLE"
        # still alive and answering live after the start-up (what the kubelet keeps asking)
        assert server.proc.poll() is None and http_probe(liveness, ports) == 200
    finally:
        assert server.terminate() == 0, server.log()
