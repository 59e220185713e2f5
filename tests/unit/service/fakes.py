"""A tiny deterministic stand-in for the ONNX runtime, so route tests need no real model."""

from __future__ import annotations

import time

import numpy as np

from model.core import anomaly, anomaly_map
from model.core.likelihoods import LIKELIHOODS
from model.core.manifest import AnomalySpec, FileHash, GraphInfo, InputSpec, LikelihoodSpec, Manifest
from model.core.preprocess import PreprocessContract

SHAPE = (1, 8, 8)
LATENT = 4
HASH = "0" * 64


FAKE_FPR_DEFAULT = 0.05  # not the usual 0.01, so a test can tell that the manifest's default is used


def make_manifest(shape=SHAPE, latent_dim=LATENT, anomaly_spec: AnomalySpec | None = None) -> Manifest:
    graph = GraphInfo(file="x.onnx", sha256=HASH, inputs={}, outputs={}, opset=20)
    return Manifest(
        name="fake-vae",
        version="9.9.9",
        created="2026-01-01T00:00:00+00:00",
        source_checkpoint=FileHash(file="c.pt", sha256=HASH),
        encoder=graph,
        decoder=graph,
        input=InputSpec(shape=list(shape), channels=shape[0]),
        latent_dim=latent_dim,
        likelihood=LikelihoodSpec(name="bernoulli", outputs=["logits"], data_space="binary"),
        preprocessing=PreprocessContract(input_shape=shape).describe(),
        training={"train_config": {"test_binarize_seed": 0}},
        metrics={"nll_nats": 1.0},
        parity={},
        exporter={},
        anomaly=anomaly_spec,
    )


class FakeVAE:
    """mean = W x, logvar = -1; logits = V z. Optionally slow, broken, or anomaly-calibrated."""

    def __init__(
        self,
        delay: float = 0.0,
        broken: bool = False,
        calibrated: bool = False,
        maps: bool = True,
        references: int = 400,
        fpr_default: float = FAKE_FPR_DEFAULT,
    ) -> None:
        rng = np.random.default_rng(0)
        self.manifest = make_manifest()
        self.W = rng.normal(size=(LATENT, int(np.prod(SHAPE)))).astype(np.float32) * 0.1
        self.V = rng.normal(size=(int(np.prod(SHAPE)), LATENT)).astype(np.float32)
        self.delay, self.broken = delay, broken
        self.anomaly: anomaly.Calibration | None = None
        if calibrated:
            self.anomaly = calibrate(self, maps, references)
            spec = AnomalySpec(
                file=anomaly.CALIBRATION_FILE,
                sha256=HASH,
                method=self.anomaly.score.name,
                statistics=list(self.anomaly.score.statistics),
                cost="one ELBO pass",
                fpr_default=fpr_default,
                calibration=self.anomaly.data,
            )
            self.manifest = make_manifest(anomaly_spec=spec)

    latent_dim = LATENT
    likelihood = LIKELIHOODS["bernoulli"]

    def encode(self, x):
        if self.broken:
            raise RuntimeError("secret internal detail /opt/model")
        if self.delay:
            time.sleep(self.delay)
        mean = x.reshape(len(x), -1) @ self.W.T
        return mean.astype(np.float32), np.full_like(mean, -1.0, dtype=np.float32)

    def decode(self, z):
        return ((z @ self.V.T).reshape(len(z), *SHAPE).astype(np.float32),)


def in_distribution(count: int, seed: int) -> np.ndarray:
    """The fake's "training data": dark images with a bright centre, (N, C, H, W) on the 8-bit grid."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.2, (count, *SHAPE))
    images[:, :, 2:6, 2:6] = rng.uniform(0.7, 1.0, (count, SHAPE[0], 4, 4))
    return (np.rint(images * 255) / 255).astype(np.float32)


def calibrate(fake: FakeVAE, maps: bool = True, references: int = 400) -> anomaly.Calibration:
    """A typicality score fitted on 300 in-distribution images, referenced on `references` others; with
    `maps`, the anomaly maps calibrated on the same two sets."""
    fit_images, reference_images = in_distribution(300, 1), in_distribution(references, 2)
    fit = anomaly.statistics(fake, fake.likelihood, fit_images, 0, 0)
    score = anomaly.TypicalityScore.fit(fit, ("elbo", "kl", "latent_norm", "complexity_bits"), "kde", points=300)
    reference = anomaly.statistics(fake, fake.likelihood, reference_images, 0, 0)
    map_calibration = (
        anomaly_map.MapCalibration.fit(
            anomaly_map.pixel_terms(fake, fake.likelihood, fit_images, 0),
            anomaly_map.pixel_terms(fake, fake.likelihood, reference_images, 0),
        )
        if maps
        else None
    )
    data = {"split": "fake", "images": 300 + references}
    return anomaly.Calibration.build(score, reference, 0, 0, data, map_calibration)


class LinearGaussianVAE:
    """p(z) = N(0, I), p(x|z) = N(W z + b, sigma^2 I), so p(x) = N(b, W W^T + sigma^2 I) in closed form;
    the encoder is the exact posterior, shrunk and widened a little, so neither estimator is exact."""

    SIGMA = 0.3
    latent_dim = LATENT
    likelihood = LIKELIHOODS["gaussian"]
    anomaly = None

    def __init__(self) -> None:
        rng = np.random.default_rng(3)
        pixels = int(np.prod(SHAPE))
        self.manifest = make_manifest()
        self.W = rng.normal(0.0, 0.15, (pixels, LATENT))  # (P, D)
        self.b = rng.uniform(0.3, 0.7, pixels)  # (P,)
        precision = np.eye(LATENT) + self.W.T @ self.W / self.SIGMA**2
        self.post_cov = np.linalg.inv(precision)  # (D, D)

    def encode(self, x):
        flat = x.reshape(len(x), -1).astype(np.float64)
        mean = 0.9 * (flat - self.b) @ self.W @ self.post_cov / self.SIGMA**2  # (N, D)
        logvar = np.log(np.diag(self.post_cov)) + 0.2
        return mean.astype(np.float32), np.broadcast_to(logvar, mean.shape).astype(np.float32)

    def decode(self, z):
        mean = (z.astype(np.float64) @ self.W.T + self.b).reshape(len(z), *SHAPE)
        return mean.astype(np.float32), np.full(mean.shape, np.log(self.SIGMA), dtype=np.float32)

    def log_px(self, x: np.ndarray) -> float:
        """The exact log-density of one image in the data space, (C, H, W)."""
        cov = self.W @ self.W.T + self.SIGMA**2 * np.eye(len(self.b))
        d = x.reshape(-1).astype(np.float64) - self.b
        return float(-0.5 * (d @ np.linalg.solve(cov, d) + np.linalg.slogdet(cov)[1] + len(d) * np.log(2 * np.pi)))

    def draw(self, count: int, seed: int) -> np.ndarray:
        """Images the model could have made, clipped to [0, 1] and put on the 8-bit grid, (N, C, H, W)."""
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((count, LATENT))
        x = z @ self.W.T + self.b + self.SIGMA * rng.standard_normal((count, len(self.b)))
        return (np.rint(np.clip(x, 0, 1) * 255) / 255).reshape(count, *SHAPE).astype(np.float32)
