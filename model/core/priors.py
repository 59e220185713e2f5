"""The prior p(z) in numpy: N(0, I), or a fixed mixture of diagonal Gaussians (a trained `mog` or VampPrior).

`PriorKind` says what each kind of prior is (its name, components, KL and export); the torch modules
that train them are in `model/torch_priors.py`. Once trained, either learned prior there is the `Mixture` here, which
the artifact reads from prior.onnx (`model.core.artifact`) and `vae-eval` from the torch model.

Sampling, for every prior: eps = rng.standard_normal((n, D), float32) first, then, for a mixture only,
one component per row, c = searchsorted(cumsum(w), u, side="right") with u = rng.random(n). So N(0, I)
draws exactly the stream it always has, and a mixture draws the same eps as N(0, I) would from that seed.

Temperature t scales the noise: N(0, t^2 I) for the standard normal; for a mixture, each component's
standard deviation times t, with its mean and weight unchanged (z = mu_c + t * sigma_c * eps). t < 1 gives
samples nearer the component means, t -> 0 the means themselves; it is not the tempered density p(z)^(1/t^2).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from model.core import distributions as dist


@dataclass(frozen=True)
class PriorKind:
    """What a kind of prior is, whatever the framework: the config, the CLI, the trainer and the exporter
    ask it instead of comparing names. The torch module of each kind is in `model/torch_priors.py`."""

    name: str  # what configs, checkpoints and manifests store
    description: str  # for the manifest and --help
    default_components: int  # K when none is given (0: the prior has no components)
    closed_form_kl: bool  # KL(q(z|x) || p(z)) in closed form, else the one-sample estimate
    graph: str | None  # the file its trained form is exported to; None: the service needs no graph

    @property
    def learned(self) -> bool:
        """Whether it has parameters that training fits (and a graph that carries them)."""
        return self.graph is not None

    def check_components(self, components: int) -> None:
        if self.learned and components <= 0:
            raise ValueError(f"prior_components must be positive for the {self.name} prior (K components)")
        if not self.learned and components != 0:
            raise ValueError(f"prior_components must be 0 for {self.name}, which has no components")


STANDARD_NORMAL = PriorKind(
    name="standard_normal",
    description="N(0, I)",
    default_components=0,
    closed_form_kl=True,
    graph=None,
)
MOG = PriorKind(
    name="mog",
    description="a mixture of K diagonal Gaussians learned in the latent space",
    default_components=500,
    closed_form_kl=False,
    graph="prior.onnx",
)
VAMP = PriorKind(
    name="vamp",
    description="VampPrior: the encoder's posteriors at K learned pseudo-inputs, equally weighted",
    default_components=500,
    closed_form_kl=False,
    graph="prior.onnx",
)
PRIOR_KINDS: dict[str, PriorKind] = {kind.name: kind for kind in (STANDARD_NORMAL, MOG, VAMP)}


def prior_kind(name: str) -> PriorKind:
    try:
        return PRIOR_KINDS[name]
    except KeyError:
        raise ValueError(f"prior must be one of {', '.join(PRIOR_KINDS)}, not {name!r}") from None


class Prior(ABC):
    """p(z) over D latent dimensions: its density, its sampler and its term in the ELBO."""

    name: str
    latent_dim: int

    @abstractmethod
    def log_prob(self, z: np.ndarray) -> NDArray[np.float64]:
        """log p(z).  (N, D) -> (N,) float64"""

    @abstractmethod
    def from_noise(self, eps: np.ndarray, components: np.random.Generator | None) -> NDArray[np.float32]:
        """z ~ p(z) built from standard normal noise eps (N, D), drawing anything else (a mixture's
        components) from `components`.  -> (N, D) float32"""

    @abstractmethod
    def component_stream(self, stream: np.random.Generator) -> np.random.Generator | None:
        """Where `from_noise` draws components when the noise comes from `stream` in chunks: a child of
        `stream` (it does not advance `stream`), so how eps is chunked cannot reorder the components."""

    @abstractmethod
    def kl(self, z: np.ndarray, mean: np.ndarray, logvar: np.ndarray) -> NDArray[np.float64]:
        """The ELBO's KL(q(z|x) || p(z)) for q = N(mean, diag(exp(logvar))), with z (N, D) the ELBO's own
        sample of q.  -> (N,) float64"""

    def sample(self, n: int, rng: np.random.Generator, temperature: float = 1.0) -> NDArray[np.float32]:
        """n draws at temperature t (module docstring): eps from rng, then the components from rng.
        -> (n, D) float32"""
        eps = rng.standard_normal((n, self.latent_dim), dtype=np.float32)  # (n, D)
        return self.from_noise(temperature * eps, rng)


class StandardNormal(Prior):
    """N(0, I): the analytic KL, and samples that are the noise itself."""

    name = "standard_normal"

    def __init__(self, latent_dim: int) -> None:
        self.latent_dim = latent_dim

    def log_prob(self, z: np.ndarray) -> NDArray[np.float64]:
        return dist.log_standard_normal(z)

    def from_noise(self, eps: np.ndarray, components: np.random.Generator | None = None) -> NDArray[np.float32]:
        return eps.astype(np.float32, copy=False)

    def component_stream(self, stream: np.random.Generator) -> None:
        return None

    def kl(self, z: np.ndarray, mean: np.ndarray, logvar: np.ndarray) -> NDArray[np.float64]:
        return dist.kl_standard_normal(mean, logvar)


class Mixture(Prior):
    """sum_k w_k N(mu_k, diag(exp(logvar_k))). `log_prob_fn`, when given, computes log p(z) (z float32
    (N, D) -> (N,)), e.g. the artifact's prior.onnx; otherwise numpy does, in float64."""

    def __init__(
        self,
        means: np.ndarray,
        logvars: np.ndarray,
        log_weights: np.ndarray,
        log_prob_fn: Callable[[np.ndarray], np.ndarray] | None = None,
        name: str = "mixture",
    ) -> None:
        means, logvars = np.asarray(means, dtype=np.float32), np.asarray(logvars, dtype=np.float32)
        log_weights = np.asarray(log_weights, dtype=np.float64)
        if (
            means.ndim != 2
            or means.shape[0] == 0
            or logvars.shape != means.shape
            or log_weights.shape != means.shape[:1]
        ):
            raise ValueError(
                f"a mixture needs means and logvars (K, D) and log_weights (K,) with K > 0, not "
                f"{means.shape}, {logvars.shape} and {log_weights.shape}"
            )
        if not (np.isfinite(means).all() and np.isfinite(logvars).all() and np.isfinite(log_weights).all()):
            raise ValueError("a mixture's means, logvars and log_weights must be finite")
        total = float(np.logaddexp.reduce(log_weights))
        if abs(total) > 1e-4:
            raise ValueError(f"a mixture's weights must sum to 1: log sum w = {total:.3g}")
        self.name, self.means, self.logvars, self.log_weights = name, means, logvars, log_weights
        self.latent_dim = means.shape[1]
        self._log_prob_fn = log_prob_fn
        self._sigmas = np.exp(0.5 * logvars.astype(np.float64))  # (K, D)
        cumulative = np.cumsum(np.exp(log_weights))
        self._cumulative = cumulative / cumulative[-1]  # (K,), ends at exactly 1
        # log N(z | mu_k, diag var_k) = -0.5 (z^2 . 1/var_k - 2 z . mu_k/var_k + c_k): (N, K) from two
        # matrix products, where the difference z - mu_k would be an (N, K, D) array.
        precision = np.exp(-logvars.astype(np.float64))  # (K, D)
        means64 = means.astype(np.float64)
        self._precision, self._scaled_means = precision, means64 * precision
        self._constants = (
            (means64 * self._scaled_means + logvars + dist.LOG_2PI).sum(axis=1)  # (K,)
            - 2.0 * log_weights
        )

    @property
    def components(self) -> int:
        return len(self.log_weights)

    def log_prob(self, z: np.ndarray) -> NDArray[np.float64]:
        if self._log_prob_fn is not None:
            return np.asarray(self._log_prob_fn(np.ascontiguousarray(z, dtype=np.float32)), dtype=np.float64)
        return self.numpy_log_prob(z)

    def numpy_log_prob(self, z: np.ndarray) -> NDArray[np.float64]:
        """log sum_k w_k N(z | mu_k, var_k) in float64, whatever `log_prob_fn` says.  (N, D) -> (N,)"""
        z = np.asarray(z, dtype=np.float64)
        quadratic = (z * z) @ self._precision.T - 2.0 * z @ self._scaled_means.T  # (N, K)
        per_component = -0.5 * (quadratic + self._constants)  # (N, K): log w_k + log N(z | mu_k, var_k)
        top = per_component.max(axis=1, keepdims=True)
        log_p: NDArray[np.float64] = (top + np.log(np.exp(per_component - top).sum(axis=1, keepdims=True)))[:, 0]
        return log_p

    def choose(self, n: int, rng: np.random.Generator) -> NDArray[np.intp]:
        """n component indices drawn with the weights: u = rng.random(n), searchsorted on cumsum(w).  (n,) int"""
        # side="right": u lands in component k when cum_{k-1} <= u < cum_k; min() guards u near 1.
        return np.minimum(np.searchsorted(self._cumulative, rng.random(n), side="right"), self.components - 1)

    def from_noise(self, eps: np.ndarray, components: np.random.Generator | None) -> NDArray[np.float32]:
        if components is None:
            raise TypeError("a mixture draws its components from a generator: `component_stream` gives one")
        chosen = self.choose(len(eps), components)  # (N,)
        z: NDArray[np.float32] = (self.means[chosen] + self._sigmas[chosen] * eps).astype(np.float32)  # (N, D)
        return z

    def component_stream(self, stream: np.random.Generator) -> np.random.Generator:
        return stream.spawn(1)[0]

    def kl(self, z: np.ndarray, mean: np.ndarray, logvar: np.ndarray) -> NDArray[np.float64]:
        # No closed form against a mixture: the one-sample estimate log q(z|x) - log p(z), unbiased.
        return dist.log_normal_diag(z, mean, logvar) - self.log_prob(z)
