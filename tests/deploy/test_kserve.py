"""k8s/kserve, offline: the ClusterServingRuntime and the example InferenceServices and TrainedModels validate
strictly against KServe's CRD schemas (vendored from a pinned release, tests/deploy/schemas), and the runtime keeps
the contract KServe relies on: its name and formats, one `kserve-container` whose args parse with the server's own
CLI into the ports and paths KServe uses, HTTP 8080 as the first container port and gRPC 9000 named h2c, the
Prometheus annotations on the port that serves /metrics, the locked-down security context of k8s/base, and the
OTEL_* variables left to the platform."""

from __future__ import annotations

import copy
import subprocess

import jsonschema
import pytest
import yaml

from inference_server import __version__
from inference_server.config.cli import load_config
from tests.deploy.conftest import KUBECTL, container
from tests.deploy.test_manifests import (
    K8S_VERSION,
    NEWEST_K8S_VERSION,
    OTEL_CONFIG_MAP,
    PRESTOP_DRAIN_LINGER_S,
    validate,
)
from tests.support import kserve

RUNTIME_NAME = "inference-server"
DEFAULT_TERMINATION_GRACE_S = 30  # Kubernetes' default; a ClusterServingRuntime cannot set the pod's


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    """`kubectl apply -k k8s/kserve`'s objects: the runtime alone."""
    done = subprocess.run([str(KUBECTL), "kustomize", str(kserve.KSERVE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_the_kustomization_installs_the_runtime_as_written(rendered):
    assert rendered == [kserve.runtime()]


@pytest.mark.parametrize("version", [K8S_VERSION, NEWEST_K8S_VERSION])
def test_every_object_validates_strictly(version):
    docs = [kserve.runtime(), *kserve.examples()]
    assert {d["kind"] for d in docs} == {"ClusterServingRuntime", "InferenceService", "TrainedModel"}
    for doc in docs:
        validate(doc, version)


def test_strict_validation_catches_a_typo_in_each_kserve_kind():
    runtime = kserve.runtime()
    typo = copy.deepcopy(runtime)
    typo["spec"]["supportedModelFormat"] = typo["spec"].pop("supportedModelFormats")
    with pytest.raises(jsonschema.ValidationError, match="supportedModelFormat"):
        validate(typo)
    typo = copy.deepcopy(runtime)
    kserve.server_container(typo)["readinesProbe"] = kserve.server_container(typo).pop("readinessProbe")
    with pytest.raises(jsonschema.ValidationError, match="readinesProbe"):
        validate(typo)
    isvc, trained = (next(d for d in kserve.examples() if d["kind"] == kind)
                     for kind in ("InferenceService", "TrainedModel"))
    typo = copy.deepcopy(isvc)
    typo["spec"]["predictor"]["model"]["storageURI"] = "s3://x"
    with pytest.raises(jsonschema.ValidationError, match="storageURI"):
        validate(typo)
    typo = copy.deepcopy(trained)
    del typo["spec"]["model"]["memory"]  # required
    with pytest.raises(jsonschema.ValidationError, match="memory"):
        validate(typo)


def test_the_runtime_is_the_contract():
    runtime = kserve.runtime()
    assert (runtime["apiVersion"], runtime["kind"], runtime["metadata"]["name"]) == (
        "serving.kserve.io/v1alpha1", "ClusterServingRuntime", RUNTIME_NAME)
    formats = {(f["name"], f["version"]): f for f in runtime["spec"]["supportedModelFormats"]}
    assert set(formats) == {("onnx", "1"), ("triton", "2")}
    assert formats["onnx", "1"]["autoSelect"] is True
    assert runtime["spec"]["protocolVersions"] == ["v2", "grpc-v2"]
    (server,) = runtime["spec"]["containers"]
    assert server["name"] == kserve.CONTAINER
    for arg in ("--model-repository=/mnt/models", "--model-name={{.Name}}", "--http-port=8080", "--port=9000",
                "--host=0.0.0.0"):
        assert arg in server["args"]
    http, grpc = server["ports"][:2]
    assert (http["containerPort"], grpc["containerPort"], grpc["name"]) == (8080, 9000, "h2c")
    assert all(p.get("protocol", "TCP") == "TCP" for p in server["ports"])


def test_the_runtime_runs_the_releases_image_not_a_mutable_tag():
    """Like the overlays (test_every_overlay_ships_the_alert_rules_and_versioned_images): `<version>-cpu`, never a
    bare `cpu` that a rebuild moves while nodes keep the old one under IfNotPresent."""
    (server,) = kserve.runtime()["spec"]["containers"]
    name, _, tag = server["image"].rpartition(":")
    assert name.rpartition("/")[2] == "inference-server" and tag == f"{__version__}-cpu", server["image"]


def test_the_args_parse_with_the_servers_cli_into_what_kserve_uses(tmp_path):
    """What the server makes of the args in an InferenceService's pod, read by the server's own loader."""
    args = kserve.container_args("iris", values={"--model-repository": str(tmp_path)})
    cfg = load_config(args, {})
    assert (cfg.host, cfg.http_port, cfg.port, cfg.model_name) == ("0.0.0.0", 8080, 9000, "iris")
    assert cfg.model_repository == tmp_path and cfg.model_control_mode == "none"
    assert cfg.metrics and cfg.metrics_host == "0.0.0.0"
    server = kserve.server_container()
    assert server["command"][:3] == ["python", "-m", "inference_server"]
    # The kubelet SIGKILLs after the default grace: the preStop sleep, the drain and the port-close linger fit.
    assert (server["lifecycle"]["preStop"]["sleep"]["seconds"] + cfg.drain_grace_s + PRESTOP_DRAIN_LINGER_S
            < DEFAULT_TERMINATION_GRACE_S)


def test_prometheus_annotations_name_the_port_that_serves_metrics():
    runtime = kserve.runtime()
    annotations = runtime["spec"]["annotations"]
    assert annotations["prometheus.kserve.io/path"] == "/metrics"
    cfg = load_config(kserve.container_args("iris"), {})
    assert annotations["prometheus.kserve.io/port"] == str(cfg.metrics_port)
    ports = {p["name"]: p["containerPort"] for p in kserve.server_container()["ports"]}
    assert ports["metrics"] == cfg.metrics_port != cfg.http_port  # the HTTP port serves no /metrics


def test_probes_use_the_http_port_and_the_health_endpoints():
    """As k8s/base: startup on live (one model that fails to load must not restart the pod), readiness on ready."""
    server = kserve.server_container()
    for probe, path in (("startupProbe", "/v2/health/live"), ("readinessProbe", "/v2/health/ready"),
                        ("livenessProbe", "/v2/health/live")):
        assert server[probe]["httpGet"] == {"path": path, "port": 8080}, probe
    base = yaml.safe_load((kserve.ROOT / "k8s" / "base" / "deployment.yaml").read_text())
    assert container(base)["startupProbe"]["httpGet"]["path"] == server["startupProbe"]["httpGet"]["path"]


def test_the_container_runs_locked_down_like_k8s_base():
    base = yaml.safe_load((kserve.ROOT / "k8s" / "base" / "deployment.yaml").read_text())
    server = kserve.server_container()
    assert server["securityContext"] == container(base)["securityContext"]
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env == {e["name"]: e.get("value") for e in container(base)["env"] if "value" in e}  # no secrets here
    # The read-only root: $HOME (and the server's temporary model cache) on an emptyDir.
    (mount,) = [m for m in server["volumeMounts"] if m["mountPath"] == env["HOME"]]
    (volume,) = [v for v in kserve.runtime()["spec"]["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(server["resources"][kind])


def test_otel_variables_pass_through():
    server = kserve.server_container()
    assert server["envFrom"] == [{"configMapRef": {"name": OTEL_CONFIG_MAP, "optional": True}}]
    assert not [e["name"] for e in server["env"] if e["name"].startswith("OTEL_")]


def test_the_examples_use_the_runtime_as_kserve_would_pick_it():
    runtime = kserve.runtime()
    formats = {f["name"]: f["version"] for f in runtime["spec"]["supportedModelFormats"]}
    docs = kserve.examples()
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "InferenceService"}
    assert len(services) == 3
    for name, isvc in services.items():
        model = isvc["spec"]["predictor"]["model"]
        assert model["runtime"] == RUNTIME_NAME, name
        assert formats[model["modelFormat"]["name"]] == model["modelFormat"]["version"], name
        assert model["protocolVersion"] in runtime["spec"]["protocolVersions"], name
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard", name
        cfg = load_config(kserve.container_args(name, model.get("args", ())), {})
        assert cfg.model_name == name
    by_format = {s["spec"]["predictor"]["model"]["modelFormat"]["name"]: s for s in services.values()
                 if "storageUri" in s["spec"]["predictor"]["model"]}
    assert set(by_format) == {"onnx", "triton"}  # one ONNX model, one Triton repository

    trained = [d for d in docs if d["kind"] == "TrainedModel"]
    assert trained
    for model in trained:
        target = services[model["spec"]["inferenceService"]]["spec"]["predictor"]["model"]
        # KServe runs its multi-model agent for an InferenceService without a storageUri; the agent's load and
        # unload calls need explicit model control (the isvc's args are appended to the runtime's).
        assert "storageUri" not in target
        assert load_config(kserve.container_args("x", target["args"]), {}).model_control_mode == "explicit"
        assert model["spec"]["model"]["framework"] in formats

