"""The model shipped in artifacts/fashion-mnist/ loads, and its manifest's hashes match the files."""

import json

import jsonschema

from export.manifest import SCHEMA_PATH, Manifest
from model.data import sha256_file
from service.runtime import load_model_dir
from tests.conftest import REPO

SHIPPED = REPO / "artifacts" / "fashion-mnist"


def test_shipped_manifest_is_valid_and_its_hashes_match_the_files():
    raw = json.loads((SHIPPED / "manifest.json").read_text())
    jsonschema.validate(raw, json.loads(SCHEMA_PATH.read_text()))
    manifest = Manifest.model_validate(raw)
    for info in (manifest.encoder, manifest.decoder, manifest.checkpoint):
        assert sha256_file(SHIPPED / info.file) == info.sha256


def test_shipped_metrics_are_the_full_test_set_at_k_5000_on_these_graphs():
    manifest = Manifest.read(SHIPPED / "manifest.json")
    metrics = manifest.metrics
    assert metrics["iwae_k"] == 5000 and metrics["images"] == 10000
    assert metrics["scored_with"] == {"backend": "onnxruntime", "encoder_sha256": manifest.encoder.sha256,
                                      "decoder_sha256": manifest.decoder.sha256}
    assert metrics["log_likelihood"] > metrics["elbo"]  # IWAE tightens the bound
    assert max(manifest.parity["max_abs_diff"].values()) <= 1e-4


def test_shipped_model_beats_the_plain_vae_reference():
    manifest = Manifest.read(SHIPPED / "manifest.json")
    assert manifest.metrics["nll_nats"] < 228.70  # plain VAE, Gaussian prior (Exemplar VAE paper)


def test_shipped_graphs_load_and_run():
    model = load_model_dir(SHIPPED)
    assert model.latent_dim == Manifest.read(SHIPPED / "manifest.json").latent_dim
    mean, _ = model.encode(__import__("numpy").zeros((2, *model.manifest.input.shape), dtype="float32"))
    assert mean.shape == (2, model.latent_dim)
