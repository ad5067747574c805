"""The request runner: one request on one leased version, from its tensors to its answer (docs/architecture.md,
"A request's path"). Validation, the response cache, the batcher, then the records:
the version's statistics, the access log, drift and the prediction log. Direct requests, routed ones (the
Dispatcher) and shadow copies all run here, so a version's request figures have this one writer (the batcher
records its batches)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from inference_server.cache.memory import Coalescer, ResponseCache, cache_key, outputs_nbytes
from inference_server.config.server import CacheConfig
from inference_server.errors import ErrorCode, InferenceError, QueueFull
from inference_server.execution.backend import TensorSpec
from inference_server.config.ensemble import EnsembleStep
from inference_server.lifecycle.registry import ModelRegistry
from inference_server.lifecycle.version import ModelVersion
from inference_server.observability.drift import DriftMonitor
from inference_server.observability.logs import ACCESS
from inference_server.observability.predictions import PredictionLog
from inference_server.observability.trace_marks import Marks
from inference_server.protocol.tensors import InferRequest, InferResponse, Tensor
from inference_server.routing.dispatch import Answer, Leaser
from inference_server.service.ensemble import into_step, out_of_step, run_graph
from inference_server.service.validation import select_outputs, validate_inputs

if TYPE_CHECKING:
    from inference_server.observability.tracing import Scope


class RequestRunner:
    def __init__(self, *, cache: ResponseCache | None = None, cache_config: CacheConfig | None = None,
                 predictions: PredictionLog | None = None, drift: DriftMonitor | None = None,
                 access_log: bool = False, rejected: Counter[str] | None = None,
                 registry: ModelRegistry | None = None, lease: Leaser | None = None) -> None:
        self.registry = registry  # where an ensemble's steps lease their composing models...
        self._lease = lease  # ...through the model manager when given (it loads a model on demand)
        self.cache = cache
        self.cache_config = cache_config or CacheConfig()
        self._coalescer = Coalescer()
        self.predictions = predictions
        self.drift = drift
        self.access_log = access_log
        self.rejected = Counter() if rejected is None else rejected  # the admission gate's: queue_full here

    def caches(self, model: ModelVersion) -> bool:
        return self.cache is not None and model.config.cache

    async def run(self, model: ModelVersion, request: InferRequest, deadline: float | None,
                  trace: Scope | None = None) -> Answer:
        """Run a request on a leased version, counted in its statistics (and the access log). `trace`: the span the
        run's model span goes under, when the request is traced."""
        start = time.perf_counter()
        code: ErrorCode | None = ErrorCode.INTERNAL
        scope = marks = None
        if trace is not None:  # an ensemble's run never reaches a batcher: its steps' runs do, under its span
            scope, marks = trace.model(model.name, model.version), (None if model.ensemble else Marks())
        failure: BaseException | None = None
        try:
            answer = await self._infer(model, request, deadline, start, scope, marks)
            code = None
            return answer
        except InferenceError as e:
            code, failure = e.code, e
            if isinstance(e, QueueFull) and model.ensemble is None:  # an ensemble's is its step's, counted there
                self.rejected["queue_full"] += 1
            raise
        except asyncio.CancelledError as e:
            code, failure = ErrorCode.CANCELLED, e
            raise
        except Exception as e:
            failure = e
            raise
        finally:
            if scope is not None:
                _end(scope, marks, failure)
            duration_s = time.perf_counter() - start
            model.stats.record_request(code, duration_s)
            if self.access_log:
                ACCESS.info("%s %s v%s %.3f ms", code.name if code else "OK", model.name, model.version,
                            duration_s * 1e3, extra={"model": model.name, "version": model.version,
                                                     "code": code.name if code else "OK",
                                                     "duration_ms": round(duration_s * 1e3, 3)})

    async def run_copy(self, model: ModelVersion, inputs: dict[str, np.ndarray], rows: int,
                       request_id: str, trace: Scope | None = None) -> dict[str, np.ndarray]:
        """A shadow's copy of a request already validated against the primary: straight to the batcher, or for an
        ensemble through its steps (never cached as the ensemble's, no deadline), counted in the shadow version's
        statistics and prediction log (marked shadow). `trace`: the copy's span, when the request was traced (its
        `compute`, or an ensemble's steps, go under it)."""
        start = time.perf_counter()
        marks = None if trace is None or model.ensemble is not None else Marks()
        try:
            outputs = await self._execute(model, InferRequest(model.name, [], id=request_id), inputs, rows, None,
                                          trace, marks)
        except InferenceError as e:
            model.stats.record_request(e.code, time.perf_counter() - start)
            raise
        finally:
            if trace is not None and marks is not None:
                trace.computed(marks)
        duration_s = time.perf_counter() - start
        model.stats.record_request(None, duration_s)
        if self.predictions is not None:
            self.predictions.offer(model.name, model.version, request_id, inputs, outputs, duration_s, shadow=True)
        return outputs

    async def _infer(self, model: ModelVersion, request: InferRequest, deadline: float | None,
                     start: float, scope: Scope | None, marks: Marks | None) -> Answer:
        inputs, rows = validate_inputs(model, request.inputs)
        wanted = select_outputs(model, request.requested_outputs)
        if scope is not None:
            scope.rows(rows)
        if self.caches(model):
            outputs = await self._cached(model, request, inputs, rows, wanted, deadline, scope, marks)
        else:
            if scope is not None:
                scope.cache("off")
            outputs = await self._execute(model, request, inputs, rows, deadline, scope, marks)
        if self.drift is not None:
            self.drift.observe(model.name, model.version, outputs)
        if self.predictions is not None:
            self.predictions.offer(model.name, model.version, request.id, inputs, outputs,
                                   time.perf_counter() - start)
        tensors = [Tensor(spec.name, spec.datatype, outputs[spec.name].shape, outputs[spec.name]) for spec in wanted]
        return Answer(InferResponse(model.name, model.version, request.id, tensors), inputs, rows, outputs)

    async def _cached(self, model: ModelVersion, request: InferRequest, inputs: dict[str, np.ndarray], rows: int,
                      wanted: list[TensorSpec], deadline: float | None, scope: Scope | None = None,
                      marks: Marks | None = None) -> dict[str, np.ndarray]:
        """Identical concurrent requests share one lookup and, on a miss, one execution (the others count as
        hits: they are answered without an execution of their own). A miss stores the requested outputs before
        the next identical request can start its own lookup. A traced request says which it was (a shared answer
        is a hit), and only a miss that executes brings its marks to the batcher."""
        assert self.cache is not None
        cache = self.cache
        stats = model.stats
        start = time.perf_counter()
        key = cache_key(model.name, model.version, {s.name: (s.datatype, inputs[s.name]) for s in model.inputs},
                        [spec.name for spec in wanted], self._revision(model))

        async def lookup_or_run() -> dict[str, np.ndarray]:
            found = await cache.get(key)
            if scope is not None:
                scope.cache("hit" if found is not None else "miss")
            if found is not None:
                stats.record_cache(True, time.perf_counter() - start)
                return found
            lookup_s = time.perf_counter() - start
            outputs = await self._execute(model, request, inputs, rows, deadline, scope, marks)
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
            if scope is not None:
                scope.cache("hit")
        return outputs


    async def _execute(self, model: ModelVersion, request: InferRequest, inputs: dict[str, np.ndarray], rows: int,
                       deadline: float | None, scope: Scope | None, marks: Marks | None) -> dict[str, np.ndarray]:
        """The version's outputs: from its batcher (at the request's priority, with its queue timeout), or for an
        ensemble from its steps (service/ensemble.py), each a normal request to its composing model under the same
        deadline, at the same priority and with the same queue timeout."""
        if model.ensemble is None:
            return await model.submit(inputs, rows, deadline, request.id, marks, request.priority, request.timeout_us)

        async def step(s: EnsembleStep, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return await self._step(model, s, given, deadline, request, scope)

        start = time.perf_counter()
        outputs = await run_graph(model.ensemble, inputs, [spec.name for spec in model.outputs], step)
        model.stats.record_execution(rows, time.perf_counter() - start)
        return outputs

    async def _step(self, ensemble: ModelVersion, step: EnsembleStep, inputs: dict[str, np.ndarray],
                    deadline: float | None, parent: InferRequest, scope: Scope | None) -> dict[str, np.ndarray]:
        """One step: the composing model's serving version (or the one the step names) is leased for this step
        alone, so a reload between two steps serves the next one from the new version. The step is a request of
        the ensemble request's priority and queue timeout, its tensors in the model's batch form and back
        (service/ensemble.py `into_step`). Its failure names it and keeps its class (a full queue's retry hint)."""
        assert self.registry is not None, "a runner serving ensembles has the registry"
        try:
            lease = (self.registry.lease(step.model_name, step.model_version) if self._lease is None
                     else await self._lease(step.model_name, step.model_version, deadline))
            with lease as model:
                batching = model.max_batch_size > 0
                given, done = into_step(step, ensemble.max_batch_size > 0, batching,
                                        {s.name: s.shape[1:] if batching else s.shape for s in model.inputs}, inputs)
                datatypes = {spec.name: spec.datatype for spec in model.inputs}
                request = InferRequest(step.model_name, [Tensor(name, datatypes.get(name, ""), array.shape, array)
                                                         for name, array in given.items()],
                                       id=parent.id, requested_outputs=tuple(k for k, _ in step.output_map),
                                       priority=parent.priority, timeout_us=parent.timeout_us)
                return out_of_step(done, (await self.run(model, request, deadline, scope)).outputs)
        except InferenceError as e:
            raise e.reworded(f"in ensemble '{ensemble.name}', {step.describe()} failed: {e.message}") from e

    def _revision(self, model: ModelVersion) -> str:
        """What a cache key holds of the version's contents: its file's digest, or for an ensemble its config's and
        those of the versions its steps would run on now (a composing model reloaded from a new file is a new key)."""
        if model.ensemble is None or self.registry is None:
            return model.digest
        parts = [model.digest]
        for step in model.ensemble.steps:
            try:
                parts.append(self._revision(self.registry.find(step.model_name, step.model_version)))
            except InferenceError:
                parts.append("-")  # not serving: the run will fail, and nothing is stored
        return ":".join(parts)


def _end(scope: Scope, marks: Marks | None, failure: BaseException | None) -> None:
    """A traced run's spans: its `compute` (when it reached the batcher), then its model span, failed or not."""
    if marks is not None:
        scope.computed(marks)
    if failure is not None:
        scope.fail(failure)
    scope.end()
