from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RouteStatusRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RouteWeightsRequest(_message.Message):
    __slots__ = ("name", "weights")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    weights: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., weights: _Optional[_Mapping[str, float]] = ...) -> None: ...

class RouteCanaryRequest(_message.Message):
    __slots__ = ("name", "action")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    action: str
    def __init__(self, name: _Optional[str] = ..., action: _Optional[str] = ...) -> None: ...

class RouteStatusResponse(_message.Message):
    __slots__ = ("routes",)
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    def __init__(self, routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("name", "routing_key", "variants", "canary", "shadow", "shadow_queued", "fallback")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROUTING_KEY_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    SHADOW_QUEUED_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    name: str
    routing_key: str
    variants: _containers.RepeatedCompositeFieldContainer[Variant]
    canary: Canary
    shadow: str
    shadow_queued: int
    fallback: str
    def __init__(self, name: _Optional[str] = ..., routing_key: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[Variant, _Mapping]]] = ..., canary: _Optional[_Union[Canary, _Mapping]] = ..., shadow: _Optional[str] = ..., shadow_queued: _Optional[int] = ..., fallback: _Optional[str] = ...) -> None: ...

class Variant(_message.Message):
    __slots__ = ("name", "model", "version", "alias", "configured_weight", "weight", "share_percent", "state", "breaker")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    CONFIGURED_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SHARE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BREAKER_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    version: str
    alias: str
    configured_weight: float
    weight: float
    share_percent: float
    state: str
    breaker: str
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., alias: _Optional[str] = ..., configured_weight: _Optional[float] = ..., weight: _Optional[float] = ..., share_percent: _Optional[float] = ..., state: _Optional[str] = ..., breaker: _Optional[str] = ...) -> None: ...

class Canary(_message.Message):
    __slots__ = ("candidate", "state", "step", "steps_percent", "share_percent", "failed_windows", "last_decision", "last_reason", "decisions")
    class DecisionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_PERCENT_FIELD_NUMBER: _ClassVar[int]
    SHARE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    FAILED_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    LAST_DECISION_FIELD_NUMBER: _ClassVar[int]
    LAST_REASON_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    candidate: str
    state: str
    step: int
    steps_percent: _containers.RepeatedScalarFieldContainer[float]
    share_percent: float
    failed_windows: int
    last_decision: str
    last_reason: str
    decisions: _containers.ScalarMap[str, int]
    def __init__(self, candidate: _Optional[str] = ..., state: _Optional[str] = ..., step: _Optional[int] = ..., steps_percent: _Optional[_Iterable[float]] = ..., share_percent: _Optional[float] = ..., failed_windows: _Optional[int] = ..., last_decision: _Optional[str] = ..., last_reason: _Optional[str] = ..., decisions: _Optional[_Mapping[str, int]] = ...) -> None: ...
