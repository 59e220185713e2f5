"""The latent-diffusion autoencoder shipped in artifacts/fashion-mnist-autoencoderkl/: its manifest's hashes and
parity hold, its report is of the weights its graphs came from, and its graphs, run as the service runs them,
reproduce the report's reconstruction error on the first test images."""

import json

import numpy as np
import pytest

from model.core.artifact import load_model_dir
from model.core.manifest import Manifest, parity_problem
from model.data import DataMissingError, load_dataset, sha256_file
from tests.conftest import REPO
from tests.unit.export.manifests import schema_valid_manifest

SHIPPED = REPO / "artifacts" / "fashion-mnist-autoencoderkl" / "1.0.0"
LATENT_SHAPE = [4, 7, 7]


@pytest.fixture(scope="module")
def report() -> dict:
    return json.loads((SHIPPED / "report" / "report.json").read_text())


def test_manifest_is_valid_and_its_hashes_match_the_files():
    manifest = schema_valid_manifest(SHIPPED)
    assert (manifest.name, manifest.version, manifest.likelihood.name) == (
        "fashion-mnist-autoencoderkl",
        "1.0.0",
        "none",
    )
    for info in (manifest.encoder, manifest.decoder):
        assert sha256_file(SHIPPED / info.file) == info.sha256
    assert parity_problem(manifest.parity) is None
    assert max(manifest.parity["max_abs_diff"].values()) <= manifest.parity["tolerance"]


def test_the_latent_is_4_by_7_by_7_and_its_scaling_is_the_reports(report):
    manifest = Manifest.read(SHIPPED / "manifest.json")
    assert manifest.latent_shape == LATENT_SHAPE == report["latent_shape"]
    assert manifest.latent_dim == int(np.prod(LATENT_SHAPE))
    assert manifest.diffusion is not None and manifest.diffusion.downsample == 4
    assert manifest.diffusion.scaling_factor == pytest.approx(report["latents"]["scaling_factor"], rel=1e-12)


def test_the_report_is_of_the_weights_the_graphs_were_made_from(report):
    manifest = Manifest.read(SHIPPED / "manifest.json")
    assert manifest.source is not None
    assert {f.file: f.sha256 for f in manifest.source.files} == report["autoencoder_files"]


def test_the_graphs_reproduce_the_reports_reconstruction_error(report):
    """The first test images through the shipped graphs (the encoder's mean, decoded), as the service runs them:
    the report's figures, computed in torch, up to float rounding."""
    model = load_model_dir(SHIPPED, threads=2)
    try:
        data = load_dataset(report["data"]["dataset"])
    except DataMissingError as exc:
        pytest.skip(str(exc))
    assert data.checksums == report["data"]["checksums"]
    expected = report["test_first_images"]
    pixels = data.test[: expected["images"]]  # (500, 1, 28, 28) in [0, 1]
    mean, _ = model.encode(pixels)  # (500, 196)
    (decoded,) = model.decode(mean)  # (500, 1, 28, 28), [0, 1] pixels
    error = np.clip(decoded, 0, 1).astype(np.float64) - pixels
    assert float(np.mean(error**2)) == pytest.approx(expected["mse"], rel=1e-3)
    assert float(np.mean(np.abs(error))) == pytest.approx(expected["l1"], rel=1e-3)


def test_the_checkpoint_is_the_run_the_report_describes(report):
    """training-checkpoint.pt is the run's last.pt: copied to OUT/last.pt, `--resume` continues the run from it."""
    from model.train_autoencoder_kl import RunState

    state = RunState.load(SHIPPED / "training-checkpoint.pt")
    assert state.history == report["history"] and state.invocations == report["invocations"]
    assert (state.epoch, state.settings.epochs) == (report["epochs_done"], report["epochs_planned"])
    assert list(state.shape.latent_shape) == LATENT_SHAPE
