"""inference_server.admin.RouteAdmin: route administration RPCs over InferenceService, and their rendering.

Served on the inference server's port beside GRPCInferenceService (server.py registers it). Errors map as every
other RPC's do (servicer.rpc): an unknown route is NOT_FOUND, a bad weight or action INVALID_ARGUMENT, a command
the canary's state forbids FAILED_PRECONDITION.
"""

from __future__ import annotations

from typing import Any

import grpc

from inference_server.grpc.servicer import parser, rpc
from inference_server.protocol._generated import route_admin_pb2 as admin_pb
from inference_server.service.inference import InferenceService
from inference_server.service.views import CanaryView, RouteView, VariantView

SERVICE_NAME = "inference_server.admin.RouteAdmin"


def variant(v: VariantView) -> admin_pb.Variant:
    return admin_pb.Variant(name=v.name, model=v.model, version=v.version, alias=v.alias,
                            configured_weight=v.configured_weight, weight=v.weight, share_percent=v.share_percent,
                            state=v.state, breaker=v.breaker)


def canary(c: CanaryView) -> admin_pb.Canary:
    return admin_pb.Canary(candidate=c.candidate, state=c.state, step=c.step, steps_percent=c.steps_percent,
                           share_percent=c.share_percent, failed_windows=c.failed_windows,
                           last_decision=c.last_decision, last_reason=c.last_reason, decisions=c.decisions)


def route(r: RouteView) -> admin_pb.Route:
    message = admin_pb.Route(name=r.name, routing_key=r.routing_key, variants=[variant(v) for v in r.variants],
                             shadow=r.shadow, shadow_queued=r.shadow_queued, fallback=r.fallback)
    if r.canary is not None:
        message.canary.CopyFrom(canary(r.canary))
    return message


def routes_response(views: list[RouteView]) -> admin_pb.RouteStatusResponse:
    return admin_pb.RouteStatusResponse(routes=[route(v) for v in views])


class RouteAdminServicer:
    def __init__(self, service: InferenceService) -> None:
        self.service = service

    @rpc
    async def RouteStatus(self, request: admin_pb.RouteStatusRequest, context: Any) -> admin_pb.RouteStatusResponse:
        return routes_response(self.service.route_admin.views(request.name))

    @rpc
    async def RouteWeights(self, request: admin_pb.RouteWeightsRequest,
                           context: Any) -> admin_pb.RouteStatusResponse:
        return routes_response([self.service.route_admin.set_weights(request.name, dict(request.weights))])

    @rpc
    async def RouteCanary(self, request: admin_pb.RouteCanaryRequest, context: Any) -> admin_pb.RouteStatusResponse:
        return routes_response([self.service.route_admin.canary(request.name, request.action)])


def method_handlers(service: InferenceService) -> dict[str, grpc.RpcMethodHandler]:
    """RouteAdmin's handlers, one per method of its descriptor, for server.add_registered_method_handlers."""
    servicer = RouteAdminServicer(service)
    handlers = {}
    for method in admin_pb.DESCRIPTOR.services_by_name["RouteAdmin"].methods:
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name), request_deserializer=parser(getattr(admin_pb, method.input_type.name)),
            response_serializer=getattr(admin_pb, method.output_type.name).SerializeToString)
    return handlers
