"""The open inference protocol's tensors on the wire: JSON `data` (flat or nested) and Triton's binary
tensor data extension, both ways. Pure functions over bytes and numpy; no model, no HTTP framework.

A request body is a JSON header followed by the binary tensors, in the order of the inputs that carry
`parameters.binary_data_size`; the `Inference-Header-Content-Length` header gives the JSON's length
and defaults to the whole body (Triton's rule: it keys on that header, not on Content-Type, and
tritonclient sends no Content-Type). A BYTES element is a 4-byte little-endian length, then the bytes.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

# Little-endian, as the binary extension fixes; BYTES is handled apart (variable-length elements).
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in (
        ("BOOL", "?"),
        ("UINT8", "u1"),
        ("UINT16", "<u2"),
        ("UINT32", "<u4"),
        ("UINT64", "<u8"),
        ("INT8", "i1"),
        ("INT16", "<i2"),
        ("INT32", "<i4"),
        ("INT64", "<i8"),
        ("FP16", "<f2"),
        ("FP32", "<f4"),
        ("FP64", "<f8"),
    )
}
BYTES = "BYTES"
DATATYPES = (*DTYPES, BYTES)
HEADER_LENGTH = "inference-header-content-length"
LENGTH_PREFIX = struct.Struct("<I")
# numpy's own ceiling is 64 dimensions; no model here takes more than 4 (an image batch, N x C x H x W).
MAX_RANK = 8
# Containers (lists, objects) and object keys a JSON body may hold. orjson holds the GIL while it
# builds them, on a worker thread too, so their number, not the body's bytes, bounds how long one body
# can hold the event loop (`python -m bench.json_parse`: bench/results/json_parse.json). A nested
# image batch of 64 x 3 x 128 x 128 needs about 25,000.
MAX_JSON_STRUCTURES = 100_000
SHOWN = 80  # characters of a client's text quoted back in an error message
PLAN_HEADER_BYTES = 2048  # binary-only headers up to this size are parsed once (parse_request)
PLAN_CACHE_SIZE = 256


class ProtocolError(ValueError):
    """A request the protocol cannot accept: answered `{"error": message}` with `status`."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    data: np.ndarray  # shaped; dtype object holding bytes for BYTES


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None  # None: not said, the request's binary_data_output decides


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    parameters: dict[str, Any]
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None  # None: every output the model produces
    binary_output: bool = False  # parameters.binary_data_output

    def binary(self, output: str) -> bool:
        for requested in self.outputs or ():
            if requested.name == output and requested.binary is not None:
                return requested.binary
        return self.binary_output


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str | None
    outputs: list[tuple[str, np.ndarray, bool]]  # (name, data, as binary)
    parameters: dict[str, Any] = field(default_factory=dict)


# Each datatype's numpy dtype in this machine's byte order: an array's dtype names its datatype in one look-up.
_NATIVE_DATATYPES = {dtype.newbyteorder("="): name for name, dtype in DTYPES.items()}


def datatype_of(array: np.ndarray) -> str:
    if array.dtype == object:
        return BYTES
    name = _NATIVE_DATATYPES.get(array.dtype)
    if name is None:
        raise TypeError(f"no protocol datatype for {array.dtype}")
    return name


def header_length(value: str | None, body_length: int) -> int:
    """The JSON header's length from Inference-Header-Content-Length; the whole body without it."""
    if value is None:
        return body_length
    text = value.strip()
    if not (text.isascii() and text.isdigit()):  # str.isdigit() also takes "²", which int() refuses
        raise ProtocolError(f"Inference-Header-Content-Length must be a non-negative integer, not {value[:40]!r}")
    length = int(text)
    if length == 0:
        raise ProtocolError(
            "Inference-Header-Content-Length is 0: a raw binary request (no JSON header) is not "
            "supported; send the JSON inference request first"
        )
    if length > body_length:
        raise ProtocolError(f"Inference-Header-Content-Length is {length} but the body has only {body_length} bytes")
    return length


def quoted(value: Any) -> str:
    """A client's value as an error message shows it: repr'd, and cut to SHOWN characters."""
    text = repr(value)
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


def listed(values: list[str], most: int = 8) -> str:
    """Names for an error message: quoted, at most `most` of them."""
    shown = ", ".join(quoted(v) for v in values[:most])
    return shown + (f" and {len(values) - most} more" if len(values) > most else "")


def check_structure(document: bytes, what: str = "the inference request", most: int = MAX_JSON_STRUCTURES) -> None:
    """Refuse JSON with more than `most` containers or keys before it is parsed. Counted on the bytes
    (a bracket inside a string counts too, which only errs on the strict side)."""
    count = document.count(b"[") + document.count(b"{") + document.count(b'":')
    if count > most:
        raise ProtocolError(
            f"{what} holds {count} JSON lists, objects and keys; at most {most} "
            "are accepted: send tensor data flat (a list of numbers in row-major order) or as "
            "binary data (parameters.binary_data_size)"
        )


def parse_header(header: bytes) -> dict[str, Any]:
    check_structure(header)
    try:
        parsed = orjson.loads(header)
    except orjson.JSONDecodeError:
        raise ProtocolError(
            "the inference request header is not JSON (with binary tensors, "
            "Inference-Header-Content-Length must give the JSON's length)"
        ) from None
    if not isinstance(parsed, dict):
        raise ProtocolError("the inference request must be a JSON object")
    return parsed


def parse_request(
    body: bytes, json_length: int, parsed: dict[str, Any] | None = None, max_rows: int | None = None
) -> InferRequest:
    """The request: its JSON header (parsed here unless given) and the binary tensors after it. No
    tensor may declare more elements than the body has bytes (every encoding spends at least one
    byte on an element), nor more than `max_rows` rows.

    A header whose tensors are all binary is parsed and checked once per (header, body length, row limit):
    what that gives depends on nothing else (the tensors' bytes are only cut to their shapes), so a client
    that repeats its header (tritonclient does, for one shape) finds its `_Plan` (`PLANS`)."""
    if parsed is not None or json_length > PLAN_HEADER_BYTES:
        return _parsed(body, json_length, parsed, max_rows)[0]
    key = (body[:json_length], len(body), max_rows)
    plan = PLANS.get(key)
    if plan is not None:
        return plan.request(body, json_length)
    request, plan = _parsed(body, json_length, None, max_rows)
    if plan is not None:
        if len(PLANS) >= PLAN_CACHE_SIZE:  # the headers carry client-chosen text: the memory is bounded
            PLANS.clear()
        PLANS[key] = plan
    return request


def _parsed(
    body: bytes, json_length: int, parsed: dict[str, Any] | None, max_rows: int | None
) -> tuple[InferRequest, _Plan | None]:
    """The request, and its plan when every tensor is binary and of a numeric datatype."""
    header = parse_header(body[:json_length]) if parsed is None else parsed
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    parameters = _parameters(header.get("parameters"), "the request")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list):
        raise ProtocolError("the inference request needs 'inputs', a list of tensors")
    blobs = memoryview(body)[json_length:]
    offset, inputs, binary = 0, [], True
    for position, raw in enumerate(raw_inputs):
        tensor, used = _input(raw, position, blobs[offset:], max(len(body), 1), max_rows)
        inputs.append(tensor)
        binary = binary and "data" not in raw and tensor.datatype != BYTES
        offset += used
    if offset != len(blobs):
        raise ProtocolError(
            f"the body has {len(blobs) - offset} bytes of binary data that no input's binary_data_size accounts for"
        )
    request = assembled(request_id, parameters, inputs, _outputs(header.get("outputs")))
    return request, _Plan.of(request) if binary else None


@dataclass(frozen=True)
class _Plan:
    """What a binary-only header gave, less the tensors' bytes: each input's name, datatype and shape."""

    id: str | None
    parameters: dict[str, Any]
    inputs: tuple[tuple[str, str, tuple[int, ...]], ...]
    outputs: tuple[RequestedOutput, ...] | None
    binary_output: bool

    @classmethod
    def of(cls, request: InferRequest) -> _Plan:
        inputs = tuple((t.name, t.datatype, t.data.shape) for t in request.inputs)
        outputs = tuple(request.outputs) if request.outputs is not None else None
        return cls(request.id, dict(request.parameters), inputs, outputs, request.binary_output)

    def request(self, body: bytes, json_length: int) -> InferRequest:
        """The request this header makes of `body`: its tensors read where the first parse found them."""
        offset, inputs = json_length, []
        for name, datatype, shape in self.inputs:
            dtype = DTYPES[datatype]
            count = math.prod(shape)
            inputs.append(Tensor(name, datatype, np.frombuffer(body, dtype, count, offset).reshape(shape)))
            offset += count * dtype.itemsize
        outputs = list(self.outputs) if self.outputs is not None else None
        return InferRequest(self.id, dict(self.parameters), inputs, outputs, self.binary_output)


PLANS: dict[tuple[bytes, int, int | None], _Plan] = {}  # (header, body length, row limit) -> its plan


def assembled(
    request_id: str | None, parameters: dict[str, Any], inputs: list[Tensor], outputs: list[RequestedOutput] | None
) -> InferRequest:
    """A request as either transport parsed it, with what both must hold: each input and each output
    named once (Triton refuses a repeated output too: each mention would be another copy in the
    response), and binary_data_output, when given, true or false."""
    names: set[str] = set()
    for tensor in inputs:
        if tensor.name in names:
            raise ProtocolError(f"input {quoted(tensor.name)} is given twice")
        names.add(tensor.name)
    names.clear()
    for output in outputs or ():
        if output.name in names:
            raise ProtocolError(f"output {quoted(output.name)} is requested more than once; name each output once")
        names.add(output.name)
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise ProtocolError("parameter 'binary_data_output' must be true or false")
    return InferRequest(request_id, parameters, inputs, outputs, binary_output)


def _parameters(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ProtocolError(f"'parameters' of {where} must be an object")
    return raw


def _outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ProtocolError("'outputs' must be a list of {\"name\": ...} objects")
    outputs: list[RequestedOutput] = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError("each requested output must be an object with a string 'name'")
        name = item["name"]
        binary = _parameters(item.get("parameters"), f"output {quoted(name)}").get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise ProtocolError(f"output {quoted(name)}: parameter 'binary_data' must be true or false")
        outputs.append(RequestedOutput(name, binary))
    return outputs


def checked_shape(raw: Any, name: str, max_elements: int, max_rows: int | None = None) -> tuple[int, ...]:
    """A declared shape: non-negative integers, at most MAX_RANK of them, each dimension and their
    product at most `max_elements`, and its rows (the first dimension) at most `max_rows` (VAE_MAX_BATCH,
    which every model's inputs are held to): checked before any element is read, so a request of millions
    of small elements costs nothing to refuse. Checked before numpy sees it: numpy refuses over 64
    dimensions, and a zero-element shape such as [0, 2**63] passes a count check but not numpy's."""
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw):
        raise ProtocolError(f"input {quoted(name)}: 'shape' must be a list of non-negative integers, not {quoted(raw)}")
    if len(raw) > MAX_RANK:
        raise ProtocolError(f"input {quoted(name)}: shape has {len(raw)} dimensions; at most {MAX_RANK} are accepted")
    if any(d > max_elements for d in raw) or math.prod(raw) > max_elements:
        raise ProtocolError(
            f"input {quoted(name)}: shape {quoted(raw)} declares more elements (in all, or in one "
            f"dimension) than the request's {max_elements} bytes can carry"
        )
    if max_rows is not None and raw and raw[0] > max_rows:  # as service/v2/spec.py check_tensor says it
        raise ProtocolError(f"input {quoted(name)} has {raw[0]} rows; 1 to {max_rows} are accepted (VAE_MAX_BATCH)")
    return tuple(raw)


def _input(raw: Any, position: int, blobs: memoryview, max_elements: int, max_rows: int | None) -> tuple[Tensor, int]:
    """One input tensor and how many bytes of the binary section it used."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise ProtocolError(f"input {position} must be an object with a string 'name'")
    name = raw["name"]
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        raise ProtocolError(
            f"input {quoted(name)}: datatype must be one of {', '.join(DATATYPES)}, not {quoted(datatype)}"
        )
    shape = checked_shape(raw.get("shape"), name, max_elements, max_rows)
    count = math.prod(shape)
    size = _parameters(raw.get("parameters"), f"input {quoted(name)}").get("binary_data_size")
    if size is not None:
        if "data" in raw:
            raise ProtocolError(f"input {quoted(name)} has both 'data' and binary_data_size; send one")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"input {quoted(name)}: binary_data_size must be a non-negative integer")
        if size > len(blobs):
            raise ProtocolError(
                f"input {quoted(name)}: binary_data_size is {size} bytes but only {len(blobs)} bytes of "
                "binary data are left in the body"
            )
        return Tensor(name, datatype, binary_tensor(bytes(blobs[:size]), datatype, shape, name)), size
    if "data" not in raw:
        raise ProtocolError(f"input {quoted(name)} has neither 'data' nor parameters.binary_data_size")
    return Tensor(name, datatype, json_tensor(raw["data"], datatype, shape, count, name)), 0


def binary_tensor(
    blob: bytes, datatype: str, shape: tuple[int, ...], name: str, given: str = "binary_data_size"
) -> np.ndarray:
    """A tensor from its bytes; `given` names where their count came from, for the error message."""
    count = math.prod(shape)
    if datatype == BYTES:
        elements = split_bytes(blob, name, most=count)
        if len(elements) != count:
            given = f"{len(elements)}" if len(elements) <= count else "more"
            raise ProtocolError(
                f"input {quoted(name)}: shape {list(shape)} holds {count} elements but the binary data "
                f"holds {given} BYTES elements"
            )
        return _object_array(elements, shape)
    dtype = DTYPES[datatype]
    if len(blob) != count * dtype.itemsize:
        raise ProtocolError(
            f"input {quoted(name)}: shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes "
            f"but {given} is {len(blob)}"
        )
    return np.frombuffer(blob, dtype=dtype).reshape(shape)


def json_tensor(data: Any, datatype: str, shape: tuple[int, ...], count: int, name: str) -> np.ndarray:
    flat = _flatten(data, name, count)
    if len(flat) != count:
        given = f"{len(flat)}" if len(flat) <= count else "more"
        raise ProtocolError(f"input {quoted(name)}: shape {list(shape)} holds {count} elements but 'data' has {given}")
    if datatype == BYTES:
        if not all(isinstance(x, str) for x in flat):
            raise ProtocolError(f"input {quoted(name)}: BYTES data in JSON must be strings")
        return _object_array([x.encode() for x in flat], shape)
    kind = DTYPES[datatype].kind
    allowed = {"b": (bool, int), "f": (int, float)}.get(kind, (int,))  # no silent rounding into integers
    if not all(isinstance(x, allowed) and (kind == "b" or not isinstance(x, bool)) for x in flat):
        what = {"b": "booleans", "f": "numbers"}.get(kind, "integers")
        raise ProtocolError(f"input {quoted(name)}: {datatype} data must be {what}")
    try:
        with np.errstate(over="raise", invalid="raise"):
            array = np.array(flat, dtype=DTYPES[datatype])
    except (OverflowError, ValueError, FloatingPointError):
        raise ProtocolError(f"input {quoted(name)}: a value does not fit {datatype}") from None
    return array.reshape(shape)


def _flatten(data: Any, name: str, count: int) -> list[Any]:
    """Row-major elements of flat or nested `data`, without recursion (nesting depth is the client's);
    it stops at one element past `count`, the most the shape allows."""
    if not isinstance(data, list):
        raise ProtocolError(f"input {quoted(name)}: 'data' must be a list")
    flat: list[Any] = []
    stack = [iter(data)]
    while stack and len(flat) <= count:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
            if len(flat) > count:
                break
        else:
            stack.pop()
    return flat


def split_bytes(blob: bytes, name: str, most: int | None = None) -> list[bytes]:
    """BYTES elements: each a 4-byte little-endian length, then that many bytes; it stops one element past
    `most` (the count the shape declares) when that is given."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(blob) and (most is None or len(elements) <= most):
        if offset + 4 > len(blob):
            raise ProtocolError(
                f"input {quoted(name)}: BYTES element {len(elements)} is cut short in its 4-byte length"
            )
        (length,) = LENGTH_PREFIX.unpack_from(blob, offset)
        offset += 4
        if offset + length > len(blob):
            raise ProtocolError(
                f"input {quoted(name)}: BYTES element {len(elements)} declares {length} bytes but only "
                f"{len(blob) - offset} remain"
            )
        elements.append(blob[offset : offset + length])
        offset += length
    return elements


def join_bytes(elements: np.ndarray) -> bytes:
    return b"".join(LENGTH_PREFIX.pack(len(x)) + x for x in elements.reshape(-1))


def _object_array(elements: list[bytes], shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    return array.reshape(shape)


def encode_response(response: InferResponse) -> tuple[bytes, dict[str, str]]:
    """The body and its headers. BYTES outputs always go as binary data: PNG bytes are not JSON text.
    A response with every output binary and of a fixed size (tritonclient's, for one shape) has the JSON
    header of the last response like it (`HEADERS`): only its tensors' bytes are new."""
    key = _header_key(response)
    json_bytes = HEADERS.get(key) if key is not None else None
    if json_bytes is not None:
        blobs = [np.ascontiguousarray(data, DTYPES[datatype_of(data)]).tobytes() for _, data, _ in response.outputs]
        return b"".join((json_bytes, *blobs)), {
            "content-type": "application/octet-stream",
            HEADER_LENGTH: str(len(json_bytes)),
        }
    outputs, blobs = [], []
    for name, data, binary in response.outputs:
        datatype = datatype_of(data)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(data.shape)}
        if binary or datatype == BYTES:
            blob = join_bytes(data) if datatype == BYTES else np.ascontiguousarray(data, DTYPES[datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = data.reshape(-1)
        outputs.append(entry)
    header: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id is not None:
        header["id"] = response.id
    if response.parameters:
        header["parameters"] = response.parameters
    header["outputs"] = outputs
    json_bytes = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return json_bytes, {"content-type": "application/json"}
    if key is not None:
        if len(HEADERS) >= PLAN_CACHE_SIZE:  # the key holds client-chosen text (the id): the memory is bounded
            HEADERS.clear()
        HEADERS[key] = json_bytes
    return b"".join((json_bytes, *blobs)), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(json_bytes)),
    }


# (model, version, id, each output's name, dtype and shape) -> the JSON header of a response whose outputs
# are all binary and none BYTES (a BYTES output's size depends on its elements)
HEADERS: dict[tuple[Any, ...], bytes] = {}


def _header_key(response: InferResponse) -> tuple[Any, ...] | None:
    if response.parameters or (response.id is not None and len(response.id) > PLAN_HEADER_BYTES):
        return None  # (an id is the client's text: a long one is not kept, so the cache's memory is bounded)
    key: list[Any] = [response.model_name, response.model_version, response.id]
    for name, data, binary in response.outputs:
        if not binary or data.dtype == object:
            return None
        key.append((name, data.dtype, data.shape))
    return tuple(key)
