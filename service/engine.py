"""What the routes ask of the model, as plain numpy functions over the ONNX graphs.

Randomness lives here, never in the graphs: every draw comes from a stream seeded by the request's
seed and the image's content (`model.core.preprocess.image_stream`), the same streams as `vae-eval`, so
an image's numbers do not depend on the other images in the request or on its position. The prior p(z)
is the model's (`OnnxVAE.prior`: N(0, I), or the mixture in prior.onnx), for sampling and scoring alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from model.core import anomaly, anomaly_map, hierarchy, scoring
from model.core import distributions as dist
from model.core.artifact import OnnxLevels, OnnxVAE
from model.core.likelihoods import Likelihood
from model.core.preprocess import PreprocessContract, image_stream
from model.core.priors import Prior
from service.errors import ApiError

Lower = tuple[np.ndarray, np.ndarray, np.ndarray | None]  # q(z1 | x, z2): mean, logvar (N, D1), z1 when drawn


class Encoding(NamedTuple):
    """/encode's answer for N images: q(z|x)'s mean and logvar (N, D), z when sampled, and for a two-level
    model q(z1 | x, z2) at each image's z2 (`Engine.encode_lower`)."""

    mean: np.ndarray
    logvar: np.ndarray
    z: np.ndarray | None
    lower: Lower | None = None


@dataclass(frozen=True)
class Engine:
    model: OnnxVAE
    contract: PreprocessContract
    default_binarize_seed: int

    @classmethod
    def from_model(cls, model: OnnxVAE) -> Engine:
        contract = PreprocessContract.from_dict(model.manifest.preprocessing)
        seed = int(model.manifest.training.get("train_config", {}).get("test_binarize_seed", 0))
        return cls(model=model, contract=contract, default_binarize_seed=seed)

    @property
    def latent_dim(self) -> int:
        return self.model.latent_dim

    @property
    def likelihood(self) -> Likelihood:
        return self.model.likelihood

    @property
    def levels(self) -> OnnxLevels | None:
        """A two-level model's lower level (`OnnxVAE.levels`); None for one level, and for a backend that
        has no such attribute (any other `model.core.scoring.Backend`)."""
        return getattr(self.model, "levels", None)

    @property
    def scorer(self) -> Any:
        """What scores: the graphs as a `model.core.scoring.Backend`, or a two-level model's as a
        `model.core.hierarchy.TwoLevelBackend`, so every weight holds every level's terms."""
        levels = self.levels
        return levels if levels is not None else self.model

    @property
    def prior(self) -> Prior:
        return scoring.prior_of(self.model, self.latent_dim)

    def encoder_outputs(self, pixels: np.ndarray) -> tuple[np.ndarray, ...]:
        """The encoder's rows for the pixels: mean, logvar (N, D); for a two-level model also the image's
        features (N, F), from the same run of the image's body (`OnnxLevels.encode`)."""
        levels = self.levels
        return levels.encode(pixels) if levels is not None else self.model.encode(pixels)

    def encode(self, pixels: np.ndarray, sample: bool, seed: int) -> Encoding:
        """mean, logvar (N, D), when `sample` z = mean + sigma * eps, eps from image_stream(seed, pixels[i]),
        and for a two-level model its lower level (`encoding`)."""
        return self.encoding(pixels, self.encoder_outputs(pixels), sample, seed)

    def encoding(self, pixels: np.ndarray, outputs: tuple[np.ndarray, ...], sample: bool, seed: int) -> Encoding:
        """The answer from the encoder's outputs for the pixels (`encoder_outputs`): z when `sample`, and a
        two-level model's q(z1 | x, z2) at z2 the mean of q(z2 | x), or z (with z1 drawn beside it)."""
        mean, logvar = outputs[0], outputs[1]
        z = self.reparameterize(pixels, mean, logvar, seed) if sample else None
        if self.levels is None:
            return Encoding(mean, logvar, z)
        lower = self.encode_lower(pixels, outputs[2], mean if z is None else z, seed if sample else None)
        return Encoding(mean, logvar, z, lower)

    def reparameterize(self, pixels: np.ndarray, mean: np.ndarray, logvar: np.ndarray, seed: int) -> np.ndarray:
        """The noise is keyed by the pixels, not by mean and logvar: those can differ in the last bits
        with the batch onnxruntime ran, and a key must not."""
        eps = np.stack(
            [image_stream(seed, image).standard_normal(self.latent_dim, dtype=np.float32) for image in pixels]
        )  # (N, D)
        return dist.reparameterize(mean, logvar, eps)

    def encode_lower(self, pixels: np.ndarray, features: np.ndarray, z2: np.ndarray, seed: int | None) -> Lower:
        """A two-level model's q(z1 | x, z2): mean, logvar (N, D1) from the images' features at the given z2
        (the mean of q(z2|x), or the z sampled from it), and with a seed z1 drawn from it: its noise is what
        follows z2's in the image's stream (one draw of D2 + D1 numbers, as the scores draw each sample:
        model/core/hierarchy.py)."""
        levels = self.levels
        if levels is None:
            raise ValueError(f"{self.model.manifest.name} {self.model.manifest.version} has one level")
        mean, logvar = levels.encode_lower(features, z2)
        if seed is None:
            return mean, logvar, None
        upper, lower = z2.shape[1], mean.shape[1]
        eps = np.stack(
            [image_stream(seed, image).standard_normal(upper + lower, dtype=np.float32)[upper:] for image in pixels]
        )
        return mean, logvar, dist.reparameterize(mean, logvar, eps)

    def decode(self, z: np.ndarray) -> np.ndarray:
        """(K, D) -> E[x | z] in [0, 1], (K, C, H, W). A latent the decoder overflows on (finite, but far
        past anything the prior draws) is refused: its pixels would be NaN, null in JSON, black in a PNG."""
        return self._pixel_mean(self.model.decode(z), z)

    def _pixel_mean(self, parameters: tuple[np.ndarray, ...], z: np.ndarray) -> np.ndarray:
        """E[x | z] of the decoder's outputs at the latents `z`, refusing a row that overflowed."""
        for values in parameters:
            finite = np.isfinite(values).reshape(len(z), -1).all(axis=1)
            if not finite.all():
                row = int(np.argmin(finite))
                raise ApiError(
                    422,
                    "non_finite_output",
                    f"z row {row} decodes to non-finite values: the decoder "
                    f"overflows this far from the prior (its largest |z| is {np.abs(z[row]).max():.3g}); "
                    "send latents of the size the prior draws, a few units at most",
                )
        return self.likelihood.pixel_mean(parameters)

    def prior_latents(self, n: int, seed: int, temperature: float) -> np.ndarray:
        """z ~ p(z) at temperature t, drawn from default_rng(seed) (`model.core.priors`): N(0, t^2 I) for the
        standard normal prior, each component's standard deviation times t for a mixture.  (n, D) float32"""
        return self.prior.sample(n, np.random.default_rng(seed), temperature)

    def reconstruct(self, pixels: np.ndarray) -> np.ndarray:
        """E[x | z = mean of q(z|x)]: the deterministic reconstruction. For a two-level model both levels'
        posterior means: z2 the mean of q(z2|x), z1 the mean of q(z1|x, z2), so the image's own lower
        level is used rather than the prior's guess p(z1|z2) that /decode takes."""
        levels = self.levels
        if levels is None:
            mean, _ = self.model.encode(pixels)
            return self.decode(mean)
        mean2, _, features = levels.encode(pixels)
        mean1, _ = levels.encode_lower(features, mean2)
        return self._pixel_mean(levels.decode(mean1, mean2), mean2)

    def require_likelihood(self, route: str) -> None:
        """409 for a route that scores images when the model's decoder is deterministic (likelihood none):
        the request is well formed, but this model cannot answer it. Checked before any image is read."""
        if self.likelihood.name == "none":
            manifest = self.model.manifest
            raise ApiError(
                409,
                "no_likelihood",
                f"{route} needs the model's likelihood p(x|z) to score images, and {manifest.name} "
                f"{manifest.version} declares none (a deterministic decoder). Encode, decode, sample and "
                "reconstruct work; to score, import the model with --likelihood bernoulli or gaussian "
                "(docs/contract.md)",
            )

    def score(
        self,
        pixels: np.ndarray,
        k: int,
        seed: int,
        binarize_seed: int,
        estimator: str = scoring.ImportanceSampling.name,
    ) -> scoring.Scores:
        """Each image in the likelihood's data space with its own stream (binarize_seed, content), then
        the ELBO and the estimator's log p(x) with streams (seed, content), as `vae-eval --images-dir` does."""
        data = self.likelihood.images_to_data_space(pixels, binarize_seed)
        return hierarchy.score(self.scorer, self.likelihood, data, seed, k=k, estimator=estimator)

    @property
    def calibration(self) -> anomaly.Calibration | None:
        """The anomaly calibration shipped with the model; None for exports made without one."""
        return self.model.anomaly

    def anomaly(self, pixels: np.ndarray, seed: int, binarize_seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Scores (N,) of the calibration's method and the statistics (N,) they are built from; every draw
        keyed by (seed, content), so an image scores the same alone or in any batch."""
        calibration = self.calibration
        if calibration is None:  # service/anomaly_scoring.py answers 409 before it gets here
            raise ValueError(f"{self.model.manifest.name} {self.model.manifest.version} has no anomaly calibration")
        stats = anomaly.statistics(self.scorer, self.likelihood, pixels, seed, binarize_seed)
        return calibration.score(stats), stats

    def anomaly_map(self, pixels: np.ndarray, seed: int) -> np.ndarray:
        """Per-pixel percentiles (N, H, W) among in-distribution pixels: model/core/anomaly_map.py. Draws keyed
        by (seed, content), as every draw here."""
        calibration = self.calibration
        if calibration is None or calibration.map is None:  # service/anomaly_scoring.py answers 409 first
            raise ValueError(f"{self.model.manifest.name} {self.model.manifest.version} has no anomaly map calibration")
        terms = anomaly_map.pixel_terms(self.scorer, self.likelihood, pixels, seed, calibration.map.samples)
        return calibration.map(terms)

    def data_space(self, binarize_seed: int) -> str:
        return self.likelihood.describe_draw(binarize_seed)
