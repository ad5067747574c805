"""One pod, several worker processes (`--workers N`): the pod answers for all of them.

The kernel hands each connection to one worker, so a worker alone knows only its own requests. The supervisor
makes a private directory (mode 0700) and tells each worker its index and the directory through the
environment; each worker answers its peers on a Unix socket there: `statistics` (its ModelStatistics figures,
JSON) and `metrics` (its Prometheus exposition). A worker answering ModelStatistics adds its peers' figures to
its own; the supervisor serves the pod's one metrics endpoint by merging every worker's exposition (pod/metrics.py).
A peer that does not answer within PEER_TIMEOUT_S is left out and logged: its figures are missing, never
guessed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path


log = logging.getLogger(__name__)

PEER_DIR_ENV = "INFERENCE_SERVER_PEER_DIR"
WORKER_ENV = "INFERENCE_SERVER_WORKER"  # "INDEX/COUNT"
PEER_TIMEOUT_S = 2.0
REQUESTS = (b"statistics", b"metrics")


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """This process's place in the pod: worker `index` of `count`, answering peers in `directory`."""
    directory: Path
    index: int
    count: int

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WorkerSlot | None:
        directory, slot = environ.get(PEER_DIR_ENV), environ.get(WORKER_ENV)
        if not directory or not slot:
            return None
        index, _, count = slot.partition("/")
        return cls(Path(directory), int(index), int(count))

    def environ(self) -> dict[str, str]:
        return {PEER_DIR_ENV: str(self.directory), WORKER_ENV: f"{self.index}/{self.count}"}

    @property
    def path(self) -> Path:
        return socket_path(self.directory, self.index)

    @property
    def peers(self) -> list[Path]:
        return [socket_path(self.directory, i) for i in range(self.count) if i != self.index]


def socket_path(directory: Path, index: int) -> Path:
    return directory / f"worker-{index}.sock"


class PeerServer:
    """A worker's answers to its peers (statistics, read on its event loop) and its supervisor (metrics, in a
    thread, as a lone server's metrics endpoint reads them)."""

    def __init__(self, path: Path, statistics: Callable[[], list[dict]], metrics: Callable[[], bytes]) -> None:
        self.path = path
        self._answers = {b"statistics": lambda: json.dumps(statistics()).encode(), b"metrics": metrics}
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)  # a previous worker's, after a crash
        self._server = await asyncio.start_unix_server(self._answer, path=str(self.path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self.path.unlink(missing_ok=True)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = b""
        try:
            request = (await asyncio.wait_for(reader.readline(), PEER_TIMEOUT_S)).strip()
            answer = self._answers.get(request)
            if answer is None:
                log.warning("peer socket %s: unknown request %r", self.path, request[:40])
            else:
                # The exposition reads every collector (as the metrics thread of a lone server does): off the loop.
                writer.write(await asyncio.to_thread(answer) if request == b"metrics" else answer())
                await writer.drain()
        except (OSError, TimeoutError) as e:
            log.warning("peer socket %s: %s", self.path, e)
        except Exception:  # a collector's failure: the asker gets nothing (counted missing), this worker serves on
            log.exception("peer socket %s: cannot answer %r", self.path, request)
        finally:
            writer.close()


async def ask(path: Path, request: bytes, timeout_s: float = PEER_TIMEOUT_S) -> bytes:
    """A peer's answer (statistics or metrics); OSError or TimeoutError when it does not give one in time."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            writer.write(request + b"\n")
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()


def ask_blocking(path: Path, request: bytes, timeout_s: float = PEER_TIMEOUT_S) -> bytes:
    """ask(), for the supervisor's metrics thread (no event loop there)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(str(path))
        s.sendall(request + b"\n")
        chunks = []
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


class PodStatistics:
    """In a worker: the other workers' ModelStatistics figures, to add to its own."""

    def __init__(self, slot: WorkerSlot) -> None:
        self.slot = slot

    async def peers(self) -> list[list[dict]]:
        """Each answering peer's figures: [{"name", "version", "stats"}, ...]."""
        answers = await asyncio.gather(*(ask(p, b"statistics") for p in self.slot.peers), return_exceptions=True)
        figures = []
        for path, answer in zip(self.slot.peers, answers, strict=True):
            why = answer if isinstance(answer, BaseException) else "an empty answer"
            if isinstance(answer, bytes) and answer:
                try:
                    figures.append(json.loads(answer))
                    continue
                except ValueError as e:  # cut off (the peer died mid-answer)
                    why = e
            log.warning("statistics: worker socket %s did not answer (%s); its requests are not counted in this "
                        "answer", path.name, why)
        return figures


SOCKET_PATH_MAX = 107  # bytes in a Unix socket's path (sun_path holds 108, with its terminating NUL)


def new_peer_directory(workers: int) -> Path:
    """For the supervisor: a private directory (0700) for the workers' sockets, under $TMPDIR, or /tmp when that
    is too long a path for a socket. OSError naming the path when neither will do."""
    import shutil
    import tempfile

    for base in dict.fromkeys((tempfile.gettempdir(), "/tmp")):
        directory = Path(tempfile.mkdtemp(prefix="inference_server-pod-", dir=base))
        longest = socket_path(directory, workers - 1)
        if len(os.fsencode(longest)) <= SOCKET_PATH_MAX:
            return directory
        shutil.rmtree(directory, ignore_errors=True)
    raise OSError(f"the workers' socket path {longest} is longer than Unix sockets allow ({SOCKET_PATH_MAX} "
                  "bytes): set TMPDIR to a shorter directory")
