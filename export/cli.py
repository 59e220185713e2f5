"""`vae-export CHECKPOINT OUT_DIR`: ONNX graphs, manifest (model card), parity check, optional int8."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export import parity
from export.exporter import OPSET, export_vae, io_shapes
from export.manifest import FileHash, GraphInfo, InputSpec, Int8Variant, LikelihoodSpec, Manifest
from model import checkpoint
from model.data import DataChecksumError, DataMissingError, fixed_test_set, load_dataset, sha256_file
from model.preprocess import PreprocessContract
from model.vae import VAE, decoder_output_names
from service.runtime import load_model_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vae-export", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("out_dir")
    p.add_argument("--name", default=None, help="model name (default: <dataset>-vae)")
    p.add_argument("--version", default="1.0.0", help="model version")
    p.add_argument("--report", default=None, help="a vae-eval report folder: its metrics go in the manifest "
                   "and it is copied beside the graphs")
    p.add_argument("--int8", action="store_true", help="also write dynamically quantised int8 graphs")
    p.add_argument("--dataset", default=None, help="parity data (default: the checkpoint's dataset)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--parity-count", type=int, default=1000, help="test images and latents for the parity check")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def graph_info(directory: Path, name: str, proto: onnx.ModelProto) -> GraphInfo:
    inputs, outputs = io_shapes(proto)
    return GraphInfo(file=name, sha256=sha256_file(directory / name), inputs=inputs, outputs=outputs, opset=OPSET)


def versions() -> dict[str, str]:
    import onnxscript

    return {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": ort.__version__, "onnxscript": onnxscript.__version__, "numpy": np.__version__,
            "opset": str(OPSET)}


def likelihood_spec(model: VAE) -> LikelihoodSpec:
    config = model.config
    if config.likelihood == "bernoulli":
        return LikelihoodSpec(name="bernoulli", outputs=["logits"], parameters={},
                              data_space="binary pixels: x ~ Bernoulli(pixel), dynamically re-drawn in training")
    log_scale = model.decoder.log_sigma.detach()
    return LikelihoodSpec(name="gaussian", outputs=["mean", "log_scale"],
                          parameters={"scale": config.gaussian_scale,
                                      "sigma_mean": float(log_scale.exp().mean()),
                                      "sigma_min": float(log_scale.exp().min())},
                          data_space="dequantised 8-bit pixels: (round(255 * pixel) + u) / 256, u ~ U(0, 1); "
                          "densities reported as 8-bit probabilities (bin 1/256)")


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
    infos = {half: graph_info(out_dir, f"{half}.int8.onnx", onnx.load(out_dir / f"{half}.int8.onnx"))
             for half in ("encoder", "decoder")}
    return Int8Variant(encoder=infos["encoder"], decoder=infos["decoder"], parity={}, speed={})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        model, payload = checkpoint.load_model(args.checkpoint)
        config = model.config
        train_config = payload["train_config"]
        data = load_dataset(args.dataset or train_config["dataset"], args.data_dir or train_config["data_dir"],
                            PreprocessContract(input_shape=config.input_shape))
    except (checkpoint.CheckpointError, DataMissingError, DataChecksumError) as exc:
        print(f"vae-export: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or f"{train_config['dataset']}-vae"
    source = FileHash(file=Path(args.checkpoint).name, sha256=sha256_file(args.checkpoint))
    metadata = {"name": name, "version": args.version, "latent_dim": str(config.latent_dim),
                "likelihood": config.likelihood, "input_shape": json.dumps(list(config.input_shape)),
                "source_checkpoint_sha256": source.sha256, "producer": "vae-service vae-export"}
    protos = export_vae(model, out, metadata)

    report: dict[str, Any] = {}
    if args.report:
        report = json.loads((Path(args.report) / "report.json").read_text())
        if Path(args.report).resolve() != (out / "report").resolve():
            shutil.copytree(args.report, out / "report", dirs_exist_ok=True)
    checkpoint.slim(args.checkpoint, out / "checkpoint.pt")

    manifest = Manifest(
        name=name, version=args.version, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        source_checkpoint=source, checkpoint=FileHash(file="checkpoint.pt", sha256=sha256_file(out / "checkpoint.pt")),
        encoder=graph_info(out, "encoder.onnx", protos["encoder"]),
        decoder=graph_info(out, "decoder.onnx", protos["decoder"]),
        input=InputSpec(shape=list(config.input_shape), channels=config.input_shape[0]),
        latent_dim=config.latent_dim, likelihood=likelihood_spec(model),
        preprocessing=PreprocessContract(input_shape=config.input_shape).describe(),
        training={"dataset": data.name, "data_checksums": payload["data_checksums"], "model_config":
                  payload["model_config"], "train_config": train_config, "epoch": payload["epoch"],
                  "command": payload["command"], "git_commit": payload["git_commit"], "versions": payload["versions"]},
        metrics=({**report["metrics"], "command": report["command"], "noise_seed": report["noise_seed"],
                  "scored_with": report.get("scored_with", {"backend": "torch"}),
                  "test_set": report["test_set"], "checkpoint_sha256": report["checkpoint_sha256"]}
                 if report else {"evaluated": False}),
        parity={}, exporter=versions(),
    )
    scored = report.get("scored_with", {})
    if scored.get("backend") == "onnxruntime" and (scored["encoder_sha256"], scored["decoder_sha256"]) != (
            manifest.encoder.sha256, manifest.decoder.sha256):
        print("vae-export: the report was scored on other graphs than these; re-run vae-eval --onnx-dir",
              file=sys.stderr)
        return 1
    manifest.write(out / "manifest.json")

    # Parity through the loader the service uses (which also checks the hashes just written).
    backend = load_model_dir(out, threads=args.threads)
    rng = np.random.default_rng(0)
    images = fixed_test_set(data.test[: args.parity_count], config.likelihood, train_config["test_binarize_seed"])
    latents = rng.standard_normal((args.parity_count, config.latent_dim), dtype=np.float32)
    names = [f"encoder.{n}" for n in ("mean", "logvar")] + [f"decoder.{n}" for n in decoder_output_names(config)]
    diffs = parity.max_abs_diff(backend, model, images, latents, names)
    consistency = parity.batch_consistency(backend, images[:256], latents[:256])
    parity_record = {"images": int(len(images)), "latents": int(len(latents)), "tolerance": parity.TOLERANCE,
                     "max_abs_diff": diffs, "batch_sizes": [1, 7, 256], "batch_max_abs_diff": consistency}
    manifest = manifest.model_copy(update={"parity": parity_record})
    if args.int8:
        variant = quantize_int8(out)
        manifest = manifest.model_copy(update={"int8": variant})
        manifest.write(out / "manifest.json")
        int8 = load_model_dir(out, threads=args.threads, variant="int8")
        fp32_out = [*backend.encode(images), *backend.decode(latents)]
        int8_out = [*int8.encode(images), *int8.decode(latents)]
        int8_parity = {n: float(np.max(np.abs(a - b))) for n, a, b in zip(names, fp32_out, int8_out)}
        speed = {f"{half}_{variant_name}_images_per_s_batch256": parity.images_per_second(getattr(b, half), d, 256)
                 for half, d in (("encode", images), ("decode", latents))
                 for variant_name, b in (("fp32", backend), ("int8", int8))}
        manifest = manifest.model_copy(update={"int8": variant.model_copy(update={"parity": int8_parity,
                                                                                   "speed": speed})})
    manifest.write(out / "manifest.json")
    worst = max(diffs.values())
    print(f"exported {name} {args.version} to {out}: parity max |onnx - torch| = {worst:.2e} over "
          f"{len(images)} images and {len(latents)} latents; batch 1/7/256 max diff "
          f"{max(consistency.values()):.2e}")
    try:
        parity.check(diffs, consistency)
    except parity.ParityError as exc:
        print(f"vae-export: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
