"""The remote VAE protocol's routes (service/routes/remote.py), against a fake spatial-latent model whose
"graphs" are numpy: the query and body checks (every refusal before any numpy, with its error body), the
scaling, each output form, the image-header sizes, and the 409 of a flat-latent model. The real client and a
real AutoencoderKL are in tests/integration/test_remote_vae_protocol.py."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.core.artifact import OnnxVAE
from model.core.manifest import Manifest
from model.core.preprocess import PreprocessContract
from model.core.priors import StandardNormal
from service.errors import ApiError
from service.routes import remote
from service.settings import Settings
from tests.unit.service.conftest import build, client_for, error_with_message
from tests.unit.service.fakes import FakeVAE, make_manifest

pytestmark = pytest.mark.anyio

SCALING, SHIFT, FACTOR = 0.5, 0.25, 4
LATENT = (4, 2, 2)  # the import's: images of 8x8


class Encoder:
    """mean[c] = (c + 1) x the image's 4x4 block means (averaged over its channels); logvar 0."""

    def __init__(self) -> None:
        self.fed: list[np.ndarray] = []

    def run(self, names, feeds):
        (image,) = feeds.values()
        self.fed.append(image)
        n, c, h, w = image.shape
        blocks = image.reshape(n, c, h // FACTOR, FACTOR, w // FACTOR, FACTOR).mean(axis=(1, 3, 5))
        mean = (blocks[:, None] * np.arange(1, 5, dtype=np.float32)[None, :, None, None]).astype(np.float32)
        outputs = {"mean": mean, "logvar": np.zeros_like(mean)}
        return [outputs[name] for name in names]


class Decoder:
    """image = 1.5 x tanh(mean of z over channels), each latent pixel a 4x4 block, in every channel: past
    [-1, 1] in places, as a real decoder's output can be."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.fed: list[np.ndarray] = []

    def run(self, names, feeds):
        (z,) = feeds.values()
        self.fed.append(z)
        image = 1.5 * np.tanh(z.mean(axis=1, keepdims=True))
        image = image.repeat(FACTOR, axis=2).repeat(FACTOR, axis=3).repeat(self.channels, axis=1)
        return [image.astype(np.float32)]


def spatial_manifest(channels: int = 1, **changes) -> Manifest:
    base = make_manifest(shape=(channels, 8, 8), latent_dim=16).model_dump()
    base.update(
        name="spatial-vae",
        version="1.0.0",
        input={"shape": [channels, 8, 8], "channels": channels, "range": [-1.0, 1.0]},
        latent_shape=list(LATENT),
        sizes={"multiple": 4, "min": 4, "max": 64},
        diffusion={"scaling_factor": SCALING, "shift_factor": SHIFT, "downsample": 4, "source": "test"},
        likelihood={"name": "none", "outputs": ["mean"], "data_space": "none"},
        contract={"decoder": {"outputs": ["image"]}},
        preprocessing=PreprocessContract(input_shape=(channels, 8, 8)).describe(),
    )
    base.update(changes)
    return Manifest.model_validate(base)


def spatial_vae(channels: int = 1, **changes) -> OnnxVAE:
    manifest = spatial_manifest(channels, **changes)
    return OnnxVAE(manifest, Encoder(), Decoder(channels), Path("/fake"), StandardNormal(16))  # type: ignore[arg-type]


def app_with(vae: OnnxVAE | None = None, **settings):
    return build(vae or spatial_vae(), others=(FakeVAE(),), default_model="spatial-vae", **settings)[0]


@pytest.fixture
async def client():
    async with client_for(app_with()) as c:
        yield c


def latents(count: int = 1, h: int = 2, w: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 4, h, w)).astype(np.float32)


async def decode(client, z: np.ndarray, dtype: str = "float32", path: str = "/remote/decode", **params):
    body = params.pop("body", None)
    headers = {"content-type": "tensor/binary", **params.pop("headers", {})}
    query = {"shape": list(z.shape), "dtype": dtype, "output_type": "pt", **params}
    data = body if body is not None else z.astype(remote.WIRE_DTYPES.get(dtype, np.float32)).tobytes()
    return await client.post(path, params=query, content=data, headers=headers)


def tensor_of(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "tensor/binary"
    dtype = response.headers["dtype"]
    raw = np.frombuffer(response.content, dtype=remote.WIRE_DTYPES[dtype]).reshape(
        json.loads(response.headers["shape"])
    )
    return (raw.astype(np.uint32) << 16).view(np.float32) if dtype == "bfloat16" else raw


def decoded(z: np.ndarray, channels: int = 1) -> np.ndarray:
    """What the fake decoder gives for these unscaled latents."""
    return Decoder(channels).run(["image"], {"z": z})[0]


def refused(response, status: int, code: str, *fragments: str) -> str:
    got = error_with_message(response)
    assert got[:2] == (status, code), got
    assert all(fragment in got[2] for fragment in fragments), got[2]
    return got[2]


# -- decode -------------------------------------------------------------------------------------------------


async def test_decode_runs_the_decoder_on_latents_unscaled_by_the_given_factors(client):
    z = latents(count=2)
    response = await decode(client, z, scaling_factor=SCALING, shift_factor=SHIFT)
    tensor = tensor_of(response)
    assert response.headers["dtype"] == "float32" and tensor.shape == (2, 1, 8, 8)
    np.testing.assert_allclose(tensor, decoded(z / np.float32(SCALING) + np.float32(SHIFT)), rtol=1e-6)
    assert tensor.max() > 1 or tensor.min() < -1  # pt answers the decoder's output as it is, unclamped
    assert response.headers["x-model-name"] == "spatial-vae"


@pytest.mark.parametrize(
    ("params", "scale", "shift"),
    [
        ({}, 1.0, 0.0),  # no factors: the latents are the autoencoder's
        ({"do_scaling": "True"}, SCALING, SHIFT),  # the client's deprecated default: the manifest's
        ({"do_scaling": "True", "scaling_factor": "2"}, 2.0, SHIFT),  # what is given wins
        ({"do_scaling": "False", "shift_factor": "1"}, 1.0, 1.0),
    ],
)
async def test_do_scaling_fills_in_the_manifests_factors(client, params, scale, shift):
    z = latents()
    tensor = tensor_of(await decode(client, z, **params))
    np.testing.assert_allclose(tensor, decoded(z / np.float32(scale) + np.float32(shift)), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
async def test_half_precision_latents_are_read_as_their_bits_and_answered_in_their_dtype(client, dtype):
    z = np.array([1.0, -2.0, 0.5, 0.375] * 4, np.float32).reshape(1, 4, 2, 2)  # exact in both dtypes
    body = (z.view(np.uint32) >> 16).astype("<u2").tobytes() if dtype == "bfloat16" else z.astype("<f2").tobytes()
    response = await decode(client, z, dtype, body=body)
    assert response.headers["dtype"] == dtype
    expected = decoded(z)
    tolerance = 2.0**-8 if dtype == "bfloat16" else 2.0**-11
    np.testing.assert_allclose(tensor_of(response).astype(np.float32), expected, atol=1.5 * tolerance)


def test_bfloat16_rounds_to_nearest_even_as_torch_does():
    values = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, -3.0], np.float32)  # two ties: to even, both ways
    bits = np.frombuffer(remote.tensor_to_bytes(values, "bfloat16", "x"), "<u2")
    assert [hex(b) for b in bits] == ["0x3f80", "0x3f80", "0x3f82", "0xc040"]
    with pytest.raises(ApiError) as info:
        remote.tensor_to_bytes(np.array([3.4e38], np.float32), "bfloat16", "the latents")
    assert info.value.code == "non_finite_output"


@pytest.mark.parametrize(
    ("params", "accept", "media_type"),
    [
        ({"output_type": "pil", "image_format": "png"}, "image/png", "image/png"),
        ({"output_type": "pil", "image_format": "jpg"}, "image/jpeg", "image/jpeg"),
        ({"output_type": "pil"}, "image/png", "image/png"),  # no image_format: the Accept header's
        ({"output_type": "pil"}, "", "image/jpeg"),  # neither: jpg, the client's default
    ],
)
async def test_pil_answers_one_grey_image_file_the_client_opens(client, params, accept, media_type):
    z = latents()
    response = await decode(client, z, headers={"accept": accept}, **params)
    assert response.status_code == 200 and response.headers["content-type"] == media_type
    image = Image.open(io.BytesIO(response.content))
    assert image.mode == "L" and image.size == (8, 8)
    expected = Image.fromarray(remote.to_uint8(decoded(z))[0, :, :, 0])
    assert response.content == saved(expected, "PNG" if media_type == "image/png" else "JPEG")  # Pillow's defaults


def test_postprocessing_is_diffusers_denormalize_then_round():
    images = np.array([-1.5, -1.0, 0.0, 1 / 255, 0.5, 1.0, 2.0], np.float32).reshape(1, 1, 1, 7)
    unit = np.clip(images * 0.5 + 0.5, 0, 1)
    assert remote.to_uint8(images).reshape(-1).tolist() == np.round(unit * 255).astype(np.uint8).reshape(-1).tolist()
    assert remote.to_uint8(images).reshape(-1).tolist() == [0, 0, 128, 128, 191, 255, 255]


@pytest.mark.parametrize("channels", [1, 3])
async def test_pt_with_partial_postprocess_answers_uint8_images_the_client_opens(channels):
    async with client_for(app_with(spatial_vae(channels))) as client:
        z = latents(count=2, h=2, w=3)
        response = await decode(client, z, partial_postprocess="True")
    tensor = tensor_of(response)
    assert response.headers["dtype"] == "uint8"
    expected = remote.to_uint8(decoded(z, channels))
    # grey: [N, H, W], which Image.fromarray opens as mode L (it cannot open [H, W, 1]); RGB: [N, H, W, 3]
    assert tensor.shape == ((2, 8, 12) if channels == 1 else (2, 8, 12, 3))
    np.testing.assert_array_equal(tensor.reshape(expected.shape), expected)
    assert Image.fromarray(tensor[0]).mode == ("L" if channels == 1 else "RGB")


async def test_pil_with_a_processor_answers_unit_images_in_three_channels(client):
    z = latents()
    response = await decode(client, z, "float16", output_type="pil", headers={"accept": "tensor/binary"})
    tensor = tensor_of(response)
    assert response.headers["dtype"] == "float16" and tensor.shape == (1, 3, 8, 8)
    unit = np.clip(decoded(z) * 0.5 + 0.5, 0, 1)
    np.testing.assert_allclose(tensor.astype(np.float32), np.repeat(unit, 3, axis=1), atol=2**-11)


async def test_every_address_answers_and_the_metrics_label_the_route_and_operation(client):
    z = latents()
    for path in ("/remote/decode", "/v1/models/spatial-vae/remote/decode"):
        assert (await decode(client, z, path=path)).status_code == 200
    missing = await decode(client, z, path="/v1/models/spatial-vae/versions/9/remote/decode")
    refused(missing, 404, "model_not_found")
    metrics = (await client.get("/metrics")).text
    assert 'route="/remote/decode",status="200"' in metrics
    assert 'route="/v1/models/{name}/remote/decode",status="200"' in metrics
    assert 'model="spatial-vae",operation="remote_decode"' in metrics


SHAPE = [1, 4, 2, 2]


@pytest.mark.parametrize(
    ("query", "body", "status", "code", "fragment"),
    [
        ({}, b"\0" * 10, 422, "invalid_tensor", "declare 64"),
        ({"shape": [1, 4, 10**9, 10**9]}, b"", 422, "size_not_allowed", "nearest allowed size is 64x64"),
        ({"shape": [1, 4, 2**40, 2]}, b"", 422, "invalid_shape", "positive integer"),
        ({"shape": [1, 4, 0, 2]}, b"", 422, "invalid_shape", "positive integer"),
        ({"shape": ["x", 4, 2, 2]}, b"", 422, "invalid_shape", "positive integer"),
        ({"shape": [1] * 9}, b"", 422, "invalid_shape", "9 dimensions"),
        ({"shape": [1, 4, 2, 2, 1]}, b"", 422, "invalid_shape", "[N, c, h, w]"),
        ({"shape": [1, 16, 2, 2]}, b"", 422, "invalid_shape", "latents have 4"),
        ({"shape": [9, 4, 2, 2]}, b"", 422, "too_many_images", "at most 8"),
        ({"shape": [1, 4, 32, 32]}, b"", 422, "size_not_allowed", "128x128"),
        ({"shape": [1, 16, 64], "height": "16", "width": "16"}, b"", 422, "packed_latents", "[N, c, h, w]"),
        ({"shape": [1, 16, 64]}, b"", 422, "packed_latents", "unpacked"),
        ({"dtype": "float64"}, b"", 422, "invalid_dtype", "float32, float16, bfloat16"),
        ({"dtype": "uint8"}, b"", 422, "invalid_dtype", "latents"),
        ({"dtype": None}, b"", 422, "invalid_shape", "required"),
        ({"shape": None}, b"", 422, "invalid_shape", "required"),
        ({"output_type": "mp4"}, b"", 422, "unsupported_output", "video"),
        ({"output_type": "latent"}, b"", 422, "invalid_parameter", "pil or pt"),
        ({"output_type": "pil", "shape": [2, 4, 2, 2]}, b"", 422, "unsupported_output", "output_type pt"),
        ({"image_format": "gif", "output_type": "pil"}, b"", 422, "invalid_parameter", "png or jpg"),
        ({"partial_postprocess": "maybe"}, b"", 422, "invalid_parameter", "True or False"),
        ({"scaling_factor": "0"}, b"", 422, "invalid_parameter", "divided by"),
        ({"scaling_factor": "1e-50"}, b"", 422, "invalid_parameter", "divided by"),
        ({"shift_factor": "1e39"}, b"", 422, "invalid_parameter", "shifted by"),
        ({"shape": ["²", 4, 2, 2]}, b"", 422, "invalid_shape", "positive integer"),
        ({"height": "٨"}, b"", 422, "invalid_parameter", "positive integer"),
        ({"scaling_factor": "nan"}, b"", 422, "invalid_parameter", "finite"),
        ({"shift_factor": "-inf"}, b"", 422, "invalid_parameter", "finite"),
        ({"scaling_factor": "half"}, b"", 422, "invalid_parameter", "finite"),
        ({"height": "12"}, b"", 422, "invalid_parameter", "image height, 8"),
        ({"kk": "1"}, b"", 422, "unknown_parameter", "output_type"),
    ],
)
async def test_a_bad_query_or_body_is_refused_with_what_to_fix(client, query, body, status, code, fragment):
    params = {"shape": SHAPE, "dtype": "float32", "output_type": "pt", **query}
    params = {k: v for k, v in params.items() if v is not None}
    response = await client.post("/remote/decode", params=params, content=body)
    refused(response, status, code, fragment)


async def test_a_repeated_parameter_is_refused(client):
    response = await client.post("/remote/decode?shape=1&shape=4&shape=2&shape=2&dtype=float32&dtype=float16")
    refused(response, 422, "invalid_parameter", "dtype is given more than once")


@pytest.mark.parametrize(
    ("dtype", "poison"),
    [
        ("float32", np.array([np.nan], "<f4").tobytes()),
        ("float32", np.array([-np.inf], "<f4").tobytes()),
        ("float16", np.array([np.inf], "<f2").tobytes()),
        ("bfloat16", b"\xc0\x7f"),  # NaN's bits
    ],
)
async def test_non_finite_latents_are_refused_with_where(client, dtype, poison):
    size = remote.WIRE_DTYPES[dtype].itemsize
    body = bytearray(16 * size)
    body[5 * size : 6 * size] = poison
    response = await decode(client, latents(), dtype, body=bytes(body))
    refused(response, 422, "invalid_tensor", "non-finite", "[0, 1, 0, 1]")


async def test_latents_that_overflow_once_unscaled_are_refused(client):
    z = np.full((1, 4, 2, 2), 1e30, np.float32)
    refused(await decode(client, z, scaling_factor="1e-20"), 422, "invalid_tensor", "overflow")


@pytest.mark.parametrize(
    ("output", "dtype", "fragment"),
    [(np.inf, "float32", "decodes to non-finite values"), (1e6, "float16", "overflow float16")],
)
async def test_a_decoder_output_past_the_answers_range_is_refused(output, dtype, fragment):
    vae = spatial_vae()
    vae.decoder.run = lambda names, feeds: [np.full((1, 1, 8, 8), output, np.float32)]
    async with client_for(app_with(vae)) as client:
        refused(await decode(client, latents(), dtype), 422, "non_finite_output", fragment)


async def test_a_chunked_body_past_the_declared_size_is_refused_as_it_arrives(client):
    async def chunks():
        yield b"\0" * 64
        yield b"\0" * 64

    response = await client.post("/remote/decode", params={"shape": SHAPE, "dtype": "float32"}, content=chunks())
    refused(response, 422, "invalid_tensor", "more than 128")


@pytest.mark.parametrize(
    ("settings", "query", "status", "code", "fragment"),
    [
        (
            {"max_request_pixels": 100},
            {"shape": [2, 4, 2, 2]},
            413,
            "request_too_many_pixels",
            "VAE_MAX_REQUEST_PIXELS",
        ),
        ({"max_image_pixels": 32}, {}, 413, "image_too_large", "VAE_MAX_IMAGE_PIXELS"),
        ({"max_upload_bytes": 32}, {}, 413, "payload_too_large", "VAE_MAX_UPLOAD_BYTES"),
        ({"max_response_bytes": 100}, {}, 422, "response_too_large", "VAE_MAX_RESPONSE_BYTES"),
    ],
)
async def test_the_service_limits_apply_before_the_body_is_read(settings, query, status, code, fragment):
    async with client_for(app_with(**settings)) as client:
        params = {"shape": SHAPE, "dtype": "float32", "output_type": "pt", **query}
        refused(await client.post("/remote/decode", params=params), status, code, fragment)


async def test_a_flat_latent_model_answers_409_on_both_routes(client):
    for route in ("decode", "encode"):
        response = await client.post(f"/v1/models/fake-vae/remote/{route}", params={"shape": SHAPE, "dtype": "float32"})
        refused(response, 409, "spatial_latent_required", "flat latent of 4 numbers")


def test_do_scaling_needs_factors_from_somewhere():
    manifest = spatial_manifest(diffusion=None)
    with pytest.raises(ApiError) as info:
        remote.parse_scaling({"do_scaling": ["True"]}, manifest)
    assert info.value.code == "no_scaling_factor" and "pass scaling_factor" in info.value.message
    assert remote.parse_scaling({"do_scaling": ["True"], "scaling_factor": ["2"]}, manifest) == remote.Scaling(2.0)


def test_a_model_without_sizes_takes_its_own_size_only():
    geometry = remote.Geometry.of(spatial_manifest(sizes=None))
    assert geometry.allows(8, 8) and not geometry.allows(12, 8) and geometry.nearest(100, 4) == (8, 8)
    with pytest.raises(ApiError) as info:
        geometry.check_image(12, 8, Settings(), "the image is")
    assert info.value.code == "size_not_allowed" and "8x8 only" in info.value.message


def test_a_latent_that_is_not_the_image_downsampled_is_refused():
    manifest = spatial_manifest(latent_shape=[4, 3, 2], latent_dim=24, diffusion=None)
    with pytest.raises(ApiError) as info:
        remote.Geometry.of(manifest)
    assert info.value.status == 409 and "whole factor" in info.value.message


# -- encode -------------------------------------------------------------------------------------------------


def png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def corrupt_png() -> bytes:
    """An 8x8 PNG whose pixel data no longer matches its checksum: a good header, then a failed decode."""
    data = bytearray(png(np.zeros((8, 8), np.uint8)))
    data[data.index(b"IDAT") + 6] ^= 0xFF
    return bytes(data)


def encoded(images: np.ndarray) -> np.ndarray:
    """The fake encoder's mean for images in [-1, 1], scaled as a diffusion model sees it."""
    mean = Encoder().run(["mean"], {"image": images})[0]
    return (mean - np.float32(SHIFT)) * np.float32(SCALING)


async def test_encode_an_image_at_its_own_size(client):
    pixels = np.random.default_rng(1).integers(0, 256, (8, 12), dtype=np.uint8)
    response = await client.post(
        "/remote/encode", params={"scaling_factor": SCALING, "shift_factor": SHIFT}, content=png(pixels)
    )
    tensor = tensor_of(response)
    assert response.headers["dtype"] == "float32" and tensor.shape == (1, 4, 2, 3)
    images = (pixels.astype(np.float32) / 255 * 2 - 1)[None, None]
    np.testing.assert_allclose(tensor, encoded(images), rtol=1e-6, atol=1e-7)


async def test_encode_converts_colour_to_the_models_grey(client):
    rgb = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    a = tensor_of(await client.post("/remote/encode", content=png(rgb)))
    b = tensor_of(await client.post("/remote/encode", content=png(grey)))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "uint8"])
async def test_encode_a_tensor_in_0_1_or_in_minus_1_1_as_the_processor_does(client, dtype):
    levels = np.random.default_rng(3).integers(0, 256, (2, 1, 8, 8)).astype(np.float32)
    unit = levels / 255
    if dtype == "uint8":
        body, sent = levels.astype(np.uint8).tobytes(), unit
    elif dtype == "bfloat16":
        sent = ((unit.view(np.uint32) >> 16) << 16).view(np.float32)  # truncated: exact in bfloat16
        body = (sent.view(np.uint32) >> 16).astype("<u2").tobytes()
    else:
        sent = unit.astype(dtype).astype(np.float32)
        body = unit.astype(remote.WIRE_DTYPES[dtype]).tobytes()
    response = await client.post("/remote/encode", params={"shape": [2, 1, 8, 8], "dtype": dtype}, content=body)
    tensor = tensor_of(response)
    assert response.headers["dtype"] == ("float32" if dtype == "uint8" else dtype) and tensor.shape == (2, 4, 2, 2)
    mean = Encoder().run(["mean"], {"image": sent * 2 - 1})[0]
    np.testing.assert_allclose(tensor.astype(np.float32), mean, atol=2**-7)
    signed = (sent * 2 - 1).astype(np.float32)
    signed[0, 0, 0, 0] = -1.0  # a negative minimum: the tensor is taken as [-1, 1] already
    again = await client.post(
        "/remote/encode", params={"shape": [2, 1, 8, 8], "dtype": "float32"}, content=signed.tobytes()
    )
    np.testing.assert_allclose(tensor_of(again), Encoder().run(["mean"], {"image": signed})[0], atol=1e-6)


@pytest.mark.parametrize(
    ("params", "body", "headers", "status", "code", "fragment"),
    [
        ({}, png(np.zeros((10, 12), np.uint8)), {}, 422, "size_not_allowed", "nearest allowed size is 12x12"),
        ({}, png(np.zeros((4, 68), np.uint8)), {}, 422, "size_not_allowed", "from 4 to 64"),
        ({}, b"not an image", {}, 400, "invalid_image", "PNG, JPEG"),
        ({}, b"", {}, 400, "invalid_image", "PNG, JPEG"),
        ({}, corrupt_png(), {}, 400, "invalid_image", "the image"),
        ({}, b"{}", {"content-type": "application/json"}, 415, "unsupported_media_type", "image file's bytes"),
        ({}, b"\0" * 256, {"content-type": "tensor/binary"}, 422, "invalid_shape", "shape and dtype"),
        ({"shape": [1, 1, 8, 8]}, b"\0" * 256, {}, 422, "invalid_shape", "both shape and dtype"),
        ({"shape": [1, 3, 8, 8], "dtype": "float32"}, b"", {}, 422, "invalid_shape", "images of 1 (grey)"),
        ({"shape": [1, 8, 8], "dtype": "float32"}, b"", {}, 422, "invalid_shape", "add the batch axis"),
        ({"shape": [1, 1, 8, 8], "dtype": "int8"}, b"", {}, 422, "invalid_dtype", "uint8"),
        ({"shape": [1, 1, 8, 8], "dtype": "float32"}, b"\0" * 255, {}, 422, "invalid_tensor", "declare 256"),
        (
            {"shape": [1, 1, 8, 8], "dtype": "float32"},
            np.full(64, np.nan, "<f4").tobytes(),
            {},
            422,
            "invalid_tensor",
            "non-finite",
        ),
        (
            {"shape": [1, 1, 8, 8], "dtype": "float32"},
            np.full(64, 3e38, "<f4").tobytes(),
            {},
            422,
            "invalid_tensor",
            "overflow",
        ),
        ({"shape": [1, 1, 7, 8], "dtype": "float32"}, b"", {}, 422, "size_not_allowed", "8x8"),
        ({"shape": [99, 1, 8, 8], "dtype": "float32"}, b"", {}, 422, "too_many_images", "at most 8"),
        ({"output_type": "pt"}, b"", {}, 422, "unknown_parameter", "scaling_factor"),
    ],
)
async def test_a_bad_encode_is_refused_with_what_to_fix(client, params, body, headers, status, code, fragment):
    response = await client.post("/remote/encode", params=params, content=body, headers=headers)
    refused(response, status, code, fragment)


async def test_an_image_header_declaring_a_huge_size_is_refused_before_decoding(client):
    header = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + (60000).to_bytes(4, "big") * 2 + b"\x08\0\0\0\0"
    refused(await client.post("/remote/encode", content=header + b"\0" * 64), 422, "size_not_allowed", "60000x60000")


def saved(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "mode", "options"),
    [
        ("PNG", "L", {}),
        ("PNG", "RGBA", {}),
        ("JPEG", "RGB", {}),
        ("JPEG", "L", {"progressive": True}),
        ("JPEG", "RGB", {"exif": b"Exif\0\0" + b"\0" * 40}),
        ("GIF", "P", {}),
        ("BMP", "RGB", {}),
        ("WEBP", "RGB", {"lossless": True}),
        ("WEBP", "RGB", {"quality": 50}),
    ],
)
def test_image_size_reads_the_size_pillow_reads(fmt, mode, options):
    image = Image.new(mode, (13, 7))
    data = saved(image, fmt, **options)
    assert remote.image_size(data) == (7, 13) == Image.open(io.BytesIO(data)).size[::-1]


def test_image_size_gives_none_for_what_it_cannot_read():
    tiff = saved(Image.new("L", (8, 8)), "TIFF")
    assert remote.image_size(tiff) is None
    assert remote.image_size(b"\xff\xd8" + b"\xff\xfe\x00\x04ab" * 5000) is None  # comments, no frame header
    assert remote.image_size(b"\xff\xd8\xff\xc0") is None  # truncated
    assert remote.image_size(b"GIF89a") is None


async def test_the_remote_routes_are_documented(client):
    spec = (await client.get("/openapi.json")).json()
    for prefix in ("", "/v1/models/{name}", "/v1/models/{name}/versions/{version}"):
        for route in ("decode", "encode"):
            operation = spec["paths"][f"{prefix}/remote/{route}"]["post"]
            assert "tensor/binary" in operation["requestBody"]["content"]
            assert {"409", "413", "422"} <= set(operation["responses"])
            assert {p["name"] for p in operation["parameters"]} >= {"shape", "dtype", "scaling_factor"}
