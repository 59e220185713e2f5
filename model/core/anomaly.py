"""Anomaly scores: how unlike the training data an image is, from the statistics of one ELBO pass.

The raw likelihood answers "is this like my training data?" badly: a VAE trained on Fashion-MNIST
gives simple images (a black square, digits) higher likelihood than its own test set (Nalisnick et
al. 2019). Three scores, each a pure numpy function of per-image statistics, higher = more anomalous:

- `likelihood`: -ELBO, the raw likelihood bound; the baseline.
- `complexity`: -ELBO minus the image's compressed length, in nats (Serra et al. 2020, "Input
  complexity and out-of-distribution detection with likelihood-based generative models"): the
  likelihood relative to what a generic compressor already expects of the image.
- `typicality`: how atypical the image's statistics (ELBO, its terms, the latent mean's norm,
  complexity) are of in-distribution images: minus the sum of per-statistic log densities (a
  kernel density estimate, DoSE_KDE of Morningstar et al. 2021) or a Gaussian's Mahalanobis term.

A `Calibration` holds the fitted score and the sorted scores of in-distribution reference images,
from which a score's percentile and the threshold for a false-positive rate are read. vae-export
stores it beside the graphs as `anomaly.json`, hashed in the manifest.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from model.core import hierarchy, scoring
from model.core.anomaly_map import MapCalibration
from model.core.likelihoods import Likelihood

CALIBRATION_FILE = "anomaly.json"
FORMAT_VERSION = 1
LN2 = math.log(2.0)
# What one statistics pass computes per image; a score uses some of them.
STATISTICS = (
    "elbo",
    "reconstruction",
    "kl",
    "latent_norm",
    "posterior_logvar",
    "complexity_bits",
    "data_complexity_bits",
)
PNG_LEVEL = 9  # the compressor is part of the score: fixed, and recorded with the calibration
# The default false-positive rate of is_anomaly: the first of these that the reference scores resolve.
FPR_CHOICES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def default_fpr(references: int) -> float:
    """The first of `FPR_CHOICES` at which at least one of `references` reference images scores above the
    threshold: 0.01 from 100 reference images, 0.05 from 20."""
    for fpr in FPR_CHOICES:
        if fpr * references >= 1:
            return fpr
    raise ValueError(f"{references} reference images resolve no false-positive rate below 1")


def fpr_note(references: int, fpr: float) -> str | None:
    """What a default coarser than 0.01 says to the user; None when there is nothing to say."""
    if fpr <= FPR_CHOICES[0]:
        return None
    return (
        f"the default false-positive rate is {fpr:g}, not {FPR_CHOICES[0]:g}: the model's calibration holds "
        f"{references} reference images, and 1/{references} is the finest rate they resolve; calibrate on more "
        "in-distribution images (100 or more) for 0.01"
    )


def compressed_bits(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> the length in bits of each image's 8-bit PNG (zlib level 9). (N,)"""
    levels = np.clip(np.rint(np.asarray(images, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    bits = np.empty(len(levels), dtype=np.float64)
    for i, image in enumerate(levels):
        buffer = io.BytesIO()
        Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(
            buffer, format="PNG", compress_level=PNG_LEVEL
        )
        bits[i] = 8.0 * buffer.tell()
    return bits


def statistics(
    backend: scoring.Backend | hierarchy.TwoLevelBackend,
    likelihood: Likelihood,
    pixels: np.ndarray,
    seed: int,
    binarize_seed: int,
) -> dict[str, np.ndarray]:
    """The per-image statistics (N,) of `STATISTICS` for images (N, C, H, W) in [0, 1]: the k=1 ELBO pass
    of `/elbo` (same content-keyed streams), the posterior it encoded, and two compressed lengths: of
    the 8-bit image and of the data the likelihood scores (binarised or dequantised)."""
    data = likelihood.images_to_data_space(pixels, binarize_seed)
    scores = hierarchy.score(backend, likelihood, data, seed, k=1)  # a two-level model's: q(z2|x)'s posterior
    mean, logvar = scores.posterior_mean, scores.posterior_logvar  # (N, D)
    if mean is None or logvar is None:
        raise TypeError("scoring.score returned no posterior: the statistics need q(z|x)'s mean and logvar")
    return {
        "elbo": scores.elbo.astype(np.float64),
        "reconstruction": scores.reconstruction.astype(np.float64),
        "kl": scores.kl.astype(np.float64),
        "latent_norm": np.linalg.norm(mean.astype(np.float64), axis=1),
        "posterior_logvar": np.mean(logvar.astype(np.float64), axis=1),
        "complexity_bits": compressed_bits(pixels),
        "data_complexity_bits": compressed_bits(data),
    }


class Score(Protocol):
    name: ClassVar[str]

    @property
    def statistics(self) -> tuple[str, ...]:
        """The names of the per-image statistics (`STATISTICS`) the score is built from."""

    def __call__(self, stats: dict[str, np.ndarray]) -> np.ndarray:
        """Per-image statistics -> scores (N,), higher = more anomalous."""

    def to_dict(self) -> dict[str, Any]:
        """The score's settings and fitted parameters, as JSON data."""


@dataclass(frozen=True)
class LikelihoodScore:
    """-ELBO in nats: the raw likelihood bound."""

    name: ClassVar[str] = "likelihood"
    statistics: tuple[str, ...] = ("elbo",)

    def __call__(self, stats: dict[str, np.ndarray]) -> np.ndarray:
        return -np.asarray(stats["elbo"], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name}


@dataclass(frozen=True)
class ComplexityScore:
    """-ELBO - ln 2 * L(x), nats, where L(x) is a compressed length in bits (Serra et al. 2020's S(x))."""

    name: ClassVar[str] = "complexity"
    complexity: str = "complexity_bits"

    @property
    def statistics(self) -> tuple[str, ...]:
        return ("elbo", self.complexity)

    def __call__(self, stats: dict[str, np.ndarray]) -> np.ndarray:
        return -np.asarray(stats["elbo"], dtype=np.float64) - LN2 * np.asarray(stats[self.complexity], np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "complexity": self.complexity}


@dataclass(frozen=True)
class TypicalityScore:
    """Minus the log density of the image's statistics under in-distribution data. Each statistic is
    standardised by the calibration images' median and interquartile range. `kde`: the sum over
    statistics of a 1-D Gaussian kernel density (Scott's bandwidth) on `points` calibration values,
    as if independent (DoSE_KDE). `gaussian`: half the squared Mahalanobis distance under one Gaussian
    fitted to all statistics together."""

    name: ClassVar[str] = "typicality"
    statistics: tuple[str, ...]
    estimator: str  # "kde" or "gaussian"
    center: np.ndarray = field(repr=False)  # (S,)
    scale: np.ndarray = field(repr=False)  # (S,)
    points: np.ndarray | None = field(default=None, repr=False)  # kde: (M, S) standardised
    bandwidth: np.ndarray | None = field(default=None, repr=False)  # kde: (S,)
    mean: np.ndarray | None = field(default=None, repr=False)  # gaussian: (S,)
    precision: np.ndarray | None = field(default=None, repr=False)  # gaussian: (S, S)

    @classmethod
    def fit(
        cls,
        stats: dict[str, np.ndarray],
        statistics: tuple[str, ...],
        estimator: str = "kde",
        points: int = 2000,
        seed: int = 0,
    ) -> TypicalityScore:
        if estimator not in ("kde", "gaussian"):
            raise ValueError(f"estimator must be 'kde' or 'gaussian', not {estimator!r}")
        values = _matrix(stats, statistics)  # (N, S)
        center = np.median(values, axis=0)
        q75, q25 = np.percentile(values, [75, 25], axis=0)
        # IQR of N(0, 1) is 1.349; the floor keeps a statistic that barely varies (a compressed length of
        # incompressible images) from turning rounding into thousands of standard deviations
        scale = np.maximum((q75 - q25) / 1.349, 1e-3 * np.maximum(np.abs(center), 1.0))
        standard = (values - center) / scale
        if estimator == "gaussian":
            covariance = np.cov(standard, rowvar=False).reshape(len(statistics), len(statistics))
            covariance += 1e-6 * np.eye(len(statistics))
            return cls(
                statistics, estimator, center, scale, mean=standard.mean(axis=0), precision=np.linalg.inv(covariance)
            )
        chosen = standard[np.random.default_rng(seed).permutation(len(standard))[:points]]  # (M, S)
        chosen = np.asarray(_rounded(chosen), dtype=np.float64)  # as stored, so a reloaded score is this one
        bandwidth = 1.06 * chosen.std(axis=0) * len(chosen) ** -0.2  # Scott's rule
        return cls(statistics, estimator, center, scale, points=chosen, bandwidth=np.maximum(bandwidth, 1e-3))

    def __call__(self, stats: dict[str, np.ndarray]) -> np.ndarray:
        standard = (_matrix(stats, self.statistics) - self.center) / self.scale  # (N, S)
        if self.estimator == "gaussian":
            centred = standard - _fitted(self.mean, "mean")
            mahalanobis: NDArray[np.float64] = 0.5 * np.einsum(
                "ns,st,nt->n", centred, _fitted(self.precision, "precision"), centred
            )
            return mahalanobis
        points, bandwidth = _fitted(self.points, "points"), _fitted(self.bandwidth, "bandwidth")
        total = np.zeros(len(standard))
        for s in range(len(self.statistics)):
            u = (standard[:, s, None] - points[None, :, s]) / bandwidth[s]  # (N, M)
            log_kernel = -0.5 * u * u
            top = np.max(log_kernel, axis=1)
            log_density = (
                top
                + np.log(np.sum(np.exp(log_kernel - top[:, None]), axis=1))
                - math.log(len(points))
                - math.log(bandwidth[s])
                - 0.5 * math.log(2 * math.pi)
            )
            total -= log_density
        return total

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "statistics": list(self.statistics),
            "estimator": self.estimator,
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
        }
        if self.estimator == "gaussian":
            mean, precision = _fitted(self.mean, "mean"), _fitted(self.precision, "precision")
            return {**data, "mean": mean.tolist(), "precision": precision.tolist()}
        bandwidth, points = _fitted(self.bandwidth, "bandwidth"), _fitted(self.points, "points")
        return {**data, "bandwidth": bandwidth.tolist(), "points": _rounded(points)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TypicalityScore:
        optional = {
            key: np.asarray(data[key], dtype=np.float64)
            for key in ("points", "bandwidth", "mean", "precision")
            if key in data
        }
        return cls(
            tuple(data["statistics"]),
            data["estimator"],
            np.asarray(data["center"], dtype=np.float64),
            np.asarray(data["scale"], dtype=np.float64),
            **optional,
        )


def _matrix(stats: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    return np.stack([np.asarray(stats[name], dtype=np.float64) for name in names], axis=1)  # (N, S)


def _fitted(values: np.ndarray | None, name: str) -> np.ndarray:
    """A typicality score's parameter that its estimator fits (kde: points and bandwidth; gaussian: mean
    and precision), or TypeError when the score holds none."""
    if values is None:
        raise TypeError(f"this typicality score has no {name}: its estimator does not fit one")
    return values


def _rounded(values: np.ndarray) -> list[Any]:
    """Six significant digits: the JSON stays small and a kernel's centre moves by under 1e-5 sd."""
    rounded: list[Any] = np.vectorize(lambda v: float(f"{v:.6g}"), otypes=[float])(values).tolist()
    return rounded


def score_from_dict(data: dict[str, Any]) -> Score:
    name = data.get("name")
    if name == LikelihoodScore.name:
        return LikelihoodScore()
    if name == ComplexityScore.name:
        return ComplexityScore(complexity=data["complexity"])
    if name == TypicalityScore.name:
        return TypicalityScore.from_dict(data)
    raise ValueError(f"unknown anomaly score {name!r}; known: likelihood, complexity, typicality")


@dataclass(frozen=True)
class Calibration:
    """A fitted score and the sorted scores of in-distribution reference images (never the images the
    score was fitted on), drawn with `seed` and `binarize_seed`, as described by `data`; and, for the
    anomaly maps, a `MapCalibration` (None in calibrations made before maps existed)."""

    score: Score
    reference: np.ndarray = field(repr=False)  # (R,) sorted ascending
    seed: int = 0
    binarize_seed: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    map: MapCalibration | None = None

    @classmethod
    def build(
        cls,
        score: Score,
        reference_stats: dict[str, np.ndarray],
        seed: int,
        binarize_seed: int,
        data: dict[str, Any],
        map_calibration: MapCalibration | None = None,
    ) -> Calibration:
        return cls(score, np.sort(score(reference_stats)), seed, binarize_seed, data, map_calibration)

    def smallest_fpr(self) -> float:
        """The smallest false-positive rate the reference scores resolve: one reference image above the threshold."""
        return 1.0 / len(self.reference)

    def percentile(self, scores: np.ndarray) -> np.ndarray:
        """The share of reference images scoring strictly lower, in [0, 1]. (N,)"""
        return np.searchsorted(self.reference, scores, side="left") / len(self.reference)

    def threshold(self, fpr: float) -> float:
        """The score above which an image is called anomalous at false-positive rate `fpr`: at most a
        share `fpr` of the reference images score above it."""
        if not 0.0 < fpr < 1.0:
            raise ValueError(f"fpr must be in (0, 1), not {fpr}")
        index = min(len(self.reference) - 1, max(0, math.ceil((1.0 - fpr) * len(self.reference)) - 1))
        return float(self.reference[index])

    def to_json(self) -> str:
        return (
            json.dumps(
                {
                    "format": FORMAT_VERSION,
                    "statistics": list(STATISTICS),
                    "png_level": PNG_LEVEL,
                    "score": self.score.to_dict(),
                    "seed": self.seed,
                    "binarize_seed": self.binarize_seed,
                    "data": self.data,
                    "reference": _rounded(self.reference),
                    **({"map": self.map.to_dict()} if self.map is not None else {}),
                },
                separators=(",", ":"),
            )
            + "\n"
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Calibration:
        raw = json.loads(text)
        if raw.get("format") != FORMAT_VERSION:
            raise ValueError(f"anomaly calibration format {raw.get('format')!r}; this code reads {FORMAT_VERSION}")
        reference = np.sort(np.asarray(raw["reference"], dtype=np.float64))
        if reference.ndim != 1 or len(reference) == 0 or not np.all(np.isfinite(reference)):
            raise ValueError("anomaly calibration holds no finite reference scores")
        return cls(
            score_from_dict(raw["score"]),
            reference,
            int(raw["seed"]),
            int(raw["binarize_seed"]),
            dict(raw.get("data", {})),
            MapCalibration.from_dict(raw["map"]) if "map" in raw else None,
        )
