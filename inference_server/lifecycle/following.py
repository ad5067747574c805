"""Following the sources while the server runs: MLflow aliases (every `poll_interval_s`) and, in poll mode,
the model repository (every `repository_poll_secs`).

An alias that moves loads, warms and swaps to the new version; while the registry cannot be reached (or the alias
does not resolve) the current version keeps serving and the failure is logged once per distinct reason, not at
every poll. A repository change is applied only once the
model's files looked the same at two scans in a row, so a version still being copied in is never loaded
half written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

from inference_server.config.model import ModelConfig
from inference_server.config.server import ServerConfig
from inference_server.errors import ConfigError, ModelLoadError
from inference_server.lifecycle.events import LifecycleStats
from inference_server.lifecycle.mlflow_source import RegistryUnreachable
from inference_server.lifecycle.registry import ModelRegistry
from inference_server.lifecycle.sources import ModelSources

log = logging.getLogger(__name__)
T = TypeVar("T")
UNREACHABLE = "unreachable"  # the outage reason of a registry that does not answer


class Followed(Protocol):
    """What following needs of the model manager (which owns a Following): its sources and the loads and
    unloads it runs. A protocol, so this module does not import the manager that imports it."""
    cfg: ServerConfig
    mode: str
    registry: ModelRegistry
    events: LifecycleStats
    sources: ModelSources

    def wants(self, name: str) -> bool: ...
    def rejected(self, name: str) -> str | None: ...
    async def owned(self, operation: Coroutine[Any, Any, T]) -> T: ...
    async def refresh(self, name: str, *, reload: set[str] | None = None, mlflow_version: str | None = None,
                      want: bool = False, if_wanted: bool = False, quiet_unreachable: bool = False) -> None: ...
    async def forget(self, name: str) -> None: ...


class Following:
    def __init__(self, manager: Followed) -> None:
        self._manager = manager
        self._tasks: list[asyncio.Task[None]] = []
        # models whose registry does not answer, or whose alias does not resolve: the reason last logged
        self.outage: dict[str, str] = {}
        self._seen: dict[str, Any] = {}  # poll mode: each model's fingerprint at the last scan...
        self._applied: dict[str, Any] = {}  # ...and when it was last applied

    def remember(self, names: list[str]) -> None:
        """Poll mode, at start: the repository as it is loaded now."""
        sources = self._manager.sources
        assert sources.repository is not None
        for name in names:
            if sources.in_repository(name):
                self._seen[name] = self._applied[name] = sources.repository.fingerprint(name)

    def start(self) -> None:
        m = self._manager
        if m.mode == "poll":
            self._tasks.append(asyncio.create_task(self._poll_repository(), name="repository-poll"))
        for name, entry in m.sources.registry_entries().items():
            if entry.poll_interval_s > 0:
                self._tasks.append(asyncio.create_task(self._poll_source(name, entry), name=f"poll-{name}"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- MLflow ---------------------------------------------------------------------------------

    def failed(self, name: str, error: ModelLoadError) -> bool:
        """Note that the model's source cannot be read; True when the reason is new (and is to be logged). Every
        unreachable registry is one reason: its message carries details that change from one try to the next."""
        reason = UNREACHABLE if isinstance(error, RegistryUnreachable) else str(error)
        new = self.outage.get(name) != reason
        self.outage[name] = reason
        return new

    async def _poll_source(self, name: str, entry: ModelConfig) -> None:
        m = self._manager
        while True:
            await asyncio.sleep(entry.poll_interval_s)
            if not m.wants(name):  # explicit mode: not loaded, or unloaded
                continue
            try:
                version = await m.sources.resolve(name)
            except ModelLoadError as e:
                m.events.record_poll(name, False)
                if self.failed(name, e):
                    log.error("model '%s': cannot read %s (%s); %s", name, entry.source, e,
                              "the current version keeps serving" if m.registry.versions(name) else
                              "retrying at each poll")
                continue
            m.events.record_poll(name, True)
            if m.registry.versions(name) != [version] and m.rejected(name) != version:
                log.info("model '%s': %s now names version %s; loading it", name, entry.source, version)
                try:
                    await m.owned(m.refresh(name, mlflow_version=version, if_wanted=True,
                                            quiet_unreachable=self.outage.get(name) == UNREACHABLE))
                except RegistryUnreachable as e:  # the download failed: the same outage, logged once
                    self.failed(name, e)
                    continue
                except Exception:  # logged where it failed; a version that cannot serve waits for the alias to move
                    pass
            if self.outage.pop(name, None) is not None:
                log.info("model '%s': the registry answers again", name)

    # -- the repository (poll mode) -------------------------------------------------------------

    async def _poll_repository(self) -> None:
        repository = self._manager.sources.repository
        assert repository is not None
        while True:
            await asyncio.sleep(self._manager.cfg.repository_poll_secs)
            try:
                names = set(repository.names()) | set(self._applied)
                for name in sorted(n for n in names if self._manager.sources.in_repository(n)):
                    await self._poll_model(name)
            except ConfigError as e:
                log.error("repository poll: %s", e)
            except asyncio.CancelledError:
                raise
            except Exception:  # a scan that fails (permissions, a stale mount) is retried at the next one
                log.exception("repository poll of %s failed", repository.root)

    async def _poll_model(self, name: str) -> None:
        """Apply a model's change once its files looked the same at two scans in a row."""
        m = self._manager
        assert m.sources.repository is not None
        found = m.sources.repository.fingerprint(name)
        if found != self._seen.get(name, ()):
            self._seen[name] = found  # new or still changing: look again at the next scan
            return
        applied = self._applied.get(name)
        if name in self._applied and found == applied:
            return
        self._applied[name] = found
        if found is None:
            await m.owned(m.forget(name))
            log.info("model '%s' removed from the repository; unloaded", name)
            return
        if m.cfg.load_on_demand and not m.registry.versions(name):
            return  # not loaded: the next request for it loads what the repository holds then
        reload = None
        if applied is not None and found.get("") == applied.get(""):  # same config: only changed versions reload
            reload = {v for v in found if v and found[v] != applied.get(v)}
        # a model new to the repository joins the models readiness waits for once it has loaded; with load_on_demand
        # a change reloads a model the server serves, and one loaded on demand stays one readiness does not wait for
        want = not m.cfg.load_on_demand or m.wants(name)
        try:
            await m.owned(m.refresh(name, reload=reload, want=want))
        except Exception:  # logged where it failed; the model's index entry says why
            pass
