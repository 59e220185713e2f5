"""A hand-built prior.onnx, so the artifact and service tests need no exporter: the graph computes the
mixture's log-density with ONNX operators (not numpy), and outputs its parameters as constants."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from model.core.priors import Mixture

OPSET = 18


def toy_mixture(latent_dim: int, components: int = 3, seed: int = 0) -> Mixture:
    """Components a few units from the origin, narrower than N(0, I), unequally weighted: a log p(z) that
    differs from N(0, I)'s by nats, not by rounding."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 1.5, (components, latent_dim)).astype(np.float32)
    logvars = rng.uniform(-1.5, -0.5, (components, latent_dim)).astype(np.float32)
    logits = rng.normal(0.0, 1.0, components)
    return Mixture(means, logvars, logits - np.logaddexp.reduce(logits), name="mog")


def prior_graph(mixture: Mixture, reported: Mixture | None = None) -> bytes:
    """z [batch, D] -> log_prob [batch], means [K, D], logvars [K, D], log_weights [K] (the prior.onnx contract).
    `reported`: output these parameters instead of `mixture`'s, as a broken exporter might."""
    k, d = mixture.means.shape
    reported = reported or mixture
    log_weights = mixture.log_weights.astype(np.float32)
    # per component: log w_k - (sum_d logvar_kd + D log 2 pi) / 2, the part of log w_k N(z | k) without z
    offsets = (log_weights - 0.5 * (mixture.logvars.sum(axis=1) + d * math.log(2 * math.pi))).astype(np.float32)
    constants = {
        "means_c": reported.means,
        "logvars_c": reported.logvars,
        "log_weights_c": reported.log_weights.astype(np.float32),
        "means_used": mixture.means,
        "precision_c": np.exp(-mixture.logvars).astype(np.float32),
        "offsets_c": offsets,
        "minus_half": np.array(-0.5, dtype=np.float32),
        "axis_1": np.array([1], dtype=np.int64),
        "axis_2": np.array([2], dtype=np.int64),
    }
    nodes = [
        helper.make_node("Unsqueeze", ["z", "axis_1"], ["z_rows"]),  # (N, 1, D)
        helper.make_node("Sub", ["z_rows", "means_used"], ["difference"]),  # (N, K, D)
        helper.make_node("Mul", ["difference", "difference"], ["squared"]),
        helper.make_node("Mul", ["squared", "precision_c"], ["scaled"]),
        helper.make_node("ReduceSum", ["scaled", "axis_2"], ["distance"], keepdims=0),  # (N, K)
        helper.make_node("Mul", ["distance", "minus_half"], ["half_distance"]),
        helper.make_node("Add", ["half_distance", "offsets_c"], ["per_component"]),  # (N, K)
        helper.make_node("ReduceMax", ["per_component", "axis_1"], ["top"], keepdims=1),  # (N, 1)
        helper.make_node("Sub", ["per_component", "top"], ["shifted"]),
        helper.make_node("Exp", ["shifted"], ["exponentials"]),
        helper.make_node("ReduceSum", ["exponentials", "axis_1"], ["total"], keepdims=1),
        helper.make_node("Log", ["total"], ["log_total"]),
        helper.make_node("Add", ["log_total", "top"], ["log_prob_column"]),  # (N, 1)
        helper.make_node("Squeeze", ["log_prob_column", "axis_1"], ["log_prob"]),  # (N,)
        *(helper.make_node("Identity", [f"{name}_c"], [name]) for name in ("means", "logvars", "log_weights")),
    ]
    graph = helper.make_graph(
        nodes,
        "prior",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", d])],
        [
            helper.make_tensor_value_info("log_prob", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("means", TensorProto.FLOAT, [k, d]),
            helper.make_tensor_value_info("logvars", TensorProto.FLOAT, [k, d]),
            helper.make_tensor_value_info("log_weights", TensorProto.FLOAT, [k]),
        ],
        initializer=[numpy_helper.from_array(np.asarray(value), name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9  # what onnxruntime of the pinned version reads
    return model.SerializeToString()


def prior_spec(mixture: Mixture, data: bytes, name: str = "mog") -> dict:
    """The manifest's `prior` entry for a prior.onnx holding `data`."""
    k, d = mixture.means.shape
    return {
        "name": name,
        "components": k,
        "description": f"a test mixture of {k} Gaussians",
        "graph": {
            "file": "prior.onnx",
            "sha256": hashlib.sha256(data).hexdigest(),
            "inputs": {"z": ["batch", d]},
            "outputs": {"log_prob": ["batch"], "means": [k, d], "logvars": [k, d], "log_weights": [k]},
            "opset": OPSET,
        },
    }


def add_prior(directory: Path, mixture: Mixture, data: bytes | None = None) -> bytes:
    """Write prior.onnx for `mixture` (or the graph `data`) into a model directory and list it in its
    manifest; its bytes."""
    data = data if data is not None else prior_graph(mixture)
    (directory / "prior.onnx").write_bytes(data)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["prior"] = prior_spec(mixture, data)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return data
