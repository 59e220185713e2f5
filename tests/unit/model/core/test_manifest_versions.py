"""The manifest's versioned schema ("MAJOR.MINOR"): which versions a reader serves and which it refuses, the
validation of the opened contract's sections (input values, likelihood, contract bindings, source), and that
every manifest shipped in artifacts/ still reads, with vae-export's own names as its bindings."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from model.core.artifact import ModelLoadError, load_model_dir
from model.core.manifest import (
    LEVEL_GRAPHS,
    SCHEMA_VERSION,
    ContractSpec,
    DecoderIO,
    EncoderIO,
    InputSpec,
    LikelihoodSpec,
    Manifest,
)
from tests.conftest import REPO

SHIPPED = sorted((REPO / "artifacts").glob("*/*/manifest.json"))
# The bundled models vae-export wrote (the imported autoencoder records its own bindings: tested elsewhere).
EXPORTED = [path for path in SHIPPED if json.loads(path.read_text()).get("source_checkpoint") is not None]
HASH = "0" * 64


def raw_manifest(**changes: Any) -> dict[str, Any]:
    """A valid manifest as JSON data (vae-export's form), with `changes` applied at the top level."""
    graph = {"file": "x.onnx", "sha256": HASH, "inputs": {}, "outputs": {}, "opset": 20}
    raw: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": "m",
        "version": "1.0.0",
        "created": "2026-01-01T00:00:00+00:00",
        "source_checkpoint": {"file": "c.pt", "sha256": HASH},
        "encoder": graph,
        "decoder": graph,
        "input": {"shape": [1, 4, 4], "channels": 1},
        "latent_dim": 2,
        "likelihood": {"name": "bernoulli", "outputs": ["logits"], "data_space": "binary"},
        "preprocessing": {},
        "training": {},
        "metrics": {},
        "parity": {},
        "exporter": {},
    }
    raw.update(changes)
    return raw


def refused(**changes: Any) -> str:
    with pytest.raises(ValidationError) as info:
        Manifest.model_validate(raw_manifest(**changes))
    return str(info.value)


# schema_version


def test_this_reader_writes_schema_2_2_and_reads_2_0_and_2_1():
    assert SCHEMA_VERSION == "2.2"  # 2.1 added latent_shape, sizes and diffusion; 2.2 levels; all optional
    assert Manifest.model_validate(raw_manifest()).schema_version == "2.2"
    for older in ("2.0", "2.1"):
        assert Manifest.model_validate(raw_manifest(schema_version=older)).schema_version == older


@pytest.mark.parametrize("given", [1, "1", "1.0"])
def test_version_1_in_any_spelling_reads_as_1_0(given):
    assert Manifest.model_validate(raw_manifest(schema_version=given)).schema_version == "1.0"


def test_a_version_1_manifest_is_written_back_as_the_string_1_0_and_reads_again(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(raw_manifest(schema_version=1)))
    Manifest.read(path).write(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text())["schema_version"] == "1.0"
    assert Manifest.read(tmp_path / "again.json") == Manifest.read(path)


@pytest.mark.parametrize("newer", ["2.3", "2.9", "3.0", "10.0"])
def test_a_newer_schema_is_refused_saying_to_upgrade_vae_service(newer):
    message = refused(schema_version=newer)
    assert f"schema_version {newer} is not one this vae-service reads (1, and 2.0 up to 2.2)" in message
    assert "upgrade vae-service" in message and "re-import the model with this one" in message


@pytest.mark.parametrize("malformed", ["x", "2", "2.0.1", "two.zero", ""])
def test_a_schema_version_that_is_not_major_minor_is_refused(malformed):
    assert f"schema_version {malformed!r} is not MAJOR.MINOR" in refused(schema_version=malformed)


@pytest.mark.parametrize("never_written", ["1.5", "2.-1"])
def test_a_version_that_was_never_written_is_refused(never_written):
    with pytest.raises(ValidationError, match="schema_version"):
        Manifest.model_validate(raw_manifest(schema_version=never_written))


def test_the_loader_refuses_a_newer_schema_before_reading_any_graph(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(raw_manifest(schema_version="2.3")))
    with pytest.raises(ModelLoadError) as info:
        load_model_dir(tmp_path)
    assert "is not a valid vae-service manifest" in str(info.value) and "upgrade vae-service" in str(info.value)


# the likelihood


def likelihood(**fields: Any) -> LikelihoodSpec:
    return LikelihoodSpec(**{"data_space": "d", **fields})


@pytest.mark.parametrize(
    "name, outputs, log_scale",
    [
        ("bernoulli", ["logits"], None),
        ("bernoulli", ["probs"], None),
        ("gaussian", ["mean", "log_scale"], None),
        ("gaussian", ["mean"], math.log(0.1)),
        ("none", ["mean"], None),
    ],
)
def test_each_declared_decoder_form_is_accepted(name, outputs, log_scale):
    spec = likelihood(name=name, outputs=outputs, log_scale=log_scale)
    assert (spec.name, spec.outputs, spec.log_scale) == (name, outputs, log_scale)


def test_a_gaussian_decoding_only_its_mean_needs_a_finite_log_scale():
    for log_scale in (None, math.inf, math.nan):
        with pytest.raises(ValidationError, match="a gaussian decoder that outputs only its mean needs log_scale"):
            likelihood(name="gaussian", outputs=["mean"], log_scale=log_scale)


@pytest.mark.parametrize(
    "name, outputs", [("gaussian", ["mean", "log_scale"]), ("bernoulli", ["logits"]), ("none", ["mean"])]
)
def test_a_decoder_that_gives_its_own_scale_or_none_takes_no_log_scale(name, outputs):
    with pytest.raises(ValidationError, match="other decoders give none"):
        likelihood(name=name, outputs=outputs, log_scale=-1.0)


@pytest.mark.parametrize(
    "name, outputs, allowed",
    [
        ("bernoulli", ["mean"], "['logits'] or ['probs']"),
        ("bernoulli", ["logits", "probs"], "['logits'] or ['probs']"),
        ("gaussian", ["logits"], "['mean', 'log_scale'] or ['mean']"),
        ("none", ["logits"], "['mean']"),
        ("none", ["mean", "log_scale"], "['mean']"),
    ],
)
def test_outputs_that_do_not_fit_the_likelihood_are_refused_naming_what_fits(name, outputs, allowed):
    with pytest.raises(ValidationError) as info:
        likelihood(name=name, outputs=outputs)
    assert f"a {name} decoder outputs {allowed}, not {outputs}" in str(info.value)


def test_an_unknown_likelihood_name_is_refused():
    with pytest.raises(ValidationError, match="name"):
        likelihood(name="poisson", outputs=["rate"])


# the input


def test_the_input_values_default_to_0_1_and_map_to_an_affine_per_channel():
    assert InputSpec(shape=[3, 2, 2], channels=3).affine() == ([1.0] * 3, [0.0] * 3)
    assert InputSpec(shape=[1, 2, 2], channels=1, range=[-1, 1]).affine() == ([2.0], [-1.0])
    a, b = InputSpec(shape=[3, 2, 2], channels=3, mean=[0.5, 0.4, 0.2], std=[0.25, 0.5, 0.1]).affine()
    assert a == pytest.approx([4.0, 2.0, 10.0]) and b == pytest.approx([-2.0, -0.8, -2.0])


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"mean": [0.5]}, "mean and std are given together"),
        ({"std": [0.5]}, "mean and std are given together"),
        ({"mean": [0.5], "std": [0.0]}, "std [0.0] must be positive"),
        ({"mean": [0.5], "std": [-0.2]}, "std [-0.2] must be positive"),
        ({"mean": [math.nan], "std": [0.2]}, "mean [nan] finite"),
        ({"mean": [0.5, 0.5], "std": [0.2, 0.2]}, "mean and std need one value per channel (1)"),
        ({"range": [1.0, -1.0]}, "range [1.0, -1.0] must be finite, low < high"),
        ({"range": [0.0, math.inf]}, "must be finite, low < high"),
    ],
)
def test_input_values_that_are_not_consistent_are_refused(fields, message):
    with pytest.raises(ValidationError) as info:
        InputSpec(shape=[1, 4, 4], channels=1, **fields)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "shape, channels, message",
    [
        ([1, 4, 4], 3, "channels 3 and shape [1, 4, 4]: images have 1 (grey) or 3 (RGB)"),
        ([2, 4, 4], 2, "channels 2 and shape [2, 4, 4]: images have 1 (grey) or 3 (RGB)"),
        ([1, 0, 4], 1, "shape [1, 0, 4] has a dimension that is not positive"),
    ],
)
def test_an_input_shape_that_is_not_an_image_is_refused(shape, channels, message):
    with pytest.raises(ValidationError) as info:
        InputSpec(shape=shape, channels=channels)
    assert message in str(info.value)


# the manifest as a whole


def test_a_manifest_records_where_it_came_from():
    assert "a manifest records its source: source_checkpoint (vae-export) or source (vae-import)" in refused(
        source_checkpoint=None
    )
    imported = raw_manifest(source_checkpoint=None, source={"tool": "vae-import onnx"})
    assert Manifest.model_validate(imported).source.tool == "vae-import onnx"


def test_the_contract_names_as_many_decoder_outputs_as_the_likelihood_has():
    gaussian = {"name": "gaussian", "outputs": ["mean", "log_scale"], "data_space": "d"}
    one = {"decoder": {"outputs": ["recon"]}}
    message = refused(likelihood=gaussian, contract=one)
    assert "contract.decoder.outputs ['recon'] names 1 graph outputs; the likelihood has 2" in message
    two = {"decoder": {"outputs": ["recon", "recon_log_sigma"]}}
    assert Manifest.model_validate(raw_manifest(likelihood=gaussian, contract=two)).io.decoder.outputs == [
        "recon",
        "recon_log_sigma",
    ]


def test_a_manifest_without_a_contract_binds_vae_exports_names():
    gaussian = {"name": "gaussian", "outputs": ["mean", "log_scale"], "data_space": "d"}
    io = Manifest.model_validate(raw_manifest(likelihood=gaussian)).io
    assert io == ContractSpec(encoder=EncoderIO(), decoder=DecoderIO(outputs=["mean", "log_scale"]))
    assert (io.encoder.image, io.encoder.mean, io.encoder.spread) == ("image", "mean", "logvar")
    assert (io.encoder.posterior, io.encoder.layout, io.decoder.z, io.decoder.flat) == ("logvar", "nchw", "z", False)


def test_unknown_contract_fields_are_refused():
    assert "extra" in refused(contract={"decoder": {"outputs": ["logits"], "transpose": True}}).lower()


# the shipped manifests


def test_the_shipped_manifests_are_found():
    assert len(SHIPPED) >= 4


def test_every_shipped_manifest_reads():
    assert len(EXPORTED) == 4 and all(Manifest.read(path) for path in SHIPPED)


@pytest.mark.parametrize("path", EXPORTED, ids=lambda p: str(Path(*p.parts[-3:-1])))
def test_every_exported_shipped_manifest_still_reads_with_vae_exports_names(path):
    raw = json.loads(path.read_text())
    manifest = Manifest.read(path)
    assert manifest.schema_version == ("1.0" if raw["schema_version"] in (1, "1") else raw["schema_version"])
    assert manifest.contract is None and manifest.source_checkpoint is not None
    io = manifest.io
    assert (io.encoder.image, io.encoder.mean, io.encoder.spread) == ("image", "mean", "logvar")
    assert (io.encoder.posterior, io.encoder.layout) == ("logvar", "nchw")
    assert io.decoder.z == "z" and not io.decoder.flat
    assert io.decoder.outputs == manifest.likelihood.outputs
    assert list(manifest.encoder.inputs) == [io.encoder.image]
    assert list(manifest.encoder.outputs) == [io.encoder.mean, io.encoder.spread]
    assert list(manifest.decoder.inputs) == [io.decoder.z]
    assert list(manifest.decoder.outputs) == io.decoder.outputs
    assert manifest.input.affine() == ([1.0] * manifest.input.channels, [0.0] * manifest.input.channels)


# levels (2.2)


def test_levels_name_the_lower_graphs_and_are_vae_exports_own():
    graph = {"file": "x.onnx", "sha256": HASH, "inputs": {}, "outputs": {}, "opset": 20}
    levels = {"lower_latent_dim": 3, **{name: {**graph, "file": f"{name}.onnx"} for name in LEVEL_GRAPHS}}
    manifest = Manifest.model_validate(raw_manifest(levels=levels))
    assert manifest.levels is not None and manifest.levels.decoder_levels.file == "decoder_levels.onnx"
    assert Manifest.model_validate(raw_manifest()).levels is None  # absent: one level
    assert "levels are vae-export's" in refused(levels=levels, latent_shape=[2, 1, 1])
    assert "lower_latent_dim" in refused(levels={**levels, "lower_latent_dim": 0})
    assert "decoder_levels" in refused(levels={k: v for k, v in levels.items() if k != "decoder_levels"})
