"""What a new user runs: the README's snippet, the client examples and scripts/serve, against real servers."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.support.server_process import ROOT

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


def test_load_test_example_reports_a_summary(launch):
    server = launch()
    for mode in (["--concurrency", "4"], ["--rate", "200"]):
        out = run_python(["clients/python/load_test.py", "--url", server.url, "--model", "digits",
                          "--duration-s", "1", *mode])
        summary = json.loads(out)
        assert summary["requests"] > 0 and summary["errors"] == {} and summary["p99_ms"] > 0, summary


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
