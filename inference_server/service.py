"""InferenceService: the one protocol-neutral entry point. route -> validate -> batch -> respond."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from . import __version__
from .backend import TensorSpec
from .cache import Coalescer, ResponseCache, cache_key, outputs_nbytes
from .config import CacheConfig
from .drift import DriftMonitor
from .errors import ErrorCode, InferenceError, ModelLoadError, invalid, unavailable
from .lifecycle.manager import ModelManager
from .lifecycle.mlflow_source import RegistryUnreachable
from .lifecycle.registry import ModelRegistry
from .lifecycle.version import ModelVersion
from .logs import ACCESS, REQUEST_ID
from .model_config import version_key
from .predictions import PredictionLog
from .routing.canary import SERVER_ERRORS, CanaryConflict
from .routing.config import RouteConfig, VariantConfig
from .routing.fallback import FALLBACK_CODES, constant_outputs
from .routing.router import Router, RouteState
from .routing.router import view as route_view
from .routing.shadow import Shadow, ShadowStats
from .tensors import InferRequest, InferResponse, Tensor, bytes_to_text
from .views import (IndexEntry, ModelConfigView, ModelMetadataView, RouteView, StatisticsView, config_view,
                    metadata_view, statistics_view)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Answer:
    """A version's answer, with what a shadow copy needs: the validated inputs and every computed output."""
    response: InferResponse
    inputs: dict[str, np.ndarray]
    rows: int
    outputs: dict[str, np.ndarray]

SERVER_NAME = "inference_server"
# Only what is implemented end to end; perf_analyzer and clients trust this list.
EXTENSIONS = ("model_configuration", "statistics")
REPOSITORY_EXTENSIONS = ("model_repository", "model_repository(unload_dependents)")  # explicit mode only
HTTP_EXTENSIONS = ("binary_tensor_data",)  # with the HTTP front end (Triton lists it when HTTP is on)


class InferenceService:
    def __init__(self, registry: ModelRegistry, manager: ModelManager, *, router: Router | None = None,
                 http: bool = False, access_log: bool = False,
                 predictions: PredictionLog | None = None, drift: DriftMonitor | None = None,
                 cache: ResponseCache | None = None, cache_config: CacheConfig | None = None) -> None:
        self.registry = registry
        self.manager = manager
        self.router = router or Router(())
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
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

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
            raise unavailable("server is shutting down")
        try:
            await self.manager.load(name, config=config, files=files, version=version)
        except ModelLoadError as e:
            code = ErrorCode.UNAVAILABLE if isinstance(e, RegistryUnreachable) else ErrorCode.INVALID_ARGUMENT
            raise InferenceError(code, f"failed to load '{name}': {e}") from None

    async def unload_model(self, name: str, version: str | None = None) -> None:
        if self._draining:
            raise unavailable("server is shutting down")
        await self.manager.unload(name, version)

    def statistics(self, name: str = "", version: str = "") -> list[StatisticsView]:
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
                                      self.predictions)

    async def run_canaries(self) -> None:
        """The canary clock: judge each running canary when its window ends (runs until cancelled)."""
        while True:
            wait = self.router.next_window_s()
            await asyncio.sleep(1.0 if wait is None else min(max(wait, 0.01), 1.0))
            self.router.tick()

    # -- inference -------------------------------------------------------------------------------

    async def infer(self, request: InferRequest, deadline: float | None = None) -> InferResponse:
        """Run one request: routed (a route for the model and no version named) or straight to the version.
        `deadline` is in event-loop time (the transport's deadline), or None."""
        if self._draining:
            raise unavailable("server is shutting down")
        self._in_flight += 1
        self._idle.clear()
        token = REQUEST_ID.set(request.id)  # every log line about this request carries its id
        try:
            route = None if request.model_version else self.router.route(request.model_name)
            if route is not None:
                return await self._routed(route, request, deadline)
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

    async def _routed(self, route: RouteState, request: InferRequest, deadline: float | None) -> InferResponse:
        """The route's variant answers; if it fails on the server's side (or its breaker is open, or no
        variant is ready) the route's fallback answers instead, marked `fallback`, and the variant is
        counted as failed. A successful answer may be copied to the route's shadow."""
        router, cfg = self.router, route.cfg
        key = router.key(route, request.parameters, request.routing_key, request.id)
        variant = router.choose(route, key, self.registry.ready)
        if variant is None:
            variants = ", ".join(f"{v.name} = {v.model}{' v' + v.version if v.version else ''}" for v in cfg.variants)
            failure = unavailable(f"route '{cfg.name}': no variant is ready ({variants})")
            return await self._fallback(route, None, request, deadline, failure, "no_variant_ready")
        breaker = route.breakers.get(variant.name)
        if breaker is not None and not breaker.allow():
            router.record(route, variant.name, ErrorCode.UNAVAILABLE.name, 0.0)
            failure = unavailable(f"route '{cfg.name}' variant '{variant.name}': circuit breaker open")
            return await self._fallback(route, variant, request, deadline, failure, "breaker_open")
        start = time.perf_counter()
        code = ErrorCode.INTERNAL.name
        try:
            model = self.registry.resolve(variant.model, variant.version)
            try:
                answer = await self._answer(model, request, deadline)
            finally:
                model.release()
            code = "OK"
        except InferenceError as e:
            code = e.code.name
            if breaker is not None and code in SERVER_ERRORS:
                breaker.failure(e.message)
            elif breaker is not None:
                breaker.success()  # the variant answered (the client's mistake)
            if e.code not in FALLBACK_CODES:
                raise
            failure = e
        except asyncio.CancelledError:
            code = ErrorCode.CANCELLED.name
            raise
        finally:
            router.record(route, variant.name, code, time.perf_counter() - start)
        if code != "OK":
            return await self._fallback(route, variant, request, deadline, failure, code.lower())
        if breaker is not None:
            breaker.success()
        answer.response.parameters["variant"] = variant.name
        if route.shadow is not None and route.shadow.wants(key):
            route.shadow.offer(answer.inputs, answer.rows, answer.outputs, request.id)
        return answer.response

    async def _fallback(self, route: RouteState, variant: VariantConfig | None, request: InferRequest,
                        deadline: float | None, failure: InferenceError, why: str) -> InferResponse:
        """The route's fallback answer (the failure itself without one, or when the fallback fails too)."""
        fb = route.cfg.fallback
        if fb is None:
            raise failure
        self.router.stats.fallback(route.cfg.name, variant.name if variant else "", why)
        if fb.model is not None:
            try:
                model = self.registry.resolve(fb.model, fb.version)
                try:
                    response = (await self._answer(model, request, deadline)).response
                finally:
                    model.release()
            except InferenceError as e:
                raise InferenceError(failure.code, f"{failure.message}; the fallback '{fb.model}' failed too: "
                                                   f"{e.message}") from None
        else:
            response = self._constant(route, variant, request, failure)
        log.debug("route '%s': fallback answer (%s)", route.cfg.name, why)
        response.parameters["fallback"] = True
        if variant is not None:
            response.parameters["variant"] = variant.name
        return response

    def _constant(self, route: RouteState, variant: VariantConfig | None, request: InferRequest,
                  failure: InferenceError) -> InferResponse:
        """The fallback's constant outputs, in the datatypes of a serving variant's outputs where one is known,
        a row per request row when the model batches (or, with no model to ask, when the first input has
        dimensions)."""
        outputs = route.cfg.fallback.outputs  # type: ignore[union-attr]
        assert outputs is not None
        candidates = [variant] if variant is not None else list(route.cfg.variants)
        known = next((self.registry.find(v.model, v.version) for v in candidates
                      if self.registry.ready(v.model, v.version)), None)
        first = request.inputs[0].shape if request.inputs else ()
        batched = known.max_batch_size > 0 if known is not None else len(first) > 0
        rows = first[0] if batched and first else None
        datatypes = {spec.name: spec.datatype for spec in known.outputs} if known is not None else {}
        tensors = constant_outputs(outputs, rows, datatypes, request.requested_outputs)
        if tensors is None:
            raise InferenceError(failure.code, f"{failure.message}; the fallback has no constant for every "
                                               f"requested output ({', '.join(request.requested_outputs or [])})")
        return InferResponse(route.cfg.name, "", request.id, tensors)

    async def _answer(self, model: ModelVersion, request: InferRequest, deadline: float | None) -> _Answer:
        """Run a request on a leased version, counted in its statistics (and the access log)."""
        start = time.perf_counter()
        code: ErrorCode | None = ErrorCode.INTERNAL
        try:
            answer = await self._infer(model, request, deadline, start)
            code = None
            return answer
        except InferenceError as e:
            code = e.code
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
                     start: float) -> _Answer:
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
        return _Answer(InferResponse(model.name, model.version, request.id, tensors), inputs, rows, outputs)

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

    async def drain(self, grace_s: float) -> None:
        """Refuse new requests, let in-flight ones finish (up to `grace_s`), then close every model."""
        self._draining = True
        log.info("draining: %d requests in flight", self._in_flight)
        loop = asyncio.get_running_loop()
        start = loop.time()
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


def validate_inputs(model: ModelVersion, tensors: Sequence[Tensor]) -> tuple[dict[str, np.ndarray], int]:
    """Check names, datatypes and shapes against the model; returns the arrays in model order and the rows."""
    given: dict[str, Tensor] = {}
    for tensor in tensors:
        if tensor.name in given:
            raise invalid(f"input '{tensor.name}' is given more than once")
        given[tensor.name] = tensor
    expected = {spec.name for spec in model.inputs}
    for name in given:
        if name not in expected:
            raise invalid(f"unexpected input '{name}' for model '{model.name}' "
                          f"(its inputs: {', '.join(sorted(expected))})")
    batching = model.max_batch_size > 0
    arrays: dict[str, np.ndarray] = {}
    rows = None
    for spec in model.inputs:
        found = given.get(spec.name)
        if found is None:
            raise invalid(f"missing input '{spec.name}' for model '{model.name}'")
        if found.datatype != spec.datatype:
            raise invalid(f"input '{spec.name}': datatype {found.datatype} does not match the model's {spec.datatype}")
        shape = found.shape
        matches = len(shape) == len(spec.shape) and all(
            want == -1 or got == want for got, want in zip(shape[batching:], spec.shape[batching:], strict=True))
        if not matches:
            raise invalid(f"input '{spec.name}': shape {list(shape)} does not match the model's "
                          f"{list(spec.shape)}")
        if batching:
            if rows is not None and shape[0] != rows:
                raise invalid(f"input '{spec.name}': batch size {shape[0]} differs from the other inputs' {rows}")
            rows = shape[0]
        data = found.data
        if spec.datatype == "BYTES":
            data = bytes_to_text(data, spec.name)
        arrays[spec.name] = data
    if not batching:
        return arrays, 1
    if not rows:
        raise invalid(f"batch size must be at least 1 for model '{model.name}'")
    if rows > model.max_batch_size:
        raise invalid(f"batch size {rows} exceeds the maximum batch size {model.max_batch_size} "
                      f"of model '{model.name}'")
    return arrays, rows


def select_outputs(model: ModelVersion, requested: Sequence[str] | None) -> list[TensorSpec]:
    if not requested:
        return list(model.outputs)
    by_name = {spec.name: spec for spec in model.outputs}
    selected = []
    for name in requested:
        spec = by_name.get(name)
        if spec is None:
            raise invalid(f"unknown output '{name}' requested from model '{model.name}' "
                          f"(its outputs: {', '.join(by_name)})")
        if spec in selected:
            raise invalid(f"output '{name}' is requested more than once")
        selected.append(spec)
    return selected
