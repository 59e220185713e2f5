"""Reader and writer for the IDX format of MNIST and Fashion-MNIST (optionally gzipped)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

# IDX type codes -> numpy big-endian dtypes
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _DTYPES.items()}


class IdxFormatError(ValueError):
    """The file is not a well-formed IDX file."""


def parse_idx(data: bytes) -> np.ndarray:
    if len(data) < 4:
        raise IdxFormatError("file is shorter than the 4-byte IDX magic number")
    zero, type_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or type_code not in _DTYPES:
        raise IdxFormatError(f"bad IDX magic number {data[:4].hex()}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError("file ends inside the IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_DTYPES[type_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise IdxFormatError(f"IDX header declares shape {shape} ({expected} bytes) but {len(data) - header} follow")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return parse_idx(raw)


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    array = np.ascontiguousarray(array)
    code = _CODES.get(array.dtype)
    if code is None:
        raise IdxFormatError(f"dtype {array.dtype} has no IDX type code")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.dtype(_DTYPES[code])).tobytes()
    path = Path(path)
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
