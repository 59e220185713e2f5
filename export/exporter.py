"""Torch VAE -> encoder.onnx and decoder.onnx: deterministic graphs with a dynamic batch axis."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import onnx
import torch

from model.losses import LOG_2PI
from model.torch_priors import as_mixture
from model.vae import VAE, Lower

OPSET = 20  # the newest opset the torch 2.13 exporter writes without conversion


def export_graph(
    module: torch.nn.Module,
    example: torch.Tensor | tuple[torch.Tensor, ...],
    input_name: str | tuple[str, ...],
    output_names: tuple[str, ...],
    path: Path,
    metadata: dict[str, str],
) -> onnx.ModelProto:
    """Export one part with torch.export (the current exporter) and store `metadata` in metadata_props. Several
    inputs (a tuple of examples and one of names) share the dynamic batch axis, their first."""
    examples = example if isinstance(example, tuple) else (example,)
    names = input_name if isinstance(input_name, tuple) else (input_name,)
    batch = torch.export.Dim("batch", min=1, max=1_000_000)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # it logs that torchvision is absent
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)  # and that constant outputs are not deduplicated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation noise from torch internals, not from our code
        program = torch.onnx.export(
            module.eval(),
            examples,
            input_names=list(names),
            output_names=list(output_names),
            dynamic_shapes=tuple({0: batch} for _ in examples),
            opset_version=OPSET,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    if program is None:  # torch.onnx.export returns None only for the legacy exporter (dynamo=False)
        raise RuntimeError(f"torch.onnx.export returned no ONNX program for {path.name}")
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
    """encoder.onnx, decoder.onnx, and prior.onnx for a learned prior (N(0, I) needs no graph); and for a
    two-level VAE the lower level's graphs, its decoder.onnx taking z2 through both levels (`export_levels`)."""
    config = model.config
    example_image = torch.rand(2, *config.input_shape)  # (B, C, H, W)
    graphs = {"prior": export_prior(model, out_dir, metadata)} if config.prior_kind.learned else {}
    graphs["encoder"] = export_graph(
        model.encoder,
        example_image,
        "image",
        ("mean", "logvar"),
        out_dir / "encoder.onnx",
        {**metadata, "graph": "encoder"},
    )
    if config.levels == 2:
        return {**graphs, **export_levels(model, out_dir, metadata)}
    graphs["decoder"] = export_graph(
        model.decoder,
        torch.randn(2, config.latent_dim),  # (B, D)
        "z",
        model.decoder.likelihood.outputs,
        out_dir / "decoder.onnx",
        {**metadata, "graph": "decoder"},
    )
    return graphs


PartFn = Callable[..., tuple[torch.Tensor, ...]]


def _encoder_and_features(model: VAE, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q(z2 | x)'s mean and logvar, and the features they are read from (those q(z1 | x, z2) reads)."""
    features = model.encoder.body(x)
    return (*model.encoder.posterior(features), features)


class _OneInput(torch.nn.Module):
    """One of a two-level VAE's deterministic parts, of one input, as a module of its own for its graph."""

    def __init__(self, model: VAE, part: PartFn) -> None:
        super().__init__()
        self.model, self.part = model, part

    def forward(self, first: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.part(self.model, first)


class _TwoInputs(_OneInput):
    """The same, of two inputs."""

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        return self.part(self.model, first, second)


def _lower(model: VAE) -> Lower:
    assert model.lower is not None, "a two-level VAE"
    return model.lower


def export_levels(model: VAE, out_dir: Path, metadata: dict[str, str]) -> dict[str, onnx.ModelProto]:
    """A two-level VAE's graphs beyond the encoder's (docs/design/hierarchy.md, "Serving"): q(z2 | x) with the
    image's features, q(z1 | x, z2), p(z1 | z2), the decoder of both levels, and the decoder of z2 through
    both."""
    config = model.config
    width, outputs = config.hidden[-1], model.decoder.likelihood.outputs
    z1, z2 = torch.randn(2, config.lower_latent_dim), torch.randn(2, config.latent_dim)
    parts: dict[str, tuple[PartFn, tuple[torch.Tensor, ...], tuple[str, ...], tuple[str, ...]]] = {
        "features": (  # the whole encoder of both levels: the image's body runs once for q(z2|x) and q(z1|x,z2)
            _encoder_and_features,
            (torch.rand(2, *config.input_shape),),
            ("image",),
            ("mean", "logvar", "features"),
        ),
        "lower_posterior": (
            lambda m, h, z2: _lower(m).posterior(h, z2),
            (torch.randn(2, width), z2),
            ("features", "z2"),
            ("mean", "logvar"),
        ),
        "lower_prior": (lambda m, z2: _lower(m).prior(z2), (z2,), ("z2",), ("mean", "logvar")),
        "decoder_levels": (lambda m, a, b: m.decode_levels(a, b), (z1, z2), ("z1", "z2"), outputs),
        "decoder": (lambda m, z: m.decode(z), (z2,), ("z",), outputs),  # z2 through both levels
    }
    graphs = {}
    for name, (part, examples, names, outs) in parts.items():
        module = _OneInput(model, part) if len(examples) == 1 else _TwoInputs(model, part)
        graphs[name] = export_graph(
            module, examples, names, outs, out_dir / f"{name}.onnx", {**metadata, "graph": name}
        )
    return graphs


class FixedMixture(torch.nn.Module):
    """A trained mixture prior frozen into constants: z (B, D) -> log p(z) (B,), and the mixture's
    parameters as outputs too, so what the service samples from is what the graph scores with.

    Each component's log-density is expanded into two matrix products,
    sum_d (z_d - mu_kd)^2 / v_kd = (z^2) P^T - 2 z (mu P)^T + sum_d mu_kd^2 / v_kd with P = 1 / v,
    so the graph never builds a (B, K, D) array: it runs at a fraction of the decoder's cost. The expansion
    cancels large terms when a component is narrow, so it is computed in float64."""

    # The buffers registered in __init__, declared for the type checker (nn.Module's __getattr__ is untyped).
    component_means: torch.Tensor
    component_logvars: torch.Tensor
    component_log_weights: torch.Tensor
    precision_t: torch.Tensor  # (D, K)
    scaled_means_t: torch.Tensor  # (D, K)
    constant: torch.Tensor  # (K,)

    def __init__(self, model: VAE) -> None:
        super().__init__()
        with torch.no_grad():
            means, logvars, log_weights = (t.detach().clone() for t in as_mixture(model.eval().prior).mixture())
        # Not named as the outputs: the graph's constants and its outputs are distinct values.
        self.register_buffer("component_means", means)
        self.register_buffer("component_logvars", logvars)
        self.register_buffer("component_log_weights", log_weights)
        precision = torch.exp(-logvars.double())  # (K, D)
        self.register_buffer("precision_t", precision.T.contiguous())  # (D, K)
        self.register_buffer("scaled_means_t", (means.double() * precision).T.contiguous())  # (D, K)
        constant = log_weights.double() - 0.5 * (
            (means.double() ** 2 * precision).sum(1) + logvars.double().sum(1) + means.shape[1] * LOG_2PI
        )
        self.register_buffer("constant", constant)  # (K,)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = z.double()
        per_component = self.constant - 0.5 * (z * z) @ self.precision_t + z @ self.scaled_means_t  # (B, K)
        return (
            torch.logsumexp(per_component, dim=1).float(),
            self.component_means.clone(),
            self.component_logvars.clone(),
            self.component_log_weights.clone(),
        )


PRIOR_OUTPUTS = ("log_prob", "means", "logvars", "log_weights")


def export_prior(model: VAE, out_dir: Path, metadata: dict[str, str]) -> onnx.ModelProto:
    example_z = torch.randn(2, model.config.latent_dim)  # (B, D)
    return export_graph(
        FixedMixture(model), example_z, "z", PRIOR_OUTPUTS, out_dir / "prior.onnx", {**metadata, "graph": "prior"}
    )


def io_shapes(proto: onnx.ModelProto) -> tuple[dict[str, list[int | str]], dict[str, list[int | str]]]:
    def dims(value: onnx.ValueInfoProto) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return ({v.name: dims(v) for v in proto.graph.input}, {v.name: dims(v) for v in proto.graph.output})
