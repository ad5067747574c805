"""What a new user runs: the README's snippet, the client examples and scripts/serve, against real servers."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from tests.support import redis_server as redis_process
from tests.support.docs import CSV_HEADER, DOCS, REDIS_KEY, brace_expand, documented, expand_ellipsis
from tests.support.server_process import ROOT
from tests.support.waiting import wait_until

pytestmark = pytest.mark.system


def readme_snippet() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Query it", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_python(code_or_file: list[str], timeout_s: float = 60) -> str:
    done = subprocess.run([sys.executable, *code_or_file], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout_s)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_readme_snippet_classifies_the_digit_against_the_default_server(launch):
    server = launch()  # no arguments: the embedded default model
    snippet = readme_snippet()
    assert '"127.0.0.1:8001"' in snippet
    out = run_python(["-c", snippet.replace("127.0.0.1:8001", server.url)])
    assert "label: 2" in out


def test_client_examples_run_against_the_default_server(launch):
    server = launch()
    sync_out = run_python(["clients/python/infer_sync.py", "--url", server.url])
    assert "label: 2" in sync_out and "server ready: True" in sync_out
    aio_out = run_python(["clients/python/infer_aio.py", "--url", server.url, "--requests", "64"])
    assert "64 requests" in aio_out and "label 2 for" in aio_out


def successes(url: str, model: str = "digits") -> int:
    """Requests the server answered OK for a model, from its own statistics (ModelStatistics)."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"]
    return sum(int(s["inference_stats"]["success"].get("count", 0)) for s in stats)


def test_load_test_reports_its_warm_up_and_counts_what_the_server_counts(launch):
    """The JSON line names the warm-up (warmup_s, warmup_requests) and the counted window (duration_s); with
    --warmup-s 0 its `requests` are exactly the server's count for the run, and with the default warm-up of
    1 s the server's count is warmup_requests + requests."""
    server = launch()
    for mode, warmup in ((["--concurrency", "4"], ["--warmup-s", "0"]), (["--rate", "200"], ["--warmup-s", "0"]),
                         (["--concurrency", "4"], [])):
        before = successes(server.url)
        out = run_python(["clients/python/load_test.py", "--url", server.url, "--model", "digits",
                          "--duration-s", "1", *mode, *warmup])
        counted = successes(server.url) - before
        summary = json.loads(out)
        assert summary["requests"] > 0 and summary["errors"] == {} and summary["p99_ms"] > 0, summary
        assert 0 < summary["duration_s"] <= 1.0, summary  # the counted window
        if warmup:
            assert summary["warmup_s"] == 0 and summary["warmup_requests"] == 0, summary
            assert summary["requests"] == counted, (mode, summary, counted)
        else:
            assert summary["warmup_s"] == 1.0 and summary["warmup_requests"] > 0, summary
            assert summary["requests"] + summary["warmup_requests"] == counted, (summary, counted)
    help_text = run_python(["clients/python/load_test.py", "--help"])
    assert "--warmup-s" in help_text and "warmup_requests" in help_text and "counted" in help_text


def test_serve_script_starts_the_default_server(launch):
    # The first command of the README; its one-time install already happened in this checkout's .venv.
    server = launch(command=["bash", "scripts/serve"])
    assert "serving 1 model(s)" in server.log()


def readme_blocks(section: str) -> dict[str, str]:
    """The fenced blocks of a README section, by their first-line file comment (or language)."""
    text = (ROOT / "README.md").read_text().split(f"### {section}", 1)[1].split("\n### ", 1)[0]
    blocks = {}
    for language, body in re.findall(r"```(\w+)\n(.*?)```", text, re.S):
        first = body.splitlines()[0]
        name = first.split()[1].rstrip(":") if first.startswith("#") and " " in first else language
        blocks[name] = body
    return blocks


def test_readme_mlflow_promotion_runs_as_written(tmp_path, monkeypatch):
    """The README's alias promotion, step by step: register two versions, serve the alias, move it."""
    pytest.importorskip("mlflow")
    from tests.support.server_process import ServerProcess

    blocks = readme_blocks("Models from MLflow")
    (tmp_path / "inference_server").symlink_to(ROOT / "inference_server")  # the README runs from the repo root
    for name in ("register.py", "promote.py", "mlflow.toml"):
        (tmp_path / name).write_text(blocks[name].replace("poll_interval_s = 2", "poll_interval_s = 0.5"))
    script = f"{blocks['bash']}\n{sys.executable} register.py\nenv\n"
    done = subprocess.run(["bash", "-euc", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    env = dict(line.split("=", 1) for line in done.stdout.splitlines() if line.startswith("MLFLOW_"))
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path}/mlflow.db"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    server = ServerProcess(["--config", str(tmp_path / "mlflow.toml"), "--model-cache-dir", str(tmp_path / "c")],
                           tmp_path / "server.log").wait_serving()
    try:
        promote = blocks["promote.py"].replace("127.0.0.1:8001", server.url)
        done = subprocess.run([sys.executable, "-c", promote], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr + server.log()
        assert done.stdout.splitlines() == ["serving version 1", "serving version 2"]
    finally:
        assert server.terminate() == 0


def test_readme_curl_examples_and_the_http_client_run_against_the_default_server(launch):
    """The README's curl lines, as written but for the port, and clients/python/infer_http.py."""
    from tests.support.server_process import free_port

    http_port = free_port()
    launch("--http-port", str(http_port))
    section = (ROOT / "README.md").read_text().split("Or over HTTP/REST with curl:", 1)[1]
    script = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("127.0.0.1:8000", f"127.0.0.1:{http_port}")
    commands = [c for c in re.split(r"\n(?=curl )", script.split("\n# ")[0].strip()) if c.startswith("curl ")]
    assert len(commands) == 3
    ready, metadata, infer = (subprocess.run(["bash", "-euc", c.split("  #")[0]], capture_output=True, text=True,
                                             timeout=30) for c in commands)
    assert ready.returncode == 0 and ready.stdout.startswith("HTTP/1.1 200")
    assert json.loads(metadata.stdout)["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    outputs = {o["name"]: o for o in json.loads(infer.stdout)["outputs"]}
    assert outputs["label"]["data"] == [2] and len(outputs["probabilities"]["data"]) == 10
    for mode in ([], ["--json"]):
        out = run_python(["clients/python/infer_http.py", "--url", f"127.0.0.1:{http_port}", *mode])
        assert "label: 2" in out and "server ready: True" in out


def test_batch_score_writes_the_csv_header_the_readme_shows(launch, tmp_path):
    """The header README gives for the default model's two outputs is the one batch_score writes."""
    server = launch()
    np.save(tmp_path / "in.npy", np.zeros((3, 64), np.float32))
    run_python(["clients/python/batch_score.py", str(tmp_path / "in.npy"), str(tmp_path / "out.csv"), "--model",
                "digits", "--url", server.url, "--no-progress"])
    header, *rows = (tmp_path / "out.csv").read_text().splitlines()
    columns, where = documented(CSV_HEADER)
    assert header.split(",") == expand_ellipsis(columns), f"{where}: README shows {columns}, batch_score wrote {header}"
    assert len(rows) == 3


@pytest.mark.skipif(not redis_process.available(), reason="redis-server is not installed (./scripts/test installs "
                    "it when run as root)")
def test_the_redis_key_the_readme_shows_is_the_one_a_server_writes(launch, tmp_path):
    """README's key format with the model, the version and the model file's revision as README describes it
    (a 128-bit BLAKE2b digest of the file, in hex), against the key a real server stored in a real Redis."""
    import tritonclient.grpc as grpcclient

    redis = redis_process.RedisServer(tmp_path).start()
    try:
        server = launch("--cache", redis.url)
        with grpcclient.InferenceServerClient(server.url) as client:
            pixels = grpcclient.InferInput("pixels", [1, 64], "FP32")
            pixels.set_data_from_numpy(np.ones((1, 64), np.float32))
            client.infer("digits", [pixels])
        store = redis.client()
        wait_until(lambda: store.keys(), "the response cache's write to Redis")
        (key,) = store.keys()
    finally:
        redis.stop()
    template, where = documented(REDIS_KEY)
    digest_bytes, _ = documented(r"`<digest>` being the (\d+) raw bytes")
    model_file = ROOT / "inference_server" / "default_repository" / "digits" / "1" / "model.onnx"
    parts = {"model": "digits", "version": "1",
             "revision": hashlib.blake2b(model_file.read_bytes(), digest_size=16).hexdigest(),
             "digest": f".{{{digest_bytes}}}"}
    pattern = "".join(re.escape(piece) if i % 2 == 0 else parts.get(piece, re.escape(f"<{piece}>"))
                      for i, piece in enumerate(re.split(r"<(\w+)>", template)))
    assert re.fullmatch(pattern, key.decode("latin-1"), re.S), \
        f"{where}: {template} ({digest_bytes} bytes of digest) does not describe the key a server wrote: {key!r}"


# -- metric names ----------------------------------------------------------------------------------------------

METRIC = re.compile(r"(?<![\w.:/-])((?:inference|nv)_(?:[a-z0-9_]|\{[a-z0-9_,]+\}(?=[a-z0-9_]))*\*?)")


def families(metrics: list) -> set[str]:
    """Every name a scrape can hold for these families: a counter's `_total`, a histogram's series."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names = set()
    for family in metrics:
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> set[str]:
    """Every metric name the server exports: one scrape of a real server with everything that adds families
    switched on (a route with a canary, a shadow and a fallback; a Redis cache with a near cache, at a URL
    nobody listens on, whose families are the same; drift and the prediction log; the lifecycle), plus the
    families of what one process cannot show at once, collected from their exporters: the in-process cache
    (the other tier), the pod's merged endpoint (`--workers`) and the GPUs (no GPU here)."""
    from prometheus_client.parser import text_string_to_metric_families

    from inference_server.cache.memory import MemoryCache
    from inference_server.config.server import parse_server
    from inference_server.observability.gpu import GpuCollector
    from inference_server.observability.metrics import StatsCollector
    from inference_server.pod.metrics import PodCollector
    from tests.conftest import ServerThread
    from tests.support import onnx_models
    from tests.support.server_process import free_port

    root = tmp_path_factory.mktemp("metrics")
    for version in (1, 2, 3):
        onnx_models.write_model(root / "models", "churn", onnx_models.mlp([4, 8, 2], seed=version),
                                "version_policy = { all = true }\n", version=version)
    onnx_models.write_model(root / "models", "churn_simple", onnx_models.mlp([4, 2]))
    doc = {
        "server": {"port": 0, "metrics_port": 0, "http_port": 0, "model_repository": str(root / "models"),
                   "cache": f"redis://127.0.0.1:{free_port()}/0"},
        "cache": {"near_cache_mib": 1},
        "monitoring": {"drift": True, "prediction_log_sample_rate": 1.0,
                       "prediction_log_path": str(root / "predictions.jsonl")},
        "routes": {"churn": {
            "variants": [{"name": "stable", "version": 1, "weight": 90}, {"name": "candidate", "version": 2,
                                                                             "weight": 10}],
            "canary": {"candidate": "candidate", "steps_percent": [10, 100], "interval_s": 60},
            "shadow": {"version": "3", "percent": 100},
            "fallback": {"model": "churn_simple"}}},
    }
    server = ServerThread(parse_server(doc)).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.app.metrics.port}/metrics", timeout=10) as answer:
            names = families(list(text_string_to_metric_families(answer.read().decode())))
    finally:
        server.stop()

    class NoGpus:
        @staticmethod
        def nvmlDeviceGetCount() -> int:
            return 0

    for collector in (StatsCollector(lambda: [], cache=MemoryCache(1024)), PodCollector([]), GpuCollector(NoGpus)):
        names |= families(list(collector.collect()))
    return names


def test_every_metric_the_documents_name_is_exported(exported):
    """Each `inference_*` / `nv_*` name in README.md and docs/*.md (`{a,b}` expanded; `x_*` a prefix) is one the
    server exports. Triton's ModelStatistics fields (`inference_count`) are statistics, not metrics."""
    from inference_server.protocol._generated import grpc_service_pb2 as pb

    statistics = {f.name for message in (pb.ModelStatistics, pb.InferStatistics) for f in message.DESCRIPTOR.fields}
    problems, seen = [], 0
    for path in DOCS:
        text = path.read_text()
        for m in METRIC.finditer(text):
            if m.group(1).startswith("inference_server"):
                continue  # the package, its loggers, files and services
            for name in brace_expand(m.group(1)):
                seen += 1
                known = any(e.startswith(name[:-1]) for e in exported) if name.endswith("*") else name in exported
                if not known and name not in statistics:
                    problems.append(f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {name} is "
                                    "not exported")
    assert seen > 60, seen
    assert not problems, "\n".join(problems)
