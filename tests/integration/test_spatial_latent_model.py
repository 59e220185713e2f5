"""The bundled latent-diffusion autoencoder (a diffusers AutoencoderKL, spatial latent [4, 7, 7], no likelihood)
through every native route, the open inference protocol's models and operations, the repository routes and the
explorer page: the answers equal its graphs run in onnxruntime here, latents go out flattened in C order with
their `latent_shape`, and the routes that score answer 409 `no_likelihood`."""

from __future__ import annotations

import io
import math

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from tests.conftest import REPO
from tests.integration.conftest import Server

NAME = "fashion-mnist-autoencoderkl"
DIRECTORY = REPO / "artifacts" / NAME / "1.0.0"
ADMIN_TOKEN = "spatial-admin-token"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with Server(
        tmp_path_factory.mktemp("spatial"), VAE_MODEL_REPOSITORY=str(REPO / "artifacts"), VAE_ADMIN_TOKEN=ADMIN_TOKEN
    ) as server:
        yield f"{server.url}/v1/models/{NAME}", server.url


@pytest.fixture(scope="module")
def graphs():
    options = ort.SessionOptions()
    options.log_severity_level = 3
    load = lambda name: ort.InferenceSession(str(DIRECTORY / name), options, providers=["CPUExecutionProvider"])  # noqa: E731
    return load("encoder.onnx"), load("decoder.onnx")


def sneaker() -> tuple[bytes, np.ndarray]:
    data = (REPO / "samples" / "sneaker.png").read_bytes()
    levels = np.asarray(Image.open(io.BytesIO(data)).convert("L").resize((28, 28), Image.Resampling.BILINEAR))
    return data, levels.astype(np.float32)[None, None] * np.float32(1.0 / 255.0)


def test_the_model_card_describes_a_spatial_latent(url):
    model, _ = url
    card = httpx.get(model).json()
    assert card["latent_shape"] == [4, 7, 7] and card["latent_dim"] == 196
    assert card["likelihood"]["name"] == "none"
    assert card["diffusion"]["downsample"] == 4 and card["diffusion"]["scaling_factor"] > 0
    assert card["sizes"]["multiple"] == 4


def test_encode_returns_the_graphs_posterior_flattened_in_c_order(url, graphs):
    model, _ = url
    data, pixels = sneaker()
    answer = httpx.post(f"{model}/encode", files={"file": ("s.png", data, "image/png")}).json()
    assert answer["latent_shape"] == [4, 7, 7]
    mean, logvar = graphs[0].run(["mean", "logvar"], {"image": pixels * 2 - 1})
    np.testing.assert_allclose(answer["results"][0]["mean"], mean.reshape(-1), atol=1e-5)
    np.testing.assert_allclose(answer["results"][0]["logvar"], logvar.reshape(-1), atol=1e-5)


def test_decode_and_sample_decode_latents_of_the_graphs_shape(url, graphs):
    model, _ = url
    z = np.random.default_rng(0).standard_normal((2, 196)).astype(np.float32)
    answer = httpx.post(f"{model}/decode?format=json&pixels=true", json={"z": z.tolist()}).json()
    (image,) = graphs[1].run(["image"], {"z": z.reshape(2, 4, 7, 7)})
    expected = np.clip((image + 1) / 2, 0, 1)
    np.testing.assert_allclose([i["pixels"] for i in answer["images"]], expected, atol=1e-5)
    sample = httpx.get(f"{model}/sample", params={"n": 2, "seed": 3, "format": "json"}).json()
    assert len(sample["samples"][0]["z"]) == 196


def test_reconstruct_and_preprocess_answer_pngs_of_the_input_size(url):
    model, _ = url
    data, _ = sneaker()
    for route in ("reconstruct", "preprocess"):
        response = httpx.post(f"{model}/{route}", files={"file": ("s.png", data, "image/png")})
        assert response.status_code == 200 and Image.open(io.BytesIO(response.content)).size == (28, 28)


@pytest.mark.parametrize("route", ["elbo", "anomaly"])
def test_the_routes_that_score_answer_409_naming_the_missing_likelihood(url, route):
    model, _ = url
    data, _ = sneaker()
    response = httpx.post(f"{model}/{route}", files={"file": ("s.png", data, "image/png")})
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "no_likelihood" and "declares none (a deterministic decoder)" in error["message"]


def test_the_v2_operations_take_and_give_latents_in_their_shape(url, graphs):
    _, base = url
    _, pixels = sneaker()
    image = {
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": pixels.ravel().tolist()}]
    }
    outputs = httpx.post(f"{base}/v2/models/{NAME}.encode/infer", json=image).json()["outputs"]
    mean = next(o for o in outputs if o["name"] == "mean")
    assert mean["shape"] == [1, 4, 7, 7]
    expected, _ = graphs[0].run(["mean", "logvar"], {"image": pixels * 2 - 1})
    np.testing.assert_allclose(np.array(mean["data"]).reshape(1, 4, 7, 7), expected, atol=1e-5)
    z = np.zeros((1, 4, 7, 7), np.float32)
    body = {
        "inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 4, 7, 7], "data": z.ravel().tolist()}],
        "outputs": [{"name": "images"}],
    }
    images = httpx.post(f"{base}/v2/models/{NAME}.decode/infer", json=body).json()["outputs"][0]
    assert images["shape"] == [1, 1, 28, 28]
    elbo = httpx.post(f"{base}/v2/models/{NAME}.elbo/infer", json=image)
    assert elbo.status_code == 409 and "declares none (a deterministic decoder)" in elbo.json()["error"]


def test_the_raw_decoder_graph_takes_latents_of_other_sizes(url, graphs):
    """Fully convolutional: M.decoder decodes a [4, 16, 16] latent to a 64 x 64 image, as the graph does."""
    _, base = url
    z = np.random.default_rng(1).standard_normal((1, 4, 16, 16)).astype(np.float32)
    body = {"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 4, 16, 16], "data": z.ravel().tolist()}]}
    output = httpx.post(f"{base}/v2/models/{NAME}.decoder/infer", json=body).json()["outputs"][0]
    assert output["shape"] == [1, 1, 64, 64]
    (expected,) = graphs[1].run(["image"], {"z": z})
    np.testing.assert_allclose(np.array(output["data"]).reshape(expected.shape), expected, atol=1e-5)


def test_the_repository_and_the_explorer_offer_it(url):
    _, base = url
    index = httpx.post(f"{base}/v2/repository/index", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    assert any(entry["name"] == NAME and entry["state"] == "READY" for entry in index)
    assert httpx.get(f"{base}/ui/").status_code == 200
    assert math.prod(httpx.get(f"{base}/v1/models/{NAME}").json()["latent_shape"]) == 196


@pytest.mark.parametrize(
    ("graph", "tensor", "shape", "means"),
    [("decoder", "z", (1, 4, 128, 128), "512 x 512"), ("encoder", "image", (1, 1, 30, 30), "30 x 30")],
)
def test_the_raw_graphs_refuse_sizes_the_manifest_does_not_allow(url, graph, tensor, shape, means):
    """sizes.max 256 (the attention's memory: 2.2 GB per 512 px image) and multiples of 4, before any graph runs."""
    _, base = url
    data = np.zeros(shape, np.float32)
    body = {"inputs": [{"name": tensor, "datatype": "FP32", "shape": list(shape), "data": data.ravel().tolist()}]}
    response = httpx.post(f"{base}/v2/models/{NAME}.{graph}/infer", json=body, timeout=60)
    assert response.status_code == 400
    message = response.json()["error"]
    assert "takes images of 4 to 256 pixels a side, multiples of 4" in message and f"means {means}" in message
