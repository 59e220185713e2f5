"""Anomaly maps: where an image is unlike the training data, pixel by pixel.

The map is built from the model's own per-pixel terms: the expected negative log-likelihood of each
pixel under q(z|x), less the least it could be (its deviance),

    t(x)_hw = E_{z ~ q(z|x)} [ sum_c -log p(x_chw | z) - min_m -log p(x_chw | m) ],

estimated with `samples` draws of z (keyed by the seed and the image's content, as every draw the
service makes) and taken in expectation over the data-space draw (`Likelihood.pixel_deviance`), so the
map has no binarisation or dequantisation noise of its own. For a Bernoulli decoder it is the KL
divergence from the pixel's grey value to the decoder's probability; for a Gaussian, half the squared
z-score. The plain expected negative log-likelihood keeps each pixel's own entropy (0.69 nats for any
mid-grey Bernoulli pixel, however well predicted), which drowns the defects: on the Fashion-MNIST defect
set it reached a pixel-level AUROC of 0.89 against 0.95 for the deviance (docs/anomaly.md). A pixel the
decoder cannot explain from the rest of the image (a scratch, a stain, a foreign patch) scores high; a
pixel that varies a lot in the training data (an edge, a texture) scores low where its likelihood
learned a wide scale.

`MapCalibration` turns the terms into what a user can read without knowing the model: smoothed by a
Gaussian of `smoothing` pixels (defects are regions, not single pixels), optionally standardised per
position by the median and spread of in-distribution images at that position (`positional`; off by
default: it lowered the pixel-level AUROC on both defect sets), and read as a percentile of the pooled
in-distribution values: a map value of 0.999 means 99.9% of in-distribution pixels score lower.
It is fitted by export/calibrate.py on held-out images and stored in anomaly.json (model/core/anomaly.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model.core import hierarchy
from model.core.likelihoods import Likelihood
from model.core.preprocess import array_to_png, image_stream

MAP_SAMPLES = 4  # draws of z from q(z|x) per image
QUANTILES = 2049  # the pooled in-distribution values are kept as this many quantiles
ROWS_PER_CALL = 256  # decoder rows per call: bounds the memory of a large request
MAP_NOTE = (
    "each pixel's expected negative log-likelihood under q(z|x) less its least possible value (KL for a "
    "Bernoulli decoder, half the squared z-score for a Gaussian), smoothed and read as the percentile among "
    "in-distribution pixels (0..1, higher = more anomalous)"
)


def pixel_terms(
    backend: Any, likelihood: Likelihood, pixels: np.ndarray, seed: int, samples: int = MAP_SAMPLES
) -> NDArray[np.float64]:
    """(N, C, H, W) pixels in [0, 1] -> (N, H, W): each pixel's deviance in nats, summed over channels,
    for a `model.core.scoring.Backend` or a two-level `model.core.hierarchy.TwoLevelBackend`,
    averaged over `samples` draws z ~ q(z|x) from image_stream(seed, image), so an image's map
    does not depend on the batch it came in."""
    pixels = np.asarray(pixels, dtype=np.float32)
    n, _, height, width = pixels.shape
    out = np.empty((n, height, width), dtype=np.float64)
    per_call = max(1, ROWS_PER_CALL // samples)
    for start in range(0, n, per_call):
        chunk = pixels[start : start + per_call]
        params = _posterior_draws(backend, chunk, seed, samples)
        shaped = tuple(p.reshape(len(chunk), samples, *chunk.shape[1:]) for p in params)
        deviance = likelihood.pixel_deviance(chunk[:, None], shaped)  # (B, S, C, H, W)
        out[start : start + len(chunk)] = deviance.mean(axis=1).sum(axis=1)
    return out


def _posterior_draws(backend: Any, chunk: np.ndarray, seed: int, samples: int) -> tuple[np.ndarray, ...]:
    """The likelihood's parameters (B * S, C, H, W) at `samples` draws per image from the posterior, each
    image's noise from its own stream: z ~ q(z|x); for a two-level model (`model.core.hierarchy`) z2 ~ q(z2|x)
    then z1 ~ q(z1|x,z2), each sample's noise D2 + D1 numbers, z2's first, as the scores draw it."""
    if not hierarchy.two_levels(backend):
        mean, logvar = backend.encode(chunk)
        eps = np.stack([image_stream(seed, image).standard_normal((samples, mean.shape[1])) for image in chunk])
        z = mean[:, None, :] + np.exp(0.5 * logvar)[:, None, :] * eps  # (B, S, D)
        return tuple(backend.decode(z.reshape(-1, mean.shape[1]).astype(np.float32)))
    mean2, logvar2, features = backend.encode(chunk)
    upper = mean2.shape[1]
    lower = backend.lower_latent_dim
    eps = np.stack([image_stream(seed, image).standard_normal((samples, upper + lower)) for image in chunk])
    z2 = (mean2[:, None, :] + np.exp(0.5 * logvar2)[:, None, :] * eps[..., :upper]).reshape(-1, upper)
    z2 = z2.astype(np.float32)
    mean1, logvar1 = backend.encode_lower(np.repeat(features, samples, axis=0), z2)
    z1 = mean1 + np.exp(0.5 * logvar1) * eps[..., upper:].reshape(-1, lower)
    return tuple(backend.decode(z1.astype(np.float32), z2))


def squared_error(backend: Any, likelihood: Likelihood, pixels: np.ndarray) -> NDArray[np.float64]:
    """The baseline map: (x - E[x | z = mean of q(z|x)])^2 summed over channels, (N, C, H, W) -> (N, H, W)."""
    pixels = np.asarray(pixels, dtype=np.float32)
    out = np.empty(pixels.shape[:1] + pixels.shape[2:], dtype=np.float64)
    for start in range(0, len(pixels), ROWS_PER_CALL):
        chunk = pixels[start : start + ROWS_PER_CALL]
        if hierarchy.two_levels(backend):  # z2 the mean of q(z2|x), z1 the mean of q(z1|x,z2)
            mean2, _, features = backend.encode(chunk)
            reconstruction = likelihood.pixel_mean(backend.decode(backend.encode_lower(features, mean2)[0], mean2))
        else:
            mean, _ = backend.encode(chunk)
            reconstruction = likelihood.pixel_mean(backend.decode(mean))
        out[start : start + len(chunk)] = ((chunk.astype(np.float64) - reconstruction) ** 2).sum(axis=1)
    return out


def smooth(maps: np.ndarray, sigma: float) -> NDArray[np.float64]:
    """A Gaussian blur of (N, H, W) maps with `sigma` pixels, edges reflected; sigma 0 returns them as they are."""
    maps = np.asarray(maps, dtype=np.float64)
    if sigma <= 0:
        return maps
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    for axis in (1, 2):
        size = maps.shape[axis]
        padded = np.pad(maps, [(0, 0)] * axis + [(radius, radius)] + [(0, 0)] * (2 - axis), mode="symmetric")
        total = np.zeros_like(maps)
        for weight, shift in zip(kernel, range(2 * radius + 1), strict=True):
            total += weight * np.take(padded, np.arange(shift, shift + size), axis=axis)
        maps = total
    return maps


def default_smoothing(height: int, width: int) -> float:
    """The blur a model's maps get by default: one pixel at 28 px, growing with the image."""
    return round(max(height, width) / 28.0, 3)


@dataclass(frozen=True)
class MapCalibration:
    """What turns per-pixel terms (N, H, W) into per-pixel percentiles of in-distribution images."""

    samples: int
    smoothing: float  # sigma of the Gaussian blur, pixels
    positional: bool  # standardised per position (center, scale) before pooling
    center: np.ndarray = field(repr=False)  # (H, W); zeros when not positional
    scale: np.ndarray = field(repr=False)  # (H, W); ones when not positional
    quantiles: np.ndarray = field(repr=False)  # (Q,) ascending: pooled standardised in-distribution values
    images: int = 0  # in-distribution images the quantiles come from

    @classmethod
    def fit(
        cls,
        fit_terms: np.ndarray,
        reference_terms: np.ndarray,
        samples: int = MAP_SAMPLES,
        smoothing: float | None = None,
        positional: bool = False,
    ) -> MapCalibration:
        """Center and scale from `fit_terms` (R1, H, W), the percentiles from `reference_terms` (R2, H, W):
        two sets of held-out images, so the reference is not flattered by the fit."""
        _, height, width = fit_terms.shape
        sigma = default_smoothing(height, width) if smoothing is None else float(smoothing)
        fitted = smooth(fit_terms, sigma)
        if positional:
            center = np.median(fitted, axis=0)
            q75, q25 = np.percentile(fitted, [75, 25], axis=0)
            spread = (q75 - q25) / 1.349
            # A position that never varies in the fit images (a black background) would turn rounding into
            # thousands of standard deviations: its scale is floored at a tenth of the typical position's.
            floor = max(0.1 * float(np.median(spread)), 1e-6)
            scale = np.maximum(spread, floor)
        else:
            center, scale = np.zeros((height, width)), np.ones((height, width))
        standard = (smooth(reference_terms, sigma) - center) / scale
        quantiles = np.quantile(standard.ravel(), np.linspace(0.0, 1.0, QUANTILES))
        return cls(
            samples,
            sigma,
            positional,
            np.asarray(_rounded(center)),
            np.asarray(_rounded(scale)),
            np.asarray(_rounded(quantiles)),
            len(reference_terms),
        )

    def standardise(self, terms: np.ndarray) -> NDArray[np.float64]:
        """(N, H, W) terms -> smoothed, standardised values (monotone in what the percentiles read)."""
        standard: NDArray[np.float64] = (smooth(terms, self.smoothing) - self.center) / self.scale
        return standard

    def __call__(self, terms: np.ndarray) -> NDArray[np.float64]:
        """(N, H, W) terms -> (N, H, W) percentiles in [0, 1]: the share of in-distribution pixels below."""
        levels = np.linspace(0.0, 1.0, len(self.quantiles))
        percentiles: NDArray[np.float64] = np.interp(self.standardise(terms), self.quantiles, levels)
        return percentiles

    @property
    def shape(self) -> tuple[int, int]:
        height, width = self.center.shape
        return int(height), int(width)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "pixel_deviance",
            "samples": self.samples,
            "smoothing": self.smoothing,
            "positional": self.positional,
            "images": self.images,
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "quantiles": self.quantiles.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MapCalibration:
        if data.get("method") != "pixel_deviance":
            raise ValueError(f"unknown anomaly map method {data.get('method')!r}; known: pixel_deviance")
        center = np.asarray(data["center"], dtype=np.float64)
        scale = np.asarray(data["scale"], dtype=np.float64)
        quantiles = np.asarray(data["quantiles"], dtype=np.float64)
        if center.ndim != 2 or scale.shape != center.shape or np.any(scale <= 0) or quantiles.ndim != 1:
            raise ValueError("anomaly map calibration: center and scale must be H x W (scale > 0), quantiles 1-D")
        if len(quantiles) < 2 or not np.all(np.isfinite(quantiles)) or np.any(np.diff(quantiles) < 0):
            raise ValueError("anomaly map calibration: quantiles must be finite and ascending")
        return cls(
            int(data["samples"]),
            float(data["smoothing"]),
            bool(data["positional"]),
            center,
            scale,
            quantiles,
            int(data.get("images", 0)),
        )


def _rounded(values: np.ndarray) -> list[Any]:
    """Six significant digits, as the rest of anomaly.json."""
    rounded: list[Any] = np.vectorize(lambda v: float(f"{v:.6g}"), otypes=[float])(values).tolist()
    return rounded


# A perceptual ramp (dark purple, red, orange, pale yellow) over the tail of the percentiles, in "nines":
# -log10(1 - p) from 1 (p = 0.9, where the tint starts) to 3 (p = 0.999, full strength). Pooled over every
# position, the percentiles of an object's pixels sit well above those of a plain background, so a ramp
# starting at the median would tint the whole object; the tail is where a defect stands out.
_NINES = np.array([1.0, 1.5, 2.0, 2.5, 3.0])
_COLOURS = np.array([[40, 11, 84], [120, 28, 109], [212, 72, 66], [250, 160, 40], [252, 255, 164]], dtype=np.float64)


def heatmap_png(image: np.ndarray, percentiles: np.ndarray) -> bytes:
    """The map over the image as an RGB PNG of the model's input size: pixels below the 90th percentile show
    the image (grey or colour), the rest are tinted more strongly the rarer they are, fully from the 99.9th."""
    pixels = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    base = np.repeat(pixels, 3, axis=0) if pixels.shape[0] == 1 else pixels[:3]
    base = base.transpose(1, 2, 0) * 255.0  # (H, W, 3)
    p = np.clip(np.asarray(percentiles, dtype=np.float64), 0.0, 1.0)
    nines = -np.log10(np.maximum(1.0 - p, 1e-6))
    colour = np.stack([np.interp(nines, _NINES, _COLOURS[:, c]) for c in range(3)], axis=-1)
    alpha = (np.clip((nines - _NINES[0]) / (_NINES[-1] - _NINES[0]), 0.0, 1.0) ** 0.5 * 0.85)[..., None]
    rgb = (1.0 - alpha) * base + alpha * colour  # (H, W, 3), 0..255
    return array_to_png(rgb.transpose(2, 0, 1) / 255.0)
