"""A tiny deterministic stand-in for the ONNX runtime, so route tests need no real model."""

from __future__ import annotations

import time

import numpy as np

from model.core.likelihoods import LIKELIHOODS
from model.core.manifest import FileHash, GraphInfo, InputSpec, LikelihoodSpec, Manifest
from model.core.preprocess import PreprocessContract

SHAPE = (1, 8, 8)
LATENT = 4
HASH = "0" * 64


def make_manifest(shape=SHAPE, latent_dim=LATENT) -> Manifest:
    graph = GraphInfo(file="x.onnx", sha256=HASH, inputs={}, outputs={}, opset=20)
    return Manifest(
        name="fake-vae", version="9.9.9", created="2026-01-01T00:00:00+00:00",
        source_checkpoint=FileHash(file="c.pt", sha256=HASH), encoder=graph, decoder=graph,
        input=InputSpec(shape=list(shape), channels=shape[0]), latent_dim=latent_dim,
        likelihood=LikelihoodSpec(name="bernoulli", outputs=["logits"], data_space="binary"),
        preprocessing=PreprocessContract(input_shape=shape).describe(),
        training={"train_config": {"test_binarize_seed": 0}}, metrics={"nll_nats": 1.0}, parity={}, exporter={})


class FakeVAE:
    """mean = W x, logvar = -1; logits = V z. Optionally slow, or broken."""

    def __init__(self, delay: float = 0.0, broken: bool = False) -> None:
        rng = np.random.default_rng(0)
        self.manifest = make_manifest()
        self.W = rng.normal(size=(LATENT, int(np.prod(SHAPE)))).astype(np.float32) * 0.1
        self.V = rng.normal(size=(int(np.prod(SHAPE)), LATENT)).astype(np.float32)
        self.delay, self.broken = delay, broken

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
