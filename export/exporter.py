"""Torch VAE -> encoder.onnx and decoder.onnx: deterministic graphs with a dynamic batch axis."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch

from model.vae import VAE

OPSET = 20  # the newest opset the torch 2.13 exporter writes without conversion


def export_graph(module: torch.nn.Module, example: torch.Tensor, input_name: str, output_names: tuple[str, ...],
                 path: Path, metadata: dict[str, str]) -> onnx.ModelProto:
    """Export one half with torch.export (the current exporter) and store `metadata` in metadata_props."""
    batch = torch.export.Dim("batch", min=1, max=1_000_000)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # it logs that torchvision is absent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation noise from torch internals, not from our code
        program = torch.onnx.export(module.eval(), (example,), input_names=[input_name],
                                    output_names=list(output_names), dynamic_shapes=({0: batch},),
                                    opset_version=OPSET, dynamo=True, optimize=True, verbose=False)
    proto = program.model_proto
    del proto.metadata_props[:]
    for key, value in sorted(metadata.items()):
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)
    random_ops = [n.op_type for n in proto.graph.node if n.op_type.startswith("Random") or n.op_type == "Multinomial"]
    if random_ops:
        raise RuntimeError(f"exported graph has random nodes {random_ops}; graphs must be deterministic")
    path.write_bytes(proto.SerializeToString())
    return proto


def export_vae(model: VAE, out_dir: Path, metadata: dict[str, str]) -> dict[str, onnx.ModelProto]:
    config = model.config
    example_image = torch.rand(2, *config.input_shape)  # (B, C, H, W)
    example_z = torch.randn(2, config.latent_dim)  # (B, D)
    return {
        "encoder": export_graph(model.encoder, example_image, "image", ("mean", "logvar"),
                                out_dir / "encoder.onnx", {**metadata, "graph": "encoder"}),
        "decoder": export_graph(model.decoder, example_z, "z", model.decoder.likelihood.outputs,
                                out_dir / "decoder.onnx", {**metadata, "graph": "decoder"}),
    }


def io_shapes(proto: onnx.ModelProto) -> tuple[dict[str, list[int | str]], dict[str, list[int | str]]]:
    def dims(value: onnx.ValueInfoProto) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return ({v.name: dims(v) for v in proto.graph.input}, {v.name: dims(v) for v in proto.graph.output})
