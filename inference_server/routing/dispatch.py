"""A routed request, from the variant the router chooses to its answer: on the variant's server-side failure
(or an open breaker, or no ready variant) the route's fallback answers instead, marked `fallback`, and the
variant is counted as failed; a success may be copied to the route's shadow. The request runner runs each
version (`run`: validation, the cache, the batcher, statistics) and owns the request's accounting. A traced request
(`trace`, its InferRequest span) records its route and variant; a fallback answer has a span of its own, and the
shadow copy is made under the request's span."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from inference_server.config.routes import VariantConfig
from inference_server.errors import ErrorCode, InferenceError, internal, unavailable
from inference_server.lifecycle.registry import Lease, ModelRegistry
from inference_server.lifecycle.version import ModelVersion
from inference_server.protocol.tensors import InferRequest, InferResponse
from inference_server.routing.fallback import constant_outputs
from inference_server.routing.router import Router, RouteState

if TYPE_CHECKING:
    from inference_server.observability.tracing import Scope

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Answer:
    """A version's answer, with what a shadow copy needs: the validated inputs and every computed output."""
    response: InferResponse
    inputs: dict[str, np.ndarray]
    rows: int
    outputs: dict[str, np.ndarray]


Run = Callable[[ModelVersion, InferRequest, "float | None", "Scope | None"], Awaitable[Answer]]
# (model, version, deadline) -> a lease on the version: the model manager's, which loads a model on demand
Leaser = Callable[[str, str, "float | None"], Awaitable[Lease]]


class Dispatcher:
    def __init__(self, router: Router, registry: ModelRegistry, run: Run, lease: Leaser | None = None,
                 servable: Callable[[str, str], bool] | None = None) -> None:
        self.router = router
        self.registry = registry
        self._run = run
        self._lease = lease or self._registry_lease  # the model manager's loads a variant on demand...
        self._servable = servable or registry.ready  # ...so a variant not loaded yet may be chosen

    async def _registry_lease(self, name: str, version: str, deadline: float | None) -> Lease:
        return self.registry.lease(name, version)

    async def infer(self, route: RouteState, request: InferRequest, deadline: float | None,
                    trace: Scope | None = None) -> InferResponse:
        """The route's variant answers; if it fails on the server's side (or its breaker is open, or no
        variant is ready) the route's fallback answers instead, marked `fallback`, and the variant is
        counted as failed. A successful answer may be copied to the route's shadow."""
        router, cfg = self.router, route.cfg
        key = router.key(route, request.parameters, request.routing_key, request.id)
        variant = router.choose(route, key, self._servable)
        if variant is None:
            if trace is not None:
                trace.routed(cfg.name, "")
            variants = ", ".join(f"{v.name} = {v.model}{' v' + v.version if v.version else ''}" for v in cfg.variants)
            return await self._fallback(route, None, request, deadline,
                                        unavailable(f"route '{cfg.name}': no variant is ready ({variants})"),
                                        "no_variant_ready", trace)
        if trace is not None:
            trace.routed(cfg.name, variant.name)
        breaker = route.breakers.get(variant.name)
        ticket = breaker.enter() if breaker is not None else None
        if breaker is not None and ticket is None:
            router.record(route, variant.name, ErrorCode.UNAVAILABLE.name, None)  # counted; it took no time
            return await self._fallback(route, variant, request, deadline,
                                        unavailable(f"route '{cfg.name}' variant '{variant.name}': circuit breaker "
                                                    "open"), "breaker_open", trace)
        start = time.perf_counter()
        code: ErrorCode | None = ErrorCode.INTERNAL  # None: answered
        failure: InferenceError | None = None
        try:
            with await self._lease(variant.model, variant.version, deadline) as model:
                answer = await self._run(model, request, deadline, trace)
            code = None
        except InferenceError as e:
            code = e.code
            failure = e
        except asyncio.CancelledError:
            code = ErrorCode.CANCELLED
            raise
        except Exception:  # a defect, not the client's doing: the variant failed (the fallback may answer)
            log.exception("route '%s' variant '%s': request failed unexpectedly", cfg.name, variant.name)
            failure = internal(f"route '{cfg.name}' variant '{variant.name}': the request failed unexpectedly")
        finally:
            router.record(route, variant.name, "OK" if code is None else code.name, time.perf_counter() - start)
            if breaker is None:
                pass
            elif code is ErrorCode.CANCELLED:
                breaker.abandon(ticket)  # no outcome: a probe is replaced at once
            elif code is not None and code.server_fault:
                breaker.failure(failure.message if failure is not None else "", ticket)
            else:
                breaker.success(ticket)  # answered (a client's mistake is an answer too)
        if failure is not None:
            if not failure.code.falls_back:
                raise failure
            return await self._fallback(route, variant, request, deadline, failure, failure.code.name.lower(), trace)
        answer.response.parameters["variant"] = variant.name
        if route.shadow is not None and route.shadow.wants(key):
            route.shadow.offer(answer.inputs, answer.rows, answer.outputs, request.id, trace)
        return answer.response

    async def _fallback(self, route: RouteState, variant: VariantConfig | None, request: InferRequest,
                        deadline: float | None, failure: InferenceError, why: str,
                        trace: Scope | None = None) -> InferResponse:
        """The route's fallback answer (the failure itself without one, or when the fallback fails too)."""
        fb = route.cfg.fallback
        if fb is None:
            raise failure
        self.router.stats.fallback(route.cfg.name, variant.name if variant else "", why)
        scope = None if trace is None else trace.fallback(route.cfg.name, fb.model, why)
        try:
            response = await self._fallback_answer(route, variant, request, deadline, failure, scope)
        except BaseException as e:
            if scope is not None:
                scope.fail(e)
            raise
        finally:
            if scope is not None:
                scope.end()
        log.debug("route '%s': fallback answer (%s)", route.cfg.name, why)
        response.parameters["fallback"] = True
        if variant is not None:
            response.parameters["variant"] = variant.name
        return response

    async def _fallback_answer(self, route: RouteState, variant: VariantConfig | None, request: InferRequest,
                               deadline: float | None, failure: InferenceError, trace: Scope | None) -> InferResponse:
        fb = route.cfg.fallback
        assert fb is not None
        if fb.model is None:
            return self._constant(route, variant, request, failure)
        try:
            with await self._lease(fb.model, fb.version, deadline) as model:
                return (await self._run(model, request, deadline, trace)).response
        except InferenceError as e:
            raise InferenceError(failure.code, f"{failure.message}; the fallback '{fb.model}' failed too: "
                                               f"{e.message}") from None

    def _constant(self, route: RouteState, variant: VariantConfig | None, request: InferRequest,
                  failure: InferenceError) -> InferResponse:
        """The fallback's constant outputs, in the datatypes of a serving variant's outputs where one is known,
        a row per request row when the model batches (or, with no model to ask, when the first input has
        dimensions)."""
        fallback = route.cfg.fallback  # _fallback calls this only for a fallback of constant outputs
        assert fallback is not None and fallback.outputs is not None
        outputs = fallback.outputs
        candidates = [variant] if variant is not None else list(route.cfg.variants)
        known = next((self.registry.find(v.model, v.version) for v in candidates
                      if self.registry.ready(v.model, v.version)), None)
        first = request.inputs[0].shape if request.inputs else ()
        batched = known.max_batch_size > 0 if known is not None else len(first) > 0
        rows = first[0] if batched and first else None
        datatypes = {spec.name: spec.datatype for spec in known.outputs} if known is not None else {}
        try:
            tensors = constant_outputs(outputs, rows, datatypes, request.requested_outputs)
        except (ValueError, TypeError, OverflowError) as e:  # a constant the model's datatype cannot hold
            raise InferenceError(failure.code, f"{failure.message}; the fallback's constant outputs do not fit "
                                               f"the model's outputs ({e})") from None
        if tensors is None:
            raise InferenceError(failure.code, f"{failure.message}; the fallback has no constant for every "
                                               f"requested output ({', '.join(request.requested_outputs or [])})")
        return InferResponse(route.cfg.name, "", request.id, tensors)
