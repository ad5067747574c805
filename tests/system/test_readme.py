"""What a new user runs: the README's snippet, the client examples and scripts/serve, against real servers."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.server_process import ROOT

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
