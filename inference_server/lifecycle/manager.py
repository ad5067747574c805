"""ModelManager: what loads and when; every load, reload and unload goes through here.

Where models come from is sources.py; following MLflow aliases and the repository is following.py. Modes
(Triton's): `none` loads every model at start and takes no repository request; `explicit` loads the
--load-model names at start and then what RepositoryModelLoad/Unload ask for; `poll` loads every model and
follows the repository.

A load never blocks the event loop (sessions and warmup are made in a worker thread) and never takes
anything away until its replacement is ready: new versions load beside the old ones, the serving set flips
in one step (ModelRegistry.publish), and the versions that left it drain their leased requests before their
sessions close. A load that fails leaves what served serving; the failed version is UNAVAILABLE with its
reason. One operation at a time per model (a lock each); different models load concurrently.

Many models (`load_on_demand`, a budget): `lease` loads a repository model a request names when it is not loaded
(concurrent requests wait on one load, each within its deadline; a failed load backs off), and every load first
makes room under the budget, evicting the least recently used idle models (lifecycle/budget.py decides which).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from inference_server.config.ensemble import Signature, check_composing
from inference_server.config.model import ModelConfig
from inference_server.config.server import ServerConfig
from inference_server.errors import ConfigError, ErrorCode, InferenceError, ModelLoadError, invalid, unavailable
from inference_server.protocol.triton_config import json_to_dict, pbtxt_to_dict
from inference_server.lifecycle.budget import Backoff, Budget, Resident, release_memory, rss_bytes
from inference_server.lifecycle.events import LifecycleStats
from inference_server.lifecycle.following import Following
from inference_server.lifecycle.mlflow_source import RegistryUnreachable
from inference_server.lifecycle.registry import EVICTED, NOT_LOADED, UNLOADED, IndexEntry, Lease, ModelRegistry
from inference_server.lifecycle.repository import PbtxtReader, write_upload
from inference_server.lifecycle.sources import ModelSources
from inference_server.lifecycle.version import ModelVersion, Prepared, State, prepare
from inference_server.observability.stats import ModelStats

log = logging.getLogger(__name__)

LOAD_THREADS = 2  # versions prepared at once (sessions + warmup); the machine's cores bound what helps
ON_DEMAND_TRIES = 3  # loads one request waits for when each is unloaded again before it takes its lease
LOADING = 1 << 62  # a model being loaded, to the budget: used after every loaded one (and never evicted)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Purpose:
    """Why a load runs, carried from refresh() down to the budget and to an ensemble's composing models."""
    want: bool = False  # the server means to serve the model: an ensemble's composing models load wanted, and stay
    on_demand: str | None = None  # the model whose requests wait for this load: it gives up once none waits


def _close_prepared(future: Any) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result()[0].backend.close()


def _measured(cfg: ModelConfig, stop: threading.Event) -> tuple[Prepared, int]:
    """prepare() in a worker thread, with the growth of the process's resident memory across it (the version's size
    when its config gives none; another load running at the same time blurs it)."""
    before = rss_bytes()
    prepared = prepare(cfg, stop)
    return prepared, max(0, rss_bytes() - before)


class ModelManager:
    def __init__(self, cfg: ServerConfig, registry: ModelRegistry, *, cache_dir: Path,
                 read_pbtxt: PbtxtReader = pbtxt_to_dict, read_json: PbtxtReader = json_to_dict,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.cfg = cfg
        self.mode = cfg.model_control_mode
        self.registry = registry
        self.events = LifecycleStats()
        # Every version's figures, by (name, version), for the life of the process: a version loaded again (a
        # reload, a new file, an alias moved back, a load after an unload) counts on where it left off, so
        # neither an exported counter nor ModelStatistics ever goes back.
        self._stats: dict[tuple[str, str], ModelStats] = {}
        self._cache_dir = cache_dir
        self._read_json = read_json  # a load request's config: JSON text -> Triton ModelConfig as a dict
        self._on_change = on_change
        self.sources = ModelSources(cfg, read_pbtxt, cache_dir)
        self.following = Following(self)
        self._rejected: dict[str, str] = {}  # MLflow version that failed to load, not retried until it changes
        self._wanted: set[str] = set()  # models the server means to serve: strict readiness waits for these
        # models loaded by their own name (at start, or a load request), not only as an ensemble's composing model:
        # an unload with unload_dependents leaves these loaded, as Triton leaves its explicitly loaded ones
        self._explicit: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._load_pool = ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix="model-load")
        # malloc_trim after evictions: its own thread, so it never waits behind (nor delays) a load's sessions
        self._trim_pool = ThreadPoolExecutor(1, thread_name_prefix="memory-release")
        self._ops: set[asyncio.Task[Any]] = set()  # loads, unloads and drains: owned here, never cancelled midway
        self._started = False
        self._closing = False
        self._stopping = threading.Event()  # tells a warmup running in a worker thread to give up
        self._awaiting: dict[str, str] = {}  # an ensemble loading -> the composing model whose load it waits for
        # Many models: the budget's decision (lifecycle/budget.py) and what it is asked with.
        self.budget = Budget.from_config(cfg.max_loaded_models, cfg.model_memory_budget_mb)
        self._backoff = Backoff()  # models whose on-demand load failed, left alone for a while
        self._pending: dict[str, asyncio.Task[None]] = {}  # on-demand loads under way: every request shares one
        self._named: set[str] = set()  # models named by --load-model (every model at start with "*"): never evicted
        # ensembles loading for a load that wants them (or pinned, or named) -> their steps' models, kept loaded
        self._assembling: dict[tuple[str, str], set[str]] = {}
        self._waiting: Counter[str] = Counter()  # requests waiting for a model's on-demand load (not evictable)
        self._loading: dict[str, int] = {}  # models loading under the budget -> the bytes reserved for them
        self._sizes: dict[tuple[str, str], int] = {}  # each version's size at its last load: its next estimate
        self._room_waiters: set[str] = set()  # models whose load waits for a busy model to be idle
        self._room: asyncio.Event | None = None  # set when a model may have become evictable

    # -- start and views ------------------------------------------------------------------------

    def known(self) -> list[str]:
        """Every model the server could load (lists the whole repository: not for the request path, see has())."""
        return self.sources.known()

    def has(self, name: str) -> bool:
        """Whether the model is known, without listing the repository (the request path asks this). A repository that
        cannot be read answers UNAVAILABLE with the reason, never an error out of the request."""
        try:
            return self.sources.has(name)
        except ConfigError as e:
            raise unavailable(f"model '{name}': {e}") from None

    def wants(self, name: str) -> bool:
        return name in self._wanted

    def rejected(self, name: str) -> str | None:
        """The MLflow version of the model that failed to load (not fetched again until the alias moves)."""
        return self._rejected.get(name)

    async def start(self) -> None:
        """Load what the mode loads at start. A model that fails is UNAVAILABLE with its reason (the server
        serves the rest) unless exit_on_error, when the first failure is raised."""
        known = self.known()
        if self.sources.repository is not None:
            log.info("%s", self.sources.repository.describe())
            if (warning := self.sources.repository.layout_warning()) is not None:
                log.warning("%s", warning)
        if self.mode == "explicit" or self.cfg.load_on_demand:  # on demand: the rest load when asked for
            initial = known if "*" in self.cfg.load_models else list(self.cfg.load_models)
        else:
            initial = known
        for name in set(known) - set(initial):
            self.registry.set_model_reason(name, NOT_LOADED)
        self._wanted = set(initial)
        self._explicit = set(initial)
        self._named = set(initial) if "*" in self.cfg.load_models else set(self.cfg.load_models)
        if self.mode == "poll":
            self.following.remember(known)
        results = await asyncio.gather(*(self.refresh(name) for name in initial), return_exceptions=True)
        failures = []
        for name, result in zip(initial, results, strict=True):
            if isinstance(result, InferenceError) and result.code is ErrorCode.NOT_FOUND:  # an unknown name
                reason = self._unknown(known)
                self.registry.set_model_reason(name, reason)
                log.error("model '%s' cannot load: %s", name, reason)
                failures.append(reason)
            elif isinstance(result, InferenceError):  # over the budget
                log.error("model '%s' cannot load: %s", name, result.message)
                failures.append(result.message)
            elif isinstance(result, Exception) and self.sources.required(name):  # not a route's alias companion
                failures.append(str(result))  # logged where it failed
            elif isinstance(result, BaseException):
                raise result
            if (isinstance(result, ModelLoadError) and name not in self.sources.resolved
                    and name in self.sources.registry_entries()):
                self.following.failed(name, result)  # an MLflow alias that did not resolve: polls log a new reason
        if failures and self.cfg.exit_on_error:
            raise ModelLoadError(f"{len(failures)} model(s) failed to load (--exit-on-error): {failures[0]}")
        self.following.start()
        self._started = True
        self._on_change()

    def _unknown(self, known: list[str]) -> str:
        """Why a --load-model name loads nothing, with the names it could have meant."""
        repository = self.sources.repository
        where = ("not a [[models]] entry" if repository is None
                 else f"not in the model repository {repository.root} nor a [[models]] entry")
        listed = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
        return f"{where}: check the --load-model name (known models: {listed or 'none'})"

    def unready(self) -> list[str]:
        """The models the server means to serve that have no ready version (strict readiness waits for them)."""
        return sorted(n for n in self._wanted if self.sources.required(n) and not self.registry.ready(n))

    def ready(self) -> bool:
        """Every model the server means to serve has a ready version (or readiness is not strict)."""
        return self._started and (not self.cfg.strict_readiness
                                  or self.registry.all_ready({n for n in self._wanted if self.sources.required(n)}))

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        entries = self.registry.index(ready_only)
        if not ready_only and self.sources.repository is not None:
            listed = {e.name for e in entries}
            entries += [IndexEntry(n, "", State.UNAVAILABLE.value, NOT_LOADED) for n in self.known() if n not in listed]
            entries.sort(key=lambda e: e.name)
        return entries

    # -- repository requests (explicit mode) ----------------------------------------------------

    def _require_explicit(self, request: str) -> None:
        if self.mode != "explicit":
            raise InferenceError(ErrorCode.FAILED_PRECONDITION,
                                 f"{request} is not allowed in model control mode '{self.mode}': start the server "
                                 "with --model-control-mode explicit to load and unload models by request")

    async def owned(self, operation: Coroutine[Any, Any, T]) -> T:
        """Run a load, unload or drain as a task of the manager's. A caller that goes away (a request's
        deadline, a cancelled poll) stops waiting for it but never cuts it in half: a version left half
        loaded or half drained would hold its sessions and its state forever. close() waits for them."""
        if self._closing:
            operation.close()
            raise unavailable("server is shutting down")
        return await asyncio.shield(self._spawn(operation))

    async def load(self, name: str, *, config: str | None = None, files: Mapping[str, bytes] | None = None,
                   version: str | None = None) -> None:
        """Load the model (or only `version`), or reload it when loaded: the old versions serve until the new
        ones are ready. `config` (a Triton ModelConfig as JSON text) replaces the model's config; `files`
        ("<version>/<name>" -> bytes) are the model's files for this load."""
        self._require_explicit("RepositoryModelLoad")
        if files and config is None:
            raise invalid("the config parameter is required with file: parameters")
        override = None
        if config is not None:
            try:
                override = self._read_json(config)
            except ValueError as e:
                raise invalid(f"parameter 'config' is not a valid model configuration: {e}") from None
            if not isinstance(override, dict):
                raise invalid("parameter 'config' must be a JSON object (a model configuration)")
        self._backoff.clear(name)  # asked for by name: tried now, whatever failed before
        await self.owned(self._load_request(name, override, files, version))

    async def _load_request(self, name: str, config: Mapping[str, Any] | None, files: Mapping[str, bytes] | None,
                            version: str | None) -> None:
        loop = asyncio.get_running_loop()
        upload = None
        if files:  # written in a worker thread: an upload may be as large as a gRPC message
            upload = await loop.run_in_executor(self._load_pool, write_upload, self._cache_dir, name, files)
        try:
            await self.refresh(name, override=config, upload=upload, version=version, want=True)
            self._explicit.add(name)
        finally:
            if upload is not None:  # the sessions hold the model now
                await loop.run_in_executor(self._load_pool, partial(shutil.rmtree, upload, ignore_errors=True))

    async def unload(self, name: str, version: str | None = None, *, dependents: bool = False) -> None:
        """Unload the model (or one version); returns once its leased requests are answered. `dependents` (Triton's
        unload_dependents): then the composing models of the ensemble versions that left go too, each once its
        own leased requests are answered, unless a load named it (at start or by request) or another serving
        ensemble still uses it; an ensemble among them takes its own composing models with it."""
        self._require_explicit("RepositoryModelUnload")
        await self.owned(self._unload(name, version, dependents))

    async def _unload(self, name: str, version: str | None, dependents: bool = False) -> None:
        left = await self._unload_one(name, version)
        if not dependents:
            return
        for composing in sorted({s.model_name for m in left if m.ensemble is not None for s in m.ensemble.steps}):
            if not self.registry.serving_versions(composing):
                continue
            users = sorted({m.name for m in self.registry.serving() if m.ensemble is not None
                            and any(s.model_name == composing for s in m.ensemble.steps)})
            if composing in self._explicit or users:
                log.info("model '%s' stays loaded after ensemble '%s' (%s)", composing, name,
                         f"used by ensemble {', '.join(users)}" if users else "loaded by its own name")
                continue
            log.info("model '%s' unloads with ensemble '%s' (unload_dependents)", composing, name)
            await self._unload(composing, None, dependents=True)

    async def _unload_one(self, name: str, version: str | None) -> list[ModelVersion]:
        """Unload the model (or one version); returns the versions that left, drained."""
        async with self._locked(name):
            serving = self.registry.serving_versions(name)
            if version:
                if version not in serving:
                    raise InferenceError(ErrorCode.NOT_FOUND, f"model '{name}' version {version} is not loaded")
                remaining = {v: m for v, m in serving.items() if v != version}
                self.registry.clear_status(name, version)
            else:
                if not serving and not self.has(name):
                    raise InferenceError(ErrorCode.NOT_FOUND, f"model '{name}' is not loaded")
                remaining = {}
                self.registry.clear_statuses(name)
            left = self.registry.publish(name, remaining)
            if not remaining:
                self.registry.set_model_reason(name, UNLOADED)
                self._wanted.discard(name)
                self._explicit.discard(name)
            self._on_change()
            await self._drain(name, left)
            log.info("model '%s'%s unloaded", name, f" version {version}" if version else "")
        return left

    # -- loading --------------------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def _locked(self, name: str) -> AsyncIterator[None]:
        """Hold the model's lock for one operation; its release may make the model evictable, so a load waiting for
        room looks again (a held lock counts the model busy in _residents)."""
        try:
            async with self._lock(name):
                yield
        finally:
            self._notify()

    async def refresh(self, name: str, *, override: Mapping[str, Any] | None = None, upload: Path | None = None,
                      version: str | None = None, reload: set[str] | None = None, mlflow_version: str | None = None,
                      want: bool = False, if_wanted: bool = False, quiet_unreachable: bool = False,
                      on_demand: str | None = None) -> None:
        """Load (or reload) what the model's source offers. reload: only these versions of those serving
        reload (None: all). want: the model joins those the server means to serve once this load succeeds.
        if_wanted: load only if it still is one of them when this load's turn comes (a poll must not bring
        back an unloaded model). quiet_unreachable: an outage already logged is not logged again. on_demand:
        the model whose requests this load is for (it gives up waiting for room once none waits)."""
        async with self._locked(name):
            if if_wanted and name not in self._wanted:
                return
            purpose = Purpose(want or name in self._wanted, on_demand)
            try:
                try:
                    available, selected = await self.sources.offer(name, override, upload, mlflow_version)
                except (ModelLoadError, ConfigError) as e:
                    self.events.record_load(name, False, 0.0)
                    if not self.registry.versions(name):
                        self.registry.set_model_reason(name, str(e))
                        self._on_change()
                    if not (isinstance(e, RegistryUnreachable) and quiet_unreachable):
                        log.error("model '%s' cannot load: %s", name, e)
                    raise (e if isinstance(e, ModelLoadError) else ModelLoadError(str(e))) from None
                if version is not None:
                    if version not in available:
                        raise InferenceError(ErrorCode.NOT_FOUND, f"model '{name}' has no version {version} "
                                                                  f"(available: {', '.join(available) or 'none'})")
                    await self._apply(name, {version: available[version]}, keep_others=True, reload=reload,
                                      purpose=purpose)
                else:
                    if not selected:
                        raise self._no_version(name, available)
                    await self._apply(name, {v: available[v] for v in selected}, keep_others=False, reload=reload,
                                      purpose=purpose)
            except ModelLoadError as e:
                resolved = self.sources.resolved.get(name)
                if resolved is not None and not isinstance(e, RegistryUnreachable):
                    self._rejected[name] = resolved  # an MLflow version that cannot serve: not fetched again
                raise
            self._rejected.pop(name, None)
            if want and self.registry.versions(name):
                self._wanted.add(name)
                self._on_change()

    def _no_version(self, name: str, available: Mapping[str, ModelConfig]) -> ModelLoadError:
        """A policy that selects nothing would unload every version: refused, what serves keeps serving."""
        policy = next(iter(available.values())).version_policy.describe() if available else "?"
        reason = (f"model '{name}': no version matches its version_policy ({policy}); available: "
                  f"{', '.join(available) or 'none'}")
        self.events.record_load(name, False, 0.0)
        log.error("%s", reason)
        if not self.registry.versions(name):
            self.registry.set_model_reason(name, reason)
            self._on_change()
        return ModelLoadError(reason)

    async def _apply(self, name: str, wanted: dict[str, ModelConfig], *, keep_others: bool,
                     reload: set[str] | None, purpose: Purpose) -> None:
        """Load what `wanted` adds or replaces beside what serves, then publish and drain what left."""
        current = self.registry.serving_versions(name)
        to_load = {v: c for v, c in wanted.items() if v not in current or reload is None or v in reload}
        budgeted = self.budget.on and any(c.ensemble is None for c in to_load.values())  # an ensemble takes no room
        try:  # the room _make_room reserves is given back whatever happens from here on (the model's lock is held)
            if budgeted:
                try:
                    await self._make_room(name, self._estimate(name, to_load, current), purpose.on_demand)
                except InferenceError as e:
                    if not current:
                        self.registry.set_model_reason(name, e.message)
                        self._on_change()
                    log.error("model '%s' cannot load: %s", name, e.message)
                    raise
            await self._load_and_publish(name, wanted, to_load, current, keep_others=keep_others, purpose=purpose)
        finally:
            if budgeted:
                self._loading.pop(name, None)
                self._notify()

    async def _load_and_publish(self, name: str, wanted: dict[str, ModelConfig], to_load: dict[str, ModelConfig],
                                current: dict[str, ModelVersion], *, keep_others: bool, purpose: Purpose) -> None:
        for v in to_load:
            if v not in current:
                self.registry.set_status(name, v, State.LOADING)
        self._on_change()
        try:
            results = await asyncio.gather(*(self._load_version(c, purpose) for c in to_load.values()),
                                           return_exceptions=True)
        except BaseException:  # cancelled (the server stops): _load_version closes what still finishes
            for v in to_load:
                if v not in current:
                    self.registry.clear_status(name, v)
            raise
        loaded: dict[str, ModelVersion] = {}
        errors = []
        refused = [r for r in results if isinstance(r, InferenceError)]  # over the budget (a composing model)
        for v, result in zip(to_load, results, strict=True):
            if isinstance(result, ModelVersion):
                loaded[v] = result
            elif isinstance(result, Exception):
                errors.append(str(result))
                if v in current:
                    log.error("model '%s' version %s: reload failed; the loaded version keeps serving", name, v)
                else:
                    self.registry.set_status(name, v, State.UNAVAILABLE, str(result))
            else:
                raise result
        if self._closing:  # the server stopped while this loaded: nothing new is published
            await asyncio.gather(*(m.drain_and_close(0) for m in loaded.values()))
            raise unavailable("server is shutting down")
        serving = {**current, **loaded}
        if not errors and not keep_others:
            serving = {v: m for v, m in serving.items() if v in wanted}
            self.registry.clear_statuses(name, keep=set(wanted))
        left = self.registry.publish(name, serving)
        self.registry.set_model_reason(name, None if serving else (errors[0] if errors else UNLOADED))
        self._on_change()
        if self.budget.max_bytes and loaded:
            self._within_bytes(name)
        await self._drain(name, left)
        if errors and len(refused) == len(errors):  # refused, not broken: RESOURCE_EXHAUSTED as for any model
            raise InferenceError(refused[0].code, "; ".join(errors))
        if errors:
            raise ModelLoadError("; ".join(errors))

    async def _load_version(self, cfg: ModelConfig, purpose: Purpose) -> ModelVersion:
        if cfg.ensemble is not None:
            return await self._load_ensemble(cfg, purpose)
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._load_pool, _measured, cfg, self._stopping)
        try:
            prepared, growth = await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(_close_prepared)  # the thread finishes on its own: close what it made
            raise
        except ModelLoadError as e:
            self.events.record_load(cfg.name, False, time.perf_counter() - start)
            log.error("model '%s' version %s failed to load: %s", cfg.name, cfg.version, e)
            raise
        except Exception as e:  # anything else a broken file makes ONNX Runtime raise
            self.events.record_load(cfg.name, False, time.perf_counter() - start)
            log.exception("model '%s' version %s failed to load", cfg.name, cfg.version)
            raise ModelLoadError(f"model '{cfg.name}' version {cfg.version}: {e}") from e
        version = ModelVersion.start(prepared, self._stats_of(cfg))
        # measured: never below an earlier load's figure (a load that reuses memory freed by an unload, and not yet
        # given back, grows the process by less than the model takes, down to nothing)
        version.size_bytes = (max(growth, self._sizes.get((cfg.name, cfg.version), 0))
                              if cfg.model_size_bytes is None else cfg.model_size_bytes)
        self._sizes[(cfg.name, cfg.version)] = version.size_bytes
        if self.budget.on:
            version.on_idle = self._notify
        self.events.record_load(cfg.name, True, time.perf_counter() - start)
        return version

    async def _load_ensemble(self, cfg: ModelConfig, purpose: Purpose) -> ModelVersion:
        """An ensemble's version, once its composing models serve (in explicit mode, a composing model that does not
        is loaded first, as Triton loads an ensemble's dependencies) and agree with its steps (config/ensemble.py
        `check_composing`). It has no session: nothing runs in a worker thread. The composing models of an ensemble
        the server means to serve (or pinned, or named by --load-model) are never evicted, from their loads on."""
        assert cfg.ensemble is not None
        start = time.perf_counter()
        key = (cfg.name, cfg.version)
        if purpose.want or cfg.pinned or cfg.name in self._named:
            self._assembling[key] = {step.model_name for step in cfg.ensemble.steps}
        try:
            composing = {name: _signature(model) for name, model in (await self._composing(cfg, purpose)).items()}
            own = Signature({d.name: (d.datatype, d.dims) for d in cfg.declared if d.kind == "input"},
                            {d.name: (d.datatype, d.dims) for d in cfg.declared if d.kind == "output"},
                            cfg.batching.max_batch_size or 0)
            check_composing(cfg.name, own, cfg.ensemble, composing)
        except (ConfigError, ModelLoadError, InferenceError) as e:
            self.events.record_load(cfg.name, False, time.perf_counter() - start)
            log.error("ensemble '%s' version %s failed to load: %s", cfg.name, cfg.version, e)
            why = f"ensemble '{cfg.name}' version {cfg.version}: {e}"
            raise (InferenceError(e.code, why) if isinstance(e, InferenceError) else ModelLoadError(why)) from None
        finally:  # once published, the serving version keeps them (_kept)
            self._assembling.pop(key, None)
        version = ModelVersion.start_ensemble(cfg, self._stats_of(cfg))
        self.events.record_load(cfg.name, True, time.perf_counter() - start)
        return version

    def _stats_of(self, cfg: ModelConfig) -> ModelStats:
        """The version's statistics, kept for the process's life: a reload continues its counters."""
        stats = self._stats.get((cfg.name, cfg.version))
        if stats is None:
            stats = self._stats[(cfg.name, cfg.version)] = ModelStats()
        return stats

    async def _composing(self, cfg: ModelConfig, purpose: Purpose) -> dict[str, ModelVersion]:
        """The version each step of the ensemble would run on now, by model name. A composing model being loaded is
        waited for (models load concurrently at start); a wait that would come back to this ensemble is a cycle. One
        that is not loaded loads for the ensemble's purpose: wanted only when the ensemble is, on demand when it is."""
        assert cfg.ensemble is not None
        found: dict[str, ModelVersion] = {}
        for step in cfg.ensemble.steps:
            name = step.model_name
            if name == cfg.name:
                raise ModelLoadError(f"{step.describe()} is the ensemble itself")
            waiter: str | None = name
            while waiter is not None:  # who `name` waits for, and who that one waits for ...
                if waiter == cfg.name:
                    raise ModelLoadError(f"{step.describe()}: ensembles that contain each other form a cycle")
                waiter = self._awaiting.get(waiter)
            self._awaiting[cfg.name] = name
            try:
                if self._lock(name).locked():
                    async with self._locked(name):
                        pass
                if not self.registry.ready(name, step.model_version) and self.has(name) \
                        and (self.mode == "explicit" or self.cfg.load_on_demand):
                    await self.refresh(name, want=purpose.want, on_demand=purpose.on_demand)
                model = self.registry.find(name, step.model_version)
            except (InferenceError, ModelLoadError) as e:
                why = f"{step.describe()}: the composing model cannot serve: {e}"
                if isinstance(e, InferenceError) and e.code is ErrorCode.RESOURCE_EXHAUSTED:
                    raise InferenceError(e.code, why) from None  # over the budget: refused as such, not a bad model
                raise ModelLoadError(why) from None
            finally:
                self._awaiting.pop(cfg.name, None)
            if name in found and found[name] is not model:
                raise ModelLoadError(f"{step.describe()}: steps name different versions of model '{name}'")
            found[name] = model
        return found

    async def _drain(self, name: str, left: list[ModelVersion], grace_s: float | None = None) -> None:
        async def close(model: ModelVersion) -> None:
            start = time.perf_counter()
            owed = model.leases
            await model.drain_and_close(self.cfg.drain_grace_s if grace_s is None else grace_s)
            self.registry.drained(model)
            self.events.record_unload(name, time.perf_counter() - start)
            log.info("model '%s' version %s closed after %.3fs (%d requests were in flight)", name, model.version,
                     time.perf_counter() - start, owed)

        if left:
            await asyncio.gather(*(asyncio.shield(self._spawn(close(m))) for m in left))
            self._on_change()

    def _spawn(self, operation: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(operation)
        self._ops.add(task)
        task.add_done_callback(self._ops.discard)
        return task

    async def forget(self, name: str) -> None:
        """A model gone from the repository (poll mode): unloaded and no longer listed."""
        async with self._locked(name):
            self._wanted.discard(name)
            self._backoff.clear(name)
            left = self.registry.publish(name, {})
            self.registry.clear_statuses(name)
            self.registry.set_model_reason(name, None)
            self._on_change()
            await self._drain(name, left)

    # -- many models: loads on demand, the budget ------------------------------------------------

    async def lease(self, name: str, version: str = "", deadline: float | None = None) -> Lease:
        """`with await manager.lease(name, version, deadline) as model:` the registry's lease; with load_on_demand,
        a repository model that is not loaded is loaded first (the request waits for it, until `deadline`, in
        event-loop time)."""
        try:
            return self.registry.lease(name, version)
        except InferenceError:
            if not self.cfg.load_on_demand or self.registry.serving_versions(name) or not self.has(name):
                raise  # a version the loaded model does not serve, or no such model: nothing to load
        return await self._lease_on_demand(name, version, deadline)

    def servable(self, name: str, version: str = "") -> bool:
        """Ready, or (with load_on_demand) loaded by the first request for it: a route's variant may be chosen."""
        if self.registry.ready(name, version):
            return True
        if not self.cfg.load_on_demand or self.registry.serving_versions(name):
            return False
        if name in self._pending:
            return True
        try:
            self._backoff.check(name, asyncio.get_running_loop().time())
            return self.has(name)
        except InferenceError:
            return False

    async def _lease_on_demand(self, name: str, version: str, deadline: float | None) -> Lease:
        """Wait for the model's load (one for every request that asks meanwhile), then lease it. While a request
        waits, the model is not evicted; an explicit unload may still come between the load and the lease (it
        wins: the model is unloaded), and the request then waits for a new load, ON_DEMAND_TRIES times at most."""
        self._waiting[name] += 1
        try:
            for _ in range(ON_DEMAND_TRIES):
                await self._await_load(name, deadline)
                try:
                    return self.registry.lease(name, version)
                except InferenceError:
                    if self.registry.serving_versions(name):
                        raise  # loaded, but not the version the request names
            raise unavailable(f"model '{name}' was unloaded each time it loaded for this request "
                              f"({ON_DEMAND_TRIES} times); try again")
        finally:
            self._waiting[name] -= 1
            if not self._waiting[name]:
                del self._waiting[name]
                self._notify()

    async def _await_load(self, name: str, deadline: float | None) -> None:
        loop = asyncio.get_running_loop()
        task = self._pending.get(name)
        if task is None:
            if self._closing:
                raise unavailable("server is shutting down")
            self._backoff.check(name, loop.time())
            task = self._pending[name] = self._spawn(self._load_on_demand(name))
            task.add_done_callback(partial(self._load_done, name))
        if deadline is None:
            await asyncio.shield(task)
            return
        remaining = deadline - loop.time()
        margin = min(0.1 * remaining, 1.0)  # the client hears why before its own deadline ends the call
        try:
            await asyncio.wait_for(asyncio.shield(task), remaining - margin)
            return
        except TimeoutError:
            if name in self._room_waiters:
                raise self.budget.busy(name) from None
        try:
            await asyncio.wait_for(asyncio.shield(task), deadline - loop.time())
        except TimeoutError:
            raise InferenceError(ErrorCode.DEADLINE_EXCEEDED, f"model '{name}' is loading on demand: the request's "
                                                              "deadline passed before it was ready") from None

    def _load_done(self, name: str, task: asyncio.Task[None]) -> None:
        if self._pending.get(name) is task:
            del self._pending[name]
        if not task.cancelled():
            task.exception()  # every waiter may have gone (deadlines): retrieved here, raised to those that wait
        self._notify()  # a model with a load pending counts busy: it may be evictable now

    async def _load_on_demand(self, name: str) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:  # only what does not serve yet: a load under way is waited for
            await self.refresh(name, reload=set(), on_demand=name)
        except ModelLoadError as e:
            self.events.record_on_demand(False, time.perf_counter() - start)
            wait_s = self._backoff.failed(name, str(e), loop.time())
            log.warning("model '%s': on-demand load failed; requests are refused for %.1fs before it is tried "
                        "again", name, wait_s)
            raise unavailable(f"model '{name}' failed to load on demand: {e}") from None
        self._backoff.clear(name)
        self.events.record_on_demand(True, time.perf_counter() - start)
        log.info("model '%s' loaded on demand in %.3fs", name, time.perf_counter() - start)

    def _estimate(self, name: str, to_load: Mapping[str, ModelConfig], current: Mapping[str, ModelVersion]) -> int:
        """The bytes the model will take once `to_load` is loaded: each version's model_size_bytes, else its size at
        its last load (0 the first time: measured then), plus the versions that stay."""
        incoming = sum(c.model_size_bytes if c.model_size_bytes is not None else self._sizes.get((name, v), 0)
                       for v, c in to_load.items())
        return incoming + sum(m.size_bytes for v, m in current.items() if v not in to_load)

    def _kept(self) -> set[str]:
        """The models never evicted: those named by --load-model, pinned ones, and (through nested ensembles too)
        the composing models of an ensemble that is one of those or that the server means to serve, serving or
        loading: evicting one would turn readiness false, and the ensemble's next step would evict another."""
        kept = set(self._named)
        roots = kept | self._wanted
        steps: dict[str, set[str]] = {}
        for model in self.registry.serving():
            if model.config.pinned:
                kept.add(model.name)
                roots.add(model.name)
            if model.ensemble is not None:
                steps.setdefault(model.name, set()).update(s.model_name for s in model.ensemble.steps)
        for (name, _), members in self._assembling.items():
            steps.setdefault(name, set()).update(members)
            roots.add(name)
        todo = [r for r in roots if r in steps]
        seen: set[str] = set()
        while todo:
            ensemble = todo.pop()
            if ensemble not in seen:
                seen.add(ensemble)
                kept |= steps[ensemble]
                todo += [m for m in steps[ensemble] if m in steps]
        return kept

    def _residents(self, exclude: str | None = None) -> list[Resident]:
        """The loaded models (and those loading) as the budget sees them; ensembles take no room. Busy (not idle)
        while anything below holds it: each of those ends with _notify(), which a load waiting for room waits on."""
        serving: dict[str, list[ModelVersion]] = {}
        for model in self.registry.serving():
            if model.ensemble is None and model.name != exclude:
                serving.setdefault(model.name, []).append(model)
        kept = self._kept()
        rows = [Resident(name, sum(m.size_bytes for m in versions), max(m.used for m in versions),
                         idle=(not any(m.leases for m in versions) and not self._waiting[name]
                               and not self._lock(name).locked() and name not in self._pending),
                         permanent=name in kept)
                for name, versions in serving.items()]
        rows += [Resident(name, size, LOADING, idle=False, permanent=name in kept)
                 for name, size in self._loading.items() if name not in serving and name != exclude]
        return rows

    async def _make_room(self, name: str, size: int, on_demand: str | None) -> None:
        """Evict what the budget says (least recently used idle models) so that `name` fits, and reserve its room;
        wait while only busy models could make room (a load on demand gives up once no request waits for the model
        it is for). RESOURCE_EXHAUSTED when it cannot fit at all."""
        while (victims := self.budget.plan(name, size, self._residents(name))) is None:
            if on_demand is not None and not self._waiting[on_demand]:
                raise self.budget.busy(name)
            self._room_waiters.add(name)
            try:
                await self._changed()
            finally:
                self._room_waiters.discard(name)
        self._loading[name] = size  # reserved in the same step as the decision: no other load can take it
        drains = [self._evict(victim, f"to load '{name}'") for victim in victims]
        if drains:
            await asyncio.gather(*drains)
            await asyncio.get_running_loop().run_in_executor(self._trim_pool, release_memory)

    def _within_bytes(self, name: str) -> None:
        """After a load measured larger than its estimate: evict idle models until the budget holds again (as far
        as idle ones allow; the next load makes room for itself in any case)."""
        for victim in self.budget.over(self._residents()):
            if victim != name:
                self._evict(victim, f"after '{name}' loaded larger than estimated")

    def _evict(self, name: str, why: str) -> asyncio.Task[None]:
        """Unload an idle model now (it takes no new request from this step on); the task drains and closes it."""
        versions = self.registry.serving_versions(name)
        size = sum(m.size_bytes for m in versions.values())
        left = self.registry.publish(name, {})
        self.registry.clear_statuses(name)
        self.registry.set_model_reason(name, EVICTED)
        self._wanted.discard(name)
        self._explicit.discard(name)  # loaded again, it is by whatever loads it then
        self.events.record_eviction(name)
        log.info("model '%s' evicted %s within the model budget (%s): least recently used idle model "
                 "(%.1f MiB)", name, why, self.budget.describe(), size / (1 << 20))
        self._on_change()
        return self._spawn(self._drain(name, left))

    def _notify(self) -> None:
        """A model may have become evictable (its last lease back, a load or an unload finished)."""
        if self._room is not None:
            self._room.set()
            self._room = None

    async def _changed(self) -> None:
        if self._room is None:
            self._room = asyncio.Event()
        await self._room.wait()

    def loaded(self) -> tuple[int, int]:
        """Models loaded (ensembles aside) and the bytes they count against the budget; safe from another thread."""
        versions = [m for m in self.registry.snapshot() if m.state is State.READY and m.backend is not None]
        return len({m.name for m in versions}), sum(m.size_bytes for m in versions)

    async def close(self, grace_s: float) -> None:
        """Stop following sources, then drain and close every version (in parallel)."""
        self._closing = True
        self._stopping.set()
        await self.following.close()
        if self._ops:  # loads stop at their next warmup run; drains finish their requests
            done, pending = await asyncio.wait(set(self._ops), timeout=max(grace_s, 1.0))
            for task in pending:
                task.cancel()
            await asyncio.gather(*done, *pending, return_exceptions=True)
        names = {m.name for m in self.registry.serving()}
        await asyncio.gather(*(self._drain(name, self.registry.publish(name, {}), grace_s) for name in names))
        self._load_pool.shutdown(wait=False, cancel_futures=True)
        self._trim_pool.shutdown(wait=False, cancel_futures=True)
        self.sources.close()


def _signature(model: ModelVersion) -> Signature:
    """A serving version's tensors as the ensemble checks compare them (dims without the batch dimension)."""
    cut = 1 if model.max_batch_size > 0 else 0
    return Signature({s.name: (s.datatype, s.shape[cut:]) for s in model.inputs},
                     {s.name: (s.datatype, s.shape[cut:]) for s in model.outputs}, model.max_batch_size)
