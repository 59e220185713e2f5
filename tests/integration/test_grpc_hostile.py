"""Hostile messages to the open inference protocol over gRPC: the cases of test_adversarial_protocol.py and
the v2 fuzzing over REST, sent as Triton's `inference.GRPCInferenceService` messages with tritonclient's
own stub (and raw bytes where the message itself is the attack).

Every refusal is a clean status code with a message that says what is wrong and leaks nothing; where REST
and gRPC share the protocol's logic, both answer the same message. Each test runs inside a guard: no gRPC
call ends INTERNAL or UNKNOWN (the server's own count), and afterwards the server is ready and a plain
inference still works; around the messages that cost the server something, /healthz is polled too and
never waits 1 s (conftest's HealthGuard). The limits (concurrent calls, in-flight model calls, the admin
token) are tested on a server started here with settings of its own.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from service.grpc_server.codec import set_parameter  # tritonclient's messages have the same fields
from tests.integration.conftest import HealthGuard, Server, poll
from tests.integration.repository_fixtures import ADMIN_TOKEN

SERVICE = "/inference.GRPCInferenceService"
# A message over VAE_MAX_UPLOAD_BYTES's default (10 MiB); the session server keeps the default.
OVERSIZED_BYTES = 11 * 1024 * 1024
LEAKS = ("Traceback", 'File "', "/work/", "site-packages", "/usr/lib/python")
# gRPC codes that mean the server failed, not the request.
SERVER_FAILURES = {"INTERNAL", "UNKNOWN", "DATA_LOSS"}
UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
# A slow call: elbo of 8 images with 2000 importance samples each runs for seconds on two cores.
SLOW_ROWS, SLOW_K = 8, 2000

own_server = pytest.mark.skipif(bool(os.environ.get("VAE_BASE_URL")), reason="starts a server of its own")

Tensor = service_pb2.ModelInferRequest.InferInputTensor
Output = service_pb2.ModelInferRequest.InferRequestedOutputTensor
Contents = service_pb2.InferTensorContents


# -- the server, its model, and how a refusal reads ----------------------------------------------------------


@pytest.fixture(scope="module")
def channel(grpc_target) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(grpc_target, options=UNLIMITED) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel):
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def served(http) -> tuple[str, str]:
    model = http.get("/v1/model").json()["model"]
    return model["name"], model["version"]


@pytest.fixture(scope="module")
def model(served) -> str:
    return served[0]


@pytest.fixture(scope="module")
def shapes(stub, model) -> dict[str, list[int]]:
    """One row of each tensor the graphs take, from their metadata: `image` and `z`; and the decoder's
    output's name."""
    encoder = stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=f"{model}.encoder"), timeout=10)
    decoder = stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=f"{model}.decoder"), timeout=10)
    return {
        "image": [1, *encoder.inputs[0].shape[1:]],
        "z": [1, *decoder.inputs[0].shape[1:]],
        "decoder_output": decoder.outputs[0].name,
    }


@pytest.fixture(scope="module")
def max_batch(stub, model, shapes) -> int:
    """VAE_MAX_BATCH, as the server says it in its refusal of 0 rows."""
    request = infer(f"{model}.encoder", [tensor("image", "FP32", [0, *shapes["image"][1:]], b"")])
    _, message = refused(stub, request, grpc.StatusCode.INVALID_ARGUMENT)
    return int(re.search(r"1 to (\d+) are accepted", message).group(1))


def tensor(name: str, datatype: str, shape: list[int], raw: bytes | None = None, **contents: Any) -> tuple:
    """An input: its tensor message and its raw contents (None: typed contents, or none)."""
    message = Tensor(name=name, datatype=datatype, shape=shape)
    if contents:
        message.contents.CopyFrom(Contents(**contents))
    return message, raw


def infer(
    name: str,
    inputs: Sequence[tuple] = (),
    outputs: Sequence[str] = (),
    version: str = "",
    **parameters: Any,
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=name, model_version=version)
    for message, raw in inputs:
        request.inputs.append(message)
        if raw is not None:
            request.raw_input_contents.append(raw)
    request.outputs.extend(Output(name=output) for output in outputs)
    for key, value in parameters.items():
        set_parameter(request.parameters[key], value)
    return request


def no_leak(message: str) -> str:
    assert not any(leak in message for leak in LEAKS), message
    return message


def refused(stub, request, code: grpc.StatusCode, method: str = "ModelInfer", **kwargs) -> tuple[float, str]:
    """Send `request`; it must be refused with `code`. Returns (seconds taken, the message)."""
    began = time.monotonic()
    with pytest.raises(grpc.RpcError) as error:
        getattr(stub, method)(request, timeout=kwargs.pop("timeout", 30), **kwargs)
    took = time.monotonic() - began
    assert error.value.code() == code, (error.value.code(), error.value.details())
    return took, no_leak(error.value.details())


def grpc_failures(http: httpx.Client) -> dict[str, float]:
    """The gRPC calls the server counted as its own failures (INTERNAL, UNKNOWN, DATA_LOSS), by method."""
    text = http.get("/metrics").text
    counts: dict[str, float] = {}
    for labels, value in re.findall(r"^vae_requests_total\{(.*)\} (\S+)$", text, re.M):
        label = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if label.get("method") == "GRPC" and label.get("status") in SERVER_FAILURES:
            counts[f"{label['route']} {label['status']}"] = float(value)
    return counts


def in_flight(http: httpx.Client) -> float:
    text = http.get("/metrics").text
    return float(re.search(r"^vae_requests_in_flight (\S+)$", text, re.M).group(1))


def assert_serves(stub, model: str, shapes: dict) -> None:
    """Ready, and a plain inference answers as it should."""
    assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready
    pixels = np.full(shapes["image"], 0.5, dtype=np.float32)
    answer = stub.ModelInfer(infer(f"{model}.encoder", [tensor("image", "FP32", shapes["image"], pixels.tobytes())]))
    assert [o.name for o in answer.outputs] == ["mean", "logvar"]
    assert list(answer.outputs[0].shape) == [1, *shapes["z"][1:]]


@contextmanager
def grpc_guard(http: httpx.Client, stub, model: str, shapes: dict, health: bool = False) -> Iterator[None]:
    """Around a test: no gRPC call ends as a server failure, and the server serves afterwards. With `health`,
    /healthz is polled the whole time too (conftest's HealthGuard): for the messages that cost the server."""
    before = grpc_failures(http)
    with HealthGuard(str(http.base_url).rstrip("/")) if health else nullcontext():
        yield
    assert grpc_failures(http) == before
    assert_serves(stub, model, shapes)


@pytest.fixture
def guarded(http, stub, model, shapes):
    """The suite's server's stub, with the guard around the test."""
    with grpc_guard(http, stub, model, shapes):
        yield stub


@pytest.fixture
def health_guarded(http, stub, model, shapes):
    """The same, with /healthz polled throughout."""
    with grpc_guard(http, stub, model, shapes, health=True):
        yield stub


def pixels_of(shape: list[int], value: float) -> bytes:
    return np.full(shape, value, dtype=np.float32).tobytes()


# -- messages that are not messages, and RPCs not served --------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"\xff\xff\xff", b"garbage", b"\x0a\x05ab", b"\x0a" + b"\xff" * 10 + b"\x01", b"\x0a\x02\xff\xfe"],
    ids=["unfinished-tag", "text", "truncated-string", "overflowing-length", "string-not-utf8"],
)
@pytest.mark.parametrize(
    "method", ["ModelInfer", "ModelMetadata", "ModelReady", "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad"]
)
def test_bytes_that_are_not_the_message_are_invalid_argument(guarded, channel, data, method):
    call = channel.unary_unary(f"{SERVICE}/{method}", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as error:
        call(data, timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == f"the message is not a valid {method}Request"


def test_an_empty_message_is_a_valid_one_that_names_no_model(guarded, channel):
    call = channel.unary_unary(f"{SERVICE}/ModelInfer", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as error:
        call(b"", timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert error.value.details().startswith("no v2 model '': v2 models are named <model>.<")


@pytest.mark.parametrize(
    "method",
    ["SystemSharedMemoryStatus", "CudaSharedMemoryRegister", "ModelConfig", "TraceSetting", "LogSettings", "Nonsense"],
)
def test_an_rpc_not_served_is_unimplemented(guarded, channel, method):
    call = channel.unary_unary(f"{SERVICE}/{method}", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as error:
        call(b"", timeout=10)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_streaming_infer_is_unimplemented(guarded, model):
    with pytest.raises(grpc.RpcError) as error:
        list(guarded.ModelStreamInfer(iter([infer(f"{model}.sample")]), timeout=10))
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


# -- the same refusal over both transports ------------------------------------------------------------------------


def rest_refusal(http, name: str, version: str, request: service_pb2.ModelInferRequest) -> tuple[int, str]:
    """The same request over REST, in Triton's binary tensor extension: (status, message)."""
    header: dict[str, Any] = {"inputs": []}
    blobs = list(request.raw_input_contents)
    for message, blob in zip(request.inputs, blobs, strict=True):
        header["inputs"].append(
            {
                "name": message.name,
                "datatype": message.datatype,
                "shape": list(message.shape),
                "parameters": {"binary_data_size": len(blob)},
            }
        )
    if request.outputs:
        header["outputs"] = [{"name": o.name} for o in request.outputs]
    if request.parameters:
        header["parameters"] = {
            key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in request.parameters.items()
        }
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
    body = json.dumps(header).encode()
    response = http.post(
        path, content=body + b"".join(blobs), headers={"inference-header-content-length": str(len(body))}
    )
    assert set(response.json()) == {"error"}, response.text
    return response.status_code, response.json()["error"]


# (id, the v2 model's suffix or a whole name, version, a function of the shapes giving the inputs,
# outputs, parameters, the REST status, what the message holds)
SHARED = [
    ("unknown-model", "=nope", "", lambda s: [], [], {}, 404, "no v2 model 'nope': v2 models are named <model>.<"),
    ("unknown-version", "encoder", "9.9.9", lambda s: [], [], {}, 404, "has no loaded version '9.9.9'; loaded: "),
    ("repository-model", "", "", lambda s: [], [], {}, 404, "is a repository model; infer on its v2 models "),
    (
        "int64-image",
        "encoder",
        "",
        lambda s: [tensor("image", "INT64", s["image"], np.zeros(s["image"], np.int64).tobytes())],
        [],
        {},
        400,
        "input 'image' must be FP32, not INT64",
    ),
    (
        "wrong-rank",
        "encoder",
        "",
        lambda s: [tensor("image", "FP32", [1, int(np.prod(s["image"]))], pixels_of(s["image"], 0.5))],
        [],
        {},
        400,
        "; the model takes [-1, ",
    ),
    (
        "wrong-dimension",
        "encode",
        "",
        lambda s: [tensor("image", "FP32", [*s["image"][:-1], 3], pixels_of([*s["image"][:-1], 3], 0.5))],
        [],
        {},
        400,
        "; the model takes [-1, ",
    ),
    (
        "wrong-z-size",
        "decoder",
        "",
        lambda s: [tensor("z", "FP32", [1, 3], pixels_of([1, 3], 0.0))],
        [],
        {},
        400,
        "input 'z' has shape [1, 3]; the model takes [-1, ",
    ),
    (
        "zero-rows",
        "decode",
        "",
        lambda s: [tensor("z", "FP32", [0, *s["z"][1:]], b"")],
        [],
        {},
        400,
        "input 'z' has 0 rows; 1 to ",
    ),
    (
        "duplicate-input",
        "encoder",
        "",
        lambda s: [tensor("image", "FP32", s["image"], pixels_of(s["image"], 0.5))] * 2,
        [],
        {},
        400,
        "input 'image' is given twice",
    ),
    (
        "an-output-3-times",
        "decoder",
        "",
        lambda s: [tensor("z", "FP32", [64, *s["z"][1:]], pixels_of([64, *s["z"][1:]], 0.0))],
        lambda s: [s["decoder_output"]] * 3,
        {},
        400,
        "output '{decoder_output}' is requested more than once; name each output once",
    ),
    (
        "unknown-output",
        "encoder",
        "",
        lambda s: [tensor("image", "FP32", s["image"], pixels_of(s["image"], 0.5))],
        ["nope"],
        {},
        400,
        "has no output 'nope'; its outputs are mean, logvar",
    ),
    (
        "image-and-image-bytes",
        "encode",
        "",
        lambda s: [
            tensor("image", "FP32", s["image"], pixels_of(s["image"], 0.5)),
            tensor("image_bytes", "BYTES", [1], struct.pack("<I", 1) + b"x"),
        ],
        [],
        {},
        400,
        "takes exactly one of 'image' (FP32) and 'image_bytes' (BYTES, encoded images)",
    ),
    *(
        (
            f"{value}-pixels",
            "encode",
            "",
            lambda s, value=value: [tensor("image", "FP32", s["image"], pixels_of(s["image"], value))],
            [],
            {},
            400,
            "input 'image' of '{model}.encode' must hold finite values in [0, 1], the model's input scale",
        )
        for value in (float("nan"), float("inf"), -float("inf"), 2.0, -0.5)
    ),
    (
        "nan-latents",
        "decode",
        "",
        lambda s: [tensor("z", "FP32", s["z"], pixels_of(s["z"], float("nan")))],
        [],
        {},
        400,
        "input 'z' of '{model}.decode' must hold finite values",
    ),
    (
        "decoder-graph-overflows",
        "decoder",
        "",
        lambda s: [tensor("z", "FP32", s["z"], pixels_of(s["z"], 1e38))],
        [],
        {},
        400,
        "model '{model}.decoder' computed non-finite values in output '{decoder_output}': its inputs are outside",
    ),
    (
        "decode-overflows",
        "decode",
        "",
        lambda s: [tensor("z", "FP32", s["z"], pixels_of(s["z"], 1e38))],
        [],
        {},
        400,
        "z row 0 decodes to non-finite values",
    ),
    (
        "encoder-graph-overflows",
        "encoder",
        "",
        lambda s: [tensor("image", "FP32", s["image"], pixels_of(s["image"], 3e38))],
        [],
        {},
        400,
        "model '{model}.encoder' computed non-finite values in output 'mean'",
    ),
    (
        "bytes-length-prefix-past-the-end",
        "encode",
        "",
        lambda s: [tensor("image_bytes", "BYTES", [1], b"\xff\xff\xff\x00abc")],
        [],
        {},
        400,
        "input 'image_bytes': BYTES element 0 declares 16777215 bytes but only 3 remain",
    ),
    (
        "bytes-cut-in-its-length",
        "encode",
        "",
        lambda s: [tensor("image_bytes", "BYTES", [1], b"\x01\x00")],
        [],
        {},
        400,
        "input 'image_bytes': BYTES element 0 is cut short in its 4-byte length",
    ),
    (
        "bytes-more-elements-than-the-shape",
        "encode",
        "",
        lambda s: [tensor("image_bytes", "BYTES", [1], (struct.pack("<I", 1) + b"x") * 2)],
        [],
        {},
        400,
        "input 'image_bytes': shape [1] holds 1 elements but the binary data holds more BYTES elements",
    ),
    (
        "raw-contents-one-byte-short",
        "encoder",
        "",
        lambda s: [tensor("image", "FP32", s["image"], pixels_of(s["image"], 0.5)[:-1])],
        [],
        {},
        400,
        "input 'image': shape {image} of FP32 needs {image_bytes} bytes but ",
    ),
    (
        "bytes-not-an-image",
        "encode",
        "",
        lambda s: [tensor("image_bytes", "BYTES", [1], struct.pack("<I", 7) + b"not png")],
        [],
        {},
        400,
        "the bytes are not a decodable PNG, JPEG",
    ),
    ("unknown-parameter", "encode", "", None, [], {"bogus": 1}, 400, "has no parameter 'bogus'; it takes sample, seed"),
    ("seed-as-text", "encode", "", None, [], {"seed": "5"}, 400, "parameter seed: Input should be a valid integer"),
    ("k-true", "elbo", "", None, [], {"k": True}, 400, "parameter k: Input should be a valid integer"),
    ("k-as-text", "elbo", "", None, [], {"k": "5"}, 400, "parameter k: Input should be a valid integer"),
    ("k-as-float", "elbo", "", None, [], {"k": 5.0}, 400, "parameter k: Input should be a valid integer"),
    ("seed-false", "elbo", "", None, [], {"seed": False}, 400, "parameter seed: Input should be a valid integer"),
    ("k-over-max-k", "elbo", "", None, [], {"k": 2**63 - 1}, 400, "k must be between 1 and "),
    (
        "n-zero",
        "sample",
        "",
        lambda s: [],
        [],
        {"n": 0},
        400,
        "parameter n: Input should be greater than or equal to 1",
    ),
    (
        "binary-data-output-as-text",
        "encode",
        "",
        None,
        [],
        {"binary_data_output": "yes"},
        400,
        "parameter 'binary_data_output' must be true or false",
    ),
]


@pytest.mark.parametrize(
    ("suffix", "version", "inputs", "outputs", "parameters", "status", "expected"),
    [case[1:] for case in SHARED],
    ids=[case[0] for case in SHARED],
)
def test_a_refusal_is_the_same_over_grpc_and_rest(
    guarded, http, model, shapes, suffix, version, inputs, outputs, parameters, status, expected
):
    name = suffix[1:] if suffix.startswith("=") else f"{model}.{suffix}" if suffix else model
    given = inputs(shapes) if inputs else [tensor("image", "FP32", shapes["image"], pixels_of(shapes["image"], 0.5))]
    request = infer(name, given, outputs(shapes) if callable(outputs) else outputs, version, **parameters)
    code = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND}[status]
    took, message = refused(guarded, request, code)
    image_bytes = elements(shapes) * 4
    assert expected.format(model=model, image_bytes=image_bytes, **shapes) in message, message
    assert len(message) < 1000 and took < 5
    # the one wording that differs: where a raw tensor's byte count came from
    over_rest = message.replace("but its raw_input_contents is", "but binary_data_size is")
    assert rest_refusal(http, name, version, request) == (status, over_rest)


def test_more_rows_than_max_batch_are_refused_over_both(guarded, http, model, shapes, max_batch):
    shape = [max_batch + 1, *shapes["image"][1:]]
    request = infer(f"{model}.encoder", [tensor("image", "FP32", shape, pixels_of(shape, 0.5))])
    _, message = refused(guarded, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert message == f"input 'image' has {max_batch + 1} rows; 1 to {max_batch} are accepted (VAE_MAX_BATCH)"
    assert rest_refusal(http, f"{model}.encoder", "", request) == (400, message)


# -- what only gRPC can send: typed contents, raw contents beside them, wrong fields --------------------------------

GRPC_ONLY = [
    (
        "raw-contents-for-no-input",
        lambda s: infer("{model}.encoder", [tensor("image", "FP32", s["image"], pixels_of(s["image"], 0.5))]),
        lambda r: r.raw_input_contents.append(b"\0"),
        "the request has 1 inputs but 2 raw_input_contents: send every input's data raw",
    ),
    (
        "raw-and-typed-contents",
        lambda s: infer(
            "{model}.encoder",
            [tensor("image", "FP32", s["image"], pixels_of(s["image"], 0.5), fp32_contents=[0.5] * elements(s))],
        ),
        None,
        "input 'image' has both raw_input_contents and contents; send one",
    ),
    (
        "typed-in-the-wrong-field",
        lambda s: infer("{model}.encoder", [tensor("image", "FP32", s["image"], int_contents=[0] * elements(s))]),
        None,
        "input 'image': a FP32 tensor's elements go in contents.fp32_contents, not contents.int_contents",
    ),
    (
        "typed-in-two-fields",
        lambda s: infer(
            "{model}.encoder",
            [tensor("image", "FP32", s["image"], fp32_contents=[0.5] * elements(s), bytes_contents=[b"x"])],
        ),
        None,
        "input 'image': a FP32 tensor's elements go in contents.fp32_contents, not contents.bytes_contents",
    ),
    (
        "fp16-as-typed-contents",
        lambda s: infer("{model}.encoder", [tensor("image", "FP16", s["image"], fp32_contents=[0.5] * elements(s))]),
        None,
        "input 'image': FP16 travels as raw_input_contents only",
    ),
    (
        "typed-count-not-the-shape",
        lambda s: infer(
            "{model}.encoder", [tensor("image", "FP32", s["image"], fp32_contents=[0.5] * (elements(s) - 1))]
        ),
        None,
        "input 'image': shape {image} holds {count} elements but contents hold {count_less_one}",
    ),
    (
        "int8-overflow",
        lambda s: infer("{model}.encoder", [tensor("image", "INT8", s["image"], int_contents=[128] * elements(s))]),
        None,
        "input 'image': a value does not fit INT8",
    ),
    (
        "int8-underflow",
        lambda s: infer("{model}.encoder", [tensor("image", "INT8", s["image"], int_contents=[-129] * elements(s))]),
        None,
        "input 'image': a value does not fit INT8",
    ),
    (
        "uint8-overflow",
        lambda s: infer("{model}.encoder", [tensor("image", "UINT8", s["image"], uint_contents=[256] * elements(s))]),
        None,
        "input 'image': a value does not fit UINT8",
    ),
    (
        "int16-overflow",
        lambda s: infer("{model}.encoder", [tensor("image", "INT16", s["image"], int_contents=[2**15] * elements(s))]),
        None,
        "input 'image': a value does not fit INT16",
    ),
    (
        "int32-typed-for-fp32",
        lambda s: infer("{model}.encoder", [tensor("image", "INT32", s["image"], int_contents=[0] * elements(s))]),
        None,
        "input 'image' must be FP32, not INT32",
    ),
    (
        "bytes-typed-count-not-the-shape",
        lambda s: infer("{model}.encode", [tensor("image_bytes", "BYTES", [2], bytes_contents=[b"x"])]),
        None,
        "input 'image_bytes': shape [2] holds 2 elements but contents hold 1",
    ),
    (
        "bytes-typed-not-an-image",
        lambda s: infer("{model}.encode", [tensor("image_bytes", "BYTES", [1], bytes_contents=[b"\x89PNG\r\n"])]),
        None,
        "the bytes are not a decodable PNG, JPEG",
    ),
    (
        "an-input-without-a-name",
        lambda s: infer("{model}.encoder", [tensor("", "FP32", s["image"], pixels_of(s["image"], 0.5))]),
        None,
        "every input needs a name",
    ),
    (
        "an-unknown-datatype",
        lambda s: infer("{model}.encoder", [tensor("image", "FP99", s["image"], pixels_of(s["image"], 0.5))]),
        None,
        "input 'image': datatype must be one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, "
        "FP16, FP32, FP64, BYTES, not 'FP99'",
    ),
    (
        "a-lower-case-datatype",
        lambda s: infer("{model}.encoder", [tensor("image", "fp32", s["image"], pixels_of(s["image"], 0.5))]),
        None,
        "input 'image': datatype must be one of BOOL,",
    ),
    (
        "a-parameter-with-no-value",
        lambda s: infer("{model}.encoder", [tensor("image", "FP32", s["image"], pixels_of(s["image"], 0.5))]),
        lambda r: r.parameters["seed"].SetInParent(),
        "parameter 'seed' of the request has no value set",
    ),
    (
        "an-output-parameter-with-no-value",
        lambda s: infer("{model}.encoder", [tensor("image", "FP32", s["image"], pixels_of(s["image"], 0.5))]),
        lambda r: r.outputs.add(name="mean").parameters["binary_data"].SetInParent(),
        "parameter 'binary_data' of output 'mean' has no value set",
    ),
    (
        "an-output-binary-data-not-a-bool",
        lambda s: infer("{model}.encoder", [tensor("image", "FP32", s["image"], pixels_of(s["image"], 0.5))]),
        lambda r: setattr(r.outputs.add(name="mean").parameters["binary_data"], "int64_param", 1),
        "output 'mean': parameter 'binary_data' must be true or false",
    ),
    (
        "typed-nan-pixels",
        lambda s: infer(
            "{model}.encode", [tensor("image", "FP32", s["image"], fp32_contents=[float("nan")] * elements(s))]
        ),
        None,
        "input 'image' of '{model}.encode' must hold finite values in [0, 1]",
    ),
    (
        "typed-overflowing-latents",
        lambda s: infer("{model}.decoder", [tensor("z", "FP32", s["z"], fp32_contents=[1e38] * elements(s, "z"))]),
        None,
        "model '{model}.decoder' computed non-finite values in output",
    ),
]


def elements(shapes: dict, name: str = "image") -> int:
    return int(np.prod(shapes[name]))


@pytest.mark.parametrize(("build", "change", "expected"), [c[1:] for c in GRPC_ONLY], ids=[c[0] for c in GRPC_ONLY])
def test_a_malformed_tensor_message_is_invalid_argument(guarded, model, shapes, build, change, expected):
    request = build(shapes)
    request.model_name = request.model_name.format(model=model)
    if change is not None:
        change(request)
    took, message = refused(guarded, request, grpc.StatusCode.INVALID_ARGUMENT)
    count = elements(shapes)
    assert expected.format(model=model, image=shapes["image"], count=count, count_less_one=count - 1) in message, (
        message
    )
    assert took < 5


# -- shapes checked before numpy sees them ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ([2**62, 2**62], "than the request's"),
        ([2**63 - 1], "than the request's"),
        ([0, 2**63 - 1], "than the request's"),
        ([0, 2**62, 2**62], "than the request's"),
        ([2**40], "than the request's"),
        ([-1, 1, 28, 28], "'shape' must be a list of non-negative integers, not [-1, 1, 28, 28]"),
        ([-(2**63)], "'shape' must be a list of non-negative integers"),
        ([1] * 100, "shape has 100 dimensions; at most 8 are accepted"),
        ([1] * 9, "shape has 9 dimensions; at most 8 are accepted"),
    ],
    ids=[
        "2^62-squared",
        "2^63-1",
        "zero-by-2^63-1",
        "zero-by-2^62-squared",
        "2^40",
        "negative",
        "-2^63",
        "rank-100",
        "rank-9",
    ],
)
@pytest.mark.parametrize("encoding", ["raw", "typed", "bytes-raw", "bytes-typed"])
def test_a_huge_or_malformed_shape_is_refused_at_once(guarded, model, shape, expected, encoding):
    name, datatype = ("image_bytes", "BYTES") if encoding.startswith("bytes") else ("image", "FP32")
    contents = {"bytes_contents": [b""]} if encoding == "bytes-typed" else {"fp32_contents": [0.0]}
    raw = b"\0\0\0\0" if encoding.endswith("raw") else None
    request = infer(f"{model}.encode", [tensor(name, datatype, shape, raw, **({} if raw else contents))])
    took, message = refused(guarded, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert message.startswith(f"input '{name}': ") and expected in message, message
    assert took < 1.0, f"{took:.2f} s"


# -- sizes: messages past the cap, and large messages that are cheap to refuse ---------------------------------------


def test_a_message_over_the_upload_cap_is_resource_exhausted(health_guarded, model, shapes):
    request = infer(f"{model}.encoder", [tensor("image", "FP32", shapes["image"], b"\0" * OVERSIZED_BYTES)])
    _, message = refused(health_guarded, request, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "larger than max" in message, message


def test_tritonclient_sending_an_oversized_tensor_gets_resource_exhausted(health_guarded, grpc_target, model, shapes):
    client = triton.InferenceServerClient(grpc_target)
    try:
        shape = [OVERSIZED_BYTES // (elements(shapes) * 4) + 1, *shapes["image"][1:]]
        image = triton.InferInput("image", shape, "FP32")
        image.set_data_from_numpy(np.zeros(shape, np.float32))
        with pytest.raises(InferenceServerException) as error:
            client.infer(f"{model}.encoder", [image], client_timeout=30)
        assert error.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "larger than max" in no_leak(error.value.message())
        assert client.is_server_ready()
    finally:
        client.close()


def test_ten_megabytes_of_typed_contents_are_counted_not_copied_on_the_loop(health_guarded, model, shapes):
    """The REST case of 10 MB of flat JSON numbers: over gRPC, 2.5 million fp32_contents."""
    shape = [64, *shapes["z"][1:]]
    request = infer(f"{model}.decoder", [tensor("z", "FP32", shape, fp32_contents=[0.5] * 2_500_000)])
    _, message = refused(health_guarded, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert message == f"input 'z': shape {shape} holds {int(np.prod(shape))} elements but contents hold 2500000"


def test_two_and_a_half_million_zero_length_bytes_elements_are_refused(health_guarded, model, max_batch):
    request = infer(f"{model}.encode", [tensor("image_bytes", "BYTES", [2_500_000], struct.pack("<I", 0) * 2_500_000)])
    _, message = refused(health_guarded, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert message == f"input 'image_bytes' has 2500000 rows; 1 to {max_batch} are accepted (VAE_MAX_BATCH)"


def test_five_million_empty_typed_bytes_elements_are_refused(health_guarded, model):
    """2 bytes an element on the wire, about 48 parsed: counted on the wire first (service/grpc_server/wire.py),
    or parsing this 10 MB message would take some 240 MB (it took a pod past its 512 MiB limit)."""
    request = infer(f"{model}.encode", [tensor("image_bytes", "BYTES", [5_000_000], bytes_contents=[b""] * 5_000_000)])
    _, message = refused(health_guarded, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert message.startswith("the request's typed contents hold more than 65536 BYTES elements")


def test_a_parameter_map_of_400000_keys_is_refused(health_guarded, model, shapes):
    """The REST case of a parameter object of 800,000 keys: refused on its count, before any key is read."""
    request = infer(f"{model}.encode", [tensor("image", "FP32", shapes["image"], pixels_of(shapes["image"], 0.5))])
    for i in range(400_000):
        request.parameters[f"k{i}"].bool_param = True
    _, message = refused(health_guarded, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert message == "the request has more than 256 parameters; at most 256 are accepted"


@pytest.mark.parametrize("what", ["inputs", "outputs"])
def test_a_message_of_many_small_entries_is_refused_as_fast_as_over_rest(health_guarded, model, shapes, what):
    """REST's 10 MB of nested empty lists: refused within 2 s. Over gRPC the same cost comes from many
    inputs or outputs, each a few bytes."""
    if what == "inputs":  # empty tensors: each one valid on its own
        request = infer(f"{model}.encoder")
        request.inputs.extend(Tensor(name=f"i{i}", datatype="FP32", shape=[0]) for i in range(400_000))
    else:
        request = infer(f"{model}.encoder", [tensor("image", "FP32", shapes["image"], pixels_of(shapes["image"], 0.5))])
        request.outputs.extend(Output(name=f"o{i}") for i in range(800_000))
    took, _ = refused(health_guarded, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert took < 2.0, f"{took:.1f} s to refuse {len(request.inputs)} inputs and {len(request.outputs)} outputs"


# -- error messages never echo a client's text at length ------------------------------------------------------------

LONG = "x" * 1_000_000

ECHOES = [
    pytest.param("ModelInfer", lambda m: infer(LONG), grpc.StatusCode.NOT_FOUND, id="model-name"),
    pytest.param("ModelInfer", lambda m: infer(LONG + ".encoder"), grpc.StatusCode.NOT_FOUND, id="model-with-suffix"),
    pytest.param(
        "ModelInfer",
        lambda m: infer(f"{m}.encoder", [tensor(LONG, "FP32", [1], b"\0" * 4)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        id="input-name",
    ),
    pytest.param(
        "ModelInfer",
        lambda m: infer(f"{m}.encoder", [tensor("image", LONG, [1], b"\0" * 4)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        id="datatype",
    ),
    pytest.param(
        "ModelInfer", lambda m: infer(f"{m}.sample", outputs=[LONG]), grpc.StatusCode.INVALID_ARGUMENT, id="output"
    ),
    pytest.param(
        "ModelInfer", lambda m: infer(f"{m}.sample", **{LONG: 1}), grpc.StatusCode.INVALID_ARGUMENT, id="parameter"
    ),
    pytest.param(
        "ModelInfer", lambda m: infer(f"{m}.sample", seed=LONG), grpc.StatusCode.INVALID_ARGUMENT, id="parameter-text"
    ),
    pytest.param(
        "ModelMetadata",
        lambda m: service_pb2.ModelMetadataRequest(name=LONG),
        grpc.StatusCode.NOT_FOUND,
        id="metadata-name",
    ),
    pytest.param(
        "ModelStatistics",
        lambda m: service_pb2.ModelStatisticsRequest(name=LONG),
        grpc.StatusCode.NOT_FOUND,
        id="statistics-name",
    ),
    pytest.param(
        "ModelInfer",
        lambda m: infer(f"{m}.encoder", version=LONG),
        grpc.StatusCode.NOT_FOUND,
        id="version",
    ),
    pytest.param(
        "ModelMetadata",
        lambda m: service_pb2.ModelMetadataRequest(name=f"{m}.encoder", version=LONG),
        grpc.StatusCode.NOT_FOUND,
        id="metadata-version",
    ),
    pytest.param(
        "ModelStatistics",
        lambda m: service_pb2.ModelStatisticsRequest(name=f"{m}.encoder", version=LONG),
        grpc.StatusCode.NOT_FOUND,
        id="statistics-version",
    ),
]


@pytest.mark.parametrize(("method", "build", "code"), ECHOES)
def test_error_messages_never_echo_a_clients_text_at_length(guarded, model, method, build, code):
    _, message = refused(guarded, build(model), code, method)
    assert len(message) < 1000, len(message)


# -- the repository RPCs: behind the admin token ------------------------------------------------------------------


@own_server
@pytest.mark.parametrize(
    ("method", "build"),
    [
        ("RepositoryIndex", lambda m: service_pb2.RepositoryIndexRequest()),
        ("RepositoryModelLoad", lambda m: service_pb2.RepositoryModelLoadRequest(model_name=m)),
        ("RepositoryModelUnload", lambda m: service_pb2.RepositoryModelUnloadRequest(model_name=m)),
    ],
    ids=["index", "load", "unload"],
)
def test_repository_control_is_off_without_an_admin_token(guarded, model, method, build):
    """The suite's server has no VAE_ADMIN_TOKEN: control is refused whatever the metadata says."""
    for metadata in (None, (("authorization", "Bearer anything"),)):
        _, message = refused(guarded, build(model), grpc.StatusCode.PERMISSION_DENIED, method, metadata=metadata)
        assert message == "repository control is off: set VAE_ADMIN_TOKEN (or VAE_REPOSITORY_CONTROL=open)"


@pytest.fixture(scope="module")
def limited(tmp_path_factory) -> Iterator[Server]:
    """A server with an admin token, two gRPC calls at once, one model call in flight and one worker thread."""
    if os.environ.get("VAE_BASE_URL"):
        pytest.skip("starts a server of its own")
    with Server(
        tmp_path_factory.mktemp("grpc-limits"),
        VAE_ADMIN_TOKEN=ADMIN_TOKEN,
        VAE_GRPC_MAX_CONCURRENT_RPCS="2",
        VAE_MAX_IN_FLIGHT="1",
        VAE_INFERENCE_THREADS="1",
    ) as server:
        yield server


@pytest.fixture(scope="module")
def limited_http(limited) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=limited.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def limited_stub(limited) -> Iterator[Any]:
    with grpc.insecure_channel(limited.grpc_target, options=UNLIMITED) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture
def limited_guarded(limited, limited_http, limited_stub, model, shapes):
    with grpc_guard(limited_http, limited_stub, model, shapes):
        yield limited_stub
    assert "Traceback" not in limited.log(), limited.log()[-3000:]


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        (("authorization", "Bearer wrong"),),
        (("authorization", f"Basic {ADMIN_TOKEN}"),),
        (("authorization", ""),),
    ],
    ids=["none", "wrong-token", "basic-scheme", "empty"],
)
@pytest.mark.parametrize(
    ("method", "build"),
    [
        ("RepositoryIndex", lambda m: service_pb2.RepositoryIndexRequest()),
        ("RepositoryModelLoad", lambda m: service_pb2.RepositoryModelLoadRequest(model_name=m)),
        ("RepositoryModelUnload", lambda m: service_pb2.RepositoryModelUnloadRequest(model_name=m)),
    ],
    ids=["index", "load", "unload"],
)
def test_repository_control_needs_the_bearer_token(limited_guarded, model, method, build, metadata):
    _, message = refused(limited_guarded, build(model), grpc.StatusCode.UNAUTHENTICATED, method, metadata=metadata)
    assert message == "repository control needs the header Authorization: Bearer <VAE_ADMIN_TOKEN>"


ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


@pytest.mark.parametrize(
    ("method", "request_", "expected"),
    [
        (
            "RepositoryIndex",
            service_pb2.RepositoryIndexRequest(repository_name="other"),
            "no repository 'other': this server has one, named by leaving repository_name empty",
        ),
        (
            "RepositoryModelLoad",
            service_pb2.RepositoryModelLoadRequest(repository_name="other", model_name="any"),
            "no repository 'other': this server has one, named by leaving repository_name empty",
        ),
        (
            "RepositoryModelUnload",
            service_pb2.RepositoryModelUnloadRequest(repository_name="other", model_name="any"),
            "no repository 'other': this server has one, named by leaving repository_name empty",
        ),
        (
            "RepositoryModelLoad",
            service_pb2.RepositoryModelLoadRequest(model_name="nope"),
            "failed to load 'nope': no model 'nope' in the repository",
        ),
        (
            "RepositoryModelLoad",
            service_pb2.RepositoryModelLoadRequest(model_name="../../etc"),
            "failed to load '../../etc': no model '../../etc' in the repository",
        ),
        (
            "RepositoryModelUnload",
            service_pb2.RepositoryModelUnloadRequest(model_name="nope"),
            "failed to unload 'nope': model 'nope' is not loaded",
        ),
    ],
    ids=[
        "index-other-repository",
        "load-other-repository",
        "unload-other-repository",
        "load-unknown",
        "load-path",
        "unload-unknown",
    ],
)
def test_repository_requests_the_server_cannot_do_are_invalid_argument(limited_guarded, method, request_, expected):
    _, message = refused(limited_guarded, request_, grpc.StatusCode.INVALID_ARGUMENT, method, metadata=ADMIN)
    assert message == expected


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("RepositoryModelLoad", service_pb2.RepositoryModelLoadRequest(model_name=LONG)),
        ("RepositoryModelUnload", service_pb2.RepositoryModelUnloadRequest(model_name=LONG)),
    ],
    ids=["load", "unload"],
)
def test_a_long_model_name_to_load_is_not_echoed_at_length(limited_guarded, method, request_):
    _, message = refused(limited_guarded, request_, grpc.StatusCode.INVALID_ARGUMENT, method, metadata=ADMIN)
    assert len(message) < 1000, len(message)


# -- concurrency: gRPC's call limit and the model's in-flight limit ---------------------------------------------------


def slow_request(model: str, shapes: dict, rows: int = SLOW_ROWS, k: int = SLOW_K) -> service_pb2.ModelInferRequest:
    shape = [rows, *shapes["image"][1:]]
    pixels = np.random.default_rng(0).random(shape, dtype=np.float32)
    return infer(f"{model}.elbo", [tensor("image", "FP32", shape, pixels.tobytes())], k=k)


def test_calls_past_the_limits_are_resource_exhausted_and_the_rest_answer(
    limited, limited_http, limited_stub, model, shapes
):
    """Twelve slow calls at once, each on a connection of its own (channels to one target share one
    connection unless told not to, and HTTP/2 then queues streams past the limit on the client)."""
    request = slow_request(model, shapes, rows=4, k=1000)
    codes: Counter = Counter()
    messages = set()
    channels = [
        grpc.insecure_channel(limited.grpc_target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(12)
    ]
    try:
        with grpc_guard(limited_http, limited_stub, model, shapes, health=True):
            for channel in channels:  # connected before the burst, so that the calls arrive together
                grpc.channel_ready_future(channel).result(timeout=10)
            stubs = [service_pb2_grpc.GRPCInferenceServiceStub(channel) for channel in channels]
            futures = [stub.ModelInfer.future(request, timeout=60) for stub in stubs]
            for future in futures:
                try:
                    assert future.result().outputs
                    codes["OK"] += 1
                except grpc.RpcError as error:
                    codes[error.code().name] += 1
                    messages.add(no_leak(error.details()))
    finally:
        for channel in channels:
            channel.close()
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
    for message in messages:
        assert message == "Concurrent RPC limit exceeded!" or message.startswith(
            f"more than 1 model calls in flight on {model} "
        ), message


# -- deadlines -------------------------------------------------------------------------------------------------------


def test_a_call_past_its_deadline_is_deadline_exceeded_and_its_slot_is_released(
    health_guarded, http, grpc_target, model, shapes
):
    request = slow_request(model, shapes, k=1000)
    _, message = refused(health_guarded, request, grpc.StatusCode.DEADLINE_EXCEEDED, timeout=0.1)
    assert message == "Deadline Exceeded"
    client = triton.InferenceServerClient(grpc_target)
    try:
        image = triton.InferInput("image", [SLOW_ROWS, *shapes["image"][1:]], "FP32")
        image.set_data_from_numpy(np.frombuffer(request.raw_input_contents[0], np.float32).reshape(image.shape()))
        with pytest.raises(InferenceServerException) as error:
            client.infer(f"{model}.elbo", [image], parameters={"k": 1000}, client_timeout=0.001)
        assert error.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert client.is_server_ready()
    finally:
        client.close()
    poll(lambda: in_flight(http) == 0, "the in-flight gauge back to 0", timeout=30)


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def test_once_the_gauge_is_back_to_zero_no_model_work_runs_on(limited, limited_http, limited_stub, model, shapes):
    """Four slow calls, each given up by its client after 0.1 s. When the in-flight gauge says 0, nothing is
    computing: the server's process uses (almost) no CPU. (No /healthz poller here: it would use CPU too.)"""
    if not Path(f"/proc/{limited.process.pid}/stat").exists():
        pytest.skip("reads the server's CPU time from /proc")
    request = slow_request(model, shapes)
    for _ in range(4):
        with pytest.raises(grpc.RpcError) as error:
            limited_stub.ModelInfer(request, timeout=0.1)
        assert error.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)
    poll(lambda: in_flight(limited_http) == 0, "the in-flight gauge back to 0", timeout=60)
    began = process_cpu_seconds(limited.process.pid)
    time.sleep(1.0)  # the window the CPU time is measured over, not synchronisation
    busy = process_cpu_seconds(limited.process.pid) - began
    assert busy < 0.25, f"{busy:.2f} CPU seconds in the second after the in-flight gauge said 0"
