"""A two-level VAE served (issue 33): a tiny one trained, exported with its anomaly calibration and loaded
by the service's own loader. Every route answers, and every score holds both levels' terms: /elbo and the
anomaly statistics are model.core.hierarchy's on the exported graphs, which a one-level reading of the
same graphs is not."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from model.core import anomaly, hierarchy, scoring
from model.core import distributions as dist
from model.core.artifact import load_model_dir
from model.core.preprocess import PreprocessContract, array_to_png, bytes_to_array, image_stream
from service.app import create_app, start
from service.settings import Settings
from tests.unit.export.exports import TWO_LEVELS as TWO
from tests.unit.export.exports import train_and_export
from tests.unit.service.conftest import client_for, run_to_completion

pytestmark = pytest.mark.anyio

D2, D1 = TWO.latent_dim, TWO.lower_latent_dim


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny two-level VAE, trained for 2 epochs and exported (with its anomaly calibration)."""
    root = tmp_path_factory.mktemp("two-levels")
    directory, dataset = train_and_export(root, TWO, "--calibration-count", "100", epochs=2)
    return directory, dataset.test[:6]


@pytest.fixture
async def client(exported):
    app = create_app(Settings(model_dir=exported[0], max_k=100, grpc_port=0, gc_freeze=False))
    run_to_completion(start(app.state.vae))
    async with client_for(app) as c:
        yield c


def pngs(images: np.ndarray) -> list[bytes]:
    return [array_to_png(x) for x in images]


def decoded(uploads: list[bytes]) -> np.ndarray:
    """What the server decodes the uploads to."""
    return np.stack([bytes_to_array(data, PreprocessContract(input_shape=TWO.input_shape)) for data in uploads])


def multipart(uploads: list[bytes]):
    return [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(uploads)]


async def test_encode_gives_each_levels_posterior_and_their_draws(client, exported):
    uploads = pngs(exported[1][:3])
    levels = load_model_dir(exported[0]).levels
    pixels = decoded(uploads)
    plain = (await client.post("/encode", files=multipart(uploads))).json()
    mean2, logvar2, features = levels.encode(pixels)
    mean1, logvar1 = levels.encode_lower(features, mean2)
    for i, result in enumerate(plain["results"]):
        assert plain["latent_dim"] == D2 and "z" not in result and set(result["lower"]) == {"mean", "logvar"}
        np.testing.assert_allclose(result["mean"], mean2[i], atol=1e-5)
        np.testing.assert_allclose(result["lower"]["mean"], mean1[i], atol=1e-5)  # at z2 = the mean
        np.testing.assert_allclose(result["lower"]["logvar"], logvar1[i], atol=1e-5)
    sampled = (await client.post("/encode?sample=true&seed=5", files=multipart(uploads))).json()
    for i, result in enumerate(sampled["results"]):
        eps = image_stream(5, pixels[i]).standard_normal(D2 + D1, dtype=np.float32)  # one draw, z2's first
        z2 = dist.reparameterize(mean2[i : i + 1], logvar2[i : i + 1], eps[None, :D2])
        np.testing.assert_allclose(result["z"], z2[0], atol=1e-5)
        at_z2 = levels.encode_lower(features[i : i + 1], z2)  # q(z1 | x, z2) at the sampled z2
        np.testing.assert_allclose(result["lower"]["mean"], at_z2[0][0], atol=1e-5)
        np.testing.assert_allclose(result["lower"]["z"], dist.reparameterize(*at_z2, eps[None, D2:])[0], atol=1e-5)


class Counted:
    """An onnxruntime session that counts its runs."""

    def __init__(self, session) -> None:
        self.session, self.runs = session, 0

    def run(self, *args, **kwargs):
        self.runs += 1
        return self.session.run(*args, **kwargs)

    def __getattr__(self, name):  # its inputs and outputs, as the session's
        return getattr(self.session, name)


@pytest.mark.parametrize("micro_batch", [True, False])
async def test_encode_runs_the_images_body_once(exported, micro_batch):
    """/encode of a two-level VAE runs its `features` graph (q(z2|x) and the features q(z1|x,z2) reads, in
    one run of the image's body) and never the encoder graph beside it, batched or not."""
    app = create_app(Settings(model_dir=exported[0], grpc_port=0, gc_freeze=False, micro_batch=micro_batch))
    run_to_completion(start(app.state.vae))
    model = app.state.vae.resolve().engine.model
    encoder, features = Counted(model.encoder), Counted(model.levels.features)
    object.__setattr__(model, "encoder", encoder)
    object.__setattr__(model.levels, "features", features)
    uploads = pngs(exported[1][:2])
    pixels = decoded(uploads)
    request = {
        "inputs": [{"name": "image", "datatype": "FP32", "shape": list(pixels.shape), "data": pixels.ravel().tolist()}]
    }
    async with client_for(app) as client:
        body = (await client.post("/encode?sample=true&seed=1", files=multipart(uploads))).json()
        assert [len(result["lower"]["z"]) for result in body["results"]] == [D1, D1]
        assert (encoder.runs, features.runs) == (0, 1)
        # the v2 encoder graph is that graph as exported, never the features graph in its place
        graph = (await client.post("/v2/models/tiny-vae.encoder/infer", json=request)).json()["outputs"]
    assert (encoder.runs, features.runs) == (1, 1)
    mean = np.reshape(next(o["data"] for o in graph if o["name"] == "mean"), (2, D2))
    np.testing.assert_allclose(mean, [result["mean"] for result in body["results"]], atol=1e-5)


async def test_elbo_holds_both_levels_terms(client, exported):
    uploads = pngs(exported[1][:4])
    body = (await client.post("/elbo?k=20&seed=3&binarize_seed=2", files=multipart(uploads))).json()
    model = load_model_dir(exported[0])
    likelihood = model.likelihood
    data = likelihood.images_to_data_space(decoded(uploads), 2)
    expected = hierarchy.score_two_levels(model.levels, likelihood, data, 3, k=20)
    one_level = scoring.score(model, likelihood, data, 3, k=20)  # the graphs read as one level: z1 left out
    for i, result in enumerate(body["results"]):
        assert result["elbo"] == pytest.approx(float(expected.elbo[i]), abs=1e-3)
        assert result["kl"] == pytest.approx(float(expected.kl[i]), abs=1e-3)
        assert result["log_likelihood"] == pytest.approx(float(expected.log_likelihood[i]), abs=1e-3)
        assert abs(result["kl"] - float(one_level.kl[i])) > 1e-2
        assert result["log_likelihood"] >= result["elbo"] - 1.0


async def test_anomaly_scores_and_maps_are_the_two_level_models(client, exported):
    uploads = pngs(exported[1][:3])
    body = (await client.post("/anomaly?map=true", files=multipart(uploads))).json()
    model = load_model_dir(exported[0])
    calibration = model.anomaly
    stats = anomaly.statistics(model.levels, model.likelihood, decoded(uploads), 0, model.anomaly.binarize_seed)
    scores = calibration.score(stats)
    for i, result in enumerate(body["results"]):
        assert result["score"] == pytest.approx(float(scores[i]), abs=1e-6)
        assert np.asarray(result["map"]).shape == TWO.input_shape[1:]
        assert Image.open(io.BytesIO(base64.b64decode(result["map_png"]))).format == "PNG"
    assert stats["kl"].shape == (3,) and np.all(np.isfinite(stats["kl"]))


async def test_sample_decode_and_the_v2_encode_operation_work_in_z2s_space(client, exported):
    sample = (await client.get("/sample?n=2&seed=1&format=json")).json()
    assert [len(s["z"]) for s in sample["samples"]] == [D2, D2]  # z2: p(z1 | z2) is the decoder's to follow
    grid = await client.get("/sample?n=2&seed=1")
    assert Image.open(io.BytesIO(grid.content)).format == "PNG"
    z = np.asarray([[0.0] * D2, [0.5] * D2], dtype=np.float32)
    decode = (await client.post("/decode?pixels=true", json={"z": z.tolist()})).json()
    model = load_model_dir(exported[0])  # decoder.onnx: z2 through both levels, z1 the mean of p(z1 | z2)
    through = model.likelihood.pixel_mean(model.levels.decode(model.levels.lower_prior(z)[0], z))
    np.testing.assert_allclose(decode["images"][1]["pixels"], through[1], atol=1e-5)
    wrong = await client.post("/decode", json={"z": [[0.0] * (D2 + D1)]})  # z1's numbers are not a latent
    assert wrong.status_code == 422
    metadata = (await client.get("/v2/models/tiny-vae.encode")).json()
    names = {o["name"]: o["shape"] for o in metadata["outputs"]}
    assert names["lower_mean"] == [-1, D1] and "lower_z" in names
    uploads = pngs(exported[1][:2])
    native = (await client.post("/encode", files=multipart(uploads))).json()["results"]
    pixels = decoded(uploads)
    request = {
        "inputs": [{"name": "image", "datatype": "FP32", "shape": list(pixels.shape), "data": pixels.ravel().tolist()}]
    }
    outputs = {
        o["name"]: o for o in (await client.post("/v2/models/tiny-vae.encode/infer", json=request)).json()["outputs"]
    }
    assert outputs["lower_mean"]["shape"] == [2, D1] and "lower_z" not in outputs
    np.testing.assert_allclose(
        np.reshape(outputs["lower_mean"]["data"], (2, D1)), [r["lower"]["mean"] for r in native], atol=1e-5
    )


async def test_reconstruct_uses_both_levels_posterior_means(client, exported):
    pixels = decoded(pngs(exported[1][:2]))
    request = {
        "inputs": [{"name": "image", "datatype": "FP32", "shape": list(pixels.shape), "data": pixels.ravel().tolist()}],
        "outputs": [{"name": "images"}],
    }
    answer = (await client.post("/v2/models/tiny-vae.reconstruct/infer", json=request)).json()
    images = np.reshape(answer["outputs"][0]["data"], pixels.shape)
    levels = load_model_dir(exported[0]).levels
    mean2, _, features = levels.encode(pixels)
    mean1, _ = levels.encode_lower(features, mean2)
    expected = levels.vae.likelihood.pixel_mean(levels.decode(mean1, mean2))
    np.testing.assert_allclose(images, expected, atol=1e-5)
    through_prior = levels.vae.likelihood.pixel_mean(levels.vae.decode(mean2))  # /decode's reading of z2
    assert np.abs(images - through_prior).max() > 1e-4
    png = await client.post("/reconstruct", files=multipart(pngs(exported[1][:2])))
    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).format == "PNG"
