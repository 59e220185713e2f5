"""The protocol's gRPC messages to and from the codec's types (service/v2/codec.py): a tensor comes as raw
bytes (`raw_input_contents`, what tritonclient sends) or typed contents (`contents.fp32_contents`, ...),
and goes back as raw bytes, as Triton answers. The shape and datatype checks are the REST ones.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from service.grpc_server import vae_inference_pb2 as pb
from service.grpc_server.wire import MAX_PARAMETERS, MAX_TENSORS
from service.v2.codec import (
    BYTES,
    DATATYPES,
    DTYPES,
    InferRequest,
    InferResponse,
    ProtocolError,
    RequestedOutput,
    Tensor,
    assembled,
    binary_tensor,
    checked_shape,
    datatype_of,
    join_bytes,
    quoted,
)

# The contents field that carries each datatype's elements (FP16 has none: raw only, as in Triton).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}


def parameter_value(parameter: Any) -> Any:
    """An InferParameter (or ModelRepositoryParameter) as a Python value; None when none is set."""
    which = parameter.WhichOneof("parameter_choice")
    return None if which is None else getattr(parameter, which)


def parameters_of(mapping: Any, where: str) -> dict[str, Any]:
    if len(mapping) > MAX_PARAMETERS:
        raise ProtocolError(f"{where} has {len(mapping)} parameters; at most {MAX_PARAMETERS} are accepted")
    values = {key: parameter_value(value) for key, value in mapping.items()}
    unset = [key for key, value in values.items() if value is None]
    if unset:
        raise ProtocolError(f"parameter {quoted(unset[0])} of {where} has no value set")
    return values


def set_parameter(parameter: Any, value: Any) -> None:
    """A response parameter into an InferParameter: bool, integer, float, string; anything else as JSON text."""
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    elif isinstance(value, str):
        parameter.string_param = value
    else:
        parameter.string_param = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def infer_request(message: pb.ModelInferRequest, message_bytes: int, max_rows: int | None = None) -> InferRequest:
    """The request's tensors, parameters and outputs. Raw contents go with the inputs in order: all of the
    inputs or none (Triton's rule). No tensor may declare more elements than the message has bytes."""
    for entries, what in ((message.inputs, "inputs"), (message.outputs, "requested outputs")):
        if len(entries) > MAX_TENSORS:  # before any per-entry work: each costs Python time
            raise ProtocolError(
                f"the request has {len(entries)} {what}; at most {MAX_TENSORS} are accepted (a model here takes "
                "one or two inputs and has at most a dozen outputs)"
            )
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise ProtocolError(
            f"the request has {len(message.inputs)} inputs but {len(raw)} raw_input_contents: send every "
            "input's data raw, in the order of the inputs, or every input's as contents"
        )
    limit = max(message_bytes, 1)
    inputs = [_input(tensor, raw[i] if raw else None, limit, max_rows) for i, tensor in enumerate(message.inputs)]
    outputs = None
    if message.outputs:
        outputs = [_output(output) for output in message.outputs]
    parameters = parameters_of(message.parameters, "the request")
    return assembled(message.id or None, parameters, inputs, outputs)


def _output(output: Any) -> RequestedOutput:
    binary = parameters_of(output.parameters, f"output {quoted(output.name)}").get("binary_data")
    if binary is not None and not isinstance(binary, bool):
        raise ProtocolError(f"output {quoted(output.name)}: parameter 'binary_data' must be true or false")
    return RequestedOutput(output.name, binary)


def _input(tensor: Any, raw: bytes | None, limit: int, max_rows: int | None) -> Tensor:
    name, datatype = tensor.name, tensor.datatype
    if not name:
        raise ProtocolError("every input needs a name")
    if datatype not in DATATYPES:
        raise ProtocolError(
            f"input {quoted(name)}: datatype must be one of {', '.join(DATATYPES)}, not {quoted(datatype)}"
        )
    shape = checked_shape(list(tensor.shape), name, limit, max_rows)
    given = [f.name for f, _ in tensor.contents.ListFields()] if tensor.HasField("contents") else []
    if raw is not None:
        if given:
            raise ProtocolError(f"input {quoted(name)} has both raw_input_contents and contents; send one")
        return Tensor(name, datatype, binary_tensor(raw, datatype, shape, name, "its raw_input_contents"))
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise ProtocolError(f"input {quoted(name)}: {datatype} travels as raw_input_contents only")
    if any(other != field for other in given):
        raise ProtocolError(
            f"input {quoted(name)}: a {datatype} tensor's elements go in contents.{field}, not "
            f"{', '.join(f'contents.{g}' for g in given if g != field)}"
        )
    return Tensor(name, datatype, _typed(getattr(tensor.contents, field), datatype, shape, name))


def _typed(values: Any, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    count = math.prod(shape)
    if len(values) != count:
        raise ProtocolError(
            f"input {quoted(name)}: shape {list(shape)} holds {count} elements but contents hold {len(values)}"
        )
    # np.fromiter: the elements go into the array one at a time, never all at once into a list of Python objects
    if datatype == BYTES:
        return np.fromiter(values, dtype=object, count=count).reshape(shape)
    dtype = DTYPES[datatype]
    kind = {"f": np.float64, "i": np.int64, "u": np.uint64, "b": np.bool_}[dtype.kind]
    wide: np.ndarray = np.fromiter(values, dtype=kind, count=count)
    if dtype.kind in "iu" and count and (wide.min() < np.iinfo(dtype).min or wide.max() > np.iinfo(dtype).max):
        raise ProtocolError(f"input {quoted(name)}: a value does not fit {datatype}")
    return wide.astype(dtype).reshape(shape)


def infer_response(response: InferResponse) -> bytes:
    """The response, serialized: every output as raw contents (BYTES elements behind their lengths)."""
    message = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version)
    if response.id is not None:
        message.id = response.id
    for key, value in response.parameters.items():
        if value is not None:
            set_parameter(message.parameters[key], value)
    for name, data, _ in response.outputs:
        datatype = datatype_of(data)
        message.outputs.add(name=name, datatype=datatype, shape=data.shape)
        blob = join_bytes(data) if datatype == BYTES else np.ascontiguousarray(data, DTYPES[datatype]).tobytes()
        message.raw_output_contents.append(blob)
    return message.SerializeToString()
