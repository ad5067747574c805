"""System-test fixtures: servers started as real processes, stopped (killed if need be) after the test."""

from __future__ import annotations

import pytest

from tests.support.server_process import ServerProcess


@pytest.fixture
def launch(tmp_path):
    started: list[ServerProcess] = []

    def start(*args: str, command: list[str] | None = None) -> ServerProcess:
        server = ServerProcess(list(args), tmp_path / f"server-{len(started)}.log", command)
        started.append(server)
        return server.wait_serving()

    yield start
    for server in started:
        server.kill()
