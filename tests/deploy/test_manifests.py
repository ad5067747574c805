"""The Kubernetes manifests, offline: every overlay renders, every object validates strictly (core kinds against
the Kubernetes OpenAPI schemas of a pinned version, CRDs against vendored CRD schemas), and the semantics no
schema sees hold: GPU request == limit, probes on real ports and health endpoints, selectors that match, the
autoscaler on the Deployment and on metrics the server really exports, a grace period that covers the drain,
a ConfigMap the server's own loader accepts, secrets that are referenced, never committed, and tracing configured
by an optional ConfigMap of OTEL_* variables (the one docs/deployment.md shows, read by the OpenTelemetry SDK)."""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from packaging.version import Version
from prometheus_client.parser import text_string_to_metric_families

from inference_server.config.cli import load_config
from inference_server.config.server import ServerConfig
from inference_server.grpc import engine as grpc_engine
from inference_server.grpc.server import SERVICE_NAME
from inference_server import __version__
from tests.deploy.conftest import (
    ADAPTER_VALUES,
    GPU_OVERLAYS,
    K8S,
    OVERLAYS,
    ROOT,
    SERVER,
    Doc,
    adapter_rules,
    autoscaler_queries,
    container,
    find,
    find_all,
    mount_for,
    pod_spec,
    promql_metric_names,
    promql_selectors,
    render,
    server_config_text,
)
from tests.support import onnx_models
from tests.support.docs import fenced

K8S_VERSION = "1.33"  # the oldest Kubernetes these manifests support (lifecycle.preStop.sleep needs >= 1.30)
NEWEST_K8S_VERSION = "1.37"  # the newest kubernetes-validate 1.37.0 knows: nothing used has been removed since
SCHEMAS = Path(__file__).parent / "schemas"
NAMESPACE = "inference"
PRESTOP_DRAIN_LINGER_S = 2  # after drain_grace_s the server keeps refusing for up to 2 s before closing its ports
HEALTH_PATHS = {"/v2/health/live", "/v2/health/ready"}
DEFAULT_REDIS_URL = "redis://inference-redis:6379/0"  # the documented value of the Secret's redis-url key
OTEL_CONFIG_MAP = "inference-server-otel"  # the platform's OTEL_* variables for the server (docs/deployment.md)
SPOT_NOTICE_S = 30  # a spot/preemptible node's notice before it goes (GCE, Azure; EC2 gives 2 minutes)


# --- strict validation -----------------------------------------------------------------------------------------

def strict(schema: Any) -> Any:
    """A CRD's OpenAPI schema in which an unknown field fails: additionalProperties false wherever properties
    are listed, unless the schema keeps unknown fields (x-kubernetes-preserve-unknown-fields) or already says."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {name: strict(s) for name, s in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(schema["additionalProperties"])
    if isinstance(schema.get("items"), dict):
        out["items"] = strict(schema["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [strict(s) for s in schema[key]]
    return out


@functools.cache
def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> a strict validator, from every vendored schema in tests/deploy/schemas (YAML, or JSON
    for the large ones: KServe's)."""
    validators = {}
    for path in sorted([*SCHEMAS.glob("*.yaml"), *SCHEMAS.glob("*.json")]):
        crd = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
        schema = strict(crd["openAPIV3Schema"])
        validators[(f"{crd['group']}/{crd['version']}", crd["kind"])] = jsonschema.Draft7Validator(schema)
    return validators


def validate(doc: Doc, version: str = K8S_VERSION) -> None:
    """Raises kubernetes_validate's ValidationError or SchemaNotFoundError, or jsonschema's ValidationError."""
    crd = crd_validators().get((doc["apiVersion"], doc["kind"]))
    if crd is None:
        kubernetes_validate.validate(doc, version, strict=True)
        return
    crd.validate(doc)
    # The CRD schemas leave metadata open: hold it to ObjectMeta's schema through a ConfigMap around it.
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]},
                                 version, strict=True)


INVALID = (kubernetes_validate.ValidationError, jsonschema.ValidationError)


def load_server_config(docs: list[Doc], tmp_path: Path) -> ServerConfig:
    """The config as the container's server loads it: the rendered ConfigMap's TOML through the server's own
    loader (cli.load_config), given the container's args with the config path moved to a copy, and $REDIS_URL
    (which `cache = "redis"` needs) set to the Secret's documented value."""
    path = tmp_path / "config.toml"
    path.write_text(server_config_text(docs))
    args = list(container(find(docs, "Deployment", SERVER))["args"])
    args[args.index("--config") + 1] = str(path)
    return load_config(args, {"REDIS_URL": DEFAULT_REDIS_URL})


def test_the_tested_overlays_are_all_the_overlays():
    found = {p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml")
             if yaml.safe_load(p.read_text()).get("kind", "Kustomization") == "Kustomization"}
    assert found == set(OVERLAYS)
    for path in (K8S / "overlays" / "components").glob("*/kustomization.yaml"):
        assert yaml.safe_load(path.read_text())["kind"] == "Component", path


@pytest.mark.parametrize("version", [K8S_VERSION, NEWEST_K8S_VERSION])
def test_every_object_validates_strictly(docs, overlay, version):
    assert docs, f"{overlay} rendered nothing"
    failures = []
    for doc in docs:
        try:
            validate(doc, version)
        except (*INVALID, kubernetes_validate.SchemaNotFoundError) as e:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {type(e).__name__}: {getattr(e, 'message', e)}")
    assert not failures, "\n".join(failures)


def test_an_unknown_kind_is_a_failure_not_a_warning():
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate({"apiVersion": "autoscaling/v2beta2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"}})


def test_strict_validation_catches_a_typo_in_a_core_object(rendered):
    deployment = find(rendered["cpu"], "Deployment", SERVER)
    validate(deployment)
    typo = copy.deepcopy(deployment)
    server = container(typo)
    server["readinesProbe"] = server.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        validate(typo)
    typo = copy.deepcopy(deployment)
    pod_spec(typo)["securityContext"]["runAsNonroot"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="runAsNonroot"):
        validate(typo)
    wrong_type = copy.deepcopy(deployment)
    container(wrong_type)["readinessProbe"]["grpc"]["port"] = "8001"  # grpc probe ports are numbers, not names
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(wrong_type)


def test_strict_validation_catches_a_typo_in_a_crd(rendered):
    scaled_object = find(rendered["cpu"], "ScaledObject", SERVER)
    validate(scaled_object)
    typo = copy.deepcopy(scaled_object)
    typo["spec"]["triggers"][0]["metdata"] = typo["spec"]["triggers"][0].pop("metadata")
    with pytest.raises(jsonschema.ValidationError):
        validate(typo)
    typo = copy.deepcopy(scaled_object)
    typo["spec"]["minReplicas"] = 1  # the HPA's name for it; KEDA's is minReplicaCount
    with pytest.raises(jsonschema.ValidationError, match="minReplicas"):
        validate(typo)
    typo = copy.deepcopy(scaled_object)
    typo["metadata"]["labelz"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="labelz"):
        validate(typo)

    monitor = find(rendered["cpu"], "ServiceMonitor", SERVER)
    validate(monitor)
    typo = copy.deepcopy(monitor)
    typo["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        validate(typo)


def test_the_prometheus_rule_schema_is_strict():
    """Vendored for the PrometheusRule in k8s/monitoring; held to it here even when no overlay renders one."""
    rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": {"name": "r"},
            "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up == 0", "for": "5m"}]}]}}
    validate(rule)
    rule["spec"]["groups"][0]["rules"][0]["exprr"] = rule["spec"]["groups"][0]["rules"][0].pop("expr")
    with pytest.raises(jsonschema.ValidationError):
        validate(rule)


# --- semantics -------------------------------------------------------------------------------------------------

def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def deployment_selecting(docs: list[Doc], selector: dict[str, str]) -> list[str]:
    return [d["metadata"]["name"] for d in find_all(docs, "Deployment")
            if matches(selector, d["spec"]["template"]["metadata"]["labels"])]


def test_namespaced_objects_live_in_one_namespace(docs):
    assert find(docs, "Namespace")["metadata"]["name"] == NAMESPACE
    cluster_scoped = {"Namespace", "PriorityClass"}
    for doc in docs:
        namespace = doc["metadata"].get("namespace")
        if doc["kind"] in cluster_scoped:
            assert namespace is None, doc["metadata"]["name"]
        elif doc["kind"] == "ConfigMap" and doc in adapter_config_maps(docs):
            assert namespace == "monitoring"  # read by prometheus-adapter, in its namespace
        else:
            assert namespace == NAMESPACE, f"{doc['kind']}/{doc['metadata']['name']} is in {namespace!r}"


def adapter_config_maps(docs: list[Doc]) -> list[Doc]:
    return [cm for cm in find_all(docs, "ConfigMap") if "prometheus-adapter" in cm["metadata"]["name"]]


def test_gpu_request_equals_limit(docs, overlay, tmp_path):
    """Extended resources cannot be overcommitted: request == limit, a positive whole number of GPUs."""
    for deployment in find_all(docs, "Deployment"):
        for c in pod_spec(deployment)["containers"]:
            requests, limits = c["resources"].get("requests", {}), c["resources"].get("limits", {})
            for name in {*requests, *limits} - {"cpu", "memory", "ephemeral-storage"}:
                assert str(requests.get(name)) == str(limits.get(name)), f"{c['name']}: {name}"
                assert str(limits[name]).isdigit() and int(limits[name]) > 0, f"{c['name']}: {name}={limits[name]}"
    deployment = find(docs, "Deployment", SERVER)
    resources, spec = container(deployment)["resources"], pod_spec(deployment)
    config = load_server_config(docs, tmp_path)  # the file and the container's flags, as the server reads them
    if overlay in GPU_OVERLAYS:
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert config.workers == 1  # one process per GPU
        assert config.device == "cuda"
        assert container(deployment)["image"] == f"inference-server:{__version__}-gpu"
    else:
        assert "nvidia.com/gpu" not in str(deployment)
        assert config.device == "cpu"
        assert container(deployment)["image"] == f"inference-server:{__version__}-cpu"


def container_port(c: Doc, port: int | str) -> Doc:
    """The container port a probe or Service names, by number or by name."""
    found = [p for p in c.get("ports", []) if port in (p["containerPort"], p.get("name"))]
    assert len(found) == 1, f"port {port!r} is not one of container {c['name']}'s ports"
    return found[0]


def test_probes_use_container_ports_and_the_health_endpoints(docs):
    for deployment in find_all(docs, "Deployment"):
        for c in pod_spec(deployment)["containers"]:
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c.get(kind)
                if probe is None:
                    continue
                handler = {k: v for k, v in probe.items() if k in ("grpc", "httpGet", "tcpSocket", "exec")}
                assert len(handler) == 1, f"{c['name']} {kind}: {probe}"
                for action in handler.values():
                    if "port" in action:
                        container_port(c, action["port"])

    server = container(find(docs, "Deployment", SERVER))
    grpc_port = container_port(server, "grpc")["containerPort"]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert kind in server, f"the server has no {kind}"
    # readiness: the gRPC health service for the inference service, on the gRPC port (strict: models ready)
    assert server["readinessProbe"]["grpc"]["port"] == grpc_port
    assert server["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    # liveness: HTTP live, which answers while the server drains (gRPC health turns NOT_SERVING then); startup:
    # the same, so that a model that fails to load (strict readiness) never gets the pod restarted
    for kind in ("startupProbe", "livenessProbe"):
        live = server[kind]["httpGet"]
        assert live["path"] == "/v2/health/live", kind
        assert container_port(server, live["port"])["name"] == "http", kind
    assert tomllib.loads(server_config_text(docs))["server"]["http_port"] != 0
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if "httpGet" in server[kind]:
            assert server[kind]["httpGet"]["path"] in HEALTH_PATHS


def test_selectors_match_the_pod_labels(docs):
    for deployment in find_all(docs, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert set(deployment["spec"]["selector"]) == {"matchLabels"}
        assert matches(deployment["spec"]["selector"]["matchLabels"], labels), deployment["metadata"]["name"]
        for constraint in pod_spec(deployment).get("topologySpreadConstraints", []):
            assert deployment_selecting(docs, constraint["labelSelector"]["matchLabels"]) == \
                [deployment["metadata"]["name"]]
    # Every Service routes to exactly one Deployment's pods: the server's two to the server, Redis's to Redis.
    for service in find_all(docs, "Service"):
        expected = "inference-redis" if service["metadata"]["name"] == "inference-redis" else SERVER
        assert deployment_selecting(docs, service["spec"]["selector"]) == [expected], service["metadata"]["name"]
    pdb = find(docs, "PodDisruptionBudget", SERVER)
    assert deployment_selecting(docs, pdb["spec"]["selector"]["matchLabels"]) == [SERVER]
    for policy in find_all(docs, "NetworkPolicy"):
        assert deployment_selecting(docs, policy["spec"]["podSelector"]["matchLabels"]) == ["inference-redis"]
        (rule,) = policy["spec"]["ingress"]
        assert [deployment_selecting(docs, peer["podSelector"]["matchLabels"]) for peer in rule["from"]] == [[SERVER]]
        redis = container(find(docs, "Deployment", "inference-redis"), "redis")
        for port in rule["ports"]:
            container_port(redis, port["port"])


def test_the_headless_service_is_headless_and_the_other_is_not(docs):
    headless = find(docs, "Service", f"{SERVER}-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert {p["name"] for p in headless["spec"]["ports"]} == {"grpc", "http"}  # no metrics: scraped once
    assert find(docs, "Service", SERVER)["spec"]["type"] == "ClusterIP"
    grpc = [p for s in (headless, find(docs, "Service", SERVER)) for p in s["spec"]["ports"] if p["name"] == "grpc"]
    assert all(p["appProtocol"] == "grpc" for p in grpc)


def test_container_ports_are_named_and_services_target_them(docs):
    for deployment in find_all(docs, "Deployment"):
        for c in pod_spec(deployment)["containers"]:
            assert all(p.get("name") for p in c.get("ports", [])), f"{c['name']} has an unnamed port"
    for service in find_all(docs, "Service"):
        (target,) = deployment_selecting(docs, service["spec"]["selector"])
        containers = pod_spec(find(docs, "Deployment", target))["containers"]
        for port in service["spec"]["ports"]:
            assert isinstance(port["targetPort"], str), f"{service['metadata']['name']}: target ports by name"
            found = [p for c in containers for p in c.get("ports", []) if p.get("name") == port["targetPort"]]
            assert len(found) == 1, f"{service['metadata']['name']}: no container port {port['targetPort']}"
            assert found[0]["containerPort"] == port["port"], "Service and container port numbers agree"


def autoscalers(docs: list[Doc]) -> list[Doc]:
    return find_all(docs, "ScaledObject") + find_all(docs, "HorizontalPodAutoscaler")


def test_the_autoscaler_targets_the_deployment(docs, overlay):
    (scaler,) = autoscalers(docs)  # never KEDA and an HPA on one Deployment
    assert scaler["kind"] == ("HorizontalPodAutoscaler" if overlay == "hpa" else "ScaledObject")
    deployment = find(docs, "Deployment", SERVER)
    assert scaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": SERVER}
    assert scaler["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    keda = scaler["kind"] == "ScaledObject"
    keys = ("minReplicaCount", "maxReplicaCount") if keda else ("minReplicas", "maxReplicas")
    low, high = (scaler["spec"][key] for key in keys)
    assert 2 <= low < high  # never zero (no queue to measure) and never one (a node drain takes the only pod)
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    assert "replicas" in find(docs, "Deployment", "inference-redis")["spec"]


@pytest.fixture(scope="module")
def exported_metric_names(server) -> set[str]:
    """Every sample name a real server exports (histogram/counter suffixes included), scraped after an inference
    so that the per-model series exist."""
    with grpcclient.InferenceServerClient(server.url) as client:
        pixels = grpcclient.InferInput("pixels", [1, 64], "FP32")
        pixels.set_data_from_numpy(np.zeros((1, 64), np.float32))
        client.infer("digits", [pixels])
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.app.metrics.port}/metrics", timeout=10).read().decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def test_the_promql_name_extraction():
    assert promql_metric_names('sum by (model, pod) (rate(a_total{job="x",le=~"1|2"}[1m])) / on(pod) group_left '
                               'clamp_min(b_us offset 5m, 1e3) or vector(0) > bool 0.5') == {"a_total", "b_us"}
    assert promql_metric_names("sum by (<<.GroupBy>>) (rate(c{<<.LabelMatchers>>}[30s]))") == {"c"}
    assert promql_selectors('rate(a{namespace="n", pod!="", job="j"}[1m])') == [("a", {"namespace": "n",
                                                                                         "job": "j"})]


def test_autoscaling_queries_read_metrics_the_server_exports(docs, exported_metric_names):
    queries = autoscaler_queries(docs)
    assert queries
    for query in queries:
        names = promql_metric_names(query)
        assert names, query
        assert names <= exported_metric_names, f"not exported by the server: {names - exported_metric_names}"
    # Triton's queue:compute ratio, from the two cumulative counters
    assert {"nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us"} <= \
        set().union(*map(promql_metric_names, queries))


def test_keda_queries_select_this_deployments_series(docs):
    """KEDA's queries are global PromQL: each selector must name the Deployment's namespace and the job the
    ServiceMonitor gives its series (the Service's name)."""
    job = scraped_service(docs)["metadata"]["name"]
    namespace = find(docs, "Deployment", SERVER)["metadata"]["namespace"]
    for scaled_object in find_all(docs, "ScaledObject"):
        for trigger in scaled_object["spec"]["triggers"]:
            assert trigger["type"] == "prometheus"
            assert float(trigger["metadata"]["threshold"]) > 0
            selectors = promql_selectors(trigger["metadata"]["query"])
            assert selectors
            for metric, labels in selectors:
                assert labels.get("namespace") == namespace and labels.get("job") == job, metric


def test_the_hpa_metric_is_the_adapter_rule(docs, overlay):
    if overlay != "hpa":
        assert not adapter_rules(docs)
        return
    (hpa,) = find_all(docs, "HorizontalPodAutoscaler")
    metrics = hpa["spec"]["metrics"]
    assert len(metrics) == 2  # the queue:compute ratio, and requests in the server (grows with the load)
    rules = {rule["name"]["as"]: rule for rule in adapter_rules(docs)}
    for metric in metrics:
        assert metric["type"] == "Pods"
        assert metric["pods"]["target"]["type"] == "AverageValue"
        rule = rules.pop(metric["pods"]["metric"]["name"])
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
    assert not rules, f"rules no metric reads: {sorted(rules)}"
    # Helm values of the adapter's chart: it makes its own ConfigMap from rules.custom, so none ships here
    assert not adapter_config_maps(docs)
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    assert values["rules"]["default"] is False and set(values["prometheus"]) == {"url", "port"}


def test_termination_grace_covers_the_prestop_sleep_and_the_drain(docs, tmp_path):
    deployment = find(docs, "Deployment", SERVER)
    drain = load_server_config(docs, tmp_path).drain_grace_s
    pre_stop = container(deployment)["lifecycle"]["preStop"]
    assert set(pre_stop) == {"sleep"}, "no shell in the image: the sleep action"
    sleep = pre_stop["sleep"]["seconds"]
    assert sleep >= 3
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert grace > drain + sleep + PRESTOP_DRAIN_LINGER_S
    assert grace <= SPOT_NOTICE_S, "a spot node goes after about 30 s: a longer drain is cut off anyway"


def test_the_config_map_parses_with_the_servers_loader(docs, tmp_path):
    cfg = load_server_config(docs, tmp_path)
    deployment = find(docs, "Deployment", SERVER)
    server = container(deployment)
    assert server["command"] == ["python", "-m", "inference_server"]
    assert server["args"][0] == "--config"
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert (cfg.port, cfg.http_port, cfg.metrics_port) == (ports["grpc"], ports["http"], ports["metrics"])
    assert (cfg.host, cfg.metrics_host, cfg.metrics) == ("0.0.0.0", "0.0.0.0", True)
    assert cfg.workers == 1
    assert tomllib.loads(server_config_text(docs))["server"]["cache"] == "redis"  # the URL from $REDIS_URL...
    assert cfg.cache == DEFAULT_REDIS_URL  # ...which by default names the reference Redis's Service and port
    redis = find(docs, "Service", "inference-redis")
    assert DEFAULT_REDIS_URL == f"redis://{redis['metadata']['name']}:{redis['spec']['ports'][0]['port']}/0"
    # connections end so that clients spread; no grace, so that long ModelStreamInfer streams are not cut off
    assert cfg.max_connection_age_s > 0 and cfg.max_connection_age_grace_s == 0
    # so auto serves gRPC with grpcio, which can end connections by age (docs/deployment.md)
    engine, why = grpc_engine.choose(cfg)
    assert engine == "grpcio" and "server.max_connection_age_s" in why
    assert {e["name"] for e in server["env"]} >= {"REDIS_URL", "ORT_DISABLE_TELEMETRY", "MLFLOW_DISABLE_TELEMETRY"}
    # every path the server reads or writes is on a volume of the right kind
    mount, volume = mount_for(deployment, str(cfg.model_repository))
    assert mount == "/models" and volume_mount(deployment, mount)["readOnly"]
    assert set(volume) - {"name"} in ({"emptyDir"}, {"persistentVolumeClaim"})
    mount, volume = mount_for(deployment, str(cfg.model_cache_dir))
    assert "emptyDir" in volume and not volume_mount(deployment, mount).get("readOnly")
    mount, volume = mount_for(deployment, str(cfg.auth.tokens_file))
    assert "secret" in volume and volume_mount(deployment, mount)["readOnly"]
    assert [item["path"] for item in volume["secret"]["items"]] == [str(cfg.auth.tokens_file)[len(mount) + 1:]]
    mount, volume = mount_for(deployment, "/tmp")
    assert "emptyDir" in volume


def volume_mount(deployment: Doc, mount_path: str) -> Doc:
    (mount,) = [m for m in container(deployment)["volumeMounts"] if m["mountPath"] == mount_path]
    return mount


def test_every_overlay_serves_the_base_config_unchanged(rendered):
    """GPU pods get `--device cuda` as a flag, not a config of their own: a model added to k8s/base/config.toml
    reaches every overlay's pods, GPU ones included."""
    base = (K8S / "base" / "config.toml").read_text()
    for overlay in OVERLAYS:
        assert server_config_text(rendered[overlay]) == base, overlay


def test_a_model_added_to_the_base_config_reaches_the_gpu_pods(tmp_path):
    """Render a copy of k8s/ whose base config gains a [[models]] entry: every GPU overlay's pods read it."""
    work = tmp_path / "k8s"
    shutil.copytree(K8S, work)
    config = work / "base" / "config.toml"
    config.write_text(config.read_text() + '\n[[models]]\nname = "added"\nsource = "models:/added@prod"\n')
    for overlay in GPU_OVERLAYS:
        docs = render(overlay, work)
        models = tomllib.loads(server_config_text(docs)).get("models", [])
        assert [m["name"] for m in models] == ["added"], overlay


def test_secrets_are_referenced_never_defined(docs):
    assert not find_all(docs, "Secret")
    for path in K8S.rglob("kustomization.yaml"):
        assert "secretGenerator" not in yaml.safe_load(path.read_text()), path
    references = set()
    for deployment in find_all(docs, "Deployment"):
        for c in pod_spec(deployment)["containers"]:
            for env in c.get("env", []):
                if any(word in env["name"] for word in ("PASSWORD", "TOKEN", "SECRET", "REDIS_URL", "CREDENTIAL")):
                    assert "value" not in env, f"{env['name']} has a literal value"
                    ref = env["valueFrom"]["secretKeyRef"]
                    references.add((ref["name"], ref["key"]))
        for volume in pod_spec(deployment).get("volumes", []):
            if "secret" in volume:
                references.update((volume["secret"]["secretName"], i["key"]) for i in volume["secret"]["items"])
    assert references == {("inference-server-secrets", "redis-url"), ("inference-server-secrets", "redis-password"),
                          ("inference-server-secrets", "tokens")}
    env = {e["name"]: e for e in container(find(docs, "Deployment", SERVER))["env"]}
    assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "inference-server-secrets", "key": "redis-url"}


def effective(deployment: Doc, c: Doc, key: str) -> Any:
    """A security setting as it applies to the container: its own, else the pod's."""
    return c.get("securityContext", {}).get(key, pod_spec(deployment).get("securityContext", {}).get(key))


def test_pods_run_locked_down(docs):
    for deployment in find_all(docs, "Deployment") + find_all(docs, "Job"):
        spec = pod_spec(deployment)
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"] + spec.get("initContainers", []):
            assert effective(deployment, c, "runAsNonRoot") is True
            assert effective(deployment, c, "runAsUser") > 0
            assert effective(deployment, c, "seccompProfile") == {"type": "RuntimeDefault"}
            security = c["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"] == {"drop": ["ALL"]}
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{c['name']} {kind}"
    server = find(docs, "Deployment", SERVER)
    assert effective(server, container(server), "runAsUser") == 10001
    env = {e["name"]: e.get("value") for e in container(server)["env"]}
    assert (env["ORT_DISABLE_TELEMETRY"], env["MLFLOW_DISABLE_TELEMETRY"]) == ("1", "true")


def test_the_pod_uses_the_priority_class(docs):
    priority = find(docs, "PriorityClass", "inference-critical")
    assert 0 < priority["value"] <= 1_000_000_000  # user classes stay below the system ones
    assert priority["preemptionPolicy"] == "PreemptLowerPriority" and not priority["globalDefault"]
    assert pod_spec(find(docs, "Deployment", SERVER))["priorityClassName"] == "inference-critical"


def scraped_service(docs: list[Doc]) -> Doc:
    (monitor,) = find_all(docs, "ServiceMonitor")
    selected = [s for s in find_all(docs, "Service")
                if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
    assert len(selected) == 1, "one Service scraped, so each pod's series exist once"
    return selected[0]


def test_prometheus_scrapes_the_metrics_port(docs, tmp_path):
    (monitor,) = find_all(docs, "ServiceMonitor")
    service = scraped_service(docs)
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    deployment = find(docs, "Deployment", SERVER)
    metrics = container_port(container(deployment), port["targetPort"])
    assert metrics["name"] == "metrics"
    assert endpoint["path"] == "/metrics"
    # Scraped once: the ServiceMonitor only, no prometheus.io/* annotations for annotation-based discovery too.
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    assert not [a for a in annotations if a.startswith("prometheus.io/")], annotations
    assert load_server_config(docs, tmp_path).metrics_port == metrics["containerPort"]


def all_containers(docs: list[Doc]) -> list[Doc]:
    return [c for d in find_all(docs, "Deployment") + find_all(docs, "Job")
            for c in pod_spec(d)["containers"] + pod_spec(d).get("initContainers", [])]


def test_every_overlay_ships_the_alert_rules_and_versioned_images(docs):
    """No mutable tag: the server's image is tagged with the release (`<version>-cpu`/`-gpu`, never a bare `cpu`
    that a rebuild moves while nodes keep the old one under IfNotPresent); every other image has a version tag
    or a digest."""
    assert find_all(docs, "PrometheusRule"), "k8s/monitoring is a resource of every overlay"
    for c in all_containers(docs):
        if "@sha256:" in c["image"]:
            continue
        name, _, tag = c["image"].rpartition(":")
        assert name and re.fullmatch(r"\d+\.\d+(\.\d+)?(-[\w.]+)?", tag), f"{c['name']}: {c['image']}: no version"
    server = container(find(docs, "Deployment", SERVER))["image"]
    assert server.rpartition(":")[2] in (f"{__version__}-cpu", f"{__version__}-gpu"), server


def test_the_reference_redis_is_patched_and_keeps_its_password_off_the_command_line(docs):
    redis = container(find(docs, "Deployment", "inference-redis"), "redis")
    version = Version(redis["image"].rpartition(":")[2].split("-")[0].split("@")[0])
    # CVE-2024-31449 (fixed in 7.2.6), CVE-2025-21605 (7.2.8), CVE-2025-49844 (7.2.11)
    assert version >= Version("7.2.11"), redis["image"]
    words = redis["command"] + redis["args"]
    assert not [w for w in words if "requirepass" in w and "$(REDIS_PASSWORD)" in w]
    assert "--requirepass" not in words, "the password would be in the process's argv"
    script = redis["args"][-1]
    assert "requirepass" in script and "exec redis-server /run/redis/redis.conf" in script
    mount, volume = mount_for_container(find(docs, "Deployment", "inference-redis"), redis, "/run/redis/redis.conf")
    assert volume["emptyDir"].get("medium") == "Memory"
    pdb = find(docs, "PodDisruptionBudget", "inference-redis")
    assert pdb["spec"]["maxUnavailable"] == 1  # drains proceed: a cache may lose everything
    spec = pod_spec(find(docs, "Deployment", "inference-redis"))
    assert not [t for t in spec.get("tolerations", []) if "gpu" in t.get("key", "")], "Redis stays off GPU nodes"


def mount_for_container(deployment: Doc, c: Doc, path: str) -> tuple[str, Doc]:
    mounts = [m for m in c.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"{path} is on no volume of {c['name']}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    (volume,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"]]
    return mount["mountPath"], volume


# --- a real GPU cluster ------------------------------------------------------------------------------------------

# Node labels that exist only once a node has booted and its GPU stack has run (GPU Feature Discovery, Node
# Feature Discovery): no autoscaler can create a node for a pod that selects them.
LABELS_SET_AFTER_BOOT = ("nvidia.com/", "feature.node.kubernetes.io/")


def node_requirements(spec: Doc) -> dict[str, list[str]]:
    """{label: allowed values} from the pod's nodeSelector and required node affinity."""
    found = {key: [value] for key, value in spec.get("nodeSelector", {}).items()}
    required = spec.get("affinity", {}).get("nodeAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    for term in (required or {}).get("nodeSelectorTerms", []):
        for expression in term.get("matchExpressions", []):
            found[expression["key"]] = expression.get("values", [])
    return found


def test_gpu_pods_select_only_labels_an_autoscaler_knows_before_the_node_exists(docs, overlay):
    spec = pod_spec(find(docs, "Deployment", SERVER))
    requirements = node_requirements(spec)
    assert not [k for k in requirements if k.startswith(LABELS_SET_AFTER_BOOT)], requirements
    expected = {"cpu": set(), "gpu": set(), "hpa": set(),  # the nvidia.com/gpu request is enough anywhere
                "gke": {"cloud.google.com/gke-accelerator"},
                "eks": {"karpenter.k8s.aws/instance-gpu-manufacturer", "karpenter.k8s.aws/instance-gpu-count",
                        "karpenter.k8s.aws/instance-gpu-name"}}[overlay]
    assert set(requirements) == expected
    if overlay == "eks":
        assert requirements["karpenter.k8s.aws/instance-gpu-manufacturer"] == ["nvidia"]
        assert requirements["karpenter.k8s.aws/instance-gpu-count"] == ["1"]  # one server pod per node
    if overlay == "gke":
        assert requirements["cloud.google.com/gke-accelerator"][0].startswith("nvidia-")


def test_gpu_replicas_survive_a_drain_and_roll_out_without_a_spare_gpu(docs, overlay):
    deployment = find(docs, "Deployment", SERVER)
    spec = pod_spec(deployment)
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    anti = spec.get("affinity", {}).get("podAntiAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution", [])
    hard_spread = [c for c in spec.get("topologySpreadConstraints", []) if c["whenUnsatisfiable"] == "DoNotSchedule"
                   and c["topologyKey"] == "kubernetes.io/hostname"]
    pdb = find(docs, "PodDisruptionBudget", SERVER)
    (scaler,) = autoscalers(docs)
    low = scaler["spec"].get("minReplicaCount", scaler["spec"].get("minReplicas"))
    assert low >= 2 and pdb["spec"]["maxUnavailable"] == 1  # a drain leaves at least one replica serving
    if overlay not in GPU_OVERLAYS:
        assert (rolling["maxSurge"], rolling["maxUnavailable"]) == (1, 0)  # CPU: surge, no capacity lost
        return
    assert (rolling["maxSurge"], rolling["maxUnavailable"]) == (0, 1)  # no surge pod waiting for a spare GPU
    # never two replicas on one node (a multi-GPU node would take them all with it)
    assert [a["topologyKey"] for a in anti] == ["kubernetes.io/hostname"] or hard_spread
    for term in anti:
        assert matches(term["labelSelector"]["matchLabels"], labels)


def test_keda_falls_back_when_prometheus_is_away_and_follows_the_load(docs):
    for scaled_object in find_all(docs, "ScaledObject"):
        spec = scaled_object["spec"]
        fallback = spec["fallback"]
        assert fallback["failureThreshold"] >= 1
        assert spec["minReplicaCount"] <= fallback["replicas"] <= spec["maxReplicaCount"]
        assert fallback.get("behavior") == "currentReplicasIfHigher"  # a Prometheus outage never scales down
        # KEDA refuses `fallback` unless every trigger is AverageValue (its admission webhook says so)
        assert {t["metricType"] for t in spec["triggers"]} == {"AverageValue"}
        assert all(t["metadata"]["ignoreNullValues"] == "false" for t in spec["triggers"])  # empty = failure
        names = [promql_metric_names(t["metadata"]["query"]) for t in spec["triggers"]]
        # the ratio, and a trigger that grows with the load: end-to-end time in the server per second
        assert {"nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us"} <= names[0]
        assert "count(count by (pod)" in spec["triggers"][0]["metadata"]["query"]  # ratio x pods: AverageValue
        assert names[1] == {"nv_inference_request_duration_us"}


# The KEDA release that introduced each ScaledObject field the components use (an older KEDA rejects it).
KEDA_FIELD_SINCE = {"fallback.behavior": Version("2.17")}
KEDA_COMPONENT = K8S / "overlays" / "components" / "keda" / "scaledobject.yaml"


def test_the_documented_keda_version_has_every_field_the_scaled_object_uses():
    """docs/deployment.md's prerequisite and the component's header name one KEDA version, at least the newest
    that any field used needs (`fallback.behavior` is 2.17's)."""
    scaled_object = yaml.safe_load(KEDA_COMPONENT.read_text())
    needed = max(since for field, since in KEDA_FIELD_SINCE.items()
                 if functools.reduce(lambda d, k: (d or {}).get(k), field.split("."), scaled_object["spec"]))
    documented = re.findall(r"^\| KEDA >= (\d+\.\d+)", (ROOT / "docs" / "deployment.md").read_text(), re.M)
    header = re.findall(r"^# Needs KEDA >= (\d+\.\d+)", KEDA_COMPONENT.read_text(), re.M)
    assert len(documented) == 1 and header == documented, (documented, header)
    assert Version(documented[0]) >= needed, (documented, needed)


def test_models_arrive_before_the_server_starts(docs, overlay):
    """The models volume is filled by the init container (object storage) or is the shared claim (models-pvc);
    the server mounts it read-only; the emptyDirs fit the pod's ephemeral-storage request."""
    deployment = find(docs, "Deployment", SERVER)
    spec = pod_spec(deployment)
    volumes = {v["name"]: v for v in spec["volumes"]}
    server = container(deployment)
    models = [m for m in server["volumeMounts"] if m["mountPath"] == "/models"][0]
    assert models["readOnly"]
    init = {c["name"]: c for c in spec.get("initContainers", [])}
    config_map = find(docs, "ConfigMap", "inference-server-models")
    assert config_map["data"]["MODEL_URI"].startswith(("s3://", "gs://"))
    if "persistentVolumeClaim" in volumes[models["name"]]:
        assert list(init) == ["wait-for-models"]  # the Job fills the claim; the pods wait for it to finish
        claim = find(docs, "PersistentVolumeClaim", volumes[models["name"]]["persistentVolumeClaim"]["claimName"])
        assert set(claim["spec"]["accessModes"]) <= {"ReadWriteMany", "ReadOnlyMany"}  # every node mounts it
        assert "CHANGE-ME" not in claim["spec"]["storageClassName"]
        (job,) = find_all(docs, "Job")
        (filler,) = pod_spec(job)["containers"]
        fill_volumes = {v["name"]: v for v in pod_spec(job)["volumes"]}
        target = [m for m in filler["volumeMounts"] if m["mountPath"] == "/models"][0]
        assert fill_volumes[target["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert pod_spec(job)["securityContext"]["fsGroup"] == effective(deployment, server, "runAsGroup")
        fetchers = [filler]
    else:
        fetch = init["fetch-models"]
        writes = [m for m in fetch["volumeMounts"] if m["mountPath"] == "/models"][0]
        assert writes["name"] == models["name"] and not writes.get("readOnly")
        assert "emptyDir" in volumes[models["name"]]
        assert effective(deployment, fetch, "runAsUser") == effective(deployment, server, "runAsUser")
        fetchers = [fetch]
    for fetcher in fetchers:
        assert fetcher["command"] == ["/bin/sh", "/opt/fetch-models/fetch-models.sh"]
        assert {"configMapRef": {"name": config_map["metadata"]["name"]}} in fetcher["envFrom"]
    # ephemeral storage: requested for what the emptyDirs may hold
    limits = sum(parse_quantity(v["emptyDir"].get("sizeLimit", "0")) for v in spec["volumes"] if "emptyDir" in v
                 and v["emptyDir"].get("medium") != "Memory")
    requested = parse_quantity(server["resources"]["requests"]["ephemeral-storage"])
    assert requested >= limits, (requested, limits)


def test_an_s3_model_uri_comes_with_its_region(rendered):
    """rclone reads RCLONE_S3_REGION, never AWS_REGION: the eks overlay names the bucket's region explicitly in
    the ConfigMap the fetcher reads, instead of leaving it to a commented example."""
    data = find(rendered["eks"], "ConfigMap", "inference-server-models")["data"]
    assert data["MODEL_URI"].startswith("s3://")
    assert re.fullmatch(r"[a-z]{2}(-gov)?-[a-z]+-\d", data.get("RCLONE_S3_REGION", "")), data


def test_server_pods_on_the_shared_volume_wait_for_the_fill_job(rendered, tmp_path):
    """hpa overlay (components/models-pvc): the fill Job and the Deployment apply together, and a server that
    started on the empty claim would never load the files (model_control_mode "none"). The pod's init container
    waits, read-only and in an image the manifests already pull, until the marker that fetch-models.sh writes
    after a successful copy is there: run here against a directory, before and after the real script fills it."""
    docs = rendered["hpa"]
    deployment = find(docs, "Deployment", SERVER)
    (wait,) = pod_spec(deployment).get("initContainers", [])
    (job,) = find_all(docs, "Job")
    assert wait["image"] == pod_spec(job)["containers"][0]["image"]
    (mount,) = wait["volumeMounts"]
    volume = mount_for(deployment, "/models")[1]
    assert "persistentVolumeClaim" in volume
    assert mount == {"name": volume["name"], "mountPath": "/models", "readOnly": True}
    resources = wait["resources"]
    assert resources["requests"] == resources["limits"]  # the GPU pod stays Guaranteed
    assert wait["command"][:2] == ["/bin/sh", "-c"]
    models = tmp_path / "models"
    script = wait["command"][2].replace("/models", str(models))
    waiting = subprocess.Popen(["/bin/sh", "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert "wait-for-models" in waiting.stdout.readline()  # an empty volume: it waits
        bucket = tmp_path / "bucket"
        onnx_models.write_model(bucket, "ranker", onnx_models.mlp([4, 8, 2], seed=1))
        done, _ = run_fetch(tmp_path, "s3://bucket/repo", bucket)
        assert done.returncode == 0, done.stderr
        assert waiting.wait(timeout=30) == 0  # the filled volume: it lets the server start
    finally:
        waiting.kill()
        waiting.wait()
        waiting.stdout.close()


def parse_quantity(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "": 1}
    number, unit = re.fullmatch(r"(\d+)([KMGT]i)?", str(text)).groups()
    return int(number) * units[unit or ""]


FETCH_SCRIPT = K8S / "models" / "fetch-models.sh"


# A stand-in for rclone over a local directory ($FAKE_SOURCE plays the bucket): `lsf -R --files-only` lists its
# files, `copy` copies them into the destination. Like rclone, a copy with --error-on-no-transfer that finds
# every file already there exits 9. Each call's arguments are appended to $RCLONE_ARGS, one call a line.
FAKE_RCLONE = r"""#!/bin/sh
printf '%s\n' "$*" >> "$RCLONE_ARGS"
case "$1" in
  lsf) cd "$FAKE_SOURCE" 2>/dev/null && find . -type f | sed 's|^\./||' ;;
  copy)
    eval "dest=\${$#}"
    new=0
    for f in $(cd "$FAKE_SOURCE" && find . -type f); do [ -e "$dest/$f" ] || new=1; done
    mkdir -p "$dest" && cp -R "$FAKE_SOURCE/." "$dest/"
    case " $* " in *" --error-on-no-transfer "*) [ "$new" = 1 ] || exit 9 ;; esac ;;
  *) exit 1 ;;
esac
"""


def run_fetch(tmp_path: Path, uri: str | None, source: Path | None = None
              ) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """fetch-models.sh under /bin/sh with the stand-in `rclone` over `source` (default: an empty directory);
    returns the result and each rclone call's arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "rclone.args"
    rclone = bin_dir / "rclone"
    rclone.write_text(FAKE_RCLONE)
    rclone.chmod(0o755)
    if source is None:
        source = tmp_path / "empty-bucket"
        source.mkdir(exist_ok=True)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "MODELS_DIR": str(tmp_path / "models"), "RCLONE_ARGS": str(record),
           "FAKE_SOURCE": str(source)}
    if uri is not None:
        env["MODEL_URI"] = uri
    done = subprocess.run(["/bin/sh", str(FETCH_SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    calls = [line.split() for line in record.read_text().splitlines()] if record.exists() else []
    record.unlink(missing_ok=True)
    return done, calls


def test_the_fetch_script_copies_s3_and_gs_and_refuses_anything_else(tmp_path):
    bucket = tmp_path / "bucket"
    onnx_models.write_model(bucket, "ranker", onnx_models.mlp([4, 8, 2], seed=1), "[batching]\nmax_batch_size = 8\n")
    models = tmp_path / "models"
    for uri, source in (("s3://bucket/repo/v1", ":s3:bucket/repo/v1"), ("gs://bucket/repo", ":gcs:bucket/repo")):
        shutil.rmtree(models, ignore_errors=True)
        for attempt in ("first", "a re-run with nothing new to copy (a restarted init container, a new fill Job)"):
            done, calls = run_fetch(tmp_path, uri, bucket)
            assert done.returncode == 0, (uri, attempt, done.stderr)
            lsf, copy = calls
            assert lsf[0] == "lsf" and lsf[-1] == source, calls  # the source is listed before anything is copied
            assert copy[0] == "copy" and copy[-2:] == [source, str(models)], calls
            assert (models / "ranker" / "1" / "model.onnx").is_file() and (models / ".complete").is_file(), attempt
    # an empty prefix, or one without a model, fails the pod and leaves no marker for the server pods
    shutil.rmtree(models)
    done, calls = run_fetch(tmp_path, "s3://bucket/typo")
    assert done.returncode == 3 and "holds no files" in done.stderr, done.stderr
    assert [c[0] for c in calls] == ["lsf"] and not models.exists()  # refused before copying
    not_models = tmp_path / "not-models"
    not_models.mkdir()
    (not_models / "README").write_text("the repository is one level down\n")
    done, calls = run_fetch(tmp_path, "gs://bucket", not_models)
    assert done.returncode == 4 and "holds no model" in done.stderr, done.stderr
    assert not (models / ".complete").exists()
    for uri in ("http://bucket/repo", "s3://", "/models", "", None):
        done, calls = run_fetch(tmp_path, uri)
        assert done.returncode == 2 and not calls and "MODEL_URI must be" in done.stderr, (uri, done.stderr)


def test_every_overlay_ships_the_grafana_dashboard_for_the_sidecar(docs):
    dashboard = find(docs, "ConfigMap", "inference-server-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"  # what Grafana's sidecar selects
    [(name, text)] = dashboard["data"].items()
    assert json.loads(text) == json.loads((K8S / "grafana" / name).read_text())


def test_the_service_monitor_carries_the_prometheus_rules_release_label(docs):
    """kube-prometheus-stack selects both by `release`: a ServiceMonitor without it is never scraped, so the
    autoscaler would have no data and no alert could fire."""
    rule_labels = find(docs, "PrometheusRule")["metadata"]["labels"]
    monitor_labels = find(docs, "ServiceMonitor")["metadata"]["labels"]
    assert monitor_labels.get("release") == rule_labels["release"]


# --- tracing ---------------------------------------------------------------------------------------------------

def test_tracing_is_configured_by_an_optional_config_map(docs):
    server = container(find(docs, "Deployment", SERVER))
    # Optional: a cluster without the ConfigMap starts the pods, with tracing off.
    assert server["envFrom"] == [{"configMapRef": {"name": OTEL_CONFIG_MAP, "optional": True}}]
    # An env entry would win over the ConfigMap (and over KServe's or the Operator's injection): none is set here.
    assert not [e["name"] for e in server["env"] if e["name"].startswith("OTEL_")]
    # The platform provides it, like the Secret: nothing in the repository defines it.
    assert not [d["metadata"]["name"] for d in find_all(docs, "ConfigMap")
                if d["metadata"]["name"].startswith(OTEL_CONFIG_MAP)]


def documented_otel_config_map() -> Doc:
    guide = ROOT / "docs" / "deployment.md"
    (block,) = [c for c in fenced(guide) if c.language == "yaml" and f"name: {OTEL_CONFIG_MAP}" in c.text]
    return yaml.safe_load(block.text)


def test_the_documented_tracing_config_map_is_the_one_the_pods_read(docs, monkeypatch):
    config_map = documented_otel_config_map()
    validate(config_map)
    assert config_map["kind"] == "ConfigMap"
    assert config_map["metadata"] == {"name": OTEL_CONFIG_MAP, "namespace": find(docs, "Deployment", SERVER)
                                      ["metadata"]["namespace"]}
    data = config_map["data"]
    assert all(name.startswith("OTEL_") and isinstance(value, str) for name, value in data.items()), data
    assert data["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://")  # the variable that turns tracing on
    assert data["OTEL_EXPORTER_OTLP_PROTOCOL"] in ("grpc", "http/protobuf")
    # The OpenTelemetry SDK reads the sampler and the resource from these variables as documented.
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    provider = TracerProvider()
    assert provider.sampler.get_description() == "ParentBased{root:TraceIdRatioBased{0.01},remoteParentSampled:" \
        "AlwaysOnSampler,remoteParentNotSampled:AlwaysOffSampler,localParentSampled:AlwaysOnSampler," \
        "localParentNotSampled:AlwaysOffSampler}"
    assert Resource.create().attributes["deployment.environment.name"] == "production"
