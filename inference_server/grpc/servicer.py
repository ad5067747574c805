"""GRPCInferenceService: thin RPC methods over InferenceService, and the one error-mapping wrapper."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from inference_server.config.server import LimitsConfig
from inference_server.errors import ErrorCode, InferenceError
from inference_server.grpc import codec
from inference_server.protocol._generated import grpc_service_pb2 as pb
from inference_server.protocol.tensors import InferRequest
from inference_server.service.inference import InferenceService

log = logging.getLogger(__name__)
PROTOCOL = "grpc"  # InferRequest.protocol

TO_GRPC = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.CANCELLED: grpc.StatusCode.CANCELLED,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorCode.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class Malformed:
    """What the request deserializer hands over when the bytes are not a valid message."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def error(self, what: str = "request body") -> InferenceError:
        return InferenceError(ErrorCode.INVALID_ARGUMENT, f"{what} is not a valid {self.type_name} protobuf message")


def parser(message_class: Any) -> Callable[[bytes], Any]:
    """A request deserializer: the message, or a Malformed marker so that `rpc` answers INVALID_ARGUMENT."""

    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError:
            return Malformed(message_class.DESCRIPTOR.name)

    return parse


Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def rpc(method: Handler, *, takes_malformed: bool = False) -> Handler:
    """Every unary RPC goes through here: InferenceError -> its status; anything else -> INTERNAL, logged. A
    malformed message is answered INVALID_ARGUMENT here, unless the method `takes_malformed` (ModelInfer, which
    records the refusal in the caller's trace first)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Malformed) and not takes_malformed:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, request.error().message)
        try:
            return await method(self, request, context)
        except InferenceError as e:
            await abort(context, TO_GRPC[e.code], e.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("request %s: %s failed unexpectedly", getattr(request, "id", "") or "-", method.__name__)
            await abort(context, grpc.StatusCode.INTERNAL, "internal error")

    return wrapper


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> None:
    """context.abort, for a call that may have ended meanwhile: a request that expired in its queue at its deadline
    races grpc core, which ends the call with DEADLINE_EXCEEDED itself at that moment. A status that can no longer
    be sent is not an error of ours (grpc would log one, with a traceback): the call ends as cancelled."""
    try:
        await context.abort(code, message)
    except grpc.aio.InternalError:  # grpc's ExecuteBatchError: the call was over before the status went out
        raise asyncio.CancelledError from None


@dataclass(slots=True)  # not frozen: one is made per call, and a frozen dataclass's __init__ costs 0.75 us more
class CallMetadata:
    """What an inference request takes from the call's metadata: the `routing-key` (what a route hashes for
    stickiness when the request names no key itself) and the W3C trace context. Read before the request is
    decoded, so that a request refused while decoding still continues the caller's trace. Never changed once
    read (a stream's is shared by its messages)."""

    routing_key: str | None = None
    traceparent: str = ""
    tracestate: str = ""

    def apply(self, request: InferRequest, *, routing_key: bool = True) -> InferRequest:
        if routing_key:
            request.routing_key = self.routing_key
        request.traceparent, request.tracestate = self.traceparent, self.tracestate
        request.protocol = PROTOCOL
        return request


def from_metadata(context: grpc.aio.ServicerContext) -> CallMetadata:
    """The call's metadata, in one pass."""
    routing_key, parent, states = None, "", []
    for key, value in context.invocation_metadata() or ():
        if not isinstance(value, str):  # binary (-bin) metadata
            continue
        if key == "routing-key":
            routing_key = value if routing_key is None else routing_key
        elif key == "traceparent":
            parent = value
        elif key == "tracestate":
            states.append(value)
    return CallMetadata(routing_key, parent, ",".join(states))


NO_DEADLINE_S = 1e9  # a remaining time this long (31 years) is no deadline at all


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The client's gRPC deadline in event-loop time, or None when it set none. grpc.aio says "none" with None;
    the native engine, as grpcio's sync server does, with sys.maxsize seconds."""
    remaining: float | None = context.time_remaining()  # grpc's stubs say float; grpc.aio gives None
    if remaining is None or remaining >= NO_DEADLINE_S:
        return None
    return asyncio.get_running_loop().time() + remaining


class InferenceServicer:
    """The RPCs this server implements; the others answer UNIMPLEMENTED (see server.py)."""

    def __init__(self, service: InferenceService, limits: LimitsConfig | None = None) -> None:
        self.service = service
        self.limits = limits  # tensor limits, checked while decoding, before anything is allocated

    @rpc
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.service.health.live)

    @rpc
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.health.ready)

    @rpc
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.service.health.model_ready(request.name, request.version))

    @rpc
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        s = self.service
        return pb.ServerMetadataResponse(name=s.name, version=s.version, extensions=s.extensions)

    @rpc
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        return codec.model_metadata(self.service.model_metadata(request.name, request.version))

    @rpc
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        return codec.model_config(self.service.model_config(request.name, request.version))

    @rpc
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        return codec.model_statistics(await self.service.statistics(request.name, request.version))

    @rpc
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        return codec.repository_index(self.service.repository.index(request.ready))

    @rpc
    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,
                                  context: Any) -> pb.RepositoryModelLoadResponse:
        config, files, version = codec.repository_parameters(request.parameters)
        await self.service.repository.load(request.model_name, config=config, files=files, version=version)
        return pb.RepositoryModelLoadResponse()

    @rpc
    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,
                                    context: Any) -> pb.RepositoryModelUnloadResponse:
        version, dependents = codec.unload_parameters(request.parameters)
        await self.service.repository.unload(request.model_name, version, dependents=dependents)
        return pb.RepositoryModelUnloadResponse()

    @functools.partial(rpc, takes_malformed=True)
    async def ModelInfer(self, request: pb.ModelInferRequest | Malformed, context: Any) -> pb.ModelInferResponse:
        decoded = self._decode(request, from_metadata(context))
        response = await self.service.infer(decoded, deadline_of(context))
        return codec.encode_response(response)

    async def ModelStreamInfer(self, requests: AsyncIterator[Any],
                               context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests on one stream run concurrently (so they can share batches); each answer, or its error
        message, is written as soon as it is ready, and a bad request never ends the stream."""
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        # The stream's metadata: each request on it continues the caller's trace.
        trace = from_metadata(context)

        async def answer(request: Any) -> None:
            answers.put_nowait(await self._stream_one(request, deadline_of(context), trace))

        async def read() -> None:
            try:
                async for request in requests:
                    task = asyncio.create_task(answer(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.gather(*tasks)
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (message := await answers.get()) is not None:
                yield message
            await reader  # surfaces a failure to read the stream
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    def _decode(self, request: pb.ModelInferRequest | Malformed, metadata: CallMetadata,
                what: str = "request body", stream: bool = False) -> InferRequest:
        """The core's request with what it takes from the metadata (on a stream, the trace context only). One that
        does not decode is refused here, and first recorded in the caller's trace (InferenceService.refused), as
        the service records a request it refuses itself."""
        try:
            if isinstance(request, Malformed):
                raise request.error(what)
            decoded = codec.decode_request(request, self.limits)
        except InferenceError as e:
            self.service.refused("" if isinstance(request, Malformed) else request.model_name, e,
                                 traceparent=metadata.traceparent, tracestate=metadata.tracestate,
                                 protocol=PROTOCOL, request_id=getattr(request, "id", ""))
            raise
        return metadata.apply(decoded, routing_key=not stream)

    async def _stream_one(self, request: Any, deadline: float | None,
                          trace: CallMetadata) -> pb.ModelStreamInferResponse:
        request_id = getattr(request, "id", "")
        try:
            decoded = self._decode(request, trace, "request", stream=True)
            response = await self.service.infer(decoded, deadline)
            return pb.ModelStreamInferResponse(infer_response=codec.encode_response(response))
        except InferenceError as e:
            message = e.message
        except Exception:
            log.exception("request %s: stream inference failed unexpectedly", request_id or "-")
            message = "internal error"
        # The id lets a client match the error to its request.
        return pb.ModelStreamInferResponse(error_message=message,
                                           infer_response=pb.ModelInferResponse(id=request_id))
