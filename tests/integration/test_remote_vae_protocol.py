"""Hugging Face's remote VAE protocol (service/routes/remote.py) over real HTTP, spoken by diffusers' own client
functions (`diffusers.utils.remote_utils.remote_decode` and `remote_encode`, unchanged) to a vae-serve
serving two tiny AutoencoderKLs made here and imported with `vae-import diffusers`: an RGB one with a
Flux-like scaling and shift, and a grey one with SD's scaling and no shift.

Each answer is compared with the same AutoencoderKL run here in diffusers: decoded tensors and latents to
1e-4 in float32 (the import's measured parity is ~3e-6), to the request dtype's rounding for float16 and
bfloat16, and images to 1/255 per pixel against diffusers' own VaeImageProcessor postprocessing.
"""

from __future__ import annotations

import importlib
import io
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO
from tests.integration.conftest import Server

os.environ["HF_HUB_OFFLINE"] = "1"  # diffusers reads it on import: no network here
torch = pytest.importorskip("torch", reason="the reference runs AutoencoderKL in torch (make install-train)")
diffusers = pytest.importorskip("diffusers", reason="diffusers is in the train and test extras")
remote_utils = importlib.import_module("diffusers.utils.remote_utils")
VaeImageProcessor = importlib.import_module("diffusers.image_processor").VaeImageProcessor

TINY = {
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "block_out_channels": (16, 32, 32),  # downsampling 4
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 16,
}
MODELS: dict[str, dict[str, Any]] = {
    "akl-rgb": {"in_channels": 3, "out_channels": 3, "scaling_factor": 0.3611, "shift_factor": 0.1159},
    "akl-grey": {"in_channels": 1, "out_channels": 1, "scaling_factor": 0.18215},
}
LATENT_SIZE = (6, 10)  # images of 24x40: a size that is not the import's 16x16, and not square
PIXEL = 1  # images: one level of 255


class Model:
    def __init__(self, name: str, vae: Any) -> None:
        self.name, self.vae = name, vae
        self.scaling = float(vae.config.scaling_factor)
        self.shift = None if vae.config.shift_factor is None else float(vae.config.shift_factor)
        self.channels = int(vae.config.in_channels)
        self.processor = VaeImageProcessor(vae_scale_factor=4, do_convert_grayscale=self.channels == 1)

    def decode(self, latents: Any) -> Any:
        """The diffusion latents -> the decoded images in [-1, 1], as a pipeline does."""
        z = latents.float() / self.scaling + (self.shift or 0.0)
        with torch.no_grad():
            return self.vae.decode(z).sample

    def encode(self, images: Any) -> Any:
        """Images in [-1, 1] -> the posterior's mean, scaled as a diffusion model sees it."""
        with torch.no_grad():
            mean = self.vae.encode(images.float()).latent_dist.mean
        return (mean - (self.shift or 0.0)) * self.scaling

    def pil(self, decoded: Any) -> list[Image.Image]:
        with quiet():
            return self.processor.postprocess(decoded, output_type="pil")

    def factors(self) -> dict[str, float]:
        return {"scaling_factor": self.scaling, **({"shift_factor": self.shift} if self.shift is not None else {})}


@contextmanager
def quiet() -> Iterator[None]:
    """diffusers' deprecations (do_scaling, [-1, 1] tensors) and torch's: pytest makes warnings errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def vae_import(source: Path, out: Path, name: str) -> subprocess.Popen[str]:
    argv = ["diffusers", str(source), str(out), "--name", name, "--version", "1", "--threads", "1"]
    return subprocess.Popen(
        [sys.executable, "-m", "export.import_cli", *argv],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},  # two at once on few cores
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, dict[str, Model]]]:
    tmp = tmp_path_factory.mktemp("remote-vae")
    repo, models, imports = tmp / "repo", {}, []
    for name, config in MODELS.items():
        torch.manual_seed(0)
        with quiet():
            vae = diffusers.AutoencoderKL(**TINY, **config).eval()
            vae.save_pretrained(tmp / name)
        models[name] = Model(name, vae)
        imports.append(vae_import(tmp / name, repo / name / "1", name))  # both at once: each is mostly export
    for process in imports:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference's tiny convolutions: two threads spin for 50x the work beside the server
    try:
        with Server(tmp, VAE_MODEL_REPOSITORY=str(repo), VAE_DEFAULT_MODEL="akl-rgb") as server:
            yield server.url, models
    finally:
        torch.set_num_threads(threads)


def endpoint(url: str, model: Model, operation: str) -> str:
    return f"{url}/v1/models/{model.name}/remote/{operation}"


def latents(model: Model, count: int = 1, seed: int = 0) -> Any:
    """Diffusion latents of autoencoder latents drawn from N(0, 1), as a pipeline would hand over."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(count, 4, *LATENT_SIZE, generator=generator)
    return (z - (model.shift or 0.0)) * model.scaling


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def assert_same_image(actual: Image.Image, expected: Image.Image, tolerance: int = PIXEL) -> None:
    assert actual.size == expected.size
    difference = np.abs(pixels(actual) - pixels(expected))
    assert difference.max() <= tolerance, f"{difference.max()} levels apart at {np.argmax(difference)}"


def remote_decode(url: str, model: Model, tensor: Any, **kwargs: Any) -> Any:
    arguments = {**model.factors(), **kwargs}
    with quiet():
        return remote_utils.remote_decode(endpoint(url, model, "decode"), tensor, **arguments)


def remote_encode(url: str, model: Model, image: Any, **kwargs: Any) -> Any:
    with quiet():
        return remote_utils.remote_encode(endpoint(url, model, "encode"), image, **kwargs)


TENSOR_TOLERANCE = {"float32": 1e-4, "float16": 2e-3, "bfloat16": 2e-2}  # 1e-4 + the dtype's rounding of ~|1|


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("name", list(MODELS))
def test_decode_to_a_tensor_equals_diffusers(served, name, dtype):
    url, models = served
    model = models[name]
    sent = latents(model, count=2).to(getattr(torch, dtype))
    answer = remote_decode(url, model, sent, output_type="pt", return_type="pt")
    expected = model.decode(sent)
    assert answer.dtype == sent.dtype and answer.shape == expected.shape == (2, model.channels, 24, 40)
    assert (answer.float() - expected).abs().max().item() <= TENSOR_TOLERANCE[dtype]


CLIENT_MODES = {
    "pil png": {"output_type": "pil", "image_format": "png"},
    "pt uint8": {"output_type": "pt", "partial_postprocess": True},
    "pt with a processor": {"output_type": "pt", "processor": True},
    "pil with a processor": {"output_type": "pil", "processor": True},
}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("mode", list(CLIENT_MODES))
@pytest.mark.parametrize("name", list(MODELS))
def test_decode_to_an_image_equals_diffusers_postprocessing(served, name, mode, dtype):
    url, models = served
    model = models[name]
    sent = latents(model, seed=1).to(getattr(torch, dtype))
    options = dict(CLIENT_MODES[mode])
    if options.pop("processor", False):
        options["processor"] = model.processor
    answer = remote_decode(url, model, sent, **options)
    (expected,) = model.pil(model.decode(sent))
    image = answer[0] if isinstance(answer, list) else answer
    assert isinstance(image, Image.Image)
    assert_same_image(image, expected)


@pytest.mark.parametrize("name", list(MODELS))
def test_a_grey_model_answers_grey_where_the_client_keeps_the_mode(served, name):
    url, models = served
    model = models[name]
    uint8 = remote_decode(url, model, latents(model), output_type="pt", partial_postprocess=True)
    (expected,) = model.pil(model.decode(latents(model)))
    assert uint8.mode == expected.mode == ("L" if model.channels == 1 else "RGB")
    tensor = remote_decode(url, model, latents(model), output_type="pt", partial_postprocess=True, return_type="pt")
    assert tensor.dtype == torch.uint8
    assert tuple(tensor.shape) == ((1, 24, 40) if model.channels == 1 else (1, 24, 40, 3))


@pytest.mark.parametrize("name", list(MODELS))
def test_a_jpeg_is_the_local_image_saved_as_pillow_saves_a_jpeg(served, name):
    """The server saves with Pillow's defaults (quality 75, 4:2:0 for RGB): the local image saved the same way.
    The two uint8 images are equal or a level apart in a few pixels (the float32 graphs against torch), and a
    pixel a level off can move its 8x8 block's quantised coefficients: 3 levels bound that, and the mean
    difference stays far below one level."""
    url, models = served
    model = models[name]
    answer = remote_decode(url, model, latents(model, seed=2), output_type="pil", image_format="jpg")
    assert answer.format == "jpeg"
    (expected,) = model.pil(model.decode(latents(model, seed=2)))
    buffer = io.BytesIO()
    expected.save(buffer, format="JPEG")
    local = Image.open(io.BytesIO(buffer.getvalue()))
    difference = np.abs(pixels(answer) - pixels(local))
    assert difference.max() <= 3 and difference.mean() < 0.05


def test_a_batch_decodes_to_one_image_each(served):
    url, models = served
    model = models["akl-rgb"]
    sent = latents(model, count=3, seed=3)
    answer = remote_decode(url, model, sent, output_type="pt", partial_postprocess=True)
    expected = model.pil(model.decode(sent))
    assert len(answer) == 3
    for actual, wanted in zip(answer, expected, strict=True):
        assert_same_image(actual, wanted)


@pytest.mark.parametrize("name", list(MODELS))
def test_do_scaling_without_factors_applies_the_models_own(served, name):
    """The client's deprecated default: do_scaling=True and no scaling_factor asks the endpoint's own."""
    url, models = served
    model = models[name]
    sent = latents(model, seed=4)
    with quiet():
        answer = remote_utils.remote_decode(
            endpoint(url, model, "decode"), sent, output_type="pt", return_type="pt"
        )  # do_scaling=True by default
    assert (answer - model.decode(sent)).abs().max().item() <= 1e-4


def an_image(model: Model, size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A smooth random image (width, height) = size, in the model's mode."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size[1] // 4, size[0] // 4, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(size, Image.Resampling.BILINEAR)
    return image.convert("L") if model.channels == 1 else image


@pytest.mark.parametrize("name", list(MODELS))
def test_encode_an_image_equals_diffusers(served, name):
    url, models = served
    model = models[name]
    image = an_image(model, (40, 24))
    answer = remote_encode(url, model, image, **model.factors())
    with quiet():
        expected = model.encode(model.processor.preprocess(image))
    assert answer.dtype == torch.float32 and answer.shape == expected.shape == (1, 4, 6, 10)
    assert (answer - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("name", list(MODELS))
def test_encode_a_tensor_equals_diffusers(served, name, dtype):
    url, models = served
    model = models[name]
    generator = torch.Generator().manual_seed(5)
    images = torch.rand(2, model.channels, 24, 40, generator=generator).to(getattr(torch, dtype))
    answer = remote_encode(url, model, images, **model.factors())
    expected = model.encode(images.float() * 2 - 1)
    assert answer.dtype == images.dtype and answer.shape == expected.shape == (2, 4, 6, 10)
    assert (answer.float() - expected).abs().max().item() <= TENSOR_TOLERANCE[dtype]
    signed = remote_encode(url, model, images.float() * 2 - 1, **model.factors())  # [-1, 1], as the processor
    assert (signed - expected).abs().max().item() <= 1e-4


def test_encode_then_decode_round_trips_through_the_client(served):
    url, models = served
    model = models["akl-rgb"]
    image = an_image(model, (40, 24), seed=6)
    latent = remote_encode(url, model, image, **model.factors())
    answer = remote_decode(url, model, latent, output_type="pil", image_format="png")
    (expected,) = model.pil(model.decode(latent))
    assert_same_image(answer, expected)


def refusal(call: Any) -> dict[str, Any]:
    with pytest.raises(RuntimeError) as info:
        call()
    (body,) = info.value.args  # the client raises RuntimeError(response.json())
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return dict(body["error"])


def test_refusals_reach_the_client_as_the_services_error_bodies(served):
    url, models = served
    model = models["akl-rgb"]
    packed = refusal(lambda: remote_decode(url, model, torch.zeros(1, 60, 16), height=24, width=40))
    assert packed["code"] == "packed_latents" and "[N, c, h, w]" in packed["message"]
    batch = refusal(lambda: remote_decode(url, model, latents(model, count=2), output_type="pil"))
    assert batch["code"] == "unsupported_output" and "output_type pt" in batch["message"]
    size = refusal(lambda: remote_encode(url, model, an_image(model, (29, 25))))
    assert size["code"] == "size_not_allowed" and "25x29" in size["message"]
    assert "multiples of 4" in size["message"] and "the nearest allowed size is 24x28" in size["message"]
    channels = refusal(lambda: remote_decode(url, model, torch.zeros(1, 16, 6, 10), output_type="pt", return_type="pt"))
    assert channels["code"] == "invalid_shape" and "4" in channels["message"]


def test_the_default_model_answers_at_the_plain_address_and_the_metrics_count_it(served):
    url, models = served
    model = models["akl-rgb"]
    with quiet():
        plain = remote_utils.remote_decode(
            f"{url}/remote/decode", latents(model), output_type="pt", return_type="pt", **model.factors()
        )
    assert (plain - model.decode(latents(model))).abs().max().item() <= 1e-4
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert re.search(r'vae_requests_total\{method="POST",route="/remote/decode",status="200"\} [1-9]', metrics)
    assert 'route="/v1/models/{name}/remote/encode",status="200"' in metrics
    assert re.search(r'vae_inference_duration_seconds_count\{[^}]*operation="remote_decode"', metrics)
