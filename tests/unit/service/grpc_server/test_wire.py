"""The count of a message's repeated entries on its wire bytes, before protobuf parses them: refused past the
limits, quietly passed when ordinary, small or unreadable (protobuf's parse judges those)."""

from __future__ import annotations

import numpy as np
import pytest

from service.grpc_server import vae_inference_pb2 as pb
from service.grpc_server import wire
from service.v2.codec import ProtocolError

PADDING = b"\x00" * wire.SCAN_FROM_BYTES  # raw contents this large make the message one the scan looks at


def infer(**fields) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m.encode", **fields)
    message.raw_input_contents.append(PADDING)
    return message


def refused(message, words: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        wire.check(type(message).__name__, message.SerializeToString())
    assert words in caught.value.message and caught.value.status == 400


def test_an_ordinary_large_request_passes_without_a_refusal():
    message = infer()
    tensor = message.inputs.add(name="image", datatype="FP32", shape=[64, 1, 128, 64])
    tensor.contents.fp32_contents.extend(np.zeros(64 * 128 * 64, np.float32))  # packed: one field, 2 MB
    message.outputs.add(name="mean")
    message.parameters["seed"].int64_param = 1
    wire.check("ModelInferRequest", message.SerializeToString())


def many_parameters(parameters) -> None:
    for i in range(257):
        parameters[f"k{i}"].bool_param = True


@pytest.mark.parametrize(
    "fill, words",
    [
        (lambda m: m.inputs.extend([pb.ModelInferRequest.InferInputTensor(name="i")] * 65), "more than 64 inputs"),
        (
            lambda m: m.outputs.extend([pb.ModelInferRequest.InferRequestedOutputTensor(name="o")] * 65),
            "more than 64 requested outputs",
        ),
        (lambda m: m.raw_input_contents.extend([b""] * 64), "more than 64 raw_input_contents"),
        (lambda m: many_parameters(m.parameters), "the request has more than 256 parameters"),
        (lambda m: many_parameters(m.inputs.add(name="i").parameters), "an input has more than 256 parameters"),
        (lambda m: many_parameters(m.outputs.add(name="o").parameters), "an output has more than 256 parameters"),
        (
            lambda m: m.inputs.add(name="b", datatype="BYTES").contents.bytes_contents.extend([b""] * 65_537),
            "more than 65536 BYTES elements",
        ),
    ],
)
def test_repeated_entries_past_their_limits_are_refused_before_parsing(fill, words):
    message = infer()
    fill(message)
    refused(message, words)


def test_bytes_elements_are_counted_across_the_inputs():
    message = infer()
    for name in ("a", "b"):
        message.inputs.add(name=name, datatype="BYTES").contents.bytes_contents.extend([b""] * 40_000)
    refused(message, "more than 65536 BYTES elements")


def test_a_repository_request_s_parameters_are_counted_too():
    message = pb.RepositoryModelLoadRequest(model_name="m" * wire.SCAN_FROM_BYTES)
    for i in range(257):
        message.parameters[f"k{i}"].bool_param = True
    refused(message, "more than 256 parameters")


def test_small_and_unreadable_messages_are_left_to_protobuf():
    small = pb.ModelInferRequest()
    small.inputs.extend([pb.ModelInferRequest.InferInputTensor(name="i")] * 1000)  # small: parsing it costs little
    wire.check("ModelInferRequest", small.SerializeToString())
    wire.check("ModelInferRequest", b"\xff" * wire.SCAN_FROM_BYTES)  # no readable field: protobuf refuses it
    wire.check("ModelInferRequest", b"\x3a\xff\xff\xff\x0f" + PADDING)  # a length past the end
