"""The rendered cpu Deployment's container, run for real: the exact command, args and env of the manifest, with
only what a cluster would provide replaced by local stand-ins.

- Volumes: each mountPath becomes a temporary directory, filled as the kubelet would fill it (the rendered
  ConfigMap's files, the Secret's keys with test values and the volume's mode, a tiny ONNX model for the models
  claim, empty dirs for emptyDirs). Exactly the mounted paths are rewritten, wherever they appear in the
  command, args, env values and the config file.
- envFrom: only optional ConfigMaps (the OTEL_* one for tracing), left out, as in a cluster without them.
- Secrets: secretKeyRef env values become test values (REDIS_URL names a real local redis-server that wants a
  password, REDIS_PASSWORD is that password).
- Ports: the config binds fixed ports (8001, 8000, 8002); its copy gets free ones instead, so the test never
  collides with anything else on the machine. Nothing is added to the command line.
- `python`, found on the image's PATH, is this interpreter; the working directory is an empty one, as the
  image's is.

Then the probes run as the kubelet would run them, and a tritonclient smoke test: live, ready, model metadata,
one inference with the bearer token, the answer cached in Redis, and a scrape of the metrics port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.conftest import SERVER, Doc, container, find, pod_spec
from tests.support import onnx_models
from tests.support import redis_server as redis_process
from tests.support.server_process import free_port

TOKEN = "smoke-test-infer-token-0123456789abcdef"
REDIS_PASSWORD = "smoke-test-redis-password"
MODEL = "mlp"
PORT_KEYS = {"grpc": "port", "http": "http_port", "metrics": "metrics_port"}  # container port name -> config key


class Pod:
    """The container's process, with its volumes as local directories."""

    def __init__(self, docs: list[Doc], root: Path, redis_url: str) -> None:
        self.deployment = find(docs, "Deployment", SERVER)
        self.container = container(self.deployment)
        self.root = root
        volumes = {v["name"]: v for v in pod_spec(self.deployment)["volumes"]}
        self.filled_by_init = {m["name"] for c in pod_spec(self.deployment).get("initContainers", [])
                               for m in c.get("volumeMounts", []) if not m.get("readOnly")} - {"tmp"}
        # mountPath -> local directory, longest first so that a path maps through its innermost mount
        mounts = sorted(self.container["volumeMounts"], key=lambda m: -len(m["mountPath"]))
        self.mounts = {m["mountPath"]: root / "volumes" / m["name"] for m in mounts}
        for mount in mounts:
            self.mounts[mount["mountPath"]].mkdir(parents=True)
            self.fill(volumes[mount["name"]], self.mounts[mount["mountPath"]], docs)
        self.secrets = {("inference-server-secrets", "redis-url"): redis_url,
                        ("inference-server-secrets", "redis-password"): REDIS_PASSWORD}
        self.ports = {p["name"]: free_port() for p in self.container["ports"]}
        self.rewrite_config_ports()

    def fill(self, volume: Doc, local: Path, docs: list[Doc]) -> None:
        if "configMap" in volume:
            config_map = find(docs, "ConfigMap", volume["configMap"]["name"])
            for key, text in config_map["data"].items():
                (local / key).write_text(self.local_paths(text))
        elif "secret" in volume:
            values = {"tokens": f"# test tokens\ninfer {TOKEN}\n"}
            for item in volume["secret"]["items"]:
                path = local / item["path"]
                path.write_text(values[item["key"]])
                path.chmod(item.get("mode", volume["secret"].get("defaultMode", 0o644)))
        elif "persistentVolumeClaim" in volume or volume["name"] in self.filled_by_init:
            # the volume's content, or what the init container (components/models-storage) copies into it
            onnx_models.write_model(local, MODEL, onnx_models.mlp([8, 16, 4]))
        elif "emptyDir" not in volume:
            pytest.fail(f"the smoke test does not know how to stand in for volume {volume}")

    def local_paths(self, text: str) -> str:
        """`text` with every mounted path (at a path boundary) moved to its local directory, in one pass (a local
        directory may itself lie under a mounted path such as /tmp)."""
        paths = "|".join(re.escape(p) for p in self.mounts)  # longest first: the innermost mount wins
        return re.sub(rf"(?<![\w./-])({paths})(?=/|\"|'|\s|$)", lambda m: str(self.mounts[m.group(1)]), text)

    def rewrite_config_ports(self) -> None:
        (config,) = [local / "config.toml" for local in self.mounts.values() if (local / "config.toml").exists()]
        text = config.read_text()
        for name, key in PORT_KEYS.items():
            container_port = next(p["containerPort"] for p in self.container["ports"] if p["name"] == name)
            text, count = re.subn(rf"(?m)^{key} = {container_port}\b", f"{key} = {self.ports[name]}", text)
            assert count == 1, f"config.toml should set {key} = {container_port} once"
        config.write_text(text)

    def env(self) -> dict[str, str]:
        env = {"PATH": os.environ["PATH"]}
        for source in self.container.get("envFrom", []):
            # Only optional ConfigMaps (the OTEL_* one): absent here, as in a cluster that has none.
            assert source.get("configMapRef", {}).get("optional") is True, f"a required envFrom: {source}"
        for var in self.container["env"]:
            if "value" in var:
                env[var["name"]] = self.local_paths(var["value"])
                continue
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = self.secrets[(ref["name"], ref["key"])]
        return env

    def command(self) -> list[str]:
        command, args = self.container["command"], self.container["args"]
        assert command[0] == "python"
        return [sys.executable, *command[1:], *(self.local_paths(a) for a in args)]

    def port(self, port: int | str) -> int:
        """The local port standing in for a container port (by number or name)."""
        (name,) = [p["name"] for p in self.container["ports"] if port in (p["containerPort"], p["name"])]
        return self.ports[name]

    def start(self) -> None:
        workdir = self.root / "workdir"
        workdir.mkdir()
        self.log_path = self.root / "server.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.command(), cwd=workdir, env=self.env(), stdout=log,
                                         stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def probe(self, kind: str) -> bool:
        """Run the container's probe as the kubelet does: gRPC health Check, or an HTTP GET wanting 2xx/3xx."""
        probe = self.container[kind]
        timeout = probe.get("timeoutSeconds", 1)
        if "grpc" in probe:
            with grpc.insecure_channel(f"127.0.0.1:{self.port(probe['grpc']['port'])}") as channel:
                try:
                    answer = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")), timeout=timeout)
                except grpc.RpcError:
                    return False
                return answer.status == health_pb2.HealthCheckResponse.SERVING
        action = probe["httpGet"]
        url = f"http://127.0.0.1:{self.port(action['port'])}{action['path']}"
        try:
            return 200 <= urllib.request.urlopen(url, timeout=timeout).status < 400
        except (urllib.error.URLError, OSError):
            return False

    def wait_for(self, kind: str) -> None:
        """Like the kubelet: the probe passes within failureThreshold x periodSeconds (after initialDelaySeconds)."""
        probe = self.container[kind]
        deadline = time.monotonic() + probe.get("initialDelaySeconds", 0) + \
            probe.get("failureThreshold", 3) * probe.get("periodSeconds", 10)
        while not self.probe(kind):
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{kind} did not pass in time:\n{self.log()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def redis(tmp_path):
    if not redis_process.available():
        pytest.skip("redis-server is not installed (scripts/test installs it with apt when run as root)")
    server = redis_process.RedisServer(tmp_path, password=REDIS_PASSWORD).start()
    yield server
    server.stop()


def test_the_cpu_deployment_serves(rendered, tmp_path, redis):
    docs = rendered["cpu"]
    # REDIS_URL without the password: that comes from REDIS_PASSWORD, as the manifest splits them
    pod = Pod(docs, tmp_path, redis_url=f"redis://127.0.0.1:{redis.port}/0")
    pod.start()
    try:
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            pod.wait_for(kind)
        auth = {"authorization": f"Bearer {TOKEN}"}
        with grpcclient.InferenceServerClient(f"127.0.0.1:{pod.port('grpc')}") as client:
            assert client.is_server_live() and client.is_server_ready()
            assert client.is_model_ready(MODEL)
            metadata = client.get_model_metadata(MODEL, headers=auth, as_json=True)
            assert [i["name"] for i in metadata["inputs"]] == ["x"]
            x = grpcclient.InferInput("x", [2, 8], "FP32")
            x.set_data_from_numpy(np.ones((2, 8), np.float32))
            with pytest.raises(grpcclient.InferenceServerException, match="(?i)unauthenticated"):
                client.infer(MODEL, [x])  # the tokens file from the Secret volume is in force
            result = client.infer(MODEL, [x], headers=auth)
            assert result.as_numpy("y").shape == (2, 4)

        # the response cache reached Redis through REDIS_URL and REDIS_PASSWORD from the Secret
        deadline = time.monotonic() + 5
        with redis.client() as r:
            while not r.keys(f"inference_server:{MODEL}:*"):
                assert time.monotonic() < deadline, f"nothing cached in Redis:\n{pod.log()}"
                time.sleep(0.05)

        # the metrics port, at the path the ServiceMonitor scrapes
        (endpoint,) = find(docs, "ServiceMonitor", SERVER)["spec"]["endpoints"]
        url = f"http://127.0.0.1:{pod.port(endpoint['port'])}{endpoint['path']}"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        success = {s.labels["model"]: s.value for family in text_string_to_metric_families(text)
                   for s in family.samples if s.name == "nv_inference_request_success"}
        assert success[MODEL] >= 1

        # SIGTERM (after the preStop sleep): the drain ends with exit 0 well within the grace period
        spec = pod_spec(pod.deployment)
        budget = spec["terminationGracePeriodSeconds"] - pod.container["lifecycle"]["preStop"]["sleep"]["seconds"]
        pod.proc.send_signal(signal.SIGTERM)
        assert pod.proc.wait(budget) == 0, pod.log()
        errors = [line for line in pod.log().splitlines() if '"level": "ERROR"' in line or "Traceback" in line]
        assert not errors, pod.log()
        # the Secret's 0440 tokens file, group-readable by the pod's own group, is not a warning on every start
        assert "readable by other users" not in pod.log()
    finally:
        pod.stop()
