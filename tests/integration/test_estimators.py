"""/elbo's two estimators of log p(x) over real HTTP: on a linear-Gaussian VAE exported as ONNX,
where log p(x) is known in closed form, both converge on it; on every model in the bundled
repository (artifacts/<name>/<latest version>), sampling z from the prior wastes the samples that
sampling from q(z|x) puts where p(x|z) is not negligible (docs/design/sampling.md: Why z is sampled from q(z|x))."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from model.core.manifest import FileHash, GraphInfo, LikelihoodSpec
from model.core.preprocess import PreprocessContract, array_to_png, bytes_to_array
from tests.conftest import REPO
from tests.integration.conftest import Server, newest_version, png, serving
from tests.unit.service.fakes import SHAPE, LinearGaussianVAE, make_manifest

REPOSITORY = REPO / "artifacts"
K = 1000
IMAGES = 4


# (name, latest version) of each model with a manifest and a likelihood in the repository (the autoencoder
# declares none: it has no log p(x) to estimate)
MODELS = [
    (model.name, newest_version(model).name)
    for model in sorted(REPOSITORY.iterdir())
    if any(model.glob("*/manifest.json"))
    and json.loads((newest_version(model) / "manifest.json").read_text())["likelihood"]["name"] != "none"
]


@pytest.fixture(scope="module")
def repository_http(tmp_path_factory):
    with (
        serving(tmp_path_factory.mktemp("estimators"), VAE_MODEL_REPOSITORY=str(REPOSITORY)) as url,
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        yield client


def test_the_bundled_repository_has_a_model_to_test():
    assert MODELS, f"no model under {REPOSITORY}"


def _scores(http: httpx.Client, name: str, version: str, images: np.ndarray, estimator: str) -> dict:
    files = [("file", (f"{i}.png", png(x), "image/png")) for i, x in enumerate(images)]
    response = http.post(f"/v1/models/{name}/versions/{version}/elbo?k={K}&seed=0&estimator={estimator}", files=files)
    if response.status_code == 404:
        pytest.skip(f"{name} {version} is not served at this base URL")
    body = response.json()
    assert response.status_code == 200 and body["estimator"] == estimator and body["k"] == K, body
    return {
        key: np.array([r[key] for r in body["results"]])
        for key in ("log_likelihood", "log_likelihood_standard_error", "effective_sample_size", "elbo")
    }


@pytest.mark.parametrize(("name", "version"), MODELS)
def test_the_prior_has_far_fewer_effective_samples_than_the_encoder(repository_http, test_images, name, version):
    images = test_images[:IMAGES]
    prior = _scores(repository_http, name, version, images, "prior")
    importance = _scores(repository_http, name, version, images, "importance")
    assert np.all(prior["effective_sample_size"] < 2), prior  # one or two z of the thousand carry the estimate
    assert np.all((importance["effective_sample_size"] >= 1) & (importance["effective_sample_size"] <= K))
    # ESS - 1 is how much the samples besides the heaviest one count. A Gaussian decoder's weights are
    # spiky under q(z|x) too (its ESS can be a few of the thousand), so "far below" is judged on that:
    # the prior's is nil (one weight dominates by tens of nats), the encoder's is not.
    extra_prior, extra_importance = prior["effective_sample_size"] - 1, importance["effective_sample_size"] - 1
    assert np.mean(extra_importance) > max(10 * np.mean(extra_prior), 0.1), (prior, importance)
    # and what the prior's samples missed, the estimate misses: it lies below importance sampling's
    gap = importance["log_likelihood"] - prior["log_likelihood"]
    assert np.all(gap > np.maximum(5 * importance["log_likelihood_standard_error"], 1.0)), gap


@pytest.mark.parametrize(("name", "version"), MODELS)
def test_the_default_estimator_is_importance_sampling(repository_http, test_images, name, version):
    body = png(test_images[5])
    path = f"/v1/models/{name}/versions/{version}/elbo?k=20&seed=3"
    plain = repository_http.post(path, content=body, headers={"content-type": "image/png"})
    named = repository_http.post(f"{path}&estimator=importance", content=body, headers={"content-type": "image/png"})
    assert plain.status_code == 200 and plain.content == named.content
    assert plain.json()["estimator"] == "importance"


# ---- a linear-Gaussian VAE as ONNX graphs, served by vae-serve ----


def _graph(name: str, inputs: list, outputs: list, nodes: list, constants: dict[str, np.ndarray]) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    def values(specs: list) -> list:
        return [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in specs]

    graph = helper.make_graph(
        nodes, name, values(inputs), values(outputs), [numpy_helper.from_array(v, k) for k, v in constants.items()]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def export_linear_gaussian(fake: LinearGaussianVAE, directory: Path) -> Path:
    """The fake's encoder (mean = A (x - b), a constant logvar) and decoder (mean = W z + b, a constant
    log-scale) as the two graphs of a model directory that vae-serve loads."""
    from onnx import helper

    pixels, latent = fake.b.size, fake.latent_dim
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    encode_matrix = 0.9 * fake.W @ fake.post_cov / fake.SIGMA**2  # (P, D), as fake.encode
    logvar = np.log(np.diag(fake.post_cov)) + 0.2
    encoder = _graph(
        "encoder",
        [("image", ["batch", *SHAPE])],
        [("mean", ["batch", latent]), ("logvar", ["batch", latent])],
        [
            helper.make_node("Reshape", ["image", "flat_shape"], ["flat"]),
            helper.make_node("Sub", ["flat", "b"], ["centred"]),
            helper.make_node("MatMul", ["centred", "A"], ["mean"]),
            helper.make_node("Mul", ["mean", "zero"], ["zeros"]),
            helper.make_node("Add", ["zeros", "logvar_value"], ["logvar"]),
        ],
        {
            "flat_shape": np.array([-1, pixels], np.int64),
            "b": f32(fake.b),
            "A": f32(encode_matrix),
            "zero": f32(0.0),
            "logvar_value": f32(logvar),
        },
    )
    decoder = _graph(
        "decoder",
        [("z", ["batch", latent])],
        [("mean", ["batch", *SHAPE]), ("log_scale", ["batch", *SHAPE])],
        [
            helper.make_node("MatMul", ["z", "Wt"], ["projected"]),
            helper.make_node("Add", ["projected", "b"], ["flat_mean"]),
            helper.make_node("Reshape", ["flat_mean", "image_shape"], ["mean"]),
            helper.make_node("Mul", ["mean", "zero"], ["zeros"]),
            helper.make_node("Add", ["zeros", "log_sigma"], ["log_scale"]),
        ],
        {
            "Wt": f32(fake.W.T),
            "b": f32(fake.b),
            "image_shape": np.array([-1, *SHAPE], np.int64),
            "zero": f32(0.0),
            "log_sigma": f32(np.log(fake.SIGMA)),
        },
    )
    directory.mkdir(parents=True)
    infos = {}
    for part, data, ins, outs in (
        ("encoder", encoder, {"image": ["batch", *SHAPE]}, {"mean": ["batch", latent], "logvar": ["batch", latent]}),
        ("decoder", decoder, {"z": ["batch", latent]}, {"mean": ["batch", *SHAPE], "log_scale": ["batch", *SHAPE]}),
    ):
        (directory / f"{part}.onnx").write_bytes(data)
        infos[part] = GraphInfo(
            file=f"{part}.onnx", sha256=hashlib.sha256(data).hexdigest(), inputs=ins, outputs=outs, opset=17
        )
    manifest = make_manifest().model_copy(
        update={
            "name": "linear-gaussian",
            "version": "1.0.0",
            "encoder": infos["encoder"],
            "decoder": infos["decoder"],
            "source_checkpoint": FileHash(file="none", sha256="0" * 64),
            "likelihood": LikelihoodSpec(
                name="gaussian", outputs=["mean", "log_scale"], data_space=fake.likelihood.data_space
            ),
            "parity": {"tolerance": 1e-4, "max_abs_diff": {"closed form": 0.0}},
        }
    )
    manifest.write(directory / "manifest.json")
    return directory


@pytest.mark.parametrize("estimator", ["prior", "importance"])
def test_an_onnx_linear_gaussian_vae_converges_on_its_closed_form(tmp_path, estimator):
    fake = LinearGaussianVAE()
    server = Server(tmp_path, VAE_MODEL_DIR=str(export_linear_gaussian(fake, tmp_path / "model")))
    pngs = [array_to_png(x) for x in fake.draw(2, seed=5)]
    try:
        server.wait()
        body = httpx.post(
            f"{server.url}/elbo?k=5000&seed=1&estimator={estimator}",
            timeout=60,
            files=[("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(pngs)],
        ).json()
    finally:
        server.stop()
    assert body["model"] == {"name": "linear-gaussian", "version": "1.0.0"} and body["estimator"] == estimator
    contract = PreprocessContract(input_shape=SHAPE)
    pixels = np.stack([bytes_to_array(data, contract) for data in pngs])  # what the server decoded
    data = fake.likelihood.images_to_data_space(pixels, body["binarize_seed"])
    for result, x in zip(body["results"], data, strict=False):
        exact = fake.log_px(x) + fake.likelihood.discrete_offset(x.size)  # the 8-bit image's log-probability
        assert result["log_likelihood"] == pytest.approx(exact, abs=0.6)
        assert abs(result["log_likelihood"] - exact) < 4 * result["log_likelihood_standard_error"] + 0.01
