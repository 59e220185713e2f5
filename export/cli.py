"""`vae-export CHECKPOINT OUT_DIR`: ONNX graphs, manifest (model card), parity check, optional int8."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export import calibrate, parity
from export.exporter import OPSET, export_vae, io_shapes
from model import checkpoint
from model import prior as priors
from model.core.artifact import ModelLoadError, load_model_dir, open_graphs
from model.core.likelihoods import LOG_SCALE_FLOOR
from model.core.manifest import FileHash, GraphInfo, InputSpec, Int8Variant, LikelihoodSpec, Manifest, PriorSpec
from model.core.preprocess import PreprocessContract
from model.data import DataChecksumError, DataMissingError, Dataset, fixed_test_set, load_dataset, sha256_file
from model.vae import VAE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="vae-export", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("checkpoint")
    p.add_argument("out_dir")
    p.add_argument("--name", default=None, help="model name (default: <dataset>-vae)")
    p.add_argument("--version", default="1.0.0", help="model version")
    p.add_argument(
        "--report",
        default=None,
        help="a vae-eval report folder: its metrics go in the manifest and it is copied beside the graphs",
    )
    p.add_argument("--int8", action="store_true", help="also write dynamically quantised int8 graphs")
    p.add_argument("--dataset", default=None, help="parity data (default: the checkpoint's dataset)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--parity-count", type=int, default=1000, help="test images and latents for the parity check")
    p.add_argument(
        "--calibrate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fit the anomaly score (POST /anomaly) on a validation split of the training data",
    )
    p.add_argument(
        "--calibration-count",
        type=int,
        default=calibrate.DEFAULT_COUNT,
        help="training images in each half of the calibration split",
    )
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


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
    if model.decoder.log_sigma is not None:  # a learned scale: record what it learned
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


PRIOR_DESCRIPTIONS = {
    "mog": "a mixture of K diagonal Gaussians learned in the latent space",
    "vamp": "VampPrior: the encoder's posteriors at K learned pseudo-inputs, equally weighted",
}


def prior_spec(model: VAE, directory: Path, proto: onnx.ModelProto | None) -> PriorSpec | None:
    """The manifest's prior section; None for N(0, I), which needs no graph."""
    if proto is None:
        return None
    return PriorSpec(
        name=model.config.prior,
        components=model.config.prior_components,
        description=PRIOR_DESCRIPTIONS[model.config.prior],
        graph=graph_info(directory, "prior.onnx", proto),
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


class ExportError(RuntimeError):
    """The export cannot be completed; nothing was written to OUT_DIR."""


def target_dir(out_dir: str) -> Path:
    """OUT_DIR, which the export replaces as a whole: it must be new, empty, or an earlier export."""
    out = Path(out_dir)
    if out.is_symlink():  # replace what the link points at and keep the link
        out = out.resolve()
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / "manifest.json").is_file())):
        raise ExportError(
            f"{out} exists and is not a directory written by vae-export (no manifest.json). "
            "The export replaces OUT_DIR as a whole: choose a new directory or empty this one."
        )
    return out


def move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished export to OUT. An earlier export is renamed aside first and removed only
    once the new one is in place; if the second rename fails, it is renamed back. A directory
    cannot be renamed over a non-empty one, so for that instant OUT does not exist."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old)  # onto the empty directory just made: a fresh, unique name
    try:
        os.replace(staging, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_export(
    directory: Path, args: argparse.Namespace, model: VAE, payload: dict[str, Any], data: Dataset
) -> Manifest:
    """Graphs, slim checkpoint and report into `directory`; parity checks; then the manifest, once.

    Raises ParityError or ExportError before the manifest is written, so a failed export never
    leaves a directory the service would load."""
    config = model.config
    train_config = payload["train_config"]
    name = args.name or f"{train_config['dataset']}-vae"
    source = FileHash(file=Path(args.checkpoint).name, sha256=sha256_file(args.checkpoint))
    metadata = {
        "name": name,
        "version": args.version,
        "latent_dim": str(config.latent_dim),
        "likelihood": config.likelihood,
        "input_shape": json.dumps(list(config.input_shape)),
        "source_checkpoint_sha256": source.sha256,
        "producer": "vae-service vae-export",
    }
    protos = export_vae(model, directory, metadata)

    report: dict[str, Any] = {}
    if args.report:  # copied from where it is, even from inside the OUT_DIR this export replaces
        report = json.loads((Path(args.report) / "report.json").read_text())
        shutil.copytree(args.report, directory / "report")
    checkpoint.slim(args.checkpoint, directory / "checkpoint.pt")

    manifest = Manifest(
        name=name,
        version=args.version,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        source_checkpoint=source,
        checkpoint=FileHash(file="checkpoint.pt", sha256=sha256_file(directory / "checkpoint.pt")),
        encoder=graph_info(directory, "encoder.onnx", protos["encoder"]),
        decoder=graph_info(directory, "decoder.onnx", protos["decoder"]),
        input=InputSpec(shape=list(config.input_shape), channels=config.input_shape[0]),
        latent_dim=config.latent_dim,
        likelihood=likelihood_spec(model),
        preprocessing=PreprocessContract(input_shape=config.input_shape).describe(),
        training={
            "dataset": data.name,
            "data_checksums": payload["data_checksums"],
            "model_config": payload["model_config"],
            "train_config": train_config,
            "epoch": payload["epoch"],
            "command": payload["command"],
            "git_commit": payload["git_commit"],
            "versions": payload["versions"],
            **({"averaged": payload["averaged"]} if payload.get("averaged") else {}),
        },
        metrics=(
            {
                **report["metrics"],
                "command": report["command"],
                "noise_seed": report["noise_seed"],
                "scored_with": report.get("scored_with", {"backend": "torch"}),
                "test_set": report["test_set"],
                "checkpoint_sha256": report["checkpoint_sha256"],
            }
            if report
            else {"evaluated": False}
        ),
        parity={},
        exporter=versions(),
        prior=prior_spec(model, directory, protos.get("prior")),
    )
    scored = report.get("scored_with", {})
    if scored.get("backend") == "onnxruntime" and (scored["encoder_sha256"], scored["decoder_sha256"]) != (
        manifest.encoder.sha256,
        manifest.decoder.sha256,
    ):
        raise ExportError("the report was scored on other graphs than these; re-run vae-eval --onnx-dir")

    # Parity through the sessions the service builds (which also check the graphs' hashes).
    backend = open_graphs(directory, manifest, threads=args.threads)
    rng = np.random.default_rng(0)
    images = fixed_test_set(
        data.test[: args.parity_count], model.decoder.likelihood, train_config["test_binarize_seed"]
    )
    latents = rng.standard_normal((args.parity_count, config.latent_dim), dtype=np.float32)
    names = [f"encoder.{n}" for n in ("mean", "logvar")] + [f"decoder.{n}" for n in model.decoder.likelihood.outputs]
    diffs = parity.max_abs_diff(backend, model, images, latents, names)
    consistency = parity.batch_consistency(backend, images[:256], latents[:256])
    if manifest.prior is not None:  # at N(0, I) draws and at the prior's own, where its mass is
        with torch.no_grad():
            own = priors.sample(model.prior, args.parity_count, torch.Generator().manual_seed(0)).numpy()
        prior_latents = np.concatenate([latents, own])
        diffs.update(parity.prior_max_abs_diff(backend.prior, model, prior_latents))
        consistency["prior"] = parity.prior_batch_consistency(backend.prior, prior_latents[:256])
    print(
        f"parity max |onnx - torch| = {max(diffs.values()):.2e} over {len(images)} images and {len(latents)} "
        f"latents; batch 1/7/256 max diff {max(consistency.values()):.2e}"
    )
    parity.check(diffs, consistency)
    manifest = manifest.model_copy(
        update={
            "parity": {
                "images": len(images),
                "latents": len(latents),
                "tolerance": parity.TOLERANCE,
                "max_abs_diff": diffs,
                "batch_sizes": [1, 7, 256],
                "batch_max_abs_diff": consistency,
                **({"prior_latents": 2 * len(latents)} if manifest.prior is not None else {}),
            }
        }
    )
    if args.int8:
        variant = quantize_int8(directory)
        int8 = open_graphs(
            directory, manifest.model_copy(update={"int8": variant}), threads=args.threads, variant="int8"
        )
        fp32_out = [*backend.encode(images), *backend.decode(latents)]
        int8_out = [*int8.encode(images), *int8.decode(latents)]
        int8_parity = {n: float(np.max(np.abs(a - b))) for n, a, b in zip(names, fp32_out, int8_out, strict=False)}
        speed = {
            f"{half}_{variant_name}_images_per_s_batch256": parity.images_per_second(getattr(b, half), d, 256)
            for half, d in (("encode", images), ("decode", latents))
            for variant_name, b in (("fp32", backend), ("int8", int8))
        }
        manifest = manifest.model_copy(
            update={"int8": variant.model_copy(update={"parity": int8_parity, "speed": speed})}
        )
    if args.calibrate:
        fitted = calibrate.calibrate(
            backend, data.train, args.calibration_count, binarize_seed=int(train_config["test_binarize_seed"])
        )
        manifest = calibrate.add_calibration(directory, manifest, fitted)
    manifest.write(directory / "manifest.json")
    # What is moved into place is what the service's loader accepts, read back from disk.
    for variant_name in ("fp32", "int8") if args.int8 else ("fp32",):
        try:
            load_model_dir(directory, threads=args.threads, variant=variant_name)
        except ModelLoadError as exc:
            raise ExportError(f"the written {variant_name} model does not load: {exc}") from exc
    return manifest


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        out = target_dir(args.out_dir)
        model, payload = checkpoint.load_model(args.checkpoint)
        train_config = payload["train_config"]
        data = load_dataset(
            args.dataset or train_config["dataset"],
            args.data_dir or train_config["data_dir"],
            PreprocessContract(input_shape=model.config.input_shape),
        )
    except (ExportError, checkpoint.CheckpointError, DataMissingError, DataChecksumError) as exc:
        print(f"vae-export: {exc}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    # Built beside OUT (same file system, so the final rename is atomic) and renamed into place
    # only when complete and checked: OUT holds the old export or the new one, never a failed one.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would hide the model from a server run as another user
    try:
        manifest = write_export(staging, args, model, payload, data)
        move_into_place(staging, out)
    except (parity.ParityError, ExportError, calibrate.CalibrationError, OSError) as exc:
        print(f"vae-export: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"exported {manifest.name} {manifest.version} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
