"""The alerting rules in k8s/monitoring: `promtool check rules` and the promtool unit tests (with mutations the
unit tests must catch), the PrometheusRule generated from the rules file, the runbook anchors in
docs/deployment.md, and every metric and label value the expressions read, found in a live scrape of a real
server configured so that every family the rules use is exported."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import types
import urllib.request
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from inference_server.config.server import parse_server
from inference_server.observability.gpu import GpuCollector
from tests.conftest import ServerThread
from tests.deploy.conftest import promql_parse
from tests.support import onnx_models
from tests.support import redis_server as redis_process
from tests.support.server_process import free_port

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "k8s" / "monitoring"
RULES = MONITORING / "inference-server.rules.yml"
RULE_TESTS = MONITORING / "inference-server.rules.test.yml"
PROMETHEUSRULE = MONITORING / "prometheusrule.yaml"
GENERATOR = ROOT / "scripts" / "gen_prometheusrule.py"
RUNBOOK_BASE = "https://github.com/inference-server/inference_server/blob/main/docs/deployment.md"
GUIDE = ROOT / "docs" / "deployment.md"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed: Debian's prometheus package "
                                    "provides it (./scripts/test installs it when run as root)")
SEVERITIES = {"critical", "warning", "info"}


def rules_doc() -> dict:
    return yaml.safe_load(RULES.read_text())


def rules() -> list[dict]:
    return [rule for group in rules_doc()["groups"] for rule in group["rules"]]


def alerts() -> list[dict]:
    return [rule for rule in rules() if "alert" in rule]


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


# -- promtool -------------------------------------------------------------------------------------------------


@needs_promtool
def test_promtool_check_rules_passes():
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_case_that_fires_and_one_that_does_not():
    """Each (alert, severity) is expected to fire somewhere in the unit tests, and each alert is also evaluated
    where it must not fire (`exp_alerts: []`, besides the series in the firing cases that must stay quiet)."""
    fired, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            expected = check.get("exp_alerts") or []
            fired |= {(check["alertname"], a["exp_labels"]["severity"]) for a in expected}
            if not expected:
                quiet.add(check["alertname"])
    wanted = {(a["alert"], a["labels"]["severity"]) for a in alerts()}
    assert wanted - fired == set(), "alerts never expected to fire in the unit tests"
    assert {name for name, _ in wanted} - quiet == set(), "alerts never checked quiet in the unit tests"


# A guard each unit test relies on, and the change that removes it: the unit tests must then fail.
MUTATIONS = {
    "client errors counted": ('code=~"INTERNAL|UNKNOWN"', 'code!="OK"'),
    "low-traffic guard dropped": ("inference:requests:rate5m > 0.1", "inference:requests:rate5m > 0"),
    "latency of failed requests": ('_bucket{code="OK"}', "_bucket"),
    "unbounded queue (0) not excluded": ("(inference_max_queue_size > 0)", "inference_max_queue_size"),
    "draining refusals counted": ('{reason!="draining"}', ""),
    "half_open breaker probes reset `for`": ('state=~"open|half_open"', 'state="open"'),
    "drift averaged over replicas": ("max by (namespace, job, model, version, output)",
                                     "avg by (namespace, job, model, version, output)"),
    'version "" counted as not ready': (', version!=""', ""),
    "administrator's abort counted as rollback": ('decision="rollback"', 'decision=~"rollback|abort"'),
    "targets of other jobs": ('up{job=~".*inference-server.*"}', "up"),
    "other HPAs at their maximum": ('{horizontalpodautoscaler=~"(keda-hpa-)?inference-server"}', ""),
    "other ScaledObjects' errors": ('scaledObject="inference-server", ', ""),
    "ScaledJobs' errors": (', type="scaledobject"', ""),
    "the metric KEDA 2.16 removed": ("keda_scaler_detail_errors_total", "keda_scaler_errors_total"),
    "Redis and Job pods counted as Pending": ('pod=~"inference-server-[a-z0-9]+-[a-z0-9]+"', 'pod=~"inference-.*"'),
}


@needs_promtool
def test_the_unit_tests_catch_every_broken_guard(tmp_path):
    """Each mutation is applied to a copy of the rules (still valid rules), and the unit tests must then fail.
    The copies are tested in parallel (one promtool each)."""
    text = RULES.read_text()

    def survives(index: int, mutation: str) -> str | None:
        old, new = MUTATIONS[mutation]
        if old not in text:
            return f"{mutation}: {old!r} is no longer in the rules"
        work = tmp_path / str(index)
        work.mkdir()
        (work / RULES.name).write_text(text.replace(old, new))
        shutil.copy(RULE_TESTS, work / RULE_TESTS.name)
        checked = promtool("check", "rules", RULES.name, cwd=work)
        if checked.returncode != 0:
            return f"{mutation}: the mutated rules are invalid: {checked.stdout}{checked.stderr}"
        if promtool("test", "rules", RULE_TESTS.name, cwd=work).returncode == 0:
            return f"{mutation}: the unit tests still pass"
        return None

    with ThreadPoolExecutor(max_workers=len(MUTATIONS)) as pool:
        problems = [p for p in pool.map(survives, range(len(MUTATIONS)), MUTATIONS) if p]
    assert not problems, "\n".join(problems)


# -- the rules themselves -------------------------------------------------------------------------------------


def github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_is_complete_and_its_runbook_anchor_exists():
    anchors = {github_anchor(line.lstrip("#")) for line in GUIDE.read_text().splitlines() if line.startswith("#")}
    for rule in alerts():
        name = rule["alert"]
        assert "for" in rule, name
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        # absolute: a relative link is dead where alerts are read (Slack, PagerDuty, Alertmanager's UI)
        base, _, anchor = annotations["runbook_url"].partition("#")
        assert base == RUNBOOK_BASE and base.startswith("https://"), name
        assert anchor == name.lower() and anchor in anchors, name
    for rule in rules():
        if "record" in rule:
            assert rule["record"].startswith("inference:"), rule["record"]


# -- the PrometheusRule -----------------------------------------------------------------------------------------


def generator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(GENERATOR), *args], capture_output=True, text=True, timeout=60)


def test_the_prometheusrule_is_generated_from_the_rules_file():
    result = generator("--check")
    assert result.returncode == 0, result.stderr
    resource = yaml.safe_load(PROMETHEUSRULE.read_text())
    assert resource["apiVersion"] == "monitoring.coreos.com/v1" and resource["kind"] == "PrometheusRule"
    assert resource["metadata"]["name"] == "inference-server"
    assert resource["metadata"]["labels"]["release"] == "prometheus"  # the operator's ruleSelector must match it
    assert "namespace" not in resource["metadata"]  # the overlay's
    assert resource["spec"] == rules_doc()
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization" and kustomization["resources"][0] == PROMETHEUSRULE.name


@pytest.mark.parametrize("changed", ["rules", "prometheusrule"])
def test_a_changed_copy_fails_the_check(changed, tmp_path):
    rules_copy, resource_copy = tmp_path / RULES.name, tmp_path / PROMETHEUSRULE.name
    shutil.copy(RULES, rules_copy)
    shutil.copy(PROMETHEUSRULE, resource_copy)
    args = ("--check", "--rules", str(rules_copy), "--output", str(resource_copy))
    assert generator(*args).returncode == 0, "an unchanged copy must pass"
    target = rules_copy if changed == "rules" else resource_copy
    target.write_text(target.read_text().replace("> 0.05", "> 0.07", 1))
    result = generator(*args)
    assert result.returncode == 1 and "run scripts/gen_prometheusrule.py" in result.stderr


# -- the metrics the expressions read, in a live scrape ---------------------------------------------------------

SUFFIXES = ("_bucket", "_sum", "_count", "_total")


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_the_selector_parser_finds_every_metric():
    found = {name for rule in rules() for name, _ in promql_parse(rule["expr"])}
    assert found == {
        "inference_requests_total", "inference_request_duration_seconds_bucket", "inference_rejected_requests_total",
        "inference_pending_requests", "inference_max_queue_size", "inference_cache_circuit_state",
        "inference_prediction_drift_psi", "inference_model_state", "inference_canary_decisions_total", "up",
        "kube_horizontalpodautoscaler_status_current_replicas", "kube_horizontalpodautoscaler_spec_max_replicas",
        "keda_scaler_detail_errors_total", "kube_pod_status_phase",
        "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes",
        "inference:requests:rate5m", "inference:server_errors:rate5m", "inference:server_error_ratio:rate5m",
        "inference:request_duration_seconds:p99_5m", "inference:rejected_requests:rate5m"}
    assert promql_parse('sum by (model) (rate(x_total{code=~"A|B", le!=""}[5m])) > 1e-3 and on (job) y') == [
        ("x_total", [("code", "=~", "A|B"), ("le", "!=", "")]), ("y", [])]


BATCHED = "[batching]\nmax_batch_size = 8\n"


@pytest.fixture(scope="module")
def live_scrape(tmp_path_factory):
    """One real server with everything the rules read switched on: a Redis response cache (a real redis-server
    when installed, else a Redis URL nobody listens on: the breaker's families are the same), drift monitoring,
    and a route with a canary over two versions of `ranker`. Traffic then makes the per-request families appear:
    OK answers (routed, and enough rows for a drift score), INTERNAL from a model whose batches fail, and
    queue_full refusals from a slow model with max_queue_size = 1. Returns {family: [sample labels]}."""
    root = tmp_path_factory.mktemp("alerts")
    w = onnx_models.write_model
    w(root / "models", "ranker", onnx_models.mlp([4, 8, 2], seed=1), "version_policy = { all = true }\n" + BATCHED)
    w(root / "models", "ranker", onnx_models.mlp([4, 8, 2], seed=2), version=2)
    w(root / "models", "broken", onnx_models.drops_a_row(), BATCHED)  # every batch fails with INTERNAL
    w(root / "models", "slow", onnx_models.slow(512), "[batching]\nmax_batch_size = 1\nmax_queue_size = 1\n")
    redis = redis_process.RedisServer(root).start() if redis_process.available() else None
    doc = {
        "server": {"port": 0, "metrics_port": 0, "http_port": 0, "model_repository": str(root / "models"),
                   "drain_grace_s": 5,
                   "cache": redis.url if redis is not None else f"redis://127.0.0.1:{free_port()}/0"},
        "monitoring": {"drift": True, "drift_reference_size": 20, "drift_window_size": 20},
        "routes": {"ranker": {
            "variants": [{"name": "stable", "version": 1, "weight": 90}, {"name": "candidate", "version": 2,
                                                                             "weight": 10}],
            "canary": {"candidate": "candidate", "steps_percent": [10, 50, 100], "interval_s": 60}}},
    }
    server = ServerThread(parse_server(doc)).start()
    try:
        codes = asyncio.run(_traffic(server.url))
        assert set(codes["ranker"]) == {"OK"} and set(codes["broken"]) == {"INTERNAL"}, codes
        assert codes["slow"]["OK"] and codes["slow"]["UNAVAILABLE"], codes  # some refused: queue_full
        asyncio.run_coroutine_threadsafe(server.app.drift.drained(), server.loop).result(10)
        url = f"http://127.0.0.1:{server.app.metrics.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    finally:
        server.stop()
        if redis is not None:
            redis.stop()
    samples: dict[str, list[dict[str, str]]] = defaultdict(list)
    for metric in text_string_to_metric_families(text):
        for sample in metric.samples:
            samples[family(sample.name)].append(sample.labels)
    return samples


async def _traffic(url: str) -> dict[str, Counter[str]]:
    """Requests to each model; the codes they got, by model."""
    rng = np.random.default_rng(0)
    codes: dict[str, Counter[str]] = defaultdict(Counter)

    async def call(client, model: str, shape: list[int]) -> None:
        x = aioclient.InferInput("x", shape, "FP32")
        x.set_data_from_numpy(rng.standard_normal(shape).astype(np.float32))  # distinct: no cache hit shared
        try:
            await client.infer(model, [x])
            codes[model]["OK"] += 1
        except InferenceServerException as e:
            codes[model][e.status().removeprefix("StatusCode.")] += 1

    async with aioclient.InferenceServerClient(url) as client:
        for _ in range(10):  # 80 rows through the route: each version's drift reference (20) and a window
            await call(client, "ranker", [8, 4])
        await call(client, "broken", [2, 4])
        await asyncio.gather(*(call(client, "slow", [1, 1]) for _ in range(16)))  # one runs, one waits, the rest
    return codes                                                                   # are refused (queue_full)


CLUSTER_METRIC_PREFIXES = ("kube_", "keda_")  # kube-state-metrics' and KEDA's operator's own metrics


def gpu_families() -> dict[str, list[dict[str, str]]]:
    """{family: [sample labels]} of the GPU collector over a stand-in NVML with one device."""
    nvml = types.SimpleNamespace(
        nvmlDeviceGetCount=lambda: 1, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda h: b"GPU-a", nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=5),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=1, total=2),
        nvmlDeviceGetPowerUsage=lambda h: 1000)
    found: dict[str, list[dict[str, str]]] = defaultdict(list)
    for metric in GpuCollector(nvml).collect():
        for sample in metric.samples:
            found[family(sample.name)].append(sample.labels)
    return found


@pytest.mark.integration
def test_every_metric_the_rules_read_is_exported(live_scrape):
    """Every series selector names a family the server exports, with its labels; an exact label value (e.g.
    state="open", decision="rollback", code="OK") is one the server writes, and a regex matches one of them.
    `up` is Prometheus's own, `inference:` names are the recording rules', kube_* and keda_* come from
    kube-state-metrics and KEDA (not this server), and the nv_gpu_* gauges from the server's NVML collector, read
    here through a stand-in NVML (no GPU on this machine)."""
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    scraped = dict(live_scrape) | gpu_families()
    problems = []
    for rule in rules():
        for name, matchers in promql_parse(rule["expr"]):
            if name == "up" or name in recorded or name.startswith(CLUSTER_METRIC_PREFIXES):
                continue
            label_sets = scraped.get(family(name))
            if not label_sets:
                problems.append(f"{name}: not exported")
                continue
            for label, op, value in matchers:
                values = {labels[label] for labels in label_sets if label in labels}
                if not values:
                    problems.append(f"{name}: no label {label!r}")
                elif op == "=" and value not in values:
                    problems.append(f'{name}: no sample with {label}="{value}" (seen: {sorted(values)})')
                elif op == "=~" and not any(re.fullmatch(value, v) for v in values):
                    problems.append(f'{name}: no sample with {label}=~"{value}" (seen: {sorted(values)})')
    assert not problems, "\n".join(sorted(set(problems)))


@pytest.mark.integration
def test_the_live_scrape_has_what_the_unit_tests_assume(live_scrape):
    """The label sets the unit tests feed promtool are those the server exports (plus the target's labels)."""
    scraped = {"inference_requests": {"model", "version", "code"},
               "inference_request_duration_seconds": {"model", "version", "code", "le"},
               "inference_rejected_requests": {"reason"}, "inference_pending_requests": {"model", "version"},
               "inference_max_queue_size": {"model", "version"},
               "inference_cache_circuit_state": {"state"}, "inference_prediction_drift_psi": {"model", "version",
                                                                                             "output"},
               "inference_model_state": {"model", "version", "state"},
               "inference_canary_decisions": {"route", "candidate", "decision"}}
    for name, labels in scraped.items():
        assert set().union(*live_scrape[name]) == labels, name
    states = {s["state"] for s in live_scrape["inference_cache_circuit_state"]}
    assert states == {"closed", "open", "half_open"}

