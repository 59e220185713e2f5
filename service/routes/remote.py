"""The remote VAE protocol of Hugging Face's hybrid inference, so that diffusers' own client functions
(`remote_decode` and `remote_encode` of diffusers.utils.remote_utils) work unchanged with an endpoint of
this server:

    POST /remote/decode, /v1/models/{name}/remote/decode, /v1/models/{name}/versions/{version}/remote/decode
    POST /remote/encode, ... (the same three addresses, service/routes/addressing.py)

The protocol is for models whose latent is spatial, [c, h, w] (manifest `latent_shape`), such as the
AutoencoderKL directories `vae-import diffusers` imports; a model with a flat latent answers 409. The image
sizes a model takes are its manifest's `sizes` (multiples of `multiple` from `min` to `max`; without `sizes`
only `input.shape`), and an image of H x W has a latent of H/f x W/f, f the latent's downsampling.

Decode: the body is the latents' raw little-endian bytes (the client sends Content-Type tensor/binary; any
is taken); query `shape` (repeated, as requests writes a list: shape=1&shape=4&shape=64&shape=64), `dtype`
(float32, float16 or bfloat16, converted to float32 as the bits say). Everything the query declares is
checked before the body is read: rank 4 [N, c, h, w] with c the model's latent channels (packed latents of
rank 3, Flux's with `height` and `width`, are refused: unpack them), N at most VAE_MAX_BATCH, f*h x f*w an
allowed size within VAE_MAX_IMAGE_PIXELS, N images within VAE_MAX_REQUEST_PIXELS, the body exactly
prod(shape) x itemsize bytes (within VAE_MAX_UPLOAD_BYTES) and the answer within VAE_MAX_RESPONSE_BYTES;
then the values, which must be finite. The decoder graph runs on z = latents / scaling_factor +
shift_factor, each applied when given; `do_scaling=True` without them (the client's deprecated default)
applies the manifest's `diffusion` factors. The answer, by `output_type`:

- `pil` (Accept image/png or image/jpeg: anything but tensor/binary): one image (N must be 1),
  postprocessed as diffusers' VaeImageProcessor does, round(255 * clamp(x / 2 + 0.5, 0, 1)) as uint8, and
  saved by Pillow with its defaults: PNG at zlib's default level, JPEG at quality 75 with 4:2:0 chroma
  subsampling (what `Image.save(buffer, format=...)` writes, as the hybrid-inference endpoints' serializer
  plausibly does). `image_format` (png, jpg) picks the format, else the Accept header, else jpg (the
  client's default). A grey model's image is a grey (mode L) file, which the client opens and converts to RGB.
- `pil` with Accept tensor/binary (the client passed a `processor`): the images in [0, 1] as a float tensor
  [N, C, H, W] in the request's dtype, which the client multiplies by 255 and rounds. Grey images are
  repeated to 3 channels here, because the client's `Image.fromarray` cannot open an [H, W, 1] array.
- `pt` with `partial_postprocess=True`: the uint8 images [N, H, W, C] ([N, H, W] for a grey model, of which
  `Image.fromarray` makes the mode L image diffusers' `numpy_to_pil` makes).
- `pt`: the decoded images [N, C, H, W] in [-1, 1], unclamped as AutoencoderKL.decode returns them, in the
  request's dtype.
- `mp4` is refused (a video model's output).

Tensor answers are raw little-endian bytes with Content-Type tensor/binary and the headers `shape` (a JSON
list) and `dtype`, which the client reads.

Encode: the body is an image file (PNG, JPEG, WebP, BMP or GIF: the client sends PNG, with no Content-Type),
or, with `shape` and `dtype`, a tensor [N, C, H, W] in [0, 1] (uint8 in 0..255 too), or in [-1, 1] when its
minimum is below 0, as VaeImageProcessor.preprocess takes tensors. An image keeps its own size, which must
be an allowed one (the 422 names the nearest), is decoded under the service's image limits
(service/decoding.py: off the event loop when large, with a deadline) and converted to the model's channels
(Pillow's L or RGB, transparency composited onto the model's alpha background), pixel / 255 mapped to
2 * pixel - 1. The latent is the posterior's mean, so the answer is deterministic (Hugging Face's endpoints
may sample the latent distribution instead), answered as (mean - shift_factor) * scaling_factor, each when
given (or with `do_scaling=True`, the manifest's), in float32 for an image or the request's dtype for a
float tensor.

The graphs always run in float32, whatever the request's dtype: a float16 or bfloat16 request gets float32
arithmetic rounded to its dtype at the end (Hugging Face's endpoints run their VAEs in half precision).

Errors are the service's JSON error bodies (the client raises RuntimeError(response.json())), under the
service's limits, request metrics (labelled by the route's template) and in-flight limit: the graphs run
through `ServedModel.run` as the operations `remote_decode` and `remote_encode`, each image counted as
ceil(H x W / the model's own input size) rows of work, so that a large image runs on a worker thread rather
than on the event loop (VAE_INLINE_COST), and the images counter counts images of the model's own size.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from PIL import Image

from model.core.artifact import OnnxVAE
from model.core.manifest import Manifest
from model.core.preprocess import webp_size
from service.errors import ApiError, unprocessable
from service.routes.addressing import add_model_route
from service.schemas import ErrorBody, error_responses
from service.served import ServedModel
from service.settings import Settings
from service.state import AppState, app_state
from service.uploads import read_body

router = APIRouter(tags=["remote VAE protocol"])

TENSOR_TYPE = "tensor/binary"
# The request dtypes, as the bytes are read (little-endian; bfloat16 as its uint16 bits).
WIRE_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
    "uint8": np.dtype("u1"),
}
FLOAT_DTYPES = ("float32", "float16", "bfloat16")
FLOAT32_TINY, FLOAT32_MAX = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
DECODE_PARAMETERS = (
    "shape",
    "dtype",
    "scaling_factor",
    "shift_factor",
    "do_scaling",
    "output_type",
    "image_format",
    "partial_postprocess",
    "height",
    "width",
)
ENCODE_PARAMETERS = ("shape", "dtype", "scaling_factor", "shift_factor", "do_scaling")
MAX_RANK = 8
MAX_DIMENSION = 1 << 31
MAX_QUERY_ITEMS = 32
MAX_JPEG_SEGMENTS = 4096  # before the frame header; a camera's JPEG has a dozen
IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}
IMAGE_MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg"}
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")

OutputKind = Literal["image", "unit_tensor", "uint8", "tensor"]


def invalid(message: str) -> ApiError:
    return unprocessable("invalid_parameter", message)


# ---------------------------------------------------------------------------------------------------------
# What the model takes


@dataclass(frozen=True)
class Geometry:
    """The shapes a model's graphs take in this protocol: images [N, C, H, W], latents [N, c, H/f, W/f]."""

    model: str
    channels: int  # the image's
    latent_channels: int
    factor: int  # the latent's downsampling f
    multiple: int  # of heights and widths
    low: int  # the smallest allowed height and width
    high: int  # the largest
    fixed: tuple[int, int] | None  # the one size, for a model without `sizes`
    base_pixels: int  # the model's own input size: one row of work

    @classmethod
    def of(cls, manifest: Manifest) -> Geometry:
        """The model's geometry, or 409 for a model this protocol cannot address."""
        name = f"{manifest.name} {manifest.version}"
        latent = manifest.latent
        if len(latent) != 3:
            raise ApiError(
                409,
                "spatial_latent_required",
                f"the remote VAE protocol takes and gives latents [N, c, h, w], and {name} has a flat latent of "
                f"{manifest.latent_dim} numbers: use POST /encode and /decode for it, or import a model whose latent "
                "is spatial (manifest latent_shape [c, h, w], as vae-import diffusers writes)",
            )
        channels, height, width = manifest.input.shape
        latent_channels, h, w = latent
        factor = manifest.diffusion.downsample if manifest.diffusion is not None else height // h
        if factor < 1 or height != factor * h or width != factor * w:
            raise ApiError(
                409,
                "spatial_latent_required",
                f"{name}'s latent {list(latent)} is not its image {manifest.input.shape} downsampled by one whole "
                "factor, which the remote VAE protocol needs to size images from latents",
            )
        sizes = manifest.sizes
        if sizes is None:
            return cls(name, channels, latent_channels, factor, factor, 0, 0, (height, width), height * width)
        multiple = math.lcm(sizes.multiple, factor)
        low, high = -(-sizes.min // multiple) * multiple, sizes.max // multiple * multiple
        return cls(name, channels, latent_channels, factor, multiple, low, high, None, height * width)

    def allows(self, height: int, width: int) -> bool:
        if self.fixed is not None:
            return (height, width) == self.fixed
        return all(self.low <= side <= self.high and side % self.multiple == 0 for side in (height, width))

    def nearest(self, height: int, width: int) -> tuple[int, int]:
        if self.fixed is not None:
            return self.fixed
        return self._nearest(height), self._nearest(width)

    def _nearest(self, side: int) -> int:
        return min(max(int(side / self.multiple + 0.5) * self.multiple, self.low), self.high)

    def describe(self) -> str:
        if self.fixed is not None:
            return f"{self.model} takes images of {self.fixed[0]}x{self.fixed[1]} only (its manifest has no sizes)"
        return (
            f"{self.model} takes heights and widths that are multiples of {self.multiple} from {self.low} to "
            f"{self.high}"
        )

    def check_image(self, height: int, width: int, settings: Settings, what: str, latents: bool = False) -> None:
        """422 for a size the graphs do not take, naming the nearest that they do; 413 past the pixel limit."""
        if not self.allows(height, width):
            near_h, near_w = self.nearest(height, width)
            hint = f" (latents of {near_h // self.factor}x{near_w // self.factor})" if latents else ""
            raise unprocessable(
                "size_not_allowed",
                f"{what} {height}x{width} (height x width); {self.describe()}: the nearest allowed size is "
                f"{near_h}x{near_w}{hint}",
            )
        if height * width > settings.max_image_pixels:
            raise ApiError(
                413,
                "image_too_large",
                f"{what} {height}x{width} = {height * width} pixels; the limit is {settings.max_image_pixels} "
                "(VAE_MAX_IMAGE_PIXELS)",
            )

    def rows(self, count: int, height: int, width: int) -> int:
        """The work of `count` images of height x width in images of the model's own input size."""
        return count * max(1, -(-height * width // self.base_pixels))


def check_batch(count: int, settings: Settings) -> None:
    if count > settings.max_batch:
        raise unprocessable(
            "too_many_images", f"shape has a batch of {count}; at most {settings.max_batch} per request (VAE_MAX_BATCH)"
        )


def check_pixels(count: int, height: int, width: int, settings: Settings) -> None:
    if count * height * width > settings.max_request_pixels:
        raise ApiError(
            413,
            "request_too_many_pixels",
            f"{count} images of {height}x{width} are {count * height * width} pixels in all; the limit is "
            f"{settings.max_request_pixels} (VAE_MAX_REQUEST_PIXELS): send fewer or smaller ones",
        )


# ---------------------------------------------------------------------------------------------------------
# The query


def query_items(items: Sequence[tuple[str, str]], accepted: Sequence[str], path: str) -> dict[str, list[str]]:
    """The query as lists of values; `shape` alone may repeat (requests writes a list as a repeated key)."""
    if len(items) > MAX_QUERY_ITEMS:
        raise invalid(f"the query has {len(items)} parameters; this route takes at most {MAX_QUERY_ITEMS}")
    values: dict[str, list[str]] = {}
    for name, value in items:
        if name not in accepted:
            raise ApiError(
                422,
                "unknown_parameter",
                f"unknown query parameter {name[:40]!r} on {path[:200]}; the parameters accepted are: "
                f"{', '.join(accepted)}",
            )
        if name in values and name != "shape":
            raise invalid(f"{name} is given more than once")
        values.setdefault(name, []).append(value)
    return values


def parse_shape(values: list[str]) -> tuple[int, ...]:
    """shape=1&shape=4&shape=8&shape=8 (requests' list), or one value "1,4,8,8" or "[1, 4, 8, 8]"."""
    parts = values
    if len(values) == 1 and ("," in values[0] or values[0].strip().startswith("[")):
        parts = values[0].strip().strip("[]").split(",")
    if not 1 <= len(parts) <= MAX_RANK:
        raise unprocessable("invalid_shape", f"shape has {len(parts)} dimensions; send [N, C, H, W]")
    dims = []
    for part in parts:
        text = part.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 10 or not 1 <= int(text) < MAX_DIMENSION:
            raise unprocessable(
                "invalid_shape", f"shape {[p[:12] for p in parts]}: every dimension must be a positive integer"
            )
        dims.append(int(text))
    return tuple(dims)


def parse_dtype(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise unprocessable(
            "invalid_dtype", f"dtype {value[:40]!r}: {what} are sent as {', '.join(allowed)} (little-endian)"
        )
    return value


def parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise invalid(f"{name} must be True or False, not {value[:40]!r}")


def parse_float(name: str, value: str) -> float:
    try:
        number = float(value) if len(value) <= 64 else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise invalid(f"{name} must be a finite number, not {value[:40]!r}")
    return number


def parse_int(name: str, value: str) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 10:
        raise invalid(f"{name} must be a positive integer, not {value[:40]!r}")
    return int(text)


@dataclass(frozen=True)
class Scaling:
    """A diffusion model's latent is (z - shift_factor) * scaling_factor, z the autoencoder's."""

    scaling_factor: float | None = None
    shift_factor: float | None = None

    def to_autoencoder(self, latents: np.ndarray) -> np.ndarray:
        """Infinite where it overflows float32, which the caller refuses."""
        z = latents
        with np.errstate(over="ignore", invalid="ignore"):
            if self.scaling_factor is not None:
                z = z / np.float32(self.scaling_factor)
            if self.shift_factor is not None:
                z = z + np.float32(self.shift_factor)
        return z

    def to_diffusion(self, mean: np.ndarray) -> np.ndarray:
        latents = mean
        with np.errstate(over="ignore", invalid="ignore"):
            if self.shift_factor is not None:
                latents = latents - np.float32(self.shift_factor)
            if self.scaling_factor is not None:
                latents = latents * np.float32(self.scaling_factor)
        return latents


def parse_scaling(values: dict[str, list[str]], manifest: Manifest) -> Scaling:
    """The factors given; with do_scaling=True, the manifest's for those not given."""
    given = {name: parse_float(name, values[name][0]) for name in ("scaling_factor", "shift_factor") if name in values}
    for name, value in given.items():  # each a float32 the arithmetic can use: not 0, not past float32's range
        if not (FLOAT32_TINY <= abs(value) <= FLOAT32_MAX or (name == "shift_factor" and value == 0)):
            raise invalid(
                f"{name} {values[name][0][:40]!r} is not a float32 the latents can be "
                + ("divided by (not 0 or a subnormal)" if name == "scaling_factor" else "shifted by")
            )
    scaling = given.get("scaling_factor")
    if "do_scaling" in values and parse_bool("do_scaling", values["do_scaling"][0]):
        diffusion = manifest.diffusion
        if diffusion is None:
            if scaling is None:
                raise unprocessable(
                    "no_scaling_factor",
                    f"do_scaling asks for the model's own latent scaling, and {manifest.name} {manifest.version} "
                    "declares none (its manifest has no diffusion section): pass scaling_factor (and "
                    "shift_factor), or do_scaling=False for latents that need none",
                )
        else:
            given.setdefault("scaling_factor", diffusion.scaling_factor)
            if diffusion.shift_factor is not None:
                given.setdefault("shift_factor", diffusion.shift_factor)
    return Scaling(given.get("scaling_factor"), given.get("shift_factor"))


def expected_bytes(shape: tuple[int, ...], dtype: str, settings: Settings) -> int:
    size = math.prod(shape) * WIRE_DTYPES[dtype].itemsize
    if size > settings.max_upload_bytes:
        raise ApiError(
            413,
            "payload_too_large",
            f"shape {list(shape)} of {dtype} is {size} bytes; the limit is {settings.max_upload_bytes} "
            "(VAE_MAX_UPLOAD_BYTES)",
        )
    return size


def media_types(header: str) -> list[str]:
    return [part.split(";")[0].strip().lower() for part in header.split(",")[:16]]


@dataclass(frozen=True)
class DecodeRequest:
    shape: tuple[int, int, int, int]  # the latents'
    dtype: str
    scaling: Scaling
    output: OutputKind
    image_format: str  # PNG or JPEG, for output "image"
    height: int  # the images'
    width: int

    @property
    def body_bytes(self) -> int:
        return math.prod(self.shape) * WIRE_DTYPES[self.dtype].itemsize


def parse_decode(
    items: Sequence[tuple[str, str]], accept: str, manifest: Manifest, settings: Settings, path: str = "remote/decode"
) -> DecodeRequest:
    """Everything the query and headers of a decode say, checked against the model and the limits; 4xx else."""
    values = query_items(items, DECODE_PARAMETERS, path)
    geometry = Geometry.of(manifest)
    output_type = values.get("output_type", ["pil"])[0].strip().lower()
    if output_type == "mp4":
        raise unprocessable(
            "unsupported_output",
            f"output_type mp4 is a video model's; {manifest.name} decodes images: use output_type pil or pt",
        )
    if output_type not in ("pil", "pt"):
        raise invalid(f"output_type must be pil or pt, not {output_type[:40]!r}")
    shape, dtype = latent_shape(values, geometry)
    count, _, h, w = shape
    height, width = h * geometry.factor, w * geometry.factor
    check_batch(count, settings)
    geometry.check_image(height, width, settings, f"latents of {h}x{w} decode to images of", latents=True)
    check_pixels(count, height, width, settings)
    for name, side in (("height", height), ("width", width)):
        if name in values and parse_int(name, values[name][0]) != side:
            raise invalid(f"{name} {values[name][0][:12]} differs from the latents' image {name}, {side}")
    scaling = parse_scaling(values, manifest)
    output, image_format = output_form(values, output_type, accept, count)
    per_pixel = {"image": 1, "uint8": 1, "tensor": WIRE_DTYPES[dtype].itemsize}
    channels = 3 if output == "unit_tensor" else geometry.channels
    response = count * height * width * channels * per_pixel.get(output, WIRE_DTYPES[dtype].itemsize)
    if response > settings.max_response_bytes:
        raise unprocessable(
            "response_too_large",
            f"the answer would be about {response} bytes, over the limit of {settings.max_response_bytes} "
            "(VAE_MAX_RESPONSE_BYTES): send fewer latents, or ask for uint8 images (partial_postprocess=True)",
        )
    expected_bytes(shape, dtype, settings)
    return DecodeRequest(shape, dtype, scaling, output, image_format, height, width)


def latent_shape(values: dict[str, list[str]], geometry: Geometry) -> tuple[tuple[int, int, int, int], str]:
    """The latents' shape [N, c, h, w] and dtype, from the query."""
    if "shape" not in values or "dtype" not in values:
        raise unprocessable(
            "invalid_shape",
            "the latents' shape and dtype are required (query shape=N&shape=C&shape=h&shape=w&dtype=float32), "
            "as diffusers.utils.remote_decode sends them",
        )
    shape = parse_shape(values["shape"])
    if len(shape) == 3:
        raise unprocessable(
            "packed_latents",
            f"shape {list(shape)} is packed latents (Flux's [N, h*w/4, 4c], sent with height and width), which this "
            f"server does not unpack: send them unpacked as [N, c, h, w], c = {geometry.latent_channels} "
            "(diffusers' FluxPipeline._unpack_latents)",
        )
    dtype = parse_dtype(values["dtype"][0], FLOAT_DTYPES, "latents")
    if len(shape) != 4:
        raise unprocessable("invalid_shape", f"shape {list(shape)}: latents are [N, c, h, w]")
    count, channels, h, w = shape
    if channels != geometry.latent_channels:
        raise unprocessable(
            "invalid_shape",
            f"shape {list(shape)} has {channels} latent channels; {geometry.model}'s latents have "
            f"{geometry.latent_channels}",
        )
    return (count, channels, h, w), dtype


def output_form(values: dict[str, list[str]], output_type: str, accept: str, count: int) -> tuple[OutputKind, str]:
    """What the answer is (an image file, a [0, 1] tensor, uint8 images or the decoded tensor), and for an
    image file its format: image_format, else the Accept header's, else jpg (the client's default)."""
    partial = "partial_postprocess" in values and parse_bool("partial_postprocess", values["partial_postprocess"][0])
    accepted = media_types(accept)
    fmt = values.get("image_format", [""])[0].strip().lower()
    if fmt and fmt not in IMAGE_FORMATS:
        raise invalid(f"image_format must be png or jpg, not {fmt[:40]!r}")
    image_format = IMAGE_FORMATS[fmt] if fmt else ("PNG" if "image/png" in accepted else "JPEG")
    if output_type == "pt":
        return ("uint8" if partial else "tensor"), image_format
    if TENSOR_TYPE in accepted:
        return "unit_tensor", image_format
    if count != 1:
        raise unprocessable(
            "unsupported_output",
            f"output_type pil answers one image, and the request holds {count} latents: decode them one at a time, "
            "or use output_type pt (with partial_postprocess=True for uint8 images)",
        )
    return "image", image_format


@dataclass(frozen=True)
class EncodeRequest:
    scaling: Scaling
    shape: tuple[int, int, int, int] | None = None  # a tensor's; None: the body is an image file
    dtype: str = "float32"

    @property
    def body_bytes(self) -> int:
        assert self.shape is not None
        return math.prod(self.shape) * WIRE_DTYPES[self.dtype].itemsize


def parse_encode(
    items: Sequence[tuple[str, str]],
    content_type: str,
    manifest: Manifest,
    settings: Settings,
    path: str = "remote/encode",
) -> EncodeRequest:
    values = query_items(items, ENCODE_PARAMETERS, path)
    geometry = Geometry.of(manifest)
    scaling = parse_scaling(values, manifest)
    media_type = media_types(content_type)[0] if content_type else ""
    if "shape" not in values and "dtype" not in values:
        if media_type == TENSOR_TYPE:
            raise unprocessable(
                "invalid_shape", "a tensor/binary body needs the query's shape and dtype (shape=N&shape=C&...)"
            )
        if media_type in ("application/json", "multipart/form-data") or media_type.startswith("text/"):
            raise ApiError(
                415,
                "unsupported_media_type",
                f"Content-Type {media_type[:80]}: the remote encode takes the image file's bytes as the body (PNG, "
                "JPEG, WebP, BMP or GIF), or a tensor's with shape and dtype",
            )
        return EncodeRequest(scaling)
    if "shape" not in values or "dtype" not in values:
        raise unprocessable("invalid_shape", "a tensor body needs both shape and dtype; an image file needs neither")
    shape = parse_shape(values["shape"])
    dtype = parse_dtype(values["dtype"][0], (*FLOAT_DTYPES, "uint8"), "images")
    if len(shape) != 4:
        raise unprocessable(
            "invalid_shape", f"shape {list(shape)}: images are [N, C, H, W] (one image: add the batch axis)"
        )
    count, channels, height, width = shape
    if channels != geometry.channels:
        raise unprocessable(
            "invalid_shape",
            f"shape {list(shape)} has {channels} channels; {geometry.model} encodes images of {geometry.channels}"
            + (" (grey)" if geometry.channels == 1 else " (RGB)"),
        )
    check_batch(count, settings)
    geometry.check_image(height, width, settings, "images of")
    check_pixels(count, height, width, settings)
    expected_bytes(shape, dtype, settings)
    return EncodeRequest(scaling, (count, channels, height, width), dtype)


# ---------------------------------------------------------------------------------------------------------
# Bytes in and out


async def read_exact(request: Request, expected: int) -> bytes:
    """The body, which must be `expected` bytes: refused on its Content-Length before it is read, or as
    soon as it runs past."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) != expected:
        raise mismatch(int(declared), expected)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > expected:
            raise mismatch(size, expected, more=True)
        chunks.append(chunk)
    if size != expected:
        raise mismatch(size, expected)
    return b"".join(chunks)


def mismatch(size: int, expected: int, more: bool = False) -> ApiError:
    return unprocessable(
        "invalid_tensor",
        f"the body has {'more than ' if more else ''}{size} bytes; shape and dtype declare {expected} "
        "(the product of shape times the dtype's size, raw little-endian)",
    )


def tensor_from_bytes(body: bytes, shape: tuple[int, ...], dtype: str, what: str) -> np.ndarray:
    """float32 values of the raw little-endian tensor; bfloat16 is the top half of a float32. 422 unless finite."""
    raw = np.frombuffer(body, dtype=WIRE_DTYPES[dtype]).reshape(shape)
    if dtype == "bfloat16":
        values = (raw.astype(np.uint32) << 16).view(np.float32)
    elif dtype == "uint8":
        values = raw.astype(np.float32) * np.float32(1 / 255)
    else:
        values = raw.astype(np.float32)
    if not np.isfinite(values).all():
        flat = int(np.argmin(np.isfinite(values).reshape(-1)))
        index = [int(i) for i in np.unravel_index(flat, shape)]
        raise unprocessable(
            "invalid_tensor",
            f"{what} hold a non-finite value ({values.reshape(-1)[flat]}) at {index}; send finite ones",
        )
    return values


def tensor_to_bytes(values: np.ndarray, dtype: str, what: str) -> bytes:
    """float32 values as the dtype's little-endian bytes; bfloat16 rounded to nearest even, as torch does."""
    if dtype == "bfloat16":
        bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
        rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
        out = rounded.astype("<u2")
        finite = (out & np.uint16(0x7F80)) != np.uint16(0x7F80)  # an all-ones exponent: rounded up to infinity
    else:
        with np.errstate(over="ignore"):
            out = values.astype(WIRE_DTYPES[dtype])
        finite = np.isfinite(out)
    if not finite.all():
        raise unprocessable(
            "non_finite_output",
            f"{what} overflow {dtype} (largest magnitude {float(np.abs(values).max()):.3g}); ask for float32",
        )
    return out.tobytes()


def tensor_response(values: np.ndarray, dtype: str, served: ServedModel, what: str) -> Response:
    body = values.astype(np.uint8).tobytes() if dtype == "uint8" else tensor_to_bytes(values, dtype, what)
    headers = {**served.headers, "shape": json.dumps(list(values.shape)), "dtype": dtype}
    return Response(body, media_type=TENSOR_TYPE, headers=headers)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] images (N, C, H, W) -> (N, H, W, C) uint8, as VaeImageProcessor.postprocess(output_type="pil"):
    clamp(x * 0.5 + 0.5, 0, 1), then numpy_to_pil's round(255 * x) (round half to even, as numpy and torch)."""
    unit = np.clip(images * np.float32(0.5) + np.float32(0.5), 0.0, 1.0)
    pixels: np.ndarray = np.round(unit.transpose(0, 2, 3, 1) * np.float32(255)).astype(np.uint8)
    return pixels


def encode_image(pixels: np.ndarray, image_format: str) -> bytes:
    """(H, W, C) uint8 -> the file Pillow saves with its defaults (grey as mode L)."""
    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def image_size(blob: bytes) -> tuple[int, int] | None:
    """(height, width) from an image file's header: PNG's IHDR, a JPEG's frame header, GIF's screen,
    BMP's info header, WebP's first chunk. The fields Pillow reads; None for anything else."""
    if blob.startswith(b"\x89PNG\r\n\x1a\n") and blob[12:16] == b"IHDR" and len(blob) >= 24:
        return int.from_bytes(blob[20:24], "big"), int.from_bytes(blob[16:20], "big")
    if blob[:6] in (b"GIF87a", b"GIF89a") and len(blob) >= 10:
        return int.from_bytes(blob[8:10], "little"), int.from_bytes(blob[6:8], "little")
    if blob.startswith(b"BM") and len(blob) >= 26:
        header = int.from_bytes(blob[14:18], "little")
        if header == 12:
            return int.from_bytes(blob[20:22], "little"), int.from_bytes(blob[18:20], "little")
        if header >= 40:
            width = int.from_bytes(blob[18:22], "little", signed=True)
            return abs(int.from_bytes(blob[22:26], "little", signed=True)), abs(width)
        return None
    if blob.startswith(b"\xff\xd8"):
        return jpeg_size(blob)
    webp = webp_size(blob)
    return None if webp is None else (webp[1], webp[0])


def jpeg_size(blob: bytes) -> tuple[int, int] | None:
    position = 2
    for _ in range(MAX_JPEG_SEGMENTS):
        while blob[position : position + 1] == b"\xff" and blob[position + 1 : position + 2] == b"\xff":
            position += 1  # fill bytes
        if blob[position : position + 1] != b"\xff" or position + 4 > len(blob):
            return None
        code = blob[position + 1]
        if 0xD0 <= code <= 0xD8 or code == 0x01:
            position += 2
            continue
        if 0xC0 <= code <= 0xCF and code not in (0xC4, 0xC8, 0xCC):
            if position + 9 > len(blob):
                return None
            return int.from_bytes(blob[position + 5 : position + 7], "big"), int.from_bytes(
                blob[position + 7 : position + 9], "big"
            )
        if code in (0xD9, 0xDA):  # the end, or a scan before any frame header
            return None
        position += 2 + int.from_bytes(blob[position + 2 : position + 4], "big")
    return None


# ---------------------------------------------------------------------------------------------------------
# The graphs


def signed_graph(manifest: Manifest) -> bool:
    """Whether the graphs take and give images in [-1, 1] themselves (as vae-import diffusers' do): then
    they are fed and read as they are, with no round trip through [0, 1] pixels."""
    spec = manifest.input
    return spec.mean is None and list(spec.range) == [-1.0, 1.0] and manifest.io.encoder.layout == "nchw"


def run_decoder(model: OnnxVAE, z: np.ndarray, height: int, width: int) -> np.ndarray:
    """Unscaled latents (N, c, h, w) float32 -> the decoded images in [-1, 1] (N, C, H, W) float32, unclamped."""
    manifest = model.manifest
    outputs = model.decoder.run(model.io.decoder_outputs, {manifest.io.decoder.z: np.ascontiguousarray(z)})
    bernoulli = manifest.likelihood.name == "bernoulli"
    if signed_graph(manifest) and not bernoulli and not manifest.io.decoder.flat:
        images = outputs[0]
    else:  # the model's own values -> [0, 1] pixels (the mean, unclamped; a Bernoulli's probabilities) -> [-1, 1]
        params = model.io.decoder_params(list(outputs))
        pixels = model.likelihood.pixel_mean(params) if bernoulli else params[0]
        with np.errstate(over="ignore", invalid="ignore"):  # refused below
            images = pixels * np.float32(2) - np.float32(1)
    images = np.asarray(images, dtype=np.float32).reshape(len(z), -1, height, width)
    finite = np.isfinite(images).reshape(len(z), -1).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise unprocessable(
            "non_finite_output",
            f"latent {row} decodes to non-finite values: the decoder overflows this far from the latents it was "
            f"trained on (its largest |z| is {float(np.abs(z[row]).max()):.3g}); check scaling_factor and shift_factor",
        )
    return images


def decode_for(model: OnnxVAE, z: np.ndarray, spec: DecodeRequest) -> np.ndarray:
    """The decoder's images in the form the request asks for (model work: on a worker thread when large)."""
    images = run_decoder(model, z, spec.height, spec.width)
    if spec.output == "tensor":
        return images
    if spec.output == "unit_tensor":
        unit = np.clip(images * np.float32(0.5) + np.float32(0.5), 0.0, 1.0)
        # the client's Image.fromarray opens [H, W, 3], not [H, W, 1]
        return np.repeat(unit, 3, axis=1) if unit.shape[1] == 1 else unit
    pixels = to_uint8(images)  # (N, H, W, C)
    return pixels[..., 0] if spec.output == "uint8" and pixels.shape[3] == 1 else pixels


def run_encoder(model: OnnxVAE, images: np.ndarray, latent: tuple[int, int, int]) -> np.ndarray:
    """Images in [-1, 1] (N, C, H, W) float32 -> the posterior's mean (N, c, h, w) float32."""
    manifest = model.manifest
    if signed_graph(manifest):
        feeds = {manifest.io.encoder.image: np.ascontiguousarray(images)}
    else:
        feeds = model.io.encoder_feed((images + np.float32(1)) * np.float32(0.5))
    mean = model.encoder.run([manifest.io.encoder.mean], feeds)[0]
    mean = np.asarray(mean, dtype=np.float32).reshape(len(images), *latent)
    if not np.isfinite(mean).all():
        raise unprocessable(
            "non_finite_output", "the encoder computed non-finite latents: the images are far outside [-1, 1]"
        )
    return mean


# ---------------------------------------------------------------------------------------------------------
# The routes


def resolve(request: Request) -> tuple[AppState, ServedModel]:
    state = app_state(request)
    params = request.path_params
    return state, state.resolve(params.get("name"), params.get("version"))


async def remote_decode(request: Request) -> Response:
    state, served = resolve(request)
    settings, model = state.settings, served.engine.model
    spec = parse_decode(
        request.query_params.multi_items(),
        request.headers.get("accept", ""),
        model.manifest,
        settings,
        request.url.path,
    )
    body = await read_exact(request, spec.body_bytes)
    latents = tensor_from_bytes(body, spec.shape, spec.dtype, "the latents")
    z = spec.scaling.to_autoencoder(latents)
    if not np.isfinite(z).all():
        raise unprocessable("invalid_tensor", "latents / scaling_factor + shift_factor overflow float32")
    rows = Geometry.of(model.manifest).rows(len(z), spec.height, spec.width)
    answer = await served.run("remote_decode", rows, decode_for, model, z, spec)
    if spec.output != "image":
        return tensor_response(answer, "uint8" if spec.output == "uint8" else spec.dtype, served, "the images")
    if spec.height * spec.width <= settings.decode_inline_pixels:  # a small image: cheaper than a thread hop
        data = encode_image(answer[0], spec.image_format)
    else:
        data = await anyio.to_thread.run_sync(encode_image, answer[0], spec.image_format)
    return Response(data, media_type=IMAGE_MEDIA_TYPES[spec.image_format], headers=served.headers)


async def remote_encode(request: Request) -> Response:
    state, served = resolve(request)
    settings, engine = state.settings, served.engine
    manifest = engine.model.manifest
    spec = parse_encode(
        request.query_params.multi_items(),
        request.headers.get("content-type", ""),
        manifest,
        settings,
        request.url.path,
    )
    geometry = Geometry.of(manifest)
    if spec.shape is None:
        blob = await read_body(request, settings.max_upload_bytes)
        size = image_size(blob)
        if size is None:
            raise ApiError(
                400,
                "invalid_image",
                "the body is not a PNG, JPEG, WebP, BMP or GIF image whose size its header gives (or, with the query's "
                "shape and dtype, a tensor)",
            )
        height, width = size
        geometry.check_image(height, width, settings, "the image is")
        contract = dataclasses.replace(engine.contract, input_shape=(geometry.channels, height, width))
        pixels = await state.decoder.decode([blob], contract)  # (1, C, H, W) in [0, 1], off the loop when large
        images = pixels * np.float32(2) - np.float32(1)
        dtype = "float32"
    else:
        _, _, height, width = spec.shape
        body = await read_exact(request, spec.body_bytes)
        values = tensor_from_bytes(body, spec.shape, spec.dtype, "the images")
        # VaeImageProcessor.preprocess: a tensor in [0, 1] is normalised, one with negative values taken as [-1, 1]
        with np.errstate(over="ignore"):
            images = values if values.min() < 0 else values * np.float32(2) - np.float32(1)
        if not np.isfinite(images).all():
            raise unprocessable("invalid_tensor", "the images' values overflow float32 once mapped to [-1, 1]")
        dtype = spec.dtype if spec.dtype in FLOAT_DTYPES else "float32"
    latent = (geometry.latent_channels, height // geometry.factor, width // geometry.factor)
    rows = geometry.rows(len(images), height, width)
    mean = await served.run("remote_encode", rows, run_encoder, engine.model, images, latent)
    return tensor_response(spec.scaling.to_diffusion(mean), dtype, served, "the latents")


def _parameter(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


FACTORS = [
    _parameter(
        "scaling_factor",
        "decode: latents / scaling_factor; encode: latent * scaling_factor (the diffusion model's latent scaling)",
        {"type": "number"},
    ),
    _parameter(
        "shift_factor", "decode: + shift_factor after the scaling; encode: - shift_factor before it", {"type": "number"}
    ),
    _parameter(
        "do_scaling",
        "True: the manifest's diffusion scaling_factor and shift_factor where none is given (the client's "
        "deprecated default)",
        {"type": "boolean"},
    ),
]
SHAPE = _parameter(
    "shape",
    "the body tensor's shape, the key repeated per dimension as requests writes a list (shape=1&shape=4&...)",
    {"type": "array", "items": {"type": "integer"}},
)
BODY_TYPE = {"schema": {"type": "string", "format": "binary"}}
ERRORS: dict[int | str, dict[str, Any]] = {
    **error_responses(400, 413, 415, 422, 429, 503),
    409: {"model": ErrorBody, "description": "the model's latent is flat; this protocol takes [N, c, h, w] latents"},
}
DECODE_DOC = {
    "parameters": [
        SHAPE,
        _parameter("dtype", "the latents' dtype", {"type": "string", "enum": list(FLOAT_DTYPES)}),
        *FACTORS,
        _parameter("output_type", "pil: an image file; pt: a tensor", {"type": "string", "enum": ["pil", "pt"]}),
        _parameter("image_format", "output_type pil: png or jpg", {"type": "string", "enum": ["png", "jpg"]}),
        _parameter("partial_postprocess", "output_type pt: True for uint8 images [N, H, W, C]", {"type": "boolean"}),
        _parameter("height", "packed latents only (refused): the image height", {"type": "integer"}),
        _parameter("width", "packed latents only (refused): the image width", {"type": "integer"}),
    ],
    "requestBody": {"required": True, "content": {TENSOR_TYPE: BODY_TYPE, "application/octet-stream": BODY_TYPE}},
}
ENCODE_DOC = {
    "parameters": [
        {**SHAPE, "description": "a tensor body's shape [N, C, H, W]; absent for an image file"},
        _parameter("dtype", "a tensor body's dtype", {"type": "string", "enum": [*FLOAT_DTYPES, "uint8"]}),
        *FACTORS,
    ],
    "requestBody": {
        "required": True,
        "content": {TENSOR_TYPE: BODY_TYPE, "image/png": BODY_TYPE, "application/octet-stream": BODY_TYPE},
    },
}
add_model_route(
    router,
    "POST",
    "/remote/decode",
    remote_decode,
    responses={
        200: {"content": {"image/jpeg": {}, "image/png": {}, TENSOR_TYPE: {}}, "description": "image or tensor"},
        **ERRORS,
    },
    openapi_extra=DECODE_DOC,
    summary="Hugging Face's remote VAE decode (diffusers.utils.remote_decode): raw latents in, an image or tensor out",
)
add_model_route(
    router,
    "POST",
    "/remote/encode",
    remote_encode,
    responses={
        200: {"content": {TENSOR_TYPE: {}}, "description": "the latents, raw, with shape and dtype headers"},
        **ERRORS,
    },
    openapi_extra=ENCODE_DOC,
    summary="Hugging Face's remote VAE encode (diffusers.utils.remote_encode): an image or tensor in, latents out",
)
