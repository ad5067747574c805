"""InferenceService: the one protocol-neutral entry point. route -> validate -> batch -> respond."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from inference_server import __version__
from inference_server.cache.memory import Coalescer, ResponseCache, cache_key, outputs_nbytes
from inference_server.config.model import version_key
from inference_server.config.routes import RouteConfig
from inference_server.config.server import CacheConfig
from inference_server.errors import ErrorCode, InferenceError, ModelLoadError, QueueFull, invalid, unavailable
from inference_server.execution.backend import TensorSpec
from inference_server.lifecycle.manager import ModelManager
from inference_server.lifecycle.mlflow_source import RegistryUnreachable
from inference_server.lifecycle.registry import ModelRegistry
from inference_server.lifecycle.version import ModelVersion
from inference_server.observability.drift import DriftMonitor
from inference_server.observability.logs import ACCESS, REQUEST_ID
from inference_server.observability.predictions import PredictionLog
from inference_server.pod.peers import PodStatistics, with_peers
from inference_server.protocol.tensors import InferRequest, InferResponse, Tensor
from inference_server.routing.canary import CanaryConflict
from inference_server.routing.dispatch import Answer, Dispatcher
from inference_server.routing.router import Router, RouteState
from inference_server.routing.router import view as route_view
from inference_server.routing.shadow import Shadow, ShadowStats
from inference_server.service.validation import select_outputs, validate_inputs
from inference_server.service.views import (
    IndexEntry,
    ModelConfigView,
    ModelMetadataView,
    RouteView,
    StatisticsView,
    config_view,
    metadata_view,
    statistics_view,
)

log = logging.getLogger(__name__)

SERVER_NAME = "inference_server"
# Only what is implemented end to end; perf_analyzer and clients trust this list.
EXTENSIONS = ("model_configuration", "statistics")
REPOSITORY_EXTENSIONS = ("model_repository", "model_repository(unload_dependents)")  # explicit mode only
HTTP_EXTENSIONS = ("binary_tensor_data",)  # with the HTTP front end (Triton lists it when HTTP is on)


class InferenceService:
    def __init__(self, registry: ModelRegistry, manager: ModelManager, *, router: Router | None = None,
                 http: bool = False, access_log: bool = False,
                 predictions: PredictionLog | None = None, drift: DriftMonitor | None = None,
                 cache: ResponseCache | None = None, cache_config: CacheConfig | None = None,
                 max_in_flight: int = 0) -> None:
        self.registry = registry
        self.manager = manager
        self.router = router or Router(())
        self._dispatch = Dispatcher(self.router, registry, self._answer)
        self.shadow_stats = ShadowStats()
        self._closing: set[asyncio.Task[None]] = set()  # shadows of routes a reload removed, closing
        self.cache = cache
        self.cache_config = cache_config or CacheConfig()
        self._coalescer = Coalescer()
        self.access_log = access_log
        self.predictions = predictions
        self.drift = drift
        self._start_shadows(self.router.routes())
        self.name = SERVER_NAME
        self.version = __version__
        self.extensions = (EXTENSIONS + (HTTP_EXTENSIONS if http else ())
                           + (REPOSITORY_EXTENSIONS if manager.mode == "explicit" else ()))
        self._draining = False
        self._last_refused = -float("inf")  # monotonic time of the last request refused while draining
        self.max_in_flight = max_in_flight  # inference requests at once; more are refused at once (0: no cap)
        self.rejected: Counter[str] = Counter()  # requests refused at once, by reason (metrics)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.pod: PodStatistics | None = None  # with --workers N: the other workers' statistics

    # -- health ----------------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        return True

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def ready(self) -> bool:
        return not self._draining and self.manager.ready()

    def model_ready(self, name: str, version: str = "") -> bool:
        """False for a model or version that is unknown, loading, failed or unloaded (as Triton answers)."""
        return not self._draining and self.registry.ready(name, version)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadataView:
        """ModelMetadata of a serving version (NOT_FOUND / UNAVAILABLE otherwise)."""
        model = self.registry.find(name, version)
        return metadata_view(model, self.registry.versions(model.name))

    def model_config(self, name: str, version: str = "") -> ModelConfigView:
        model = self.registry.find(name, version)
        return config_view(model, cached=self.caches(model))

    # -- the model repository ------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        return self.manager.index(ready_only)

    async def load_model(self, name: str, *, config: str | None = None, files: dict[str, bytes] | None = None,
                         version: str | None = None) -> None:
        """Load, or reload, a model (explicit mode). `config`: a Triton ModelConfig as JSON text, replacing the
        model's. A failure leaves what served serving and says why."""
        if self._draining:
            raise self._refuse()
        try:
            await self.manager.load(name, config=config, files=files, version=version)
        except ModelLoadError as e:
            code = ErrorCode.UNAVAILABLE if isinstance(e, RegistryUnreachable) else ErrorCode.INVALID_ARGUMENT
            raise InferenceError(code, f"failed to load '{name}': {e}") from None

    async def unload_model(self, name: str, version: str | None = None) -> None:
        if self._draining:
            raise self._refuse()
        await self.manager.unload(name, version)

    async def statistics(self, name: str = "", version: str = "") -> list[StatisticsView]:
        """ModelStatistics: this process's figures, plus those of the pod's other workers when it has them."""
        views = self.local_statistics(name, version)
        if self.pod is None:
            return views
        return with_peers(views, await self.pod.peers())

    def local_statistics(self, name: str = "", version: str = "") -> list[StatisticsView]:
        """The model versions a statistics request names: "" is every serving model, or every version of one."""
        if not name:
            if version:
                raise invalid("a model version needs a model name")
            models = sorted(self.registry.serving(), key=lambda m: (m.name, version_key(m.version)))
        elif version:
            models = [self.registry.find(name, version)]
        else:
            self.registry.find(name)  # NOT_FOUND / UNAVAILABLE for a model with no version serving
            serving = self.registry.serving_versions(name)
            models = [serving[v] for v in self.registry.versions(name)]
        return [statistics_view(m) for m in models]

    # -- routes: administration (the calls the admin scope will guard) ---------------------------

    def routes(self, name: str = "") -> list[RouteView]:
        """Every route's state, or one route's (NOT_FOUND for a name that is not a route)."""
        views = self.router.views(self.registry.ready)
        if not name:
            return views
        found = [v for v in views if v.name == name]
        if not found:
            raise _no_route(name, views)
        return found

    def set_route_weights(self, name: str, weights: dict[str, float]) -> RouteView:
        return self._administer(name, lambda: self.router.set_weights(name, weights))

    def canary(self, name: str, action: str) -> RouteView:
        """start (resume a paused canary, else restart at its first step), pause or abort."""
        return self._administer(name, lambda: self.router.canary_command(name, action))

    def _administer(self, name: str, change: Callable[[], RouteState]) -> RouteView:
        try:
            state = change()
        except KeyError:
            raise _no_route(name, self.router.views(self.registry.ready)) from None
        except LookupError as e:  # a canary command for a route without a canary
            raise InferenceError(ErrorCode.NOT_FOUND, str(e)) from None
        except CanaryConflict as e:
            raise InferenceError(ErrorCode.FAILED_PRECONDITION, f"route '{name}': {e}") from None
        except ValueError as e:  # RouteError, or an unknown canary action
            raise invalid(str(e)) from None
        return route_view(state, self.registry.ready)

    def reload_routes(self, routes: Sequence[RouteConfig]) -> None:
        """Swap in re-read routes (SIGHUP): canary progress, weights set by an administrator and breakers of
        a route that stays are kept; shadows start and stop with their tables."""
        new, old = self.router.reload(routes)
        self._start_shadows(new)
        for state in old:
            if state.shadow is not None:
                task = asyncio.get_running_loop().create_task(state.shadow.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
                state.shadow = None
        log.info("routes reloaded: %s", ", ".join(r.name for r in routes) or "none")

    def _start_shadows(self, states: Sequence[RouteState]) -> None:
        for state in states:
            if state.cfg.shadow is not None and state.shadow is None:
                state.shadow = Shadow(state.cfg.name, state.cfg.shadow, self.registry, self.shadow_stats,
                                      self.predictions, in_flight=lambda: self._in_flight)

    async def run_canaries(self) -> None:
        """The canary clock: judge each running canary when its window ends (runs until cancelled)."""
        while True:
            wait = self.router.next_window_s()
            await asyncio.sleep(1.0 if wait is None else min(max(wait, 0.01), 1.0))
            try:
                self.router.tick()
            except Exception:  # a defect must not stop every canary for good: logged, and the clock goes on
                log.exception("canary evaluation failed")

    # -- inference -------------------------------------------------------------------------------

    async def infer(self, request: InferRequest, deadline: float | None = None) -> InferResponse:
        """Run one request: routed (a route for the model and no version named) or straight to the version.
        `deadline` is in event-loop time (the transport's deadline), or None."""
        if self._draining:
            raise self._refuse()
        if self.max_in_flight and self._in_flight >= self.max_in_flight:
            self.rejected["max_in_flight"] += 1
            raise InferenceError(ErrorCode.RESOURCE_EXHAUSTED, f"the server has {self._in_flight} requests in "
                                                               f"flight, its limit (max_in_flight); try again shortly")
        self._in_flight += 1
        self._idle.clear()
        token = REQUEST_ID.set(request.id)  # every log line about this request carries its id
        try:
            route = None if request.model_version else self.router.route(request.model_name)
            if route is not None:
                return await self._dispatch.infer(route, request, deadline)
            model = self.registry.resolve(request.model_name, request.model_version)  # unknown: nothing to count
            try:
                return (await self._answer(model, request, deadline)).response
            finally:
                model.release()
        finally:
            REQUEST_ID.reset(token)
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _answer(self, model: ModelVersion, request: InferRequest, deadline: float | None) -> Answer:
        """Run a request on a leased version, counted in its statistics (and the access log)."""
        start = time.perf_counter()
        code: ErrorCode | None = ErrorCode.INTERNAL
        try:
            answer = await self._infer(model, request, deadline, start)
            code = None
            return answer
        except InferenceError as e:
            code = e.code
            if isinstance(e, QueueFull):
                self.rejected["queue_full"] += 1
            raise
        except asyncio.CancelledError:
            code = ErrorCode.CANCELLED
            raise
        finally:
            duration_s = time.perf_counter() - start
            model.stats.record_request(code, duration_s)
            if self.access_log:
                ACCESS.info("%s %s v%s %.3f ms", code.name if code else "OK", model.name, model.version,
                            duration_s * 1e3, extra={"model": model.name, "version": model.version,
                                                     "code": code.name if code else "OK",
                                                     "duration_ms": round(duration_s * 1e3, 3)})

    async def _infer(self, model: ModelVersion, request: InferRequest, deadline: float | None,
                     start: float) -> Answer:
        inputs, rows = validate_inputs(model, request.inputs)
        wanted = select_outputs(model, request.requested_outputs)
        if request.timeout_us:
            timeout_deadline = asyncio.get_running_loop().time() + request.timeout_us / 1e6
            deadline = timeout_deadline if deadline is None else min(deadline, timeout_deadline)
        if self.caches(model):
            outputs = await self._cached(model, inputs, rows, wanted, deadline, request.id)
        else:
            outputs = await model.submit(inputs, rows, deadline, request.id)
        if self.drift is not None:
            self.drift.observe(model.name, model.version, outputs)
        if self.predictions is not None:
            self.predictions.offer(model.name, model.version, request.id, inputs, outputs,
                                   time.perf_counter() - start)
        tensors = [Tensor(spec.name, spec.datatype, outputs[spec.name].shape, outputs[spec.name]) for spec in wanted]
        return Answer(InferResponse(model.name, model.version, request.id, tensors), inputs, rows, outputs)

    def caches(self, model: ModelVersion) -> bool:
        return self.cache is not None and model.config.cache

    async def _cached(self, model: ModelVersion, inputs: dict[str, np.ndarray], rows: int, wanted: list[TensorSpec],
                      deadline: float | None, request_id: str) -> dict[str, np.ndarray]:
        """Identical concurrent requests share one lookup and, on a miss, one execution (the others count as
        hits: they are answered without an execution of their own). A miss stores the requested outputs before
        the next identical request can start its own lookup."""
        assert self.cache is not None
        cache = self.cache
        stats = model.stats
        start = time.perf_counter()
        key = cache_key(model.name, model.version, {s.name: (s.datatype, inputs[s.name]) for s in model.inputs},
                        [spec.name for spec in wanted], model.digest)

        async def lookup_or_run() -> dict[str, np.ndarray]:
            found = await cache.get(key)
            if found is not None:
                stats.record_cache(True, time.perf_counter() - start)
                return found
            lookup_s = time.perf_counter() - start
            outputs = await model.submit(inputs, rows, deadline, request_id)
            insert_start = time.perf_counter()
            answer = {spec.name: outputs[spec.name] for spec in wanted}
            if outputs_nbytes(answer) <= self.cache_config.max_entry_bytes:
                ttl_s = model.config.cache_ttl_s
                await cache.put(key, answer, (self.cache_config.ttl_s if ttl_s is None else ttl_s) or None)
            stats.record_cache(False, lookup_s + time.perf_counter() - insert_start)
            return outputs

        outputs, shared = await self._coalescer.run(key, lookup_or_run)
        if shared:
            stats.record_cache(True, None)
        return outputs

    def _refuse(self) -> InferenceError:
        """A request that arrives while draining: refused, and remembered (see `settle`)."""
        self._last_refused = time.monotonic()
        self.rejected["draining"] += 1
        return unavailable("server is shutting down")

    async def settle(self, quiet_s: float, limit_s: float) -> None:
        """After a drain, before the front ends close: until no request has been refused for `quiet_s` (at most
        `limit_s`), counted from now when nothing has been refused yet. Requests a transport has already received
        are then answered UNAVAILABLE by us; a transport that closes with requests still unanswered cuts them off
        (gRPC's answer to those is CANCELLED). Calls sent as the drain began may not have reached us yet, so even
        a drain that refused nothing waits `quiet_s`."""
        start = time.monotonic()
        deadline = start + limit_s
        while (now := time.monotonic()) < deadline and now - max(start, self._last_refused) < quiet_s:
            await asyncio.sleep(min(quiet_s, deadline - now))

    async def drain(self, grace_s: float) -> None:
        """Refuse new requests, let in-flight ones finish (up to `grace_s`), then close every model."""
        self._draining = True
        loop = asyncio.get_running_loop()
        start = loop.time()
        if self._in_flight:  # nothing to wait for (or to say) otherwise, as when a start fails
            log.info("draining: %d requests in flight", self._in_flight)
            try:
                await asyncio.wait_for(self._idle.wait(), grace_s)
            except TimeoutError:
                log.warning("drain grace of %.1fs expired with %d requests in flight", grace_s, self._in_flight)
        await asyncio.gather(*(s.shadow.close() for s in self.router.routes() if s.shadow is not None),
                             *self._closing)
        await self.manager.close(max(0.0, grace_s - (loop.time() - start)))


def _no_route(name: str, views: Sequence[RouteView]) -> InferenceError:
    return InferenceError(ErrorCode.NOT_FOUND, f"no route named '{name}' (routes: "
                                               f"{', '.join(v.name for v in views) or 'none'})")
