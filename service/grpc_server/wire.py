"""A look at a ModelInferRequest's wire bytes before protobuf parses them: how many entries its repeated
fields hold, counted without building them.

Protobuf holds every element of a repeated bytes or message field as an object of its own: an empty BYTES
element is 2 bytes on the wire and about 48 bytes parsed, so a message of VAE_MAX_UPLOAD_BYTES could take
some 240 MB to parse (a 5,000,000-element `bytes_contents`, measured by the peak resident memory of the
server). REST bounds the same by counting JSON's structures before parsing (service/v2/codec.py). Here the
fields that can repeat so are counted on the wire, hopping from field to field and stopping at the first
count past its limit: at most a few thousand hops, and none for the few fields of an ordinary request.
Anything the scan cannot read is left to protobuf, which refuses it with its own error.
"""

from __future__ import annotations

from service.v2.codec import ProtocolError

MAX_TENSORS = 64  # inputs, requested outputs, raw contents
MAX_PARAMETERS = 256  # parameters of the request, of an input, or of an output
MAX_BYTES_ELEMENTS = 65_536  # typed BYTES elements in one message (an image batch needs VAE_MAX_BATCH)
REPOSITORY_REQUESTS = ("RepositoryModelLoadRequest", "RepositoryModelUnloadRequest")  # their field 3: parameters
# Messages up to this size are parsed without the scan: the most they can take parsed is a few megabytes.
SCAN_FROM_BYTES = 1_048_576

# ModelInferRequest's fields: 4 parameters, 5 inputs, 6 outputs, 7 raw_input_contents; an input's 4
# parameters and 5 contents; an output's 2 parameters; contents' 8 bytes_contents.
LENGTH_DELIMITED = 2


class _Unreadable(Exception):
    """Bytes the scan cannot follow: protobuf's parse says what is wrong with them."""


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(data) or shift > 63:
            raise _Unreadable
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _count(data: memoryview, wanted: dict[int, int]) -> dict[int, list[memoryview]]:
    """The length-delimited fields numbered in `wanted` (field number -> most allowed), each occurrence's
    payload, stopping past a limit. Other fields are skipped."""
    found: dict[int, list[memoryview]] = {number: [] for number in wanted}
    at = 0
    while at < len(data):
        tag, at = _varint(data, at)
        number, kind = tag >> 3, tag & 7
        if kind == 0:
            _, at = _varint(data, at)
        elif kind == 1:
            at += 8
        elif kind == 5:
            at += 4
        elif kind == LENGTH_DELIMITED:
            length, at = _varint(data, at)
            if at + length > len(data):
                raise _Unreadable
            if number in found:
                found[number].append(data[at : at + length])
                if len(found[number]) > wanted[number]:
                    return found
            at += length
        else:  # groups: protobuf's to judge
            raise _Unreadable
    return found


def check(message_type: str, message: bytes) -> None:
    """Refuse a message whose repeated fields hold more entries than any request needs, before it is parsed:
    a ModelInferRequest's tensors, contents and parameters, a repository request's parameters. A message under
    SCAN_FROM_BYTES is not looked at; the other RPCs' messages repeat nothing that grows when parsed."""
    if len(message) < SCAN_FROM_BYTES:
        return
    try:
        if message_type == "ModelInferRequest":
            _check_infer(memoryview(message))
        elif message_type in REPOSITORY_REQUESTS and len(_count(memoryview(message), {3: MAX_PARAMETERS})[3]) > (
            MAX_PARAMETERS
        ):
            raise ProtocolError(f"the request has more than {MAX_PARAMETERS} parameters; at most {MAX_PARAMETERS}")
    except _Unreadable:
        return


def _check_infer(data: memoryview) -> None:
    top = _count(data, {4: MAX_PARAMETERS, 5: MAX_TENSORS, 6: MAX_TENSORS, 7: MAX_TENSORS})
    for number, what, most in (
        (5, "inputs", MAX_TENSORS),
        (6, "requested outputs", MAX_TENSORS),
        (7, "raw_input_contents", MAX_TENSORS),
        (4, "parameters", MAX_PARAMETERS),
    ):
        if len(top[number]) > most:
            raise ProtocolError(f"the request has more than {most} {what}; at most {most} are accepted")
    elements = 0
    for tensor in top[5]:
        fields = _count(tensor, {4: MAX_PARAMETERS, 5: 1})
        if len(fields[4]) > MAX_PARAMETERS:
            raise ProtocolError(f"an input has more than {MAX_PARAMETERS} parameters; at most {MAX_PARAMETERS}")
        for contents in fields[5]:
            elements += len(_count(contents, {8: MAX_BYTES_ELEMENTS - elements})[8])
            if elements > MAX_BYTES_ELEMENTS:
                raise ProtocolError(
                    f"the request's typed contents hold more than {MAX_BYTES_ELEMENTS} BYTES elements; send "
                    "at most that many (an image batch holds VAE_MAX_BATCH), or send them as raw_input_contents"
                )
    for output in top[6]:
        if len(_count(output, {2: MAX_PARAMETERS})[2]) > MAX_PARAMETERS:
            raise ProtocolError(f"an output has more than {MAX_PARAMETERS} parameters; at most {MAX_PARAMETERS}")
