"""ONNX against torch on real inputs: the exporter fails unless every output agrees to 1e-4."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from model.core.artifact import OnnxLevels
from model.core.manifest import beyond_tolerance
from model.core.priors import Mixture, Prior
from model.core.scoring import Backend
from model.torch_backend import TwoLevelTorchBackend
from model.torch_priors import as_mixture
from model.vae import VAE

TOLERANCE = 1e-4


class ParityError(RuntimeError):
    """The ONNX graphs disagree with torch beyond the tolerance."""


def max_abs_diff(
    onnx_backend: Backend, model: VAE, images: np.ndarray, latents: np.ndarray, output_names: list[str]
) -> dict[str, float]:
    """Max |onnx - torch| per output over the given images (encoder) and latents (decoder)."""
    with torch.no_grad():
        torch_enc = [t.numpy() for t in model.encode(torch.from_numpy(images))]
        torch_dec = [t.numpy() for t in model.decode(torch.from_numpy(latents))]
    onnx_enc = onnx_backend.encode(images)
    onnx_dec = onnx_backend.decode(latents)
    diffs = [
        float(np.max(np.abs(a - b))) for a, b in zip([*onnx_enc, *onnx_dec], [*torch_enc, *torch_dec], strict=False)
    ]
    return dict(zip(output_names, diffs, strict=False))


def levels_max_abs_diff(levels: OnnxLevels, model: VAE, images: np.ndarray, latents: np.ndarray) -> dict[str, float]:
    """A two-level VAE's lower graphs against torch, through model.core.hierarchy's own calls: q(z2 | x) with
    the features, and q(z1 | x, z2) at the images (z2 their posterior means), p(z1 | z2) and p(x | z1, z2)
    at the latents (z1 drawn from p(z1 | z2) with a fixed seed)."""
    reference = TwoLevelTorchBackend(model)
    encoded = reference.encode(images)
    mean2, _, features = encoded
    z1_mean, z1_logvar = reference.lower_prior(latents)
    z1 = z1_mean + np.exp(0.5 * z1_logvar) * np.random.default_rng(0).standard_normal(z1_mean.shape, np.float32)
    pairs = {
        "levels.features": (levels.encode(images), encoded),
        "levels.lower_posterior": (levels.encode_lower(features, mean2), reference.encode_lower(features, mean2)),
        "levels.lower_prior": (levels.lower_prior(latents), (z1_mean, z1_logvar)),
        "levels.decoder_levels": (levels.decode(z1, latents), reference.decode(z1, latents)),
    }
    return {
        name: max(float(np.max(np.abs(a - b))) for a, b in zip(graph, torch_, strict=True))
        for name, (graph, torch_) in pairs.items()
    }


def batch_consistency(
    onnx_backend: Backend, images: np.ndarray, latents: np.ndarray, sizes: tuple[int, ...] = (1, 7, 256)
) -> dict[str, float]:
    """Run the same rows in batches of each size; report the max difference from the first size's rows."""

    def run(fn: Callable[[np.ndarray], tuple[np.ndarray, ...]], data: np.ndarray, size: int) -> list[np.ndarray]:
        parts = [fn(data[i : i + size]) for i in range(0, len(data), size)]
        return [np.concatenate(p) for p in zip(*parts, strict=False)]

    out: dict[str, float] = {}
    for name, fn, data in (("encoder", onnx_backend.encode, images), ("decoder", onnx_backend.decode, latents)):
        reference = run(fn, data, sizes[0])
        out[name] = max(
            float(np.max(np.abs(a - b))) for s in sizes[1:] for a, b in zip(reference, run(fn, data, s), strict=False)
        )
    return out


def prior_max_abs_diff(onnx_prior: Mixture, model: VAE, latents: np.ndarray) -> dict[str, float]:
    """A learned prior's graph against torch: log p(z) at the given latents, and the mixture's parameters
    the graph outputs (what the service samples from) against the torch prior's."""
    with torch.no_grad():
        torch_log_prob = model.prior.log_prob(torch.from_numpy(latents)).numpy()
        torch_mixture = [t.numpy() for t in as_mixture(model.prior).mixture()]
    onnx_mixture = (onnx_prior.means, onnx_prior.logvars, onnx_prior.log_weights)
    return {
        "prior.log_prob": float(np.max(np.abs(onnx_prior.log_prob(latents) - torch_log_prob))),
        "prior.parameters": max(
            float(np.max(np.abs(a - b))) for a, b in zip(onnx_mixture, torch_mixture, strict=False)
        ),
    }


def prior_batch_consistency(onnx_prior: Prior, latents: np.ndarray, sizes: tuple[int, ...] = (1, 7, 256)) -> float:
    """The prior graph's log p(z) of the same rows in batches of each size: max difference from the first."""
    runs = [
        np.concatenate([onnx_prior.log_prob(latents[i : i + size]) for i in range(0, len(latents), size)])
        for size in sizes
    ]
    return max(float(np.max(np.abs(runs[0] - other))) for other in runs[1:])


def check(diffs: dict[str, float], consistency: dict[str, float], tolerance: float = TOLERANCE) -> None:
    bad = beyond_tolerance({**diffs, **{f"batch.{k}": v for k, v in consistency.items()}}, tolerance)
    if bad:
        details = ", ".join(f"{k} {v:.2e}" for k, v in bad.items())
        raise ParityError(
            f"ONNX graphs disagree with torch beyond {tolerance:g}: {details}. Nothing was "
            "written; check the opset and unsupported ops."
        )


def images_per_second(fn: Callable[[np.ndarray], object], data: np.ndarray, batch: int, repeats: int = 5) -> float:
    chunk = data[:batch]
    fn(chunk)
    began = time.perf_counter()
    for _ in range(repeats):
        fn(chunk)
    return repeats * len(chunk) / (time.perf_counter() - began)
