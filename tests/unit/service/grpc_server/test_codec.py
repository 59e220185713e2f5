"""gRPC messages to the codec's tensors and back: raw and typed contents, parameters, and the refusals,
with the REST codec's messages where the two share a check."""

from __future__ import annotations

import numpy as np
import pytest

from service.grpc_server import codec
from service.grpc_server import vae_inference_pb2 as pb
from service.v2.codec import InferResponse, ProtocolError, join_bytes


def request(*tensors: tuple[str, str, list[int]], raw: list[bytes] | None = None) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m.encoder")
    for name, datatype, shape in tensors:
        message.inputs.add(name=name, datatype=datatype, shape=shape)
    message.raw_input_contents.extend(raw or [])
    return message


def parse(message: pb.ModelInferRequest):
    return codec.infer_request(message, message.ByteSize())


def refused(message: pb.ModelInferRequest, words: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse(message)
    assert words in caught.value.message and caught.value.status == 400


def test_raw_contents_are_the_tensor_s_little_endian_bytes():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    parsed = parse(request(("x", "FP32", [2, 3]), raw=[x.tobytes()]))
    assert parsed.inputs[0].data.dtype == np.float32 and np.array_equal(parsed.inputs[0].data, x)
    assert parsed.outputs is None and parsed.id is None and parsed.parameters == {}


@pytest.mark.parametrize(
    "datatype, field, values",
    [
        ("FP32", "fp32_contents", [0.5, -1.25]),
        ("FP64", "fp64_contents", [0.1, 2.0]),
        ("INT8", "int_contents", [-128, 127]),
        ("INT32", "int_contents", [-(2**31), 2**31 - 1]),
        ("INT64", "int64_contents", [-(2**63), 2**63 - 1]),
        ("UINT8", "uint_contents", [0, 255]),
        ("UINT64", "uint64_contents", [0, 2**64 - 1]),
        ("BOOL", "bool_contents", [True, False]),
    ],
)
def test_typed_contents_become_the_datatype_s_array(datatype, field, values):
    message = request(("x", datatype, [2]))
    getattr(message.inputs[0].contents, field).extend(values)
    data = parse(message).inputs[0].data
    assert data.dtype == codec.DTYPES[datatype] and data.tolist() == values


def test_bytes_elements_typed_or_raw_are_the_same_tensor():
    typed = request(("b", "BYTES", [2]))
    typed.inputs[0].contents.bytes_contents.extend([b"png", b""])
    elements = np.array([b"png", b""], dtype=object)
    raw = request(("b", "BYTES", [2]), raw=[join_bytes(elements)])
    assert parse(typed).inputs[0].data.tolist() == parse(raw).inputs[0].data.tolist() == [b"png", b""]


def test_typed_contents_must_match_the_shape_and_the_datatype():
    three = request(("x", "FP32", [2]))
    three.inputs[0].contents.fp32_contents.extend([1.0, 2.0, 3.0])
    refused(three, "holds 2 elements but contents hold 3")
    other_field = request(("x", "FP32", [2]))
    other_field.inputs[0].contents.int64_contents.extend([1, 2])
    refused(other_field, "go in contents.fp32_contents, not contents.int64_contents")
    both = request(("x", "FP32", [2]), raw=[b"\x00" * 8])
    both.inputs[0].contents.fp32_contents.extend([1.0, 2.0])
    refused(both, "both raw_input_contents and contents")


def test_a_value_that_does_not_fit_its_integer_type_is_refused():
    message = request(("x", "INT8", [1]))
    message.inputs[0].contents.int_contents.append(128)
    refused(message, "does not fit INT8")


def test_fp16_travels_raw_only():
    message = request(("x", "FP16", [1]))
    refused(message, "FP16 travels as raw_input_contents only")
    half = np.array([1.5], dtype=np.float16)
    assert parse(request(("x", "FP16", [1]), raw=[half.tobytes()])).inputs[0].data.tolist() == [1.5]


@pytest.mark.parametrize(
    "message, words",
    [
        (request(("x", "FP32", [2]), ("y", "FP32", [1]), raw=[b"\x00" * 8]), "2 inputs but 1 raw_input_contents"),
        (request(("x", "FP32", [2]), raw=[b"\x00" * 4]), "needs 8 bytes but its raw_input_contents is 4"),
        (request(("x", "FP99", [1]), raw=[b""]), "datatype must be one of"),
        (request(("x", "FP32", [2**62, 2**62]), raw=[b""]), "declares more elements"),
        (request(("x", "FP32", [-1]), raw=[b""]), "non-negative integers"),
        (request(("x", "FP32", [1] * 9), raw=[b"\x00" * 4]), "at most 8 are accepted"),
        (request(("", "FP32", [1]), raw=[b"\x00" * 4]), "every input needs a name"),
        (request(("x", "FP32", [1]), ("x", "FP32", [1]), raw=[b"\x00" * 4] * 2), "'x' is given twice"),
        (request(("b", "BYTES", [1]), raw=[b"\x09\x00\x00\x00ab"]), "declares 9 bytes but only 2 remain"),
    ],
)
def test_malformed_tensors_are_refused_with_what_is_wrong(message, words):
    refused(message, words)


def test_parameters_of_every_kind_and_the_outputs_asked_for():
    message = request(("x", "FP32", [1]), raw=[b"\x00" * 4])
    message.id = "req-1"
    message.parameters["flag"].bool_param = True
    message.parameters["k"].int64_param = -3
    message.parameters["name"].string_param = "s"
    message.parameters["t"].double_param = 0.5
    message.parameters["u"].uint64_param = 2**64 - 1
    message.outputs.add(name="mean").parameters["binary_data"].bool_param = False
    message.outputs.add(name="logvar")
    parsed = parse(message)
    assert parsed.id == "req-1"
    assert parsed.parameters == {"flag": True, "k": -3, "name": "s", "t": 0.5, "u": 2**64 - 1}
    assert [(o.name, o.binary) for o in parsed.outputs] == [("mean", False), ("logvar", None)]


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda m: m.outputs.extend([pb.ModelInferRequest.InferRequestedOutputTensor(name="o")] * 2), "more than once"),
        (lambda m: m.parameters["seed"].Clear(), "parameter 'seed' of the request has no value set"),
        (lambda m: setattr(m.parameters["binary_data_output"], "int64_param", 1), "must be true or false"),
        (lambda m: setattr(m.outputs.add(name="o").parameters["binary_data"], "string_param", "y"), "true or false"),
    ],
)
def test_requests_refused_as_over_rest(change, words):
    message = request(("x", "FP32", [1]), raw=[b"\x00" * 4])
    change(message)
    refused(message, words)


def test_the_response_carries_every_output_raw_and_the_parameters_typed():
    images = np.arange(4, dtype=np.float32).reshape(1, 2, 2)
    png = np.array([b"\x89PNG", b"x"], dtype=object)
    response = InferResponse(
        "m.sample",
        "1.0.0",
        "r",
        [("images", images, False), ("png", png, True)],
        {"seed": 7, "note": "n", "fpr": 0.01, "exact": True, "none": None, "more": {"a": [1, 2]}},
    )
    message = pb.ModelInferResponse.FromString(codec.infer_response(response))
    assert (message.model_name, message.model_version, message.id) == ("m.sample", "1.0.0", "r")
    assert [(o.name, o.datatype, list(o.shape)) for o in message.outputs] == [
        ("images", "FP32", [1, 2, 2]),
        ("png", "BYTES", [2]),
    ]
    assert message.raw_output_contents[0] == images.tobytes()
    assert message.raw_output_contents[1] == join_bytes(png)
    values = {k: codec.parameter_value(v) for k, v in message.parameters.items()}
    assert values == {"seed": 7, "note": "n", "fpr": 0.01, "exact": True, "more": '{"a":[1,2]}'}


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda m: m.inputs.extend([pb.ModelInferRequest.InferInputTensor(name="e")] * 65), "66 inputs; at most 64"),
        (
            lambda m: m.outputs.extend([pb.ModelInferRequest.InferRequestedOutputTensor(name="o")] * 65),
            "65 requested outputs; at most 64",
        ),
        (lambda m: [m.parameters[f"p{i}"].CopyFrom(pb.InferParameter(bool_param=True)) for i in range(257)], "257"),
    ],
)
def test_a_message_of_many_entries_is_refused_before_any_is_read(change, words):
    message = request(("x", "FP32", [1]), raw=[b"\x00" * 4])
    change(message)
    refused(message, words)
