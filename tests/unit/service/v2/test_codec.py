"""The protocol's tensors on the wire: JSON and binary requests in, JSON and binary responses out,
and every malformed body a ProtocolError that says what was wrong."""

from __future__ import annotations

import json
import struct

import numpy as np
import orjson
import pytest

from service.v2 import codec
from service.v2.codec import (
    InferResponse,
    ProtocolError,
    encode_response,
    header_length,
    join_bytes,
    parse_request,
    split_bytes,
)


def binary_body(header: dict, *blobs: bytes) -> tuple[bytes, int]:
    text = json.dumps(header).encode()
    return text + b"".join(blobs), len(text)


def image_input(shape, size=None, **extra) -> dict:
    entry = {"name": "image", "datatype": "FP32", "shape": list(shape), **extra}
    if size is not None:
        entry["parameters"] = {"binary_data_size": size}
    return entry


def parse(body: bytes, length: int | None = None):
    return parse_request(body, len(body) if length is None else length)


def test_binary_tensors_are_read_in_input_order():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([1, -2], dtype=np.int64)
    body, length = binary_body(
        {
            "id": "x",
            "inputs": [
                {"name": "a", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": a.nbytes}},
                {"name": "b", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": b.nbytes}},
            ],
        },
        a.tobytes(),
        b.tobytes(),
    )
    request = parse(body, length)
    assert request.id == "x"
    np.testing.assert_array_equal(request.inputs[0].data, a)
    np.testing.assert_array_equal(request.inputs[1].data, b)


def test_json_data_flat_and_nested_give_the_same_tensor():
    nested = [[1.5, 2.0], [3.0, 4.0]]
    flat = parse(json.dumps({"inputs": [image_input([2, 2], data=[1.5, 2, 3, 4])]}).encode())
    deep = parse(json.dumps({"inputs": [image_input([2, 2], data=nested)]}).encode())
    np.testing.assert_array_equal(flat.inputs[0].data, np.array(nested, np.float32))
    np.testing.assert_array_equal(deep.inputs[0].data, flat.inputs[0].data)
    assert flat.inputs[0].data.dtype == np.float32


def test_bytes_elements_carry_a_little_endian_length():
    elements = [b"\x89PNG", b"", b"abc"]
    blob = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    assert split_bytes(blob, "x") == elements
    array = np.empty(3, dtype=object)
    array[:] = elements
    assert join_bytes(array) == blob
    body, length = binary_body(
        {
            "inputs": [
                {
                    "name": "image_bytes",
                    "datatype": "BYTES",
                    "shape": [3],
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        },
        blob,
    )
    assert list(parse(body, length).inputs[0].data) == elements


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"\x05\x00", "element 0 is cut short in its 4-byte length"),
        (struct.pack("<I", 9) + b"abc", "element 0 declares 9 bytes but only 3 remain"),
    ],
)
def test_truncated_bytes_elements_are_refused(blob, message):
    with pytest.raises(ProtocolError, match=message):
        split_bytes(blob, "x")


def test_a_shape_that_disagrees_with_the_binary_data_names_both():
    body, length = binary_body({"inputs": [image_input([3, 2], size=16)]}, bytes(16))
    with pytest.raises(ProtocolError) as caught:
        parse(body, length)
    assert caught.value.message == "input 'image': shape [3, 2] of FP32 needs 24 bytes but binary_data_size is 16"
    assert caught.value.status == 400


def test_a_shape_that_disagrees_with_the_json_data_names_both():
    with pytest.raises(ProtocolError, match=r"shape \[2, 2\] holds 4 elements but 'data' has 3"):
        parse(json.dumps({"inputs": [image_input([2, 2], data=[1, 2, 3])]}).encode())


def test_a_bytes_shape_that_disagrees_with_its_elements_names_both():
    blob = struct.pack("<I", 1) + b"a"
    body, length = binary_body(
        {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(blob)}}]},
        blob,
    )
    with pytest.raises(ProtocolError, match=r"shape \[2\] holds 2 elements but the binary data holds 1"):
        parse(body, length)


@pytest.mark.parametrize(
    "value, message",
    [
        ("-5", "must be a non-negative integer"),
        ("abc", "must be a non-negative integer"),
        ("\u00b2", "must be a non-negative integer"),  # "²": str.isdigit() says yes, int() refuses it
        ("\u0663", "must be a non-negative integer"),  # Arabic-Indic three: no silent acceptance either
        ("0", "raw binary request"),
        ("1000", "is 1000 but the body has only 10 bytes"),
    ],
)
def test_bad_header_lengths_are_refused(value, message):
    with pytest.raises(ProtocolError, match=message):
        header_length(value, 10)


def test_without_the_header_the_whole_body_is_json():
    assert header_length(None, 42) == 42


@pytest.mark.parametrize(
    "body, message",
    [
        (b"\xff\x00 not json", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"inputs": {}}', "needs 'inputs'"),
        (b'{"id": 5, "inputs": []}', "'id' must be a string"),
        (b'{"inputs": [{"name": "a", "datatype": "FP99", "shape": [1], "data": [1]}]}', "datatype must be one of"),
        (b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1], "data": [1]}]}', "non-negative integers"),
        (b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1]}]}', "neither 'data' nor"),
        (b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": ["x"]}]}', "must be numbers"),
        (b'{"inputs": [{"name": "a", "datatype": "INT8", "shape": [1], "data": [1000]}]}', "does not fit INT8"),
        (
            b'{"inputs": [{"name": "a", "datatype": "INT64", "shape": [1], "data": [1.5]}]}',
            "INT64 data must be integers",
        ),
        (b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [true]}]}', "FP32 data must be numbers"),
        (
            b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]},'
            b' {"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}]}',
            "given twice",
        ),
        (b'{"inputs": [], "outputs": [{"name": "a", "parameters": {"binary_data": 1}}]}', "'binary_data' must be"),
        (b'{"inputs": [], "parameters": {"binary_data_output": "yes"}}', "'binary_data_output' must be"),
    ],
)
def test_malformed_requests_say_what_is_wrong(body, message):
    with pytest.raises(ProtocolError, match=message):
        parse(body)


def test_binary_data_beyond_the_body_or_left_over_is_refused():
    short, length = binary_body({"inputs": [image_input([2], size=8)]}, bytes(4))
    with pytest.raises(ProtocolError, match="binary_data_size is 8 bytes but only 4 bytes"):
        parse(short, length)
    extra, length = binary_body({"inputs": [image_input([1], size=4)]}, bytes(6))
    with pytest.raises(ProtocolError, match="2 bytes of binary data that no input"):
        parse(extra, length)


def test_requested_outputs_choose_binary_over_the_request_default():
    request = parse(
        json.dumps(
            {
                "inputs": [],
                "parameters": {"binary_data_output": True},
                "outputs": [{"name": "a", "parameters": {"binary_data": False}}, {"name": "b"}],
            }
        ).encode()
    )
    assert (request.binary("a"), request.binary("b"), request.binary("c")) == (False, True, True)


def test_a_json_response_carries_model_name_version_id_and_flat_data():
    data = np.arange(4, dtype=np.float32).reshape(2, 2)
    body, headers = encode_response(InferResponse("m.encoder", "2.0.0", "r1", [("mean", data, False)]))
    assert headers == {"content-type": "application/json"}
    assert orjson.loads(body) == {
        "model_name": "m.encoder",
        "model_version": "2.0.0",
        "id": "r1",
        "outputs": [{"name": "mean", "datatype": "FP32", "shape": [2, 2], "data": [0.0, 1.0, 2.0, 3.0]}],
    }


def test_a_binary_response_is_json_then_the_tensors_and_bytes_are_always_binary():
    data = np.arange(3, dtype=np.float64)
    pngs = np.empty(2, dtype=object)
    pngs[:] = [b"\x89PNG1", b"\x89PNG22"]
    body, headers = encode_response(InferResponse("m", "1", None, [("x", data, True), ("png", pngs, False)]))
    length = int(headers["inference-header-content-length"])
    assert headers["content-type"] == "application/octet-stream"
    header = orjson.loads(body[:length])
    assert "id" not in header
    assert [o["parameters"]["binary_data_size"] for o in header["outputs"]] == [24, 4 + 5 + 4 + 6]
    assert body[length : length + 24] == data.tobytes()
    assert split_bytes(body[length + 24 :], "png") == [b"\x89PNG1", b"\x89PNG22"]


# the plans of repeated binary headers


@pytest.fixture
def plans(monkeypatch):
    cache: dict = {}
    monkeypatch.setattr(codec, "PLANS", cache)
    return cache


def two_inputs(first: np.ndarray, second: np.ndarray, **header) -> tuple[bytes, int]:
    inputs = [
        {"name": "a", "datatype": "FP32", "shape": list(first.shape), "parameters": {"binary_data_size": first.nbytes}},
        {
            "name": "b",
            "datatype": "INT64",
            "shape": list(second.shape),
            "parameters": {"binary_data_size": second.nbytes},
        },
    ]
    return binary_body({"inputs": inputs, **header}, first.tobytes(), second.tobytes())


def test_a_repeated_binary_header_reads_each_bodys_own_tensors_as_the_first_parse_did(plans):
    rng = np.random.default_rng(0)
    header = {"id": "r", "parameters": {"binary_data_output": True, "x": 1}, "outputs": [{"name": "mean"}]}
    first = [rng.random((2, 3), dtype=np.float32), np.arange(4, dtype=np.int64)]
    request = parse_request(*two_inputs(*first, **header))
    assert len(plans) == 1
    second = [rng.random((2, 3), dtype=np.float32), np.arange(4, 8, dtype=np.int64)]
    again = parse_request(*two_inputs(*second, **header))
    assert len(plans) == 1  # the plan's
    for parsed, arrays in ((request, first), (again, second)):
        assert [t.name for t in parsed.inputs] == ["a", "b"] and [t.datatype for t in parsed.inputs] == [
            "FP32",
            "INT64",
        ]
        for tensor, array in zip(parsed.inputs, arrays, strict=True):
            np.testing.assert_array_equal(tensor.data, array)
            assert tensor.data.dtype == array.dtype and tensor.data.shape == array.shape
    assert (again.id, again.parameters, again.outputs, again.binary_output) == (
        request.id, request.parameters, request.outputs, request.binary_output,
    )  # fmt: skip
    again.parameters["x"] = 2  # each request has its own: the next one is not changed by this one
    assert parse_request(*two_inputs(*second, **header)).parameters["x"] == 1


def test_a_plan_is_only_for_its_body_length_and_row_limit(plans):
    body, length = two_inputs(np.zeros((2, 3), np.float32), np.zeros(4, np.int64))
    parse_request(body, length)
    with pytest.raises(ProtocolError, match="bytes of binary data that no input"):
        parse_request(body + b"\0", length)  # the same header, a byte more: parsed again, refused
    with pytest.raises(ProtocolError, match="has 2 rows; 1 to 1 are accepted"):
        parse_request(body, length, None, 1)
    assert {key[1:] for key in plans} == {(len(body), None)}  # nothing refused is remembered


def test_json_and_bytes_tensors_and_large_headers_are_parsed_every_time(plans):
    parse_request(*binary_body({"inputs": [{"name": "a", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}))
    blob = struct.pack("<I", 2) + b"ab"
    parse_request(*binary_body({"inputs": [image_input([1], len(blob), datatype="BYTES")]}, blob))
    padded = {"inputs": [image_input([1], 4)], "id": "x" * codec.PLAN_HEADER_BYTES}
    parse_request(*binary_body(padded, b"\0" * 4))
    assert plans == {}


def test_the_plans_are_bounded(plans, monkeypatch):
    monkeypatch.setattr(codec, "PLAN_CACHE_SIZE", 3)
    for index in range(7):  # a client naming every request: the cache starts over when full
        parse_request(*binary_body({"id": str(index), "inputs": [image_input([1], 4)]}, b"\0" * 4))
        assert 1 <= len(plans) <= 3


# the JSON headers of repeated all-binary responses


@pytest.fixture
def headers_cache(monkeypatch):
    cache: dict = {}
    monkeypatch.setattr(codec, "HEADERS", cache)
    return cache


def test_a_repeated_all_binary_response_reuses_its_header_with_the_new_tensors(headers_cache):
    first = np.arange(6, dtype=np.float32).reshape(2, 3)
    second = first[::-1] * 2  # a view with negative strides: its bytes still go in row order
    body1, headers1 = encode_response(InferResponse("m.encoder", "1", None, [("mean", first, True)]))
    assert len(headers_cache) == 1
    body2, headers2 = encode_response(InferResponse("m.encoder", "1", None, [("mean", second, True)]))
    length = int(headers2["inference-header-content-length"])
    assert headers2 == headers1 and body2[:length] == body1[:length]
    assert body2[length:] == np.ascontiguousarray(second).tobytes() != body1[length:]


@pytest.mark.parametrize(
    "changed",
    [
        InferResponse("m.encoder", "1", "r2", [("mean", np.zeros((2, 3), np.float32), True)]),
        InferResponse("m.encoder", "2", None, [("mean", np.zeros((2, 3), np.float32), True)]),
        InferResponse("m.encoder", "1", None, [("logvar", np.zeros((2, 3), np.float32), True)]),
        InferResponse("m.encoder", "1", None, [("mean", np.zeros((1, 3), np.float32), True)]),
        InferResponse("m.encoder", "1", None, [("mean", np.zeros((2, 3), np.float64), True)]),
    ],
)
def test_a_cached_header_is_never_given_to_a_response_that_differs_in_its_header(headers_cache, changed):
    encode_response(InferResponse("m.encoder", "1", None, [("mean", np.zeros((2, 3), np.float32), True)]))
    body, headers = encode_response(changed)
    length = int(headers["inference-header-content-length"])
    header = orjson.loads(body[:length])
    data = changed.outputs[0][1]
    assert header.get("id") == changed.id and header["model_version"] == changed.model_version
    assert header["outputs"] == [
        {
            "name": changed.outputs[0][0],
            "datatype": "FP64" if data.dtype.itemsize == 8 else "FP32",
            "shape": list(data.shape),
            "parameters": {"binary_data_size": data.nbytes},
        }
    ]
    assert body[length:] == data.astype("<f8" if data.dtype.itemsize == 8 else "<f4").tobytes()


def test_responses_with_json_outputs_bytes_or_parameters_are_not_cached_and_the_cache_is_bounded(
    headers_cache, monkeypatch
):
    pngs = np.empty(1, dtype=object)
    pngs[:] = [b"\x89PNG1"]
    data = np.zeros(2, np.float32)
    encode_response(InferResponse("m", "1", None, [("x", data, False)]))
    encode_response(InferResponse("m", "1", None, [("png", pngs, True)]))
    encode_response(InferResponse("m", "1", None, [("x", data, True)], {"sequence_id": 1}))
    long_id = "i" * (codec.PLAN_HEADER_BYTES + 1)
    body, headers = encode_response(InferResponse("m", "1", long_id, [("x", data, True)]))
    assert orjson.loads(body[: int(headers["inference-header-content-length"])])["id"] == long_id
    assert headers_cache == {}
    monkeypatch.setattr(codec, "PLAN_CACHE_SIZE", 3)
    for index in range(7):
        encode_response(InferResponse("m", "1", f"id-{index}", [("x", data, True)]))
        assert 1 <= len(headers_cache) <= 3
