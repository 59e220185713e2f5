"""Writing one export (`ExportConfig`): ONNX graphs, the slim checkpoint, the manifest (model card), the parity
check, optional int8 graphs and the anomaly calibration, built beside OUT_DIR and renamed into place."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export import calibrate, parity
from export.config import ExportConfig
from export.exporter import OPSET, export_vae, io_shapes
from export.files import ExportError, move_into_place, target_dir
from model import checkpoint
from model.checkpoint import Checkpoint
from model.core.artifact import ModelLoadError, OnnxVAE, load_model_dir, open_graphs
from model.core.likelihoods import LOG_SCALE_FLOOR
from model.core.manifest import (
    LEVEL_GRAPHS,
    FileHash,
    GraphInfo,
    InputSpec,
    Int8Variant,
    LevelsSpec,
    LikelihoodSpec,
    Manifest,
    PriorSpec,
)
from model.core.preprocess import PreprocessContract
from model.core.priors import Mixture
from model.data import Dataset, fixed_test_set, load_dataset, sha256_file
from model.vae import VAE


def graph_info(directory: Path, name: str, proto: onnx.ModelProto) -> GraphInfo:
    inputs, outputs = io_shapes(proto)
    return GraphInfo(file=name, sha256=sha256_file(directory / name), inputs=inputs, outputs=outputs, opset=OPSET)


def versions() -> dict[str, str]:
    import onnxscript

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "onnxscript": onnxscript.__version__,
        "numpy": np.__version__,
        "opset": str(OPSET),
    }


def likelihood_spec(model: VAE) -> LikelihoodSpec:
    likelihood = model.decoder.likelihood
    parameters: dict[str, Any] = {}
    if model.decoder.scale_from_decoder:  # the decoder graph outputs a scale per pixel for each z
        parameters = {"scale": "decoder", "log_sigma_floor": LOG_SCALE_FLOOR}
    elif model.decoder.log_sigma is not None:  # a learned scale: record what it learned
        with torch.no_grad():  # the scale the decoder graph outputs: the learned one, through its floor
            shape = (1, *model.config.input_shape)
            _, log_scale = likelihood.torch_params(torch.zeros(shape), model.decoder.log_sigma)
        sigma = log_scale.exp()
        parameters = {
            "scale": model.config.gaussian_scale,
            "sigma_mean": float(sigma.mean()),
            "sigma_min": float(sigma.min()),
            "sigma_max": float(sigma.max()),
            "log_sigma_floor": LOG_SCALE_FLOOR,
        }
    return LikelihoodSpec(
        name=likelihood.name, outputs=list(likelihood.outputs), parameters=parameters, data_space=likelihood.data_space
    )


def prior_spec(model: VAE, directory: Path, proto: onnx.ModelProto | None) -> PriorSpec | None:
    """The manifest's prior section; None for a prior without a graph (N(0, I))."""
    kind = model.config.prior_kind
    if proto is None or kind.graph is None:
        return None
    return PriorSpec(
        name=kind.name,
        components=model.config.prior_components,
        description=kind.description,
        graph=graph_info(directory, kind.graph, proto),
    )


def quantize_int8(out_dir: Path) -> Int8Variant:
    """Dynamic int8 quantisation of the weights; its parity and speed are filled in by the caller."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it advises pre-processing on the root logger at WARNING
    try:
        for half in ("encoder", "decoder"):
            quantize_dynamic(out_dir / f"{half}.onnx", out_dir / f"{half}.int8.onnx", weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    infos = {
        half: graph_info(out_dir, f"{half}.int8.onnx", onnx.load(out_dir / f"{half}.int8.onnx"))
        for half in ("encoder", "decoder")
    }
    return Int8Variant(encoder=infos["encoder"], decoder=infos["decoder"], parity={}, speed={})


@dataclass(frozen=True)
class ExportInputs:
    """What an export reads before it writes anything: where it goes, the model, its checkpoint and the data."""

    out: Path
    model: VAE
    record: Checkpoint
    data: Dataset


def read_inputs(config: ExportConfig) -> ExportInputs:
    """Raises ExportError, CheckpointError, DataMissingError or DataChecksumError before anything is written."""
    out = target_dir(config.out_dir)
    model, record = checkpoint.load_model(config.checkpoint)
    if model.config.levels != 1 and config.int8:  # int8 graphs of z2's level beside fp32 ones of z1's
        raise ExportError(f"{config.checkpoint} is a two-level VAE: its graphs are exported in fp32 only; drop --int8")
    data = load_dataset(
        config.dataset or record.train_config.dataset,
        config.data_dir or record.train_config.data_dir,
        PreprocessContract(input_shape=model.config.input_shape),
        calibration_split=record.train_config.calibration_split,
    )
    return ExportInputs(out, model, record, data)


def export_model(config: ExportConfig, inputs: ExportInputs) -> Manifest:
    """Build the export beside OUT (same file system, so the final rename is atomic) and rename it into place
    only when complete and checked: OUT holds the old export or the new one, never a failed one.
    Raises ParityError, ExportError, CalibrationError or OSError, having changed nothing."""
    out = inputs.out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would hide the model from a server run as another user
    try:
        manifest = write_export(staging, config, inputs)
        move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def write_export(directory: Path, config: ExportConfig, inputs: ExportInputs) -> Manifest:
    """Graphs, slim checkpoint and report into `directory`; parity checks; then the manifest, once.

    Raises ParityError or ExportError before the manifest is written, so a failed export never
    leaves a directory the service would load."""
    model, record = inputs.model, inputs.record
    name = config.name or f"{record.train_config.dataset}-vae"
    source = FileHash(file=config.checkpoint.name, sha256=sha256_file(config.checkpoint))
    protos = export_vae(model, directory, graph_metadata(config, model, name, source.sha256))
    report: dict[str, Any] = {}
    if config.report:  # copied from where it is, even from inside the OUT_DIR this export replaces
        report = json.loads((config.report / "report.json").read_text())
        shutil.copytree(config.report, directory / "report")
    checkpoint.slim(config.checkpoint, directory / "checkpoint.pt")
    manifest = Manifest(
        name=name,
        version=config.version,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        source_checkpoint=source,
        checkpoint=FileHash(file="checkpoint.pt", sha256=sha256_file(directory / "checkpoint.pt")),
        encoder=graph_info(directory, "encoder.onnx", protos["encoder"]),
        decoder=graph_info(directory, "decoder.onnx", protos["decoder"]),
        input=InputSpec(shape=list(model.config.input_shape), channels=model.config.input_shape[0]),
        latent_dim=model.config.latent_dim,
        likelihood=likelihood_spec(model),
        preprocessing=PreprocessContract(input_shape=model.config.input_shape).describe(),
        training=training_section(record, inputs.data),
        metrics=metrics_section(report),
        parity={},
        exporter=versions(),
        prior=prior_spec(model, directory, protos.get("prior")),
        levels=levels_spec(model, directory, protos),
    )
    check_report_graphs(report, manifest)
    return finish(directory, config, inputs, manifest)


def levels_spec(model: VAE, directory: Path, protos: dict[str, onnx.ModelProto]) -> LevelsSpec | None:
    """A two-level VAE's lower graphs, as the manifest lists them; None for one level."""
    if model.config.levels == 1:
        return None
    graphs = {name: graph_info(directory, f"{name}.onnx", protos[name]) for name in LEVEL_GRAPHS}
    return LevelsSpec(lower_latent_dim=model.config.lower_latent_dim, **graphs)


def finish(directory: Path, config: ExportConfig, inputs: ExportInputs, manifest: Manifest) -> Manifest:
    """Parity through the sessions the service builds (which also check the graphs' hashes), int8 and the
    calibration when asked; then the manifest, and the check that what is written loads."""
    backend = open_graphs(directory, manifest, threads=config.threads)
    samples = parity_samples(config, inputs)
    manifest = with_parity(config, inputs.model, manifest, backend, samples)
    if config.int8:
        manifest = with_int8(directory, config, manifest, backend, samples)
    if config.calibrate:
        binarize_seed = inputs.record.train_config.test_binarize_seed
        fitted = calibrate.calibrate(
            backend,
            inputs.data.train,
            config.calibration_count,
            binarize_seed=binarize_seed,
            held_out=inputs.data.calibration,
        )
        manifest = calibrate.add_calibration(directory, manifest, fitted)
    manifest.write(directory / "manifest.json")
    # What is moved into place is what the service's loader accepts, read back from disk.
    for variant_name in ("fp32", "int8") if config.int8 else ("fp32",):
        try:
            load_model_dir(directory, threads=config.threads, variant=variant_name)
        except ModelLoadError as exc:
            raise ExportError(f"the written {variant_name} model does not load: {exc}") from exc
    return manifest


def graph_metadata(config: ExportConfig, model: VAE, name: str, source_sha256: str) -> dict[str, str]:
    """What each graph carries in its metadata_props."""
    return {
        "name": name,
        "version": config.version,
        "latent_dim": str(model.config.latent_dim),
        "likelihood": model.config.likelihood,
        "input_shape": json.dumps(list(model.config.input_shape)),
        "source_checkpoint_sha256": source_sha256,
        "producer": "vae-service vae-export",
    }


def training_section(record: Checkpoint, data: Dataset) -> dict[str, Any]:
    """The manifest's record of how the model was trained: the checkpoint's provenance."""
    return {
        "dataset": data.name,
        "data_checksums": record.data_checksums,
        "model_config": record.model_config.to_dict(),
        "train_config": record.train_config.to_dict(),
        "epoch": record.epoch,
        "command": record.command,
        "git_commit": record.git_commit,
        "versions": record.versions,
        **({"averaged": record.averaged.to_dict()} if record.averaged else {}),
    }


def metrics_section(report: dict[str, Any]) -> dict[str, Any]:
    """The manifest's metrics: a vae-eval report's, or a note that the model was not evaluated."""
    if not report:
        return {"evaluated": False}
    return {
        **report["metrics"],
        "command": report["command"],
        "noise_seed": report["noise_seed"],
        "scored_with": report.get("scored_with", {"backend": "torch"}),
        "test_set": report["test_set"],
        "checkpoint_sha256": report["checkpoint_sha256"],
    }


def check_report_graphs(report: dict[str, Any], manifest: Manifest) -> None:
    scored = report.get("scored_with", {})
    if scored.get("backend") == "onnxruntime" and (scored["encoder_sha256"], scored["decoder_sha256"]) != (
        manifest.encoder.sha256,
        manifest.decoder.sha256,
    ):
        raise ExportError("the report was scored on other graphs than these; re-run vae-eval --onnx-dir")


@dataclass(frozen=True)
class ParitySamples:
    """What the graphs are compared with torch on: test images in the data space and N(0, I) latents."""

    images: np.ndarray  # (N, C, H, W)
    latents: np.ndarray  # (N, D)
    names: list[str]  # the compared outputs: encoder.mean, encoder.logvar, decoder.<output>...


def parity_samples(config: ExportConfig, inputs: ExportInputs) -> ParitySamples:
    model = inputs.model
    likelihood = model.decoder.likelihood
    rng = np.random.default_rng(0)
    images = fixed_test_set(
        inputs.data.test[: config.parity_count], likelihood, inputs.record.train_config.test_binarize_seed
    )
    latents = rng.standard_normal((config.parity_count, model.config.latent_dim), dtype=np.float32)
    names = [f"encoder.{n}" for n in ("mean", "logvar")] + [f"decoder.{n}" for n in likelihood.outputs]
    return ParitySamples(images, latents, names)


def with_parity(
    config: ExportConfig, model: VAE, manifest: Manifest, backend: OnnxVAE, samples: ParitySamples
) -> Manifest:
    """The graphs against torch (raises ParityError beyond tolerance), recorded in the manifest."""
    images, latents = samples.images, samples.latents
    diffs = parity.max_abs_diff(backend, model, images, latents, samples.names)
    consistency = parity.batch_consistency(backend, images[:256], latents[:256])
    # A learned prior (the manifest lists its graph, which open_graphs loaded as a Mixture): at N(0, I)
    # draws and at the prior's own, where its mass is.
    if isinstance(backend.prior, Mixture):
        own = model.prior.sample(config.parity_count, torch.Generator().manual_seed(0)).numpy()
        prior_latents = np.concatenate([latents, own])
        diffs.update(parity.prior_max_abs_diff(backend.prior, model, prior_latents))
        consistency["prior"] = parity.prior_batch_consistency(backend.prior, prior_latents[:256])
    if backend.levels is not None:
        diffs.update(parity.levels_max_abs_diff(backend.levels, model, images, latents))
    print(
        f"parity max |onnx - torch| = {max(diffs.values()):.2e} over {len(images)} images and {len(latents)} "
        f"latents; batch 1/7/256 max diff {max(consistency.values()):.2e}"
    )
    parity.check(diffs, consistency)
    record = {
        "images": len(images),
        "latents": len(latents),
        "tolerance": parity.TOLERANCE,
        "max_abs_diff": diffs,
        "batch_sizes": [1, 7, 256],
        "batch_max_abs_diff": consistency,
        **({"prior_latents": 2 * len(latents)} if manifest.prior is not None else {}),
        **(
            {"levels": "features and q(z1 | x, z2) at the images, p(z1 | z2) and p(x | z1, z2) at the latents"}
            if backend.levels is not None
            else {}
        ),
    }
    return manifest.model_copy(update={"parity": record})


def with_int8(
    directory: Path, config: ExportConfig, manifest: Manifest, backend: OnnxVAE, samples: ParitySamples
) -> Manifest:
    """Dynamically quantised int8 graphs, with their difference from fp32 and both speeds."""
    variant = quantize_int8(directory)
    int8 = open_graphs(directory, manifest.model_copy(update={"int8": variant}), threads=config.threads, variant="int8")
    images, latents = samples.images, samples.latents
    fp32_out = [*backend.encode(images), *backend.decode(latents)]
    int8_out = [*int8.encode(images), *int8.decode(latents)]
    int8_parity = {n: float(np.max(np.abs(a - b))) for n, a, b in zip(samples.names, fp32_out, int8_out, strict=False)}
    speed = {
        f"{half}_{variant_name}_images_per_s_batch256": parity.images_per_second(getattr(b, half), d, 256)
        for half, d in (("encode", images), ("decode", latents))
        for variant_name, b in (("fp32", backend), ("int8", int8))
    }
    return manifest.model_copy(update={"int8": variant.model_copy(update={"parity": int8_parity, "speed": speed})})
