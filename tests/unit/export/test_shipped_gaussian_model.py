"""The Gaussian model shipped in artifacts/fashion-mnist-gaussian/: its manifest's hashes match its files,
its decoder's scale respects the quantisation floor, and its graphs reproduce the report's per-image
scores exactly (the report was scored with the content-keyed noise streams the service uses)."""

import json
import math

import numpy as np
import pytest

from model.core import scoring
from model.core.artifact import load_model_dir
from model.core.likelihoods import LOG_SCALE_FLOOR
from model.core.manifest import Manifest
from model.data import DataMissingError, fixed_test_set, load_dataset, sha256_file
from tests.conftest import REPO
from tests.unit.export.manifests import schema_valid_manifest

SHIPPED = REPO / "artifacts" / "fashion-mnist-gaussian" / "1.0.0"


def test_manifest_is_valid_and_its_hashes_match_the_files():
    manifest = schema_valid_manifest(SHIPPED)
    assert (manifest.name, manifest.version, manifest.likelihood.name) == (
        "fashion-mnist-gaussian",
        "1.0.0",
        "gaussian",
    )
    for info in (manifest.encoder, manifest.decoder, manifest.checkpoint):
        assert sha256_file(SHIPPED / info.file) == info.sha256


def test_metrics_are_iwae_5000_on_these_graphs_in_bits_of_the_8_bit_image():
    manifest = Manifest.read(SHIPPED / "manifest.json")
    m = manifest.metrics
    assert m["iwae_k"] == 5000 and m["images"] >= 1000
    assert m["scored_with"] == {
        "backend": "onnxruntime",
        "encoder_sha256": manifest.encoder.sha256,
        "decoder_sha256": manifest.decoder.sha256,
    }
    assert m["bits_per_dim"] == pytest.approx(m["nll_nats"] / (784 * math.log(2)))
    # a probability of an 8-bit image: at least the Gaussian's floor of about 0.25 bits per pixel
    assert 0.25 < m["bits_per_dim"] < m["bits_per_dim_elbo"] < 8.0


def test_the_decoders_scale_never_falls_below_the_quantisation_floor():
    model = load_model_dir(SHIPPED, threads=1)
    z = np.random.default_rng(0).standard_normal((64, model.latent_dim)).astype(np.float32) * 3
    _, log_scale = model.decode(z)
    assert float(log_scale.min()) >= LOG_SCALE_FLOOR - 1e-5
    parameters = model.manifest.likelihood.parameters
    assert parameters["log_sigma_floor"] == pytest.approx(LOG_SCALE_FLOOR)
    assert parameters["sigma_min"] == pytest.approx(float(np.exp(log_scale.min())), rel=1e-4)


RESCORED = np.arange(6) * 150  # within the first 1,000 test images, which every report scores


def test_rescored_images_match_the_report():
    """Six test images re-scored with the shipped graphs as `vae-eval` scored them (same dequantised test
    set, seed and k=5000): the same noise streams, so the same numbers up to float rounding."""
    model = load_model_dir(SHIPPED, threads=2)
    report = json.loads((SHIPPED / "report" / "report.json").read_text())
    try:
        data = load_dataset(report["data"]["dataset"])
    except DataMissingError as exc:
        pytest.skip(str(exc))
    x = fixed_test_set(data.test, model.likelihood, model.manifest.training["train_config"]["test_binarize_seed"])
    scores = scoring.score(
        model, model.likelihood, x[RESCORED], seed=report["noise_seed"], k=report["metrics"]["iwae_k"]
    )
    with np.load(SHIPPED / "report" / "scores.npz") as stored:
        for name in ("kl", "elbo", "log_likelihood"):
            np.testing.assert_allclose(
                getattr(scores, name), stored[name][RESCORED], rtol=1e-5, atol=1e-2, err_msg=name
            )
