"""Three VAEs this project did not design go through `vae-import` and `vae-serve`, and the service answers as
their authors' own code does: to 1e-5 for the deterministic parts (/encode, /decode, /sample's latents and
images) and within the estimator's noise for the sampled ones (/elbo's reconstruction and log p(x)).

- examples-vae: pytorch/examples' VAE (tests/byo/examples_vae.py), trained briefly here with its authors'
  loss; it encodes flattened images and decodes to probabilities;
- conv-vae: a convolutional VAE with a Gaussian decoder on [-1, 1] inputs and methods named embed and
  generate (tests/byo/conv_vae.py);
- pair-vae: ONNX graphs from a plain torch.onnx.export with names of their own, normalised inputs and a
  log-sigma posterior (tests/byo/onnx_pair.py), checked against onnxruntime on the user's files.

The references are computed here, from the user's module in torch or the user's graphs in onnxruntime.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import math
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from model.core.preprocess import image_stream
from tests.conftest import REPO
from tests.integration.conftest import Server

torch = pytest.importorskip("torch", reason="vae-import torch needs the train extra (make install-train)")
ort = pytest.importorskip("onnxruntime")

BYO = REPO / "tests" / "byo"
FASHION = Path("/usr/share/datasets/fashion-mnist")
ADMIN_TOKEN = "byo-admin-token"


def load_file(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vae_import(*argv: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "export.import_cli", *argv], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"vae-import {' '.join(argv)}:\n{result.stderr[-3000:]}"
    return result.stdout


def image_folder(directory: Path, split: str, count: int) -> Path:
    """`count` Fashion-MNIST images of `split` as PNG files: a user's folder."""
    from model.data import load_dataset

    data = load_dataset("fashion-mnist", str(FASHION))
    images = data.train[-count:] if split == "train" else data.test[:count]
    directory.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(np.round(image[0] * 255).astype(np.uint8)).save(directory / f"{i:04d}.png")
    return directory


def train_examples_vae(path: Path) -> None:
    """pytorch/examples' VAE, a few hundred steps on Fashion-MNIST with its authors' loss, seeded."""
    from model.data import load_dataset

    examples = load_file(BYO / "examples_vae.py", "examples_vae")
    torch.manual_seed(0)
    model = examples.VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.from_numpy(load_dataset("fashion-mnist", str(FASHION)).train[:25_600])
    for step in range(200):
        batch = images[(step * 128) % len(images) :][:128]
        recon, mu, logvar = model(batch)
        loss = examples.loss_function(recon, batch, mu, logvar)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.save(model.state_dict(), path)


@dataclass
class Reference:
    """A user's model on their side: [0, 1] pixels -> (mean, logvar); z -> E[x|z] in [0, 1]; z -> log p(x|z)."""

    encode: Any
    pixel_mean: Any
    log_px_z: Any  # (x in [0, 1] pixels (N, C, H, W), z (K, D)) -> (K,) for the image x[0]
    data: Any  # (pixels (C, H, W), seed) -> the data the likelihood scores, in [0, 1] pixels


def examples_reference(weights: Path) -> Reference:
    examples = load_file(BYO / "examples_vae.py", "examples_vae_ref")
    model = examples.VAE()
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()

    def encode(pixels):
        with torch.no_grad():
            mean, logvar = model.encode(torch.from_numpy(pixels).view(-1, 784))
        return mean.numpy(), logvar.numpy()

    def probs(z):
        with torch.no_grad():
            return model.decode(torch.from_numpy(z)).view(-1, 1, 28, 28).numpy()

    def log_px_z(x, z):
        p = torch.from_numpy(probs(z)).double()
        target = torch.from_numpy(x).double().expand_as(p)
        return -torch.nn.functional.binary_cross_entropy(p, target, reduction="none").flatten(1).sum(1).numpy()

    return Reference(encode, probs, log_px_z, lambda pixels, seed: pixels)  # binary images are their own draw


def conv_reference() -> Reference:
    conv = load_file(BYO / "conv_vae.py", "conv_vae_ref")
    model = conv.build().eval()
    sigma = float(model.log_sigma.detach().exp())

    def encode(pixels):
        with torch.no_grad():
            mean, logvar = model.embed(torch.from_numpy(2 * pixels - 1))
        return mean.numpy(), logvar.numpy()

    def generate(z):
        with torch.no_grad():
            return model.generate(torch.from_numpy(z)).double()

    def log_px_z(x, z):
        # x, dequantised in [0, 1], is 2x - 1 in the model's values: density there, times 2 per dimension
        # for the change of variables, times 1/256 per dimension for the 8-bit bin.
        values = torch.from_numpy(2 * x - 1).double()
        log_density = torch.distributions.Normal(generate(z), sigma).log_prob(values).flatten(1).sum(1)
        return (log_density + x.size * (math.log(2.0) - math.log(256.0))).numpy()

    def dequantise(pixels, seed):
        """The service's documented draw (the response's data_space): u from the stream of (seed, content)."""
        u = image_stream(seed, pixels).random(pixels.shape, dtype=np.float32)
        return ((np.round(pixels * 255.0) + u) / 256.0).astype(np.float32)

    return Reference(encode, lambda z: np.clip((generate(z).numpy() + 1) / 2, 0, 1), log_px_z, dequantise)


def pair_reference(encoder_path: Path, decoder_path: Path) -> Reference:
    encoder = ort.InferenceSession(str(encoder_path), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(decoder_path), providers=["CPUExecutionProvider"])

    def encode(pixels):
        mu, log_sigma = encoder.run(["mu", "log_sigma"], {"pixels": ((pixels - 0.5) / 0.25).astype(np.float32)})
        return mu, 2 * log_sigma

    def logits(z):
        return decoder.run(["recon_logits"], {"latent": z.astype(np.float32)})[0].astype(np.float64)

    def log_px_z(x, z):
        value = logits(z)
        return (x * value - np.logaddexp(0, value)).reshape(len(z), -1).sum(1)

    return Reference(encode, lambda z: 1 / (1 + np.exp(-logits(z))), log_px_z, lambda pixels, seed: pixels)


@dataclass
class Imported:
    name: str
    shape: tuple[int, int, int]
    latent_dim: int
    reference: Reference


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[str, dict[str, Imported]]:
    tmp = tmp_path_factory.mktemp("byo")
    repo = tmp / "repo"
    weights = tmp / "examples_vae.pt"
    train_examples_vae(weights)
    scored, calibration = image_folder(tmp / "scored", "test", 64), image_folder(tmp / "calibration", "train", 200)
    common = ("--seed", "0", "--threads", "1")
    vae_import(
        "torch", f"{BYO / 'examples_vae.py'}:VAE", str(repo / "examples-vae" / "1"), "--weights", str(weights),
        "--input-shape", "1", "28", "28", "--flatten-input", "--output-shape", "1", "28", "28",
        "--likelihood", "bernoulli", "--decoder-output", "probs", "--name", "examples-vae", "--version", "1",
        "--score-dir", str(scored), "--calibrate-dir", str(calibration), *common,
    )  # fmt: skip
    vae_import(
        "torch", f"{BYO / 'conv_vae.py'}:build", str(repo / "conv-vae" / "1"), "--encode", "embed",
        "--decode", "generate", "--input-shape", "3", "32", "32", "--input-range", "-1", "1",
        "--likelihood", "gaussian", "--decoder-output", "mean", "--log-sigma-param", "log_sigma",
        "--name", "conv-vae", "--version", "1", *common,
    )  # fmt: skip
    vae_import(
        "torch", f"{BYO / 'conv_vae.py'}:build", str(repo / "conv-none" / "1"), "--encode", "embed",
        "--decode", "generate", "--input-shape", "3", "32", "32", "--input-range", "-1", "1",
        "--likelihood", "none", "--decoder-output", "mean", "--name", "conv-none", "--version", "1", *common,
    )  # fmt: skip
    with warnings.catch_warnings():  # torch.onnx's advice on dynamic_axes, which the user's plain call uses
        warnings.simplefilter("ignore")
        encoder_path, decoder_path = load_file(BYO / "onnx_pair.py", "onnx_pair").export(tmp)
    vae_import(
        "onnx", str(repo / "pair-vae" / "1"), "--encoder", str(encoder_path), "--decoder", str(decoder_path),
        "--encoder-input", "pixels", "--encoder-outputs", "mu,log_sigma", "--decoder-input", "latent",
        "--decoder-outputs", "recon_logits", "--posterior", "log_scale", "--input-mean", "0.5", "--input-std", "0.25",
        "--likelihood", "bernoulli", "--decoder-output", "logits", "--name", "pair-vae", "--version", "1", *common,
    )  # fmt: skip
    models = {
        "examples-vae": Imported("examples-vae", (1, 28, 28), 20, examples_reference(weights)),
        "conv-vae": Imported("conv-vae", (3, 32, 32), 16, conv_reference()),
        "pair-vae": Imported("pair-vae", (1, 16, 16), 8, pair_reference(encoder_path, decoder_path)),
    }
    with Server(
        tmp, VAE_MODEL_REPOSITORY=str(repo), VAE_DEFAULT_MODEL="examples-vae", VAE_ADMIN_TOKEN=ADMIN_TOKEN
    ) as server:
        yield server.url, models


NAMES = ["examples-vae", "conv-vae", "pair-vae"]


def test_vae_import_makes_a_repository_the_service_lists(imported):
    url, models = imported
    listed = httpx.get(f"{url}/v1/models").json()["models"]
    assert sorted(m["name"] for m in listed) == sorted([*NAMES, "conv-none"])
    for name, model in models.items():
        card = httpx.get(f"{url}/v1/models/{name}").json()
        assert card["latent_dim"] == model.latent_dim
        assert card["input"]["shape"] == list(model.shape)


def image_of(pixels: np.ndarray) -> bytes:
    """(C, H, W) in [0, 1], 8-bit exact -> PNG bytes."""
    data = np.round(pixels * 255).astype(np.uint8)
    image = Image.fromarray(data[0] if data.shape[0] == 1 else data.transpose(1, 2, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def an_image(model: Imported, seed: int = 3, binary: bool = False) -> np.ndarray:
    """(C, H, W) 8-bit levels as the service reads a PNG: level * float32(1 / 255), bit for bit (the data draw
    is keyed by the pixels' bytes)."""
    levels = np.random.default_rng(seed).integers(0, 256, model.shape)
    levels = np.where(levels > 127, 255, 0) if binary else levels
    return levels.astype(np.float32) * np.float32(1.0 / 255.0)


def assert_close(actual, expected, tolerance: float = 1e-5) -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(actual - expected).max()) <= tolerance * scale, float(np.abs(actual - expected).max())


@pytest.mark.parametrize("name", NAMES)
def test_encode_equals_the_users_model(imported, name):
    url, models = imported
    model = models[name]
    pixels = an_image(model)
    response = httpx.post(f"{url}/v1/models/{name}/encode", files={"file": ("x.png", image_of(pixels), "image/png")})
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    mean, logvar = model.reference.encode(pixels[None])
    assert_close(result["mean"], mean[0])
    assert_close(result["logvar"], logvar[0])


@pytest.mark.parametrize("name", NAMES)
def test_decode_equals_the_users_model(imported, name):
    url, models = imported
    model = models[name]
    z = np.random.default_rng(4).standard_normal((3, model.latent_dim)).astype(np.float32)
    response = httpx.post(f"{url}/v1/models/{name}/decode?format=json&pixels=true", json={"z": z.tolist()})
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert_close([image["pixels"] for image in images], model.reference.pixel_mean(z))


@pytest.mark.parametrize("name", NAMES)
def test_sample_draws_the_prior_and_decodes_as_the_users_model(imported, name):
    url, models = imported
    model = models[name]
    response = httpx.get(f"{url}/v1/models/{name}/sample", params={"n": 3, "seed": 11, "format": "json"})
    assert response.status_code == 200, response.text
    samples = response.json()["samples"]
    z = np.array([s["z"] for s in samples], dtype=np.float32)
    np.testing.assert_array_equal(z, np.random.default_rng(11).standard_normal((3, model.latent_dim), dtype=np.float32))
    expected = np.round(np.clip(model.reference.pixel_mean(z), 0, 1) * 255)
    for sample, want in zip(samples, expected, strict=True):
        image = np.asarray(Image.open(io.BytesIO(base64.b64decode(sample["png_base64"]))), dtype=np.float64)
        image = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
        assert np.abs(image - want).max() <= 1  # the same 8-bit image, up to a rounding at a half level


K = 200  # the service's importance samples; the reference repeats the same estimator REPEATS times
REPEATS = 20


def reference_scores(model: Imported, pixels: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """On the user's side, for the data the service scores: the analytic KL; the one-sample reconstruction
    term's mean and spread; and REPEATS independent IWAE estimates of log p(x) at the service's k, whose spread
    is the estimator's noise at that k (its bias at that k included)."""
    rng = np.random.default_rng(seed)
    x = model.reference.data(pixels, 0)  # binarize_seed 0, the service's default for these models
    mean, logvar = (a[0].astype(np.float64) for a in model.reference.encode(x[None]))
    kl = 0.5 * float(np.sum(mean**2 + np.exp(logvar) - 1 - logvar))
    z = mean + np.exp(0.5 * logvar) * rng.standard_normal((K * REPEATS, model.latent_dim))
    reconstruction = np.concatenate(
        [model.reference.log_px_z(x, z[i : i + 100].astype(np.float32)) for i in range(0, len(z), 100)]
    )
    log_q = -0.5 * np.sum((z - mean) ** 2 / np.exp(logvar) + logvar + math.log(2 * math.pi), axis=1)
    log_p = -0.5 * np.sum(z**2 + math.log(2 * math.pi), axis=1)
    log_w = (reconstruction + log_p - log_q).reshape(REPEATS, K)
    top = log_w.max(axis=1, keepdims=True)
    estimates = top[:, 0] + np.log(np.exp(log_w - top).mean(axis=1))
    return {
        "kl": kl,
        "reconstruction": float(reconstruction.mean()),
        "reconstruction_sd": float(reconstruction.std()),
        "log_likelihood": float(estimates.mean()),
        "log_likelihood_sd": float(estimates.std(ddof=1)),
    }


@pytest.mark.parametrize("name", NAMES)
def test_elbo_matches_the_users_model_within_the_estimators_noise(imported, name):
    url, models = imported
    model = models[name]
    pixels = an_image(model, seed=5, binary=name != "conv-vae")  # binary: the Bernoulli draw leaves it as it is
    response = httpx.post(
        f"{url}/v1/models/{name}/elbo", params={"k": K}, files={"file": ("x.png", image_of(pixels), "image/png")}
    )
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    reference = reference_scores(model, pixels)
    assert result["kl"] == pytest.approx(reference["kl"], rel=1e-5, abs=1e-5)  # analytic on both sides
    assert abs(result["reconstruction"] - reference["reconstruction"]) <= 5 * reference["reconstruction_sd"] + 1e-3
    assert result["elbo"] == pytest.approx(result["reconstruction"] - result["kl"], abs=1e-6)
    gap = abs(result["log_likelihood"] - reference["log_likelihood"])
    assert gap <= 5 * reference["log_likelihood_sd"] + 0.05, (result, reference)


def test_a_trained_import_scores_as_a_model_not_as_noise(imported):
    """The briefly trained pytorch/examples VAE reconstructs a Fashion-MNIST image far better than the conv VAE's
    untrained weights would: the ELBO route sees a real model (a bound well above the all-0.5 coder's)."""
    url, _ = imported
    from model.data import load_dataset

    image = load_dataset("fashion-mnist", str(FASHION)).test[:1]
    binary = (image[0] > 0.5).astype(np.float32)
    result = httpx.post(
        f"{url}/v1/models/examples-vae/elbo", files={"file": ("x.png", image_of(binary), "image/png")}
    ).json()["results"][0]
    assert result["elbo"] > -784 * math.log(2) / 2  # better than half of coding each pixel with p = 0.5


@pytest.mark.parametrize("name", NAMES)
def test_the_v2_models_of_an_import_answer(imported, name):
    url, models = imported
    model = models[name]
    metadata = httpx.get(f"{url}/v2/models/{name}.encoder").json()
    encoder_input = metadata["inputs"][0]["name"]
    assert encoder_input == ("pixels" if name == "pair-vae" else "image")
    z = np.random.default_rng(6).standard_normal((2, model.latent_dim)).astype(np.float32)
    body = {
        "inputs": [{"name": "z", "datatype": "FP32", "shape": list(z.shape), "data": z.ravel().tolist()}],
        "outputs": [{"name": "images"}],
    }
    response = httpx.post(f"{url}/v2/models/{name}.decode/infer", json=body)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert_close(np.array(output["data"]).reshape(output["shape"]), model.reference.pixel_mean(z))


def test_the_raw_encoder_graph_of_the_onnx_pair_runs_with_the_users_own_names(imported):
    url, models = imported
    pixels = an_image(models["pair-vae"])[None]
    feed = ((pixels - 0.5) / 0.25).astype(np.float32)
    body = {
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": list(feed.shape), "data": feed.ravel().tolist()}]
    }
    outputs = httpx.post(f"{url}/v2/models/pair-vae.encoder/infer", json=body).json()["outputs"]
    by_name = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in outputs}
    mean, logvar = models["pair-vae"].reference.encode(pixels)
    assert_close(by_name["mu"], mean)
    assert_close(by_name["log_sigma"], logvar / 2)


def test_the_repository_index_lists_every_import(imported):
    url, _ = imported
    response = httpx.post(f"{url}/v2/repository/index", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 200, response.text
    entries = {entry["name"]: entry for entry in response.json()}
    assert set(NAMES) <= set(entries) and all(entries[n]["state"] == "READY" for n in NAMES)


def test_the_model_card_names_the_source_and_the_contract(imported):
    url, _ = imported
    card = httpx.get(f"{url}/v1/models/examples-vae").json()
    assert card["source"]["tool"] == "vae-import torch"
    hashes = {f["file"]: f["sha256"] for f in card["source"]["files"]}
    assert hashes["examples_vae.py"] == hashlib.sha256((BYO / "examples_vae.py").read_bytes()).hexdigest()
    assert card["contract"]["encoder"]["layout"] == "flat" and card["contract"]["decoder"]["flat"] is True
    assert card["likelihood"]["outputs"] == ["probs"]
    pair = httpx.get(f"{url}/v1/models/pair-vae").json()
    assert pair["contract"]["encoder"] == {
        "image": "pixels", "mean": "mu", "spread": "log_sigma", "posterior": "log_scale", "layout": "nchw"
    }  # fmt: skip
    assert pair["input"]["mean"] == [0.5] and pair["input"]["std"] == [0.25]


def test_the_model_card_holds_the_metrics_scored_on_the_users_folder(imported):
    url, _ = imported
    metrics = httpx.get(f"{url}/v1/models/examples-vae").json()["metrics"]["test"]
    assert metrics["images"] == 64 and metrics["k"] == 100 and metrics["estimator"] == "importance"
    assert metrics["log_likelihood"] >= metrics["elbo"]  # the importance estimate sits above the bound, on average
    assert metrics["elbo"] == pytest.approx(metrics["reconstruction"] - metrics["kl"], rel=1e-9)
    assert metrics["elbo_bits_per_dim"] == pytest.approx(-metrics["elbo"] / (784 * math.log(2)))


def test_an_import_calibrated_on_the_users_folder_answers_anomaly(imported):
    url, _ = imported
    card = httpx.get(f"{url}/v1/models/examples-vae").json()
    assert card["anomaly"]["calibration"]["images"] == 200
    assert card["anomaly"]["calibration"]["fit_images"] == 100
    from model.data import load_dataset

    image = load_dataset("fashion-mnist", str(FASHION)).test[5]
    response = httpx.post(
        f"{url}/v1/models/examples-vae/anomaly", files={"file": ("x.png", image_of(image), "image/png")}
    )
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    assert 0 <= result["percentile"] <= 1 and math.isfinite(result["score"])


def test_a_deterministic_decoder_serves_every_route_but_those_that_score(imported):
    url, _ = imported
    model = Imported("conv-none", (3, 32, 32), 16, conv_reference())
    upload = {"file": ("x.png", image_of(an_image(model)), "image/png")}
    for route in ("elbo", "anomaly"):
        response = httpx.post(f"{url}/v1/models/conv-none/{route}", files=upload)
        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["code"] == "no_likelihood" and "declares none" in error["message"]
        assert "--likelihood bernoulli or gaussian" in error["message"]
    assert httpx.post(f"{url}/v1/models/conv-none/encode", files=upload).status_code == 200
    assert httpx.post(f"{url}/v1/models/conv-none/reconstruct", files=upload).status_code == 200
    z = np.random.default_rng(4).standard_normal((2, 16)).astype(np.float32)
    decoded = httpx.post(f"{url}/v1/models/conv-none/decode?format=json&pixels=true", json={"z": z.tolist()}).json()
    assert_close([image["pixels"] for image in decoded["images"]], model.reference.pixel_mean(z))
    assert httpx.get(f"{url}/v1/models/conv-none/sample", params={"n": 2, "seed": 1}).status_code == 200
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.5] * 3072}]}
    response = httpx.post(f"{url}/v2/models/conv-none.elbo/infer", json=body)
    assert response.status_code == 409 and "declares none" in response.json()["error"]
