"""Several server processes on one port (SO_REUSEPORT): a supervisor that starts, watches and stops them.

The kernel spreads new connections across the processes; each worker is a complete server with its own
models and batchers. The supervisor runs no event loop and no models: it checks the port is free, starts
`workers` copies of this command line with `--workers 1 --reuse-port`, forwards SIGTERM/SIGINT, and when
any worker exits on its own, stops the others, so a half-dead server never keeps answering. It also serves
the pod's one metrics endpoint, merging the workers' (pod/metrics.py); the workers answer it, and each other's
ModelStatistics, on Unix sockets in a private directory (pod/peers.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from inference_server.config.listeners import check_free, metrics_listener, supervisor_listeners
from inference_server.config.server import ServerConfig
from inference_server.pod.metrics import pod_metrics_server
from inference_server.pod.peers import WorkerSlot, new_peer_directory

log = logging.getLogger(__name__)


def supervise(cfg: ServerConfig, argv: Sequence[str], poll_s: float = 0.2) -> int:
    """Run cfg.workers copies of the server; returns the exit code (0 after a clean SIGTERM drain)."""
    try:  # the workers' gRPC and HTTP ports (no other server may be listening there) and the pod's metrics port
        check_free(supervisor_listeners(cfg))
    except OSError as e:
        log.error("cannot start: %s", e)
        return 1
    command = [sys.executable, "-m", "inference_server", *argv, "--workers", "1", "--reuse-port"]
    try:
        peer_dir = new_peer_directory(cfg.workers)
    except OSError as e:
        log.error("cannot start: %s", e)
        return 1
    slots = [WorkerSlot(peer_dir, i, cfg.workers) for i in range(cfg.workers)]
    try:
        # The pod's one metrics endpoint: every worker's figures, merged at each scrape.
        metrics = pod_metrics_server([s.path for s in slots], metrics_listener(cfg)) if cfg.metrics else None
    except OSError as e:
        log.error("cannot start: %s", e)
        shutil.rmtree(peer_dir, ignore_errors=True)
        return 1
    try:
        return _run(cfg, command, slots, poll_s)
    finally:
        if metrics is not None:
            metrics.stop()
        shutil.rmtree(peer_dir, ignore_errors=True)


def _run(cfg: ServerConfig, command: list[str], slots: list[WorkerSlot], poll_s: float) -> int:
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = stopping or signum != signal.SIGHUP  # SIGHUP: each worker re-reads its routes
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    procs: list[subprocess.Popen[bytes]] = []
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    # Workers start with SIGHUP ignored (an ignored signal stays ignored across exec) until their event loop
    # takes it over: a reload sent while they import would otherwise kill them.
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        for slot in slots:  # one at a time into procs: if a start fails, the finally stops those already started
            procs.append(subprocess.Popen(command, env={**os.environ, **slot.environ()}))
        signal.signal(signal.SIGHUP, forward)
        if stopping:  # the signal came while they were starting
            forward(signal.SIGTERM, None)
        log.info("started %d worker processes on %s:%d (pids %s)", cfg.workers, cfg.host, cfg.port,
                 ", ".join(str(p.pid) for p in procs))
        while any(p.poll() is None for p in procs):
            exited = [p for p in procs if p.returncode is not None]
            if exited and not stopping:
                log.error("worker %d exited with %d; stopping the others", exited[0].pid, exited[0].returncode)
                forward(signal.SIGTERM, None)
            time.sleep(poll_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    codes = [p.returncode for p in procs]
    log.info("workers exited with %s", codes)
    failed = [c for c in codes if c]
    return abs(failed[0]) if failed else 0
