"""[server.limits]: parsed like every table, and each limit enforced by the decoding functions before memory is
allocated for the payload (tracemalloc shows the peak), with INVALID_ARGUMENT naming the limit and its value."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import struct
import tracemalloc

import numpy as np
import orjson
import pytest

from inference_server.config.cli import load_config
from inference_server.config.server import LimitsConfig, parse_server
from inference_server.errors import ConfigError, ErrorCode, InferenceError
from inference_server.grpc import codec as grpc_codec
from inference_server.grpc.limits import requests_in_flight
from inference_server.http import codec as http_codec
from inference_server.protocol._generated import grpc_service_pb2 as pb
from inference_server.protocol.tensors import decode_bytes, decode_raw, decode_values, element_count
from inference_server.service.views import TensorView

SMALL = LimitsConfig(max_tensor_elements=1024, max_tensor_bytes=2048, max_request_elements=1536,
                     max_bytes_element_bytes=64)


@contextlib.contextmanager
def rejects(fragment: str, most_bytes: int | None = None):
    """An INVALID_ARGUMENT whose message holds `fragment`; with most_bytes, less than that allocated meanwhile."""
    tracemalloc.start()
    try:
        with pytest.raises(InferenceError) as info:
            yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.code is ErrorCode.INVALID_ARGUMENT, info.value
    assert fragment in info.value.message, info.value.message
    if most_bytes is not None:
        assert peak < most_bytes, f"{peak} bytes allocated while refusing"


def framed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


# -- config ------------------------------------------------------------------------------------------------------

def test_defaults_bound_every_tensor_and_follow_max_message_bytes():
    cfg = parse_server({})
    assert cfg.limits == LimitsConfig()
    assert (cfg.limits.max_request_bytes, cfg.limits.max_tensor_elements, cfg.limits.max_tensor_bytes) == (
        2**31 - 1, 2**25, 2**28)
    assert (cfg.limits.max_concurrent_streams, cfg.limits.max_requests_per_stream) == (4096, 1024)
    # The older key (and --max-message-bytes) still sets the request limit, unless [server.limits] says otherwise.
    assert parse_server({"server": {"max_message_bytes": 1000}}).limits.max_request_bytes == 1000
    both = parse_server({"server": {"max_message_bytes": 1000, "limits": {"max_request_bytes": 500}}})
    assert (both.max_message_bytes, both.limits.max_request_bytes) == (1000, 500)
    assert load_config(["--max-message-bytes", "4096"], {}).limits.max_request_bytes == 4096


def test_limits_table_is_parsed(tmp_path):
    path = tmp_path / "server.toml"
    path.write_text("[server.limits]\nmax_tensor_elements = 10\nmax_tensor_bytes = 20\nmax_request_elements = 30\n"
                    "max_bytes_element_bytes = 40\nmax_request_bytes = 50\nmax_concurrent_streams = 60\n"
                    "max_requests_per_stream = 70\nmax_in_flight = 80\n")
    assert load_config(["--config", str(path)], {}).limits == LimitsConfig(
        max_tensor_elements=10, max_tensor_bytes=20, max_request_elements=30, max_bytes_element_bytes=40,
        max_request_bytes=50, max_concurrent_streams=60, max_requests_per_stream=70, max_in_flight=80)


@pytest.mark.parametrize("limits, key", [
    ({"max_tensor_elemnts": 1}, "server.limits.max_tensor_elemnts"),
    ({"max_tensor_elements": 0}, "server.limits.max_tensor_elements"),
    ({"max_tensor_bytes": "1 MiB"}, "server.limits.max_tensor_bytes"),
    ({"max_requests_per_stream": True}, "server.limits.max_requests_per_stream"),
    ({"max_request_bytes": 2**31}, "server.limits.max_request_bytes"),  # gRPC's options are C ints
    ({"max_concurrent_streams": 2**31}, "server.limits.max_concurrent_streams"),
    ({"max_in_flight": -1}, "server.limits.max_in_flight"),
])
def test_bad_limits_name_their_dotted_key(limits, key):
    with pytest.raises(ConfigError) as info:
        parse_server({"server": {"limits": limits}})
    assert info.value.key == key


def test_a_limits_value_that_is_not_a_table_is_refused():
    with pytest.raises(ConfigError) as info:
        parse_server({"server": {"limits": 5}})
    assert info.value.key == "server.limits"


# -- elements, from the shape alone ----------------------------------------------------------------------------

def test_a_shape_past_max_tensor_elements_is_refused_from_the_shape_alone():
    with rejects("input 'x': shape [1048576, 1048576] holds 1099511627776 elements, which exceeds "
                 "max_tensor_elements (1024)"):
        element_count((2**20, 2**20), "x", SMALL)
    assert element_count((2**20, 2**20), "x") == 2**40  # no limits: only what numpy can describe
    assert element_count((32, 32), "x", SMALL) == 1024


@pytest.mark.parametrize("datatype", ["FP32", "INT64", "BOOL", "BYTES"])
def test_raw_contents_past_max_tensor_elements_are_refused_before_anything_is_built(datatype):
    # 1,000,000 BYTES elements of 4 zero bytes each: a well-framed 4 MB buffer, 8 MB of pointers (and more in
    # objects) if it were split.
    raw = b"\0" * 4_000_000 if datatype == "BYTES" else b""
    with rejects("exceeds max_tensor_elements (1024)", most_bytes=100_000):
        decode_raw("x", datatype, (1000, 1000), raw, SMALL)


def test_typed_contents_past_max_tensor_elements_are_refused_before_conversion():
    values = [0.0] * 2000
    with rejects("shape [2000] holds 2000 elements, which exceeds max_tensor_elements (1024)", most_bytes=10_000):
        decode_values("x", "FP64", (2000,), values, SMALL)
    assert decode_values("x", "FP64", (2000,), values).shape == (2000,)  # no limits


# -- bytes per tensor ----------------------------------------------------------------------------------------------

def test_a_fixed_size_tensor_past_max_tensor_bytes_is_refused_from_its_shape():
    # 600 elements are allowed, but 600 x 4 bytes are not; the raw buffer's own size is not even looked at.
    with rejects("input 'x': 600 elements of FP32 are 2400 bytes, which exceeds max_tensor_bytes (2048)"):
        decode_raw("x", "FP32", (1, 600), b"", SMALL)
    with rejects("600 elements of INT32 are 2400 bytes, which exceeds max_tensor_bytes (2048)"):
        decode_values("x", "INT32", (600,), [0] * 600, SMALL)
    assert decode_raw("x", "FP32", (1, 512), b"\0" * 2048, SMALL).shape == (1, 512)


def test_bytes_content_past_max_tensor_bytes_is_refused_before_it_is_split():
    raw = framed(*[b"x" * 60] * 40)  # 40 elements of 60 bytes: each allowed, 2400 bytes together are not
    with rejects("input 's': BYTES content of 2560 bytes holds 2400 bytes of elements, which exceeds "
                 "max_tensor_bytes (2048)", most_bytes=2000):
        decode_bytes(raw, 40, "s", SMALL)
    with rejects("BYTES elements of 2400 bytes exceed max_tensor_bytes (2048)"):
        decode_values("s", "BYTES", (40,), [b"x" * 60] * 40, SMALL)
    assert decode_bytes(raw, 40, "s").tolist() == [b"x" * 60] * 40  # no limits


# -- one BYTES element ---------------------------------------------------------------------------------------------

def test_a_declared_bytes_length_past_the_limit_is_refused_while_framing_before_the_element_is_copied():
    # The second element declares 2**31 bytes in a 20-byte buffer: the limit is named, not the truncation.
    raw = framed(b"ok") + struct.pack("<I", 2**31) + b"tail....."
    with rejects("input 's': BYTES element 1 is 2147483648 bytes, which exceeds max_bytes_element_bytes (64)"):
        decode_raw("s", "BYTES", (2,), raw, SMALL)
    with rejects("BYTES element 1 is truncated"):
        decode_raw("s", "BYTES", (2,), raw)  # no limits: what it always said
    with rejects("BYTES element 0 is 65 bytes, which exceeds max_bytes_element_bytes (64)"):
        decode_raw("s", "BYTES", (1,), framed(b"y" * 65), SMALL)
    assert decode_raw("s", "BYTES", (1,), framed(b"y" * 64), SMALL).tolist() == [b"y" * 64]


def test_typed_bytes_elements_are_checked_one_by_one():
    with rejects("input 's': BYTES element 2 is 65 bytes, which exceeds max_bytes_element_bytes (64)"):
        decode_values("s", "BYTES", (3,), [b"a", b"b", b"c" * 65], SMALL)


def test_a_memoryview_of_bytes_content_is_checked_then_copied():
    raw = framed(b"ab", b"", b"cd")
    assert decode_raw("s", "BYTES", (3,), memoryview(raw), SMALL).tolist() == [b"ab", b"", b"cd"]
    with rejects("exceeds max_bytes_element_bytes (64)"):
        decode_raw("s", "BYTES", (1,), memoryview(framed(b"z" * 100)), SMALL)


# -- the gRPC codec ------------------------------------------------------------------------------------------------

def grpc_request(*inputs: tuple[str, str, list[int], bytes]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    for name, datatype, shape, raw in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
    return request


def test_grpc_request_limits_per_tensor_and_for_the_whole_request():
    huge = grpc_request(("x", "FP32", [2**20, 2**20], b""))
    with rejects("input 'x': shape [1048576, 1048576] holds 1099511627776 elements, which exceeds "
                 "max_tensor_elements (1024)"):
        grpc_codec.decode_request(huge, SMALL)
    # 800 + 800 INT8 elements: each tensor is within every tensor limit, the two together are not.
    two = grpc_request(("a", "INT8", [1, 800], b"\0" * 800), ("b", "INT8", [1, 800], b"\0" * 800))
    with rejects("input 'b' brings the request to 1600 elements, which exceeds max_request_elements (1536)"):
        grpc_codec.decode_request(two, SMALL)
    assert len(grpc_codec.decode_request(two).inputs) == 2  # no limits
    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="s", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"q" * 100)
    with rejects("BYTES element 0 is 100 bytes, which exceeds max_bytes_element_bytes (64)"):
        grpc_codec.decode_request(typed, SMALL)


# -- the HTTP codec ------------------------------------------------------------------------------------------------

def json_request(*inputs: dict) -> bytes:
    return orjson.dumps({"inputs": list(inputs)})


def test_a_json_shape_of_2_to_the_40_elements_without_data_is_refused_at_once():
    body = json_request({"name": "x", "datatype": "FP32", "shape": [2**20, 2**20], "data": []})
    with rejects("input 'x': shape [1048576, 1048576] holds 1099511627776 elements, which exceeds "
                 "max_tensor_elements (1024)", most_bytes=20_000):
        http_codec.decode_infer_request(body, None, "m", "1", SMALL)


def test_json_data_longer_than_its_shape_is_refused_before_conversion(monkeypatch):
    body = json_request({"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 100_000})

    def never(*args, **kwargs):
        raise AssertionError("the data was converted")

    monkeypatch.setattr(np, "asarray", never)
    with rejects("input 'x': 100000 elements given but shape [1, 8] needs 8"):
        http_codec.decode_infer_request(body, None, "m", "1", SMALL)
    monkeypatch.undo()
    # Nested the same way: the nesting's first elements give the count.
    nested = json_request({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2, 3], [4, 5, 6]]})
    with rejects("6 elements given but shape [2, 2] needs 4"):
        http_codec.decode_infer_request(nested, None, "m", "1")
    # Objects numpy would keep as they are: refused for their count, not their type, so nothing was converted.
    objects = json_request({"name": "x", "datatype": "FP32", "shape": [2], "data": [{}, {}, {}]})
    with rejects("3 elements given but shape [2] needs 2"):
        http_codec.decode_infer_request(objects, None, "m", "1")


def test_json_tensor_bytes_and_string_lengths():
    wide = json_request({"name": "x", "datatype": "FP64", "shape": [300], "data": [0.0] * 300})
    with rejects("300 elements of FP64 are 2400 bytes, which exceeds max_tensor_bytes (2048)"):
        http_codec.decode_infer_request(wide, None, "m", "1", SMALL)
    text = json_request({"name": "s", "datatype": "BYTES", "shape": [2], "data": ["short", "\u00e9" * 40]})
    with rejects("input 's': BYTES element 1 is 80 bytes, which exceeds max_bytes_element_bytes (64)"):
        http_codec.decode_infer_request(text, None, "m", "1", SMALL)


def test_binary_tensors_and_the_request_total_over_http():
    blob = framed(b"v" * 65)
    header = orjson.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1],
                                       "parameters": {"binary_data_size": len(blob)}}]})
    with rejects("BYTES element 0 is 65 bytes, which exceeds max_bytes_element_bytes (64)"):
        http_codec.decode_infer_request(header + blob, len(header), "m", "1", SMALL)
    huge = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2**20, 2**20],
                                     "parameters": {"binary_data_size": 0}}]})
    with rejects("exceeds max_tensor_elements (1024)"):
        http_codec.decode_infer_request(huge, len(huge), "m", "1", SMALL)
    two = json_request({"name": "a", "datatype": "INT8", "shape": [800], "data": [0] * 800},
                       {"name": "b", "datatype": "INT8", "shape": [800], "data": [0] * 800})
    with rejects("input 'b' brings the request to 1600 elements, which exceeds max_request_elements (1536)"):
        http_codec.decode_infer_request(two, None, "m", "1", SMALL)


def test_v1_predict_rows_are_counted_before_they_are_stacked():
    inputs = [TensorView("x", "FP32", (-1, 8))]
    body = orjson.dumps({"instances": [[0.0] * 8] * 200})  # 1600 elements
    with rejects("input 'x': data of 1600 elements exceeds max_tensor_elements (1024)"):
        http_codec.decode_v1_predict(body, "m", "", inputs, SMALL)
    loose = dataclasses.replace(SMALL, max_tensor_elements=4096, max_tensor_bytes=1 << 20)
    with rejects("input 'x' brings the request to 1600 elements, which exceeds max_request_elements (1536)"):
        http_codec.decode_v1_predict(body, "m", "", inputs, loose)
    assert http_codec.decode_v1_predict(body, "m", "", inputs).inputs[0].shape == (200, 8)


# -- requests in flight on one stream ------------------------------------------------------------------------------

def test_a_stream_reads_its_next_request_only_while_fewer_than_the_limit_are_unanswered():
    async def scenario(limit: int | None) -> tuple[int, list[int]]:
        in_flight = most = 0

        async def requests():
            for i in range(20):
                yield i

        async def behaviour(reqs, context):  # as the servicer does: read on, answer each request once, in any order
            nonlocal in_flight, most
            answers: asyncio.Queue = asyncio.Queue()
            tasks = set()

            async def one(i):
                await asyncio.sleep(0.001 * (i % 3))
                answers.put_nowait(i)

            async def read():
                nonlocal in_flight, most
                async for i in reqs:
                    in_flight += 1
                    most = max(most, in_flight)
                    tasks.add(asyncio.create_task(one(i)))

            reader = asyncio.create_task(read())
            for _ in range(20):
                answer = await answers.get()
                in_flight -= 1
                yield answer
            await reader

        handler = behaviour if limit is None else requests_in_flight(behaviour, limit)
        got = [answer async for answer in handler(requests(), None)]
        return most, sorted(got)

    most, got = asyncio.run(scenario(3))
    assert got == list(range(20)) and most == 3
    most, got = asyncio.run(scenario(None))
    assert got == list(range(20)) and most > 3  # what the limit prevents
