"""Image uploads: a raw `image/*` body, or multipart/form-data with one or more `file` parts.

The body is read with a hard byte limit (413 as soon as it is crossed, whatever Content-Length
says); the images are decoded by `service.decoding`, under its limits and off the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import numpy as np
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from model.core.preprocess import PreprocessContract
from service.decoding import ImageDecoder
from service.errors import ApiError, bad_request, unprocessable

IMAGE_TYPES = {
    "image/png",
    "image/jpeg",
    "image/jpg",
    "image/webp",
    "image/bmp",
    "image/x-ms-bmp",
    "image/gif",
    "image/tiff",
}
ACCEPTED = (
    "a raw body with Content-Type image/png, image/jpeg, image/webp, image/bmp, image/gif or image/tiff, "
    "or multipart/form-data with parts named 'file'"
)


def too_large(limit: int, setting: str = "VAE_MAX_UPLOAD_BYTES") -> ApiError:
    return ApiError(413, "payload_too_large", f"request body exceeds the limit of {limit} bytes ({setting})")


async def read_body(request: Request, limit: int, setting: str = "VAE_MAX_UPLOAD_BYTES") -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit, setting)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit, setting)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_images(
    request: Request, contract: PreprocessContract, decoder: ImageDecoder, max_bytes: int, max_batch: int
) -> np.ndarray:
    """The request's images as (N, C, H, W) float32 in [0, 1], after the preprocessing contract."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type in IMAGE_TYPES:
        blobs = [await read_body(request, max_bytes)]
    elif media_type == "multipart/form-data":
        blobs = await _multipart_files(request, max_bytes, max_batch)
    else:
        shown = media_type or "none"
        raise ApiError(415, "unsupported_media_type", f"Content-Type {shown} is not accepted; send {ACCEPTED}")
    return await decoder.decode(blobs, contract)


async def _multipart_files(request: Request, max_bytes: int, max_batch: int) -> list[bytes]:
    body = await read_body(request, max_bytes)

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=max_batch + 1, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        message = str(exc)
        if "Too many files" in message:
            raise unprocessable("too_many_images", f"at most {max_batch} images per request") from None
        raise bad_request("invalid_multipart", "the multipart body could not be parsed") from None
    try:
        files = [part for part in form.getlist("file") if isinstance(part, UploadFile)]
        if not files:
            raise unprocessable("missing_file", "multipart body has no part named 'file' holding an image")
        if len(files) > max_batch:
            raise unprocessable("too_many_images", f"{len(files)} images sent; at most {max_batch} per request")
        return [await part.read() for part in files]
    finally:
        await form.close()
