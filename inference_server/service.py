"""InferenceService: the one protocol-neutral entry point. route -> validate -> batch -> respond."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

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
from .routing.router import Router
from .routing.stats import RouteStats
from .tensors import InferRequest, InferResponse, Tensor, bytes_to_text
from .views import (IndexEntry, ModelConfigView, ModelMetadataView, StatisticsView, config_view, metadata_view,
                    statistics_view)

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
                 cache: ResponseCache | None = None, cache_config: CacheConfig | None = None) -> None:
        self.registry = registry
        self.manager = manager
        self.router = router or Router(())
        self.route_stats = RouteStats()
        self.cache = cache
        self.cache_config = cache_config or CacheConfig()
        self._coalescer = Coalescer()
        self.access_log = access_log
        self.predictions = predictions
        self.drift = drift
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

    # -- inference -------------------------------------------------------------------------------

    def route(self, request: InferRequest) -> tuple[ModelVersion, str | None]:
        """Decide which loaded model version serves a request, and through which route variant (None: no
        route): the one place routing happens. A request naming a version bypasses routes. The request holds
        a lease on the version until answered (release it with `model.release()`)."""
        route = None if request.model_version else self.router.route(request.model_name)
        if route is None:
            return self.registry.resolve(request.model_name, request.model_version), None
        variant = self.router.choose(route, request.parameters, request.routing_key, request.id, self.registry.ready)
        if variant is None:
            raise unavailable(f"route '{route.name}': no variant is ready "
                              f"({', '.join(f'{v.name} = {v.model} v{v.version}' for v in route.variants)})")
        return self.registry.resolve(variant.model, variant.version), variant.name

    async def infer(self, request: InferRequest, deadline: float | None = None) -> InferResponse:
        """Run one request. `deadline` is in event-loop time (the transport's deadline), or None."""
        if self._draining:
            raise unavailable("server is shutting down")
        self._in_flight += 1
        self._idle.clear()
        token = REQUEST_ID.set(request.id)  # every log line about this request carries its id
        try:
            model, variant = self.route(request)  # an unknown model has no statistics to count in
        except BaseException:
            self._done(token)
            raise
        try:
            start = time.perf_counter()
            code: ErrorCode | None = ErrorCode.INTERNAL
            try:
                response = await self._infer(model, request, deadline, start)
                if variant is not None:
                    response.parameters["variant"] = variant
                code = None
                return response
            except InferenceError as e:
                code = e.code
                raise
            except asyncio.CancelledError:
                code = ErrorCode.CANCELLED
                raise
            finally:
                duration_s = time.perf_counter() - start
                model.stats.record_request(code, duration_s)
                if variant is not None:
                    self.route_stats.record(request.model_name, variant, code.name if code else "OK", duration_s)
                if self.access_log:
                    ACCESS.info("%s %s v%s %.3f ms", code.name if code else "OK", model.name, model.version,
                                duration_s * 1e3, extra={"model": model.name, "version": model.version,
                                                         "code": code.name if code else "OK",
                                                         "duration_ms": round(duration_s * 1e3, 3)})
        finally:
            model.release()
            self._done(token)

    def _done(self, token: object) -> None:
        REQUEST_ID.reset(token)  # type: ignore[arg-type]
        self._in_flight -= 1
        if not self._in_flight:
            self._idle.set()

    async def _infer(self, model: ModelVersion, request: InferRequest, deadline: float | None,
                     start: float) -> InferResponse:
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
        return InferResponse(model.name, model.version, request.id, tensors)

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
        await self.manager.close(max(0.0, grace_s - (loop.time() - start)))


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
