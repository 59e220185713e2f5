"""What the routes ask of the model, as plain numpy functions over the ONNX graphs.

Randomness lives here, never in the graphs: every draw comes from a generator seeded by the
request, with the same per-image streams as `vae-eval` (see `model.scoring`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model import distributions as dist
from model import scoring
from model.preprocess import PreprocessContract, to_data_space
from service.runtime import OnnxVAE


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
    def likelihood(self) -> str:
        return self.model.likelihood

    def encode(self, pixels: np.ndarray, sample: bool, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """mean, logvar (N, D), and z = mean + sigma * eps with eps from stream (seed, i) when `sample`."""
        mean, logvar = self.model.encode(pixels)
        return mean, logvar, self.reparameterize(mean, logvar, seed) if sample else None

    def reparameterize(self, mean: np.ndarray, logvar: np.ndarray, seed: int) -> np.ndarray:
        eps = np.stack([scoring.noise_stream(seed, i).standard_normal(self.latent_dim, dtype=np.float32)
                        for i in range(len(mean))])
        return dist.reparameterize(mean, logvar, eps)

    def decode(self, z: np.ndarray) -> np.ndarray:
        """(K, D) -> E[x | z] in [0, 1], (K, C, H, W)."""
        return scoring.pixel_means(self.likelihood, self.model.decode(z))

    def prior_latents(self, n: int, seed: int, temperature: float) -> np.ndarray:
        """z ~ N(0, t^2 I), (n, D)."""
        return (temperature * np.random.default_rng(seed).standard_normal((n, self.latent_dim),
                                                                            dtype=np.float32)).astype(np.float32)

    def reconstruct(self, pixels: np.ndarray) -> np.ndarray:
        """E[x | z = mean of q(z|x)]: the deterministic reconstruction."""
        mean, _ = self.model.encode(pixels)
        return self.decode(mean)

    def score(self, pixels: np.ndarray, k: int, seed: int, binarize_seed: int) -> scoring.Scores:
        """The images in the likelihood's data space (one draw over the request, as vae-eval does
        over its image set), then ELBO and IWAE with noise streams (seed, i)."""
        data = to_data_space(pixels, self.likelihood, np.random.default_rng(binarize_seed))
        return scoring.score(self.model, self.likelihood, data, seed, k=k)

    def data_space(self, binarize_seed: int) -> str:
        if self.likelihood == "bernoulli":
            return (f"binarised: x ~ Bernoulli(pixel), one draw over the request's images with seed {binarize_seed} "
                    "(binary images are unchanged)")
        return (f"dequantised: x = (round(255 * pixel) + u) / 256, u ~ U(0, 1), seed {binarize_seed}; "
                "densities are reported as probabilities of the 8-bit image")
