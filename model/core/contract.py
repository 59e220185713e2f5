"""The model contract in numpy: between the routes' canonical forms and one model's own graphs.

The routes and the scoring code speak one language: pixels in [0, 1] (N, C, H, W), a posterior as mean
and log-variance (N, D), and a decoder's likelihood parameters in that same [0, 1] data space, each
(K, C, H, W). A graph written by vae-export speaks it already. A user's graph (vae-import) keeps its own
input and output names, takes its images in its own values ([-1, 1], or normalised by a mean and std),
may want them flattened, may give a log-scale or a scale instead of a log-variance, and may decode to
[N, C*H*W], to probabilities rather than logits, or to a mean with one fixed scale. `GraphAdapter` maps
between the two with a few numpy operations and nothing at all for vae-export's graphs; `check_graphs`
is what the loader asks of any pair before it serves it (docs/contract.md).

A Gaussian decoder in a model's own values, mean m and log-scale s with the graph seeing a * pixel + b,
is the Gaussian ((m - b) / a, s - ln a) in [0, 1] pixels: the change of variables that keeps densities,
and so ELBOs and bits per dimension, comparable between models whatever their input scaling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.core.manifest import ContractSpec, Manifest

FLOAT = "tensor(float)"


class ContractError(ValueError):
    """The graphs do not meet the model contract; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class GraphAdapter:
    """The numpy between the contract's forms and one model's graphs (`Manifest.io`)."""

    manifest: Manifest
    scale: np.ndarray | None  # (1, C, 1, 1) float32: the graph sees scale * pixel + shift; None: identity
    shift: np.ndarray | None
    # `Manifest.io` and `.latent`, read once: they are built on each access, and the adapter is on every call
    bindings: ContractSpec
    latent: tuple[int, ...]

    @classmethod
    def of(cls, manifest: Manifest) -> GraphAdapter:
        a, b = manifest.input.affine()
        scale = shift = None
        if not (all(v == 1.0 for v in a) and all(v == 0.0 for v in b)):
            shape = (1, len(a), 1, 1)
            scale, shift = np.array(a, np.float32).reshape(shape), np.array(b, np.float32).reshape(shape)
        return cls(manifest, scale, shift, manifest.io, manifest.latent)

    @property
    def native(self) -> bool:
        """Whether the graphs are fed and read as they are: vae-export's names and forms, inputs in [0, 1]."""
        return self.scale is None and self.manifest.contract is None and self.manifest.latent_shape is None

    @property
    def spatial(self) -> bool:
        return len(self.latent) > 1

    def latent_feed(self, z: np.ndarray) -> np.ndarray:
        """(K, D) latents as the decoder graph takes them: (K, C, h, w) for a spatial latent."""
        return z.reshape(len(z), *self.latent) if self.spatial else z

    def encoder_feed(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """[0, 1] pixels (N, C, H, W) -> the encoder graph's feed."""
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        if self.scale is not None and self.shift is not None:
            x = x * self.scale + self.shift
        io = self.bindings.encoder
        if io.layout == "flat":
            x = x.reshape(len(x), -1)
        return {io.image: x}

    @property
    def encoder_outputs(self) -> list[str]:
        io = self.bindings.encoder
        return [io.mean, io.spread]

    def posterior(self, mean: np.ndarray, spread: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The encoder's two outputs -> mean, log-variance (N, D); a spatial latent flattened in C order."""
        if self.spatial:
            mean, spread = mean.reshape(len(mean), -1), spread.reshape(len(spread), -1)
        kind = self.bindings.encoder.posterior
        if kind == "logvar":
            return mean, spread
        if kind == "log_scale":
            return mean, (2.0 * spread).astype(np.float32)
        with np.errstate(divide="ignore"):  # a scale of 0 is a log-variance of -inf: refused by the finite checks
            return mean, (2.0 * np.log(spread)).astype(np.float32)

    @property
    def decoder_outputs(self) -> list[str]:
        return list(self.bindings.decoder.outputs)

    def decoder_params(self, outputs: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        """The decoder graph's outputs -> the likelihood's parameters in [0, 1] pixels, each (K, C, H, W)."""
        if self.native:
            return tuple(outputs)
        io, spec = self.bindings.decoder, self.manifest.likelihood
        shape = tuple(self.manifest.input.shape)
        if io.flat:
            outputs = [o.reshape(len(o), *shape) for o in outputs]
        if spec.name == "bernoulli":  # probabilities of {0, 1}: the same in every input scaling
            return (outputs[0],)
        mean = outputs[0] if self.scale is None else (outputs[0] - self.shift) / self.scale
        if spec.name == "none":
            return (mean.astype(np.float32),)
        log_scale = self._log_scale(outputs, mean.shape)
        if self.scale is not None:
            log_scale = log_scale - np.log(self.scale)
        return mean.astype(np.float32), log_scale.astype(np.float32)

    def _log_scale(self, outputs: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        constant = self.manifest.likelihood.log_scale
        if constant is not None:
            return np.full(shape, constant, dtype=np.float32)
        second, kind = outputs[1], self.bindings.decoder.scale_output
        if kind == "logvar":
            second = 0.5 * second
        elif kind == "scale":
            with np.errstate(divide="ignore"):
                second = np.log(second)
        return np.broadcast_to(second, shape)


def check_signatures(manifest: Manifest, encoder: Any, decoder: Any) -> None:
    """Names, dtypes, ranks, the dynamic batch axis and the fixed sizes of the graph inputs and outputs the
    contract binds, from the onnxruntime sessions, against the manifest. Raises ContractError."""
    io, (channels, height, width) = manifest.io, manifest.input.shape
    pixels = channels * height * width
    image = [channels * height * width] if io.encoder.layout == "flat" else [channels, height, width]
    latent = list(manifest.latent)
    out_rows = [pixels] if io.decoder.flat else [channels, height, width]
    hint = _FLAT_HINT if io.encoder.layout == "flat" else _ENCODER_HINT
    _check_args("encoder", "input", encoder.get_inputs(), {io.encoder.image: image}, hint)
    _check_args("encoder", "output", encoder.get_outputs(), {io.encoder.mean: latent, io.encoder.spread: latent}, "")
    _check_args("decoder", "input", decoder.get_inputs(), {io.decoder.z: latent}, "")
    _check_args("decoder", "output", decoder.get_outputs(), dict.fromkeys(io.decoder.outputs, out_rows), _DECODER_HINT)


_ENCODER_HINT = "; an encoder that flattens its input itself takes [N, C*H*W]: declare it (--flatten-input)"
_FLAT_HINT = "; --flatten-input declares [N, C*H*W]: leave it out for an encoder that takes [N, C, H, W]"
_DECODER_HINT = "; a decoder that returns [N, C*H*W] is reshaped when declared (--output-shape C H W)"


def _check_args(graph: str, kind: str, args: Any, wanted: dict[str, list[int]], hint: str) -> None:
    by_name = {a.name: a for a in args}
    extra_inputs = [name for name in by_name if name not in wanted] if kind == "input" else []
    if extra_inputs and len(by_name) > len(wanted):
        raise ContractError(
            f"the {graph} graph has inputs {list(by_name)}; the contract feeds only {list(wanted)}: "
            "export it with one input"
        )
    for name, rows in wanted.items():
        arg = by_name.get(name)
        if arg is None:
            raise ContractError(
                f"the {graph} graph has no {kind} named {name!r}; its {kind}s are {list(by_name)}: "
                f"name the right one (--{graph}-{kind}{'s' if kind == 'output' else ''})"
            )
        if arg.type != FLOAT:
            raise ContractError(
                f"the {graph} {kind} {name!r} is {arg.type}; the contract is float32 "
                "(tensor(float)): export the model in float32 (model.float())"
            )
        shape = list(arg.shape)
        if len(shape) != 1 + len(rows):
            raise ContractError(
                f"the {graph} {kind} {name!r} has rank {len(shape)} ({_show(shape)}); the contract needs "
                f"[N, {', '.join(map(str, rows))}]{hint}"
            )
        if isinstance(shape[0], int):
            raise ContractError(
                f"the {graph} {kind} {name!r} has a fixed batch size {shape[0]} ({_show(shape)}); the contract "
                "needs a dynamic batch axis: export with dynamic_axes={'" + name + "': {0: 'batch'}} "
                "(torch.onnx.export) or dynamic_shapes"
            )
        for got, want in zip(shape[1:], rows, strict=True):
            if isinstance(got, int) and got != want:
                raise ContractError(
                    f"the {graph} {kind} {name!r} is {_show(shape)}; the manifest needs [N, "
                    f"{', '.join(map(str, rows))}]{hint}"
                )


def _show(shape: list[Any]) -> str:
    return (
        "[" + ", ".join(str(d) if isinstance(d, int) else "N" if i == 0 else str(d) for i, d in enumerate(shape)) + "]"
    )


# A row computed alone and in a batch may differ in the last bits (onnxruntime picks kernels by shape);
# a random node or a batch statistic moves it by far more.
TOLERANCE = 1e-4


def worst(a: np.ndarray, b: np.ndarray) -> float:
    """Max |a - b| relative to the values' own size (at least 1): NaN where shapes differ or values are not
    finite."""
    if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.nan
    return float(
        np.max(np.abs(a.astype(np.float64) - b), initial=0.0) / max(1.0, float(np.max(np.abs(b), initial=0.0)))
    )


def check_behaviour(
    encode: Any,
    decode: Any,
    manifest: Manifest,
    rows: int = 3,
    seed: int = 0,
    tolerance: float = TOLERANCE,
    batch_independent: bool = True,
) -> dict[str, float]:
    """Run the adapted graphs (`OnnxVAE.encode` and `.decode_raw`) on seeded random pixels and latents:
    the outputs must have the contract's shapes, be finite, be the same when run again (no random node),
    and give each row the same alone as in the batch (no batch statistics). Returns the figures; raises
    ContractError naming the fault and its fix."""
    rng = np.random.default_rng(seed)
    pixels = rng.random((rows, *manifest.input.shape), dtype=np.float32)
    latents = rng.standard_normal((rows, manifest.latent_dim), dtype=np.float32)
    figures: dict[str, float] = {}
    for graph, fn, data in (("encoder", encode, pixels), ("decoder", decode, latents)):
        first = [np.asarray(o) for o in fn(data)]
        _check_shapes(graph, first, manifest, rows)
        again = [np.asarray(o) for o in fn(data)]
        figures[f"{graph}.repeat"] = max(worst(a, b) for a, b in zip(again, first, strict=True))
        alone = [np.concatenate(parts) for parts in zip(*(fn(data[i : i + 1]) for i in range(rows)), strict=True)]
        figures[f"{graph}.alone"] = max(worst(a, b) for a, b in zip(alone, first, strict=True))
        if not figures[f"{graph}.repeat"] <= tolerance:
            raise ContractError(
                f"the {graph} graph is not deterministic: the same input gave outputs {figures[f'{graph}.repeat']:.3g} "
                "apart on a second run. A random node (sampling, dropout in training mode) is in the graph: "
                "export the deterministic part only (return the mean and log-variance; the service draws z) "
                "with the model in eval() mode"
            )
        if batch_independent and not figures[f"{graph}.alone"] <= tolerance:
            raise ContractError(
                f"the {graph} graph's rows depend on their batch: a row alone and in a batch of {rows} differ by "
                f"{figures[f'{graph}.alone']:.3g}. A batch statistic (batch norm in training mode) is in the "
                "graph: export with the model in eval() mode"
            )
    return figures


_INPUTS = {"encoder": "images", "decoder": "N(0, I) latents"}


def _check_shapes(graph: str, outputs: list[np.ndarray], manifest: Manifest, rows: int) -> None:
    wanted: list[tuple[int, ...]]
    if graph == "encoder":
        wanted = [(rows, manifest.latent_dim)] * 2
        names = [manifest.io.encoder.mean, manifest.io.encoder.spread]
    else:
        wanted = [(rows, *manifest.input.shape)] * len(outputs)
        names = [*manifest.io.decoder.outputs, "log_scale"][: len(outputs)]
    for name, out, shape in zip(names, outputs, wanted, strict=True):
        if out.shape != shape:
            raise ContractError(
                f"the {graph}'s {name} is {list(out.shape)} for {rows} rows; the contract needs {list(shape)}"
                + (_DECODER_HINT if graph == "decoder" else "")
            )
        if not np.isfinite(out).all():
            raise ContractError(
                f"the {graph}'s {name} is not finite on random {_INPUTS[graph]} (the images are given in the "
                f"graph's declared values, {manifest.input.describe_values()})"
            )
