"""The artifact reader: a model directory is loaded only when its manifest, hashes, parity record and
graph signatures all hold, and then runs in onnxruntime. Uses the shipped model's serving files."""

import hashlib
import json
import shutil

import numpy as np
import pytest

from model.core import scoring
from model.core.anomaly import Calibration, LikelihoodScore
from model.core.artifact import ModelIntegrityError, ModelLoadError, load_model_dir
from model.core.likelihoods import LIKELIHOODS
from model.core.priors import Mixture, StandardNormal
from tests.unit.export.test_shipped_model import SHIPPED  # one place says where the bundled model is
from tests.unit.model.core.prior_graphs import add_prior, prior_graph, toy_mixture

SERVING_FILES = ("manifest.json", "encoder.onnx", "decoder.onnx", "anomaly.json")


@pytest.fixture
def model_copy(tmp_path):
    """The shipped fp32 graphs and manifest, copied so a test can break them."""
    for name in SERVING_FILES:
        shutil.copy(SHIPPED / name, tmp_path / name)
    return tmp_path


def edit_manifest(directory, change):
    raw = json.loads((directory / "manifest.json").read_text())
    change(raw)
    (directory / "manifest.json").write_text(json.dumps(raw))


def test_the_loaded_graphs_run_with_the_manifests_shapes_and_likelihood(model_copy):
    model = load_model_dir(model_copy)
    channels_height_width = tuple(model.manifest.input.shape)
    mean, logvar = model.encode(np.zeros((3, *channels_height_width), dtype=np.float32))
    assert mean.shape == logvar.shape == (3, model.latent_dim)
    params = model.decode(mean)
    assert model.likelihood is LIKELIHOODS[model.manifest.likelihood.name]
    assert len(params) == len(model.likelihood.outputs)
    assert all(p.shape == (3, *channels_height_width) for p in params)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p["max_abs_diff"].update({"decoder.logits": 2e-4}), "exceeds the tolerance 0.0001: decoder.logits"),
        (lambda p: p["batch_max_abs_diff"].update({"encoder": 1.0}), "exceeds the tolerance 0.0001: batch.encoder"),
        (lambda p: p.clear(), "records no parity check"),
    ],
)
def test_a_manifest_whose_parity_fails_is_refused(model_copy, change, message):
    edit_manifest(model_copy, lambda raw: change(raw["parity"]))
    with pytest.raises(ModelLoadError, match=message) as info:
        load_model_dir(model_copy)
    assert "re-export" in str(info.value) and "\n" not in str(info.value)


def test_a_tampered_graph_is_refused_with_a_clear_error(model_copy):
    data = bytearray((model_copy / "decoder.onnx").read_bytes())
    data[-10] ^= 0xFF
    (model_copy / "decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="decoder.onnx: SHA-256 is .* but the manifest says"):
        load_model_dir(model_copy)


def test_a_graph_whose_outputs_differ_from_the_manifest_is_refused(model_copy):
    edit_manifest(
        model_copy, lambda raw: raw["decoder"].update(outputs={"probabilities": raw["decoder"]["outputs"]["logits"]})
    )
    with pytest.raises(ModelLoadError, match=r"outputs \['logits'\]; the manifest declares .*\['probabilities'\]"):
        load_model_dir(model_copy)


def test_an_unknown_likelihood_is_not_a_valid_manifest(model_copy):
    edit_manifest(model_copy, lambda raw: raw["likelihood"].update(name="poisson"))
    with pytest.raises(ModelLoadError, match="not a valid vae-service manifest"):
        load_model_dir(model_copy)


def test_a_missing_int8_variant_says_how_to_make_one(model_copy):
    edit_manifest(model_copy, lambda raw: raw.update(int8=None))
    with pytest.raises(ModelLoadError, match="no int8 variant; export with vae-export --int8"):
        load_model_dir(model_copy, variant="int8")


def test_a_missing_graph_file_is_a_load_error(model_copy):
    (model_copy / "encoder.onnx").unlink()
    with pytest.raises(ModelLoadError, match="cannot read .*encoder.onnx"):
        load_model_dir(model_copy)


def test_a_directory_without_a_manifest_says_what_to_do(tmp_path):
    with pytest.raises(ModelLoadError, match="vae-export"):
        load_model_dir(tmp_path)


def with_calibration(directory, text: str) -> None:
    """Write `text` as the directory's anomaly.json and list it, with its hash, in the manifest."""
    (directory / "anomaly.json").write_text(text)
    spec = {
        "file": "anomaly.json",
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "method": "likelihood",
        "statistics": ["elbo"],
        "cost": "one ELBO pass",
        "fpr_default": 0.01,
        "calibration": {},
    }
    edit_manifest(directory, lambda raw: raw.update(anomaly=spec))


CALIBRATION = Calibration(LikelihoodScore(), np.arange(100, 200, dtype=np.float64)).to_json()


def test_an_export_without_anomaly_calibration_still_loads(model_copy):
    edit_manifest(model_copy, lambda raw: raw.pop("anomaly", None))
    (model_copy / "anomaly.json").unlink(missing_ok=True)
    assert load_model_dir(model_copy).anomaly is None


def test_the_listed_calibration_is_loaded(model_copy):
    with_calibration(model_copy, CALIBRATION)
    calibration = load_model_dir(model_copy).anomaly
    assert calibration.score.name == "likelihood" and calibration.threshold(0.01) == 198.0


def test_a_tampered_calibration_is_refused_like_a_graph(model_copy):
    with_calibration(model_copy, CALIBRATION)
    (model_copy / "anomaly.json").write_text(CALIBRATION.replace("100.0", "1000.0"))
    with pytest.raises(ModelIntegrityError, match="anomaly.json: SHA-256 is .* the anomaly calibration was modified"):
        load_model_dir(model_copy)


def test_a_listed_calibration_that_is_not_one_is_a_load_error(model_copy):
    with_calibration(model_copy, '{"format": 1, "score": {"name": "likelihood"}}')
    with pytest.raises(ModelLoadError, match="not a valid anomaly calibration .*export.calibrate"):
        load_model_dir(model_copy)


# ---- a learned prior: prior.onnx, listed in the manifest ----

LATENT = 32  # the shipped model's


class NumpyPrior:
    """The loaded graphs with the same mixture in numpy in place of prior.onnx: the reference for scoring."""

    def __init__(self, model, prior: Mixture) -> None:
        self.model, self.prior = model, prior

    def encode(self, x):
        return self.model.encode(x)

    def decode(self, z):
        return self.model.decode(z)


def test_a_model_without_a_prior_has_the_standard_normal(model_copy):
    model = load_model_dir(model_copy)
    assert model.manifest.prior is None and isinstance(model.prior, StandardNormal)
    assert model.prior.latent_dim == LATENT


def test_the_listed_prior_is_loaded_from_its_graph(model_copy):
    mixture = toy_mixture(LATENT)
    add_prior(model_copy, mixture)
    prior = load_model_dir(model_copy).prior
    assert isinstance(prior, Mixture) and prior.name == "mog" and prior.components == 3
    for name in ("means", "logvars"):
        np.testing.assert_array_equal(getattr(prior, name), getattr(mixture, name))
    np.testing.assert_allclose(prior.log_weights, mixture.log_weights, atol=1e-6)
    z = np.random.default_rng(0).normal(0.0, 2.0, (100, LATENT)).astype(np.float32)
    graph = prior.log_prob(z)
    assert graph.dtype == np.float64 and graph.shape == (100,)
    np.testing.assert_allclose(graph, mixture.numpy_log_prob(z), rtol=1e-6)


def test_the_int8_variant_scores_with_the_same_prior_graph(model_copy):
    for name in ("encoder.int8.onnx", "decoder.int8.onnx"):
        shutil.copy(SHIPPED / name, model_copy / name)
    add_prior(model_copy, toy_mixture(LATENT))
    fp32, int8 = load_model_dir(model_copy), load_model_dir(model_copy, variant="int8")
    z = fp32.prior.means
    np.testing.assert_array_equal(int8.prior.log_prob(z), fp32.prior.log_prob(z))


def test_a_tampered_prior_graph_is_refused(model_copy):
    data = bytearray(add_prior(model_copy, toy_mixture(LATENT)))
    data[-5] ^= 0xFF
    (model_copy / "prior.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="prior.onnx: SHA-256 is .* but the manifest says"):
        load_model_dir(model_copy)


def test_a_prior_graph_whose_parameters_are_not_its_density_is_refused(model_copy):
    """Sampling reads the parameters and scoring runs the graph: a graph where they differ is refused."""
    mixture, moved = toy_mixture(LATENT), toy_mixture(LATENT, seed=1)
    add_prior(model_copy, mixture, prior_graph(mixture, reported=moved))
    with pytest.raises(ModelLoadError, match="prior.onnx: its log_prob differs from the mixture it outputs"):
        load_model_dir(model_copy)


def test_a_prior_of_another_size_than_the_manifest_says_is_refused(model_copy):
    add_prior(model_copy, toy_mixture(LATENT))
    edit_manifest(model_copy, lambda raw: raw["prior"].update(components=4))
    with pytest.raises(ModelLoadError, match="holds 3 components over 32 dimensions; the manifest says 4 over 32"):
        load_model_dir(model_copy)


def test_a_prior_graph_with_other_outputs_is_refused(model_copy):
    add_prior(model_copy, toy_mixture(LATENT))
    edit_manifest(
        model_copy,
        lambda raw: raw["prior"]["graph"].update(
            outputs={
                "log_density": ["batch"],
                **{k: v for k, v in raw["prior"]["graph"]["outputs"].items() if k != "log_prob"},
            }
        ),
    )
    with pytest.raises(ModelLoadError, match=r"prior.onnx has inputs \['z'\] and outputs \['log_prob'"):
        load_model_dir(model_copy)


@pytest.mark.parametrize("estimator", ["importance", "prior"])
def test_scoring_with_the_prior_graph_is_scoring_with_its_mixture_in_numpy(model_copy, estimator):
    mixture = toy_mixture(LATENT)
    add_prior(model_copy, mixture)
    model = load_model_dir(model_copy)
    likelihood = model.likelihood
    pixels = np.random.default_rng(0).random((3, *model.manifest.input.shape)).astype(np.float32)
    data = likelihood.images_to_data_space(pixels, 0)
    graph = scoring.score(model, likelihood, data, seed=1, k=20, estimator=estimator)
    numpy = scoring.score(NumpyPrior(model, mixture), likelihood, data, seed=1, k=20, estimator=estimator)
    for name in ("elbo", "kl", "log_likelihood"):
        np.testing.assert_allclose(getattr(graph, name), getattr(numpy, name), rtol=0, atol=1e-4, err_msg=name)
    np.testing.assert_array_equal(graph.reconstruction, numpy.reconstruction)  # the same z: the same decode
    standard = scoring.score(load_model_dir(SHIPPED), likelihood, data, seed=1, k=20, estimator=estimator)
    assert np.all(np.abs(graph.kl - standard.kl) > 1.0)  # the prior is in the numbers, by nats
