"""InferenceService: the protocol-neutral API the front ends call (docs/architecture.md, "The service").

It composes small parts, each with one concern: the admission `Gate` and `Health`, the `RepositoryAdmin`, the
`RouteAdmin`, and the `RequestRunner` that runs a request on a version. Here: server metadata, the views of a
served model (metadata, config, statistics) and `infer`, which passes the gate and either routes the request
(a route for the model and no version named) or leases the version it names.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from inference_server import __version__
from inference_server.config.model import version_key
from inference_server.errors import InferenceError, invalid
from inference_server.lifecycle.manager import ModelManager
from inference_server.lifecycle.registry import ModelRegistry
from inference_server.observability.logs import REQUEST_ID, TRACE_ID
from inference_server.pod.peers import PodStatistics
from inference_server.protocol.tensors import InferRequest, InferResponse
from inference_server.routing.dispatch import Dispatcher
from inference_server.routing.router import Router
from inference_server.service.health import Gate, Health
from inference_server.service.repository import RepositoryAdmin
from inference_server.service.routes import RouteAdmin
from inference_server.service.runner import RequestRunner
from inference_server.service.views import (
    ModelConfigView,
    ModelMetadataView,
    StatisticsView,
    config_view,
    metadata_view,
    statistics_view,
    with_peers,
)

if TYPE_CHECKING:
    from inference_server.observability.tracing import Tracing

SERVER_NAME = "inference_server"
# Only what is implemented end to end; perf_analyzer and clients trust this list.
EXTENSIONS = ("model_configuration", "statistics", "schedule_policy")  # schedule_policy: priority and timeout
REPOSITORY_EXTENSIONS = ("model_repository", "model_repository(unload_dependents)")  # explicit mode only
HTTP_EXTENSIONS = ("binary_tensor_data",)  # with the HTTP front end (Triton lists it when HTTP is on)


class InferenceService:
    def __init__(self, registry: ModelRegistry, manager: ModelManager, *, router: Router | None = None,
                 runner: RequestRunner | None = None, gate: Gate | None = None, pod: PodStatistics | None = None,
                 http: bool = False, tracing: Tracing | None = None) -> None:
        self.registry = registry
        self.gate = gate or Gate()
        self.runner = runner or RequestRunner(rejected=self.gate.rejected, registry=registry)
        self.router = router or Router(())
        self.health = Health(self.gate, manager, registry)
        self.repository = RepositoryAdmin(manager, self.gate)
        self.route_admin = RouteAdmin(self.router, registry)
        self._manager = manager
        self._dispatch = Dispatcher(self.router, registry, self.runner.run, manager.lease, manager.servable)
        self._pod = pod  # with --workers N: the other workers' statistics
        self.tracing = tracing  # None: tracing is off
        self.name = SERVER_NAME
        self.version = __version__
        self.extensions = (EXTENSIONS + (HTTP_EXTENSIONS if http else ())
                           + (REPOSITORY_EXTENSIONS if manager.mode == "explicit" else ()))

    def model_metadata(self, name: str, version: str = "") -> ModelMetadataView:
        """ModelMetadata of a serving version (NOT_FOUND / UNAVAILABLE otherwise)."""
        model = self.registry.find(name, version)
        return metadata_view(model, self.registry.versions(model.name))

    def model_config(self, name: str, version: str = "") -> ModelConfigView:
        model = self.registry.find(name, version)
        return config_view(model, cached=self.runner.caches(model))

    async def statistics(self, name: str = "", version: str = "") -> list[StatisticsView]:
        """ModelStatistics: this process's figures, plus those of the pod's other workers when it has them."""
        views = self.local_statistics(name, version)
        if self._pod is None:
            return views
        return with_peers(views, await self._pod.peers())

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

    async def infer(self, request: InferRequest, deadline: float | None = None) -> InferResponse:
        """Run one request: routed (a route for the model and no version named) or straight to the version.
        `deadline` is in event-loop time (the transport's deadline), or None. With tracing on, the request's
        `InferRequest` span covers it all, admission included (observability/tracing.py)."""
        trace = trace_token = None
        if self.tracing is not None:
            trace, trace_id = self.tracing.begin(request)
            trace_token = TRACE_ID.set(trace_id)  # its log lines carry the trace id, sampled or not
        try:
            with self.gate.admit():
                token = REQUEST_ID.set(request.id)  # every log line about this request carries its id
                try:
                    route = None if request.model_version else self.router.route(request.model_name)
                    if route is not None:
                        return await self._dispatch.infer(route, request, deadline, trace)
                    # an unknown model or version: refused here, with nothing to count (one in the repository
                    # that is not loaded, with load_on_demand: loaded first)
                    with await self._manager.lease(request.model_name, request.model_version, deadline) as model:
                        return (await self.runner.run(model, request, deadline, trace)).response
                finally:
                    REQUEST_ID.reset(token)
        except BaseException as e:
            if trace is not None:
                trace.fail(e)
            raise
        finally:
            if trace_token is not None:
                TRACE_ID.reset(trace_token)
            if trace is not None:
                trace.end()

    def refused(self, model_name: str, error: InferenceError, *, traceparent: str, tracestate: str, protocol: str,
                request_id: str = "") -> None:
        """A request the front end refused before `infer` (its body did not decode, its model is unknown to a
        route that needs the model's metadata first): with tracing on, its `InferRequest` span, as `infer` would
        have made it (the same parent and sampling decision), with the error as its status. Nothing when off."""
        if self.tracing is None:
            return
        request = InferRequest(model_name, [], id=request_id, traceparent=traceparent, tracestate=tracestate,
                               protocol=protocol)
        trace, _ = self.tracing.begin(request)
        if trace is not None:
            trace.fail(error)
            trace.end()

    async def drain(self, grace_s: float) -> None:
        """Refuse new requests, let in-flight ones finish (up to `grace_s`), stop the shadows, then close every
        model."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        await self.gate.close(grace_s)
        await self.router.close()
        await self._manager.close(max(0.0, grace_s - (loop.time() - start)))
