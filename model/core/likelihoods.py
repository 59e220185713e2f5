"""One object per decoder distribution p(x|z): everything that differs between likelihoods.

A `Likelihood` holds its decoder's output names; its log-probability in numpy (evaluation and
serving) and its torch twin (training; torch is imported only when the twin is called, so this
module stays torch-free for the service); how [0, 1] pixels become its data space, in numpy and in
torch; how the torch decoder's last layer becomes its parameters; the pixel mean E[x | z] that a
person looks at; the offset that turns a continuous density into the probability of an 8-bit image;
and how the manifest and the responses describe it. Adding a likelihood is one subclass here plus
its tests: the config, the CLI and the manifest schema take their names from `LIKELIHOODS`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from model.core import distributions as dist
from model.core.preprocess import image_stream


class Likelihood(ABC):
    name: ClassVar[str]
    outputs: ClassVar[tuple[str, ...]]  # the decoder graph's outputs, in order
    learned_scale: ClassVar[bool] = False  # whether the torch decoder learns a log-scale beside its output
    data_space: ClassVar[str]  # how the manifest describes the data the model scores

    @abstractmethod
    def log_prob(self, x: np.ndarray, params: tuple[np.ndarray, ...]) -> np.ndarray:
        """log p(x | z) per parameter set: x (P,) or (K, P), each param (K, P) -> (K,), in nats,
        of the data space (continuous densities before `discrete_offset`)."""

    @abstractmethod
    def torch_log_prob(self, x: Any, params: tuple[Any, ...]) -> Any:
        """The same in torch, for training: x and params (B, C, H, W) -> (B,)."""

    @abstractmethod
    def torch_params(self, out: Any, log_scale: Any) -> tuple[Any, ...]:
        """The torch decoder's last layer (B, C, H, W), and its learned log-scale when `learned_scale`
        (else None) -> the parameters named by `outputs`, each (B, C, H, W)."""

    @abstractmethod
    def pixel_mean(self, params: tuple[np.ndarray, ...]) -> np.ndarray:
        """E[x | z] in [0, 1], float32, shaped as the params."""

    @abstractmethod
    def to_data_space(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """[0, 1] pixels -> the data the likelihood scores, drawing from `rng`."""

    @abstractmethod
    def torch_to_data_space(self, batch: Any, generator: Any) -> Any:
        """The same in torch: a fresh draw each time an image is seen in training."""

    @abstractmethod
    def describe_draw(self, seed: int) -> str:
        """The data-space draw applied to a request's images, for the response."""

    def images_to_data_space(self, pixels: np.ndarray, seed: int) -> np.ndarray:
        """`to_data_space` image by image, each with its own `image_stream(seed, pixels[i])`, so an image's
        draw does not depend on the other images. (N, C, H, W) -> (N, C, H, W)"""
        data = np.empty(pixels.shape, dtype=np.float32)
        for i, image in enumerate(pixels):
            data[i] = self.to_data_space(image, image_stream(seed, image))
        return data

    def discrete_offset(self, dims: int) -> float:
        """Nats to add to `log_prob` to get the probability of the 8-bit image (0 for discrete data)."""
        return 0.0

    def pixel_deviance(self, pixels: np.ndarray, params: tuple[np.ndarray, ...]) -> np.ndarray:
        """Each pixel's negative log-likelihood in nats, in expectation over the data-space draw (binarisation
        or dequantisation, so it has no noise of its own), minus the least it could be were the decoder's mean
        the pixel itself: what the decoder gets wrong, not how uncertain the pixel is by nature (a grey pixel
        costs 0.69 nats as a Bernoulli however well it is predicted). Pixels [0, 1] broadcast against params
        (..., C, H, W) -> (..., C, H, W), float64, >= 0. The per-pixel terms of the anomaly maps."""
        raise NoLikelihood(f"the {self.name} likelihood has no per-pixel terms")

    def log_prob_8bit(self, x: np.ndarray, params: tuple[np.ndarray, ...]) -> np.ndarray:
        """`log_prob` of the flattened params, plus the offset: what scores and reports use."""
        flat = tuple(p.reshape(p.shape[0], -1) for p in params)
        return self.log_prob(x, flat) + self.discrete_offset(flat[0].shape[1])


class Bernoulli(Likelihood):
    """Binary pixels: x ~ Bernoulli(sigmoid(logits)). Grey images are binarised by a draw."""

    name = "bernoulli"
    outputs = ("logits",)
    data_space = "binary pixels: x ~ Bernoulli(pixel), dynamically re-drawn in training"

    def log_prob(self, x: np.ndarray, params: tuple[np.ndarray, ...]) -> np.ndarray:
        return dist.log_bernoulli(x, params[0])

    def torch_log_prob(self, x: Any, params: tuple[Any, ...]) -> Any:
        import torch.nn.functional as F

        return -F.binary_cross_entropy_with_logits(params[0], x, reduction="none").flatten(1).sum(dim=1)

    def torch_params(self, out: Any, log_scale: Any) -> tuple[Any, ...]:
        return (out,)  # logits

    def pixel_mean(self, params: tuple[np.ndarray, ...]) -> np.ndarray:
        return (1.0 / (1.0 + np.exp(-params[0].astype(np.float64)))).astype(np.float32)

    def to_data_space(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return (rng.random(pixels.shape, dtype=np.float32) < pixels).astype(np.float32)

    def torch_to_data_space(self, batch: Any, generator: Any) -> Any:
        import torch

        return torch.bernoulli(batch, generator=generator)

    def describe_draw(self, seed: int) -> str:
        return (
            f"binarised: x ~ Bernoulli(pixel), each image drawn from seed {seed} and its own content "
            "(binary images are unchanged)"
        )

    def pixel_deviance(self, pixels: np.ndarray, params: tuple[np.ndarray, ...]) -> np.ndarray:
        # E_{x ~ Bernoulli(v)}[-log p(x)] = softplus(l) - v * l, the cross-entropy with the grey value v; minus
        # the entropy of Bernoulli(v): KL(Bernoulli(v) || Bernoulli(sigmoid(l)))
        logits = params[0].astype(np.float64)
        value = np.asarray(pixels, dtype=np.float64)
        result: np.ndarray = np.maximum(np.logaddexp(0.0, logits) - value * logits - _bernoulli_entropy(value), 0.0)
        return result


def _bernoulli_entropy(value: np.ndarray) -> np.ndarray:
    """H(Bernoulli(v)) in nats, 0 at v = 0 and 1 (where 0 log 0 is the NaN that nan_to_num makes 0)."""
    v = np.clip(value, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = v * np.log(v) + (1.0 - v) * np.log1p(-v)
    entropy: np.ndarray = -np.nan_to_num(terms, nan=0.0)
    return entropy


# The smallest useful scale, in data units: the standard deviation of the uniform dequantisation noise
# within one 8-bit bin, (1/256)/sqrt(12); ln of it is about -6.79. A narrower Gaussian would put ever
# more density on the noise of pixels the decoder predicts exactly (the always-black background), and
# the likelihood of dequantised data would be unbounded.
LOG_SCALE_FLOOR = math.log((1.0 / 256.0) / math.sqrt(12.0))


class Gaussian(Likelihood):
    """Dequantised 8-bit pixels: x ~ N(mean, exp(log_scale)^2), reported as 8-bit probabilities.
    The decoder's log-scale is floored softly at `LOG_SCALE_FLOOR`."""

    name = "gaussian"
    outputs = ("mean", "log_scale")
    learned_scale = True
    data_space = (
        "dequantised 8-bit pixels: (round(255 * pixel) + u) / 256, u ~ U(0, 1); densities reported "
        "as 8-bit probabilities (bin 1/256)"
    )

    def log_prob(self, x: np.ndarray, params: tuple[np.ndarray, ...]) -> np.ndarray:
        return dist.log_gaussian(x, params[0], params[1])

    def torch_log_prob(self, x: Any, params: tuple[Any, ...]) -> Any:
        import torch

        mean, log_scale = params
        z = (x - mean) * torch.exp(-log_scale)
        return (-0.5 * z.pow(2) - log_scale - 0.5 * dist.LOG_2PI).flatten(1).sum(dim=1)

    def torch_params(self, out: Any, log_scale: Any) -> tuple[Any, ...]:
        import torch

        mean = torch.sigmoid(out)
        # A soft floor, floor + softplus(s - floor), keeps a gradient everywhere (a clamp would strand
        # a scale that wandered below it). It is part of the decoder graph, so serving sees it too.
        floored = LOG_SCALE_FLOOR + torch.nn.functional.softplus(log_scale - LOG_SCALE_FLOOR)
        return mean, floored.expand_as(mean)

    def pixel_mean(self, params: tuple[np.ndarray, ...]) -> np.ndarray:
        mean: NDArray[np.float32] = np.clip(params[0], 0.0, 1.0).astype(np.float32)
        return mean

    def to_data_space(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        levels = np.round(pixels * 255.0)
        return ((levels + rng.random(pixels.shape, dtype=np.float32)) / 256.0).astype(np.float32)

    def torch_to_data_space(self, batch: Any, generator: Any) -> Any:
        import torch

        return (torch.round(batch * 255.0) + torch.rand(batch.shape, generator=generator)) / 256.0

    def describe_draw(self, seed: int) -> str:
        return (
            f"dequantised: x = (round(255 * pixel) + u) / 256, u ~ U(0, 1), each image drawn from seed {seed} "
            "and its own content; densities are reported as probabilities of the 8-bit image"
        )

    def discrete_offset(self, dims: int) -> float:
        return -dims * math.log(256.0)

    def pixel_deviance(self, pixels: np.ndarray, params: tuple[np.ndarray, ...]) -> np.ndarray:
        # Over the dequantisation x = c + (u - 1/2) / 256 (c the bin's centre), E[-log N(x | m, s)] is
        # ((c - m)^2 + 1/(12 * 256^2)) / (2 s^2) + ln s + const, least at m = c: half the squared z-score remains.
        centre = (np.round(np.asarray(pixels, dtype=np.float64) * 255.0) + 0.5) / 256.0
        mean, log_scale = (p.astype(np.float64) for p in params)
        result: np.ndarray = 0.5 * (centre - mean) ** 2 * np.exp(-2.0 * log_scale)
        return result


LIKELIHOODS: dict[str, Likelihood] = {likelihood.name: likelihood for likelihood in (Bernoulli(), Gaussian())}


class NoLikelihood(ValueError):
    """The model's decoder is deterministic: it has no p(x|z) to score an image with."""


class _ServingOnly:
    """A likelihood that imported models declare and `vae-train` never trains: no torch twin."""

    def torch_log_prob(self, x: Any, params: tuple[Any, ...]) -> Any:
        raise NotImplementedError(f"{type(self).__name__} is served, not trained")

    def torch_params(self, out: Any, log_scale: Any) -> tuple[Any, ...]:
        raise NotImplementedError(f"{type(self).__name__} is served, not trained")

    def torch_to_data_space(self, batch: Any, generator: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} is served, not trained")


# torch's binary_cross_entropy clamps each log at -100, so a probability of exactly 0 or 1 (a float32
# sigmoid saturates at |logit| > 17) costs 100 nats, not infinity: the same clamp here, so a model's ELBO
# is what its author's loss reports.
LOG_PROB_CLAMP = -100.0


class BernoulliProbs(_ServingOnly, Bernoulli):
    """Binary pixels with a decoder that outputs probabilities (a final sigmoid), as pytorch/examples' VAE."""

    outputs = ("probs",)

    def log_prob(self, x: np.ndarray, params: tuple[np.ndarray, ...]) -> np.ndarray:
        probs = params[0].astype(np.float64)
        with np.errstate(divide="ignore"):
            log_p = np.maximum(np.log(probs), LOG_PROB_CLAMP)
            log_q = np.maximum(np.log1p(-probs), LOG_PROB_CLAMP)
        result: np.ndarray = (x * log_p + (1.0 - x) * log_q).sum(axis=-1)
        return result

    def pixel_mean(self, params: tuple[np.ndarray, ...]) -> np.ndarray:
        mean: NDArray[np.float32] = np.clip(params[0], 0.0, 1.0).astype(np.float32)
        return mean

    def pixel_deviance(self, pixels: np.ndarray, params: tuple[np.ndarray, ...]) -> np.ndarray:
        probs = params[0].astype(np.float64)
        value = np.asarray(pixels, dtype=np.float64)
        with np.errstate(divide="ignore"):
            log_p = np.maximum(np.log(probs), LOG_PROB_CLAMP)
            log_q = np.maximum(np.log1p(-probs), LOG_PROB_CLAMP)
        result: np.ndarray = np.maximum(-(value * log_p + (1.0 - value) * log_q) - _bernoulli_entropy(value), 0.0)
        return result


class Deterministic(_ServingOnly, Likelihood):
    """A decoder with no likelihood: z -> an image. It encodes, decodes and samples; it cannot score."""

    name = "none"
    outputs = ("mean",)
    data_space = "none: the decoder is deterministic, so images are not scored"

    def log_prob(self, x: np.ndarray, params: tuple[np.ndarray, ...]) -> np.ndarray:
        raise NoLikelihood("the model's decoder is deterministic (likelihood none): it has no p(x|z)")

    def pixel_mean(self, params: tuple[np.ndarray, ...]) -> np.ndarray:
        mean: NDArray[np.float32] = np.clip(params[0], 0.0, 1.0).astype(np.float32)
        return mean

    def to_data_space(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return pixels.astype(np.float32)

    def describe_draw(self, seed: int) -> str:
        return "none: the model has no likelihood"


def for_outputs(name: str, outputs: list[str] | tuple[str, ...]) -> Likelihood:
    """The likelihood a manifest declares: its name and what its decoder outputs (a Gaussian's constant
    scale is broadcast into a `log_scale` output before it gets here, model/core/contract.py)."""
    if name == "none":
        return Deterministic()
    if name == "bernoulli" and list(outputs) == ["probs"]:
        return BernoulliProbs()
    return get(name)


def get(name: str) -> Likelihood:
    try:
        return LIKELIHOODS[name]
    except KeyError:
        raise ValueError(f"unknown likelihood {name!r}; known: {', '.join(sorted(LIKELIHOODS))}") from None
