"""Load a model directory (encoder.onnx, decoder.onnx, manifest.json; prior.onnx for a learned prior; a
two-level VAE's lower graphs) into onnxruntime.

Every graph's bytes are hashed and compared with the manifest before onnxruntime sees them, and
onnxruntime is given those same bytes, so what was checked is what runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import ValidationError

from model.core import likelihoods
from model.core.anomaly import Calibration
from model.core.contract import ContractError, GraphAdapter, check_behaviour, check_signatures
from model.core.likelihoods import Likelihood
from model.core.manifest import GraphInfo, Manifest, PriorSpec, parity_problem
from model.core.priors import Mixture, Prior, StandardNormal

PRIOR_OUTPUTS = ("log_prob", "means", "logvars", "log_weights")


class ModelLoadError(RuntimeError):
    """The model directory cannot be served; the message says why and what to do."""


class ModelIntegrityError(ModelLoadError):
    """A graph's SHA-256 differs from the manifest's: the file was modified or corrupted."""


@dataclass(frozen=True)
class OnnxVAE:
    """The two graphs and the prior as a `model.core.scoring.Backend`: numpy in, numpy out."""

    manifest: Manifest
    encoder: ort.InferenceSession
    decoder: ort.InferenceSession
    directory: Path
    prior: Prior  # N(0, I) when the manifest lists no prior graph
    anomaly: Calibration | None = None  # None: the export has no anomaly calibration
    adapter: GraphAdapter | None = None  # None: made from the manifest
    checks: dict[str, float] = field(default_factory=dict)  # the loader's figures (`check_contract`)
    levels: OnnxLevels | None = None  # a two-level VAE's lower graphs (manifest.levels); None: one level

    def __post_init__(self) -> None:
        if self.adapter is None:
            object.__setattr__(self, "adapter", GraphAdapter.of(self.manifest))

    @property
    def io(self) -> GraphAdapter:
        assert self.adapter is not None  # set in __post_init__
        return self.adapter

    @property
    def latent_dim(self) -> int:
        return self.manifest.latent_dim

    @property
    def likelihood(self) -> Likelihood:
        spec = self.manifest.likelihood
        return likelihoods.for_outputs(spec.name, spec.outputs)

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, C, H, W) float32 pixels in [0, 1] -> mean (N, D), logvar (N, D), whatever the graph's own
        names, input values and posterior form (model/core/contract.py)"""
        io = self.io
        mean, spread = self.encoder.run(io.encoder_outputs, io.encoder_feed(x))
        return io.posterior(mean, spread)

    def decode(self, z: np.ndarray) -> tuple[np.ndarray, ...]:
        """(K, D) float32 -> the likelihood's parameters in [0, 1] pixels, each (K, C, H, W)"""
        io = self.io
        feed = io.latent_feed(np.ascontiguousarray(z, dtype=np.float32))
        outputs = self.decoder.run(io.decoder_outputs, {io.bindings.decoder.z: feed})
        return io.decoder_params(outputs)


@dataclass(frozen=True)
class OnnxLevels:
    """A two-level VAE's graphs as a `model.core.hierarchy.TwoLevelBackend` (vae-export's names): the
    encoder, prior and likelihood are the OnnxVAE's, z2's; the lower level's graphs are the manifest's
    `levels`."""

    vae: OnnxVAE
    features: ort.InferenceSession
    lower_posterior: ort.InferenceSession
    lower_prior_graph: ort.InferenceSession
    decoder_levels: ort.InferenceSession

    @property
    def prior(self) -> Prior:
        return self.vae.prior

    @property
    def lower_latent_dim(self) -> int:
        assert self.vae.manifest.levels is not None  # set with levels only
        return self.vae.manifest.levels.lower_latent_dim

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, C, H, W) pixels -> q(z2 | x)'s mean and logvar (N, D2), and the image's features (N, F) that
        q(z1 | x, z2) reads: one run of the image's body (the `features` graph)."""
        mean, logvar, features = self.features.run(None, {"image": _f32(x)})
        return mean, logvar, features

    def encode_lower(self, features: np.ndarray, z2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """q(z1 | x, z2)'s mean and logvar (N, D1)."""
        mean, logvar = self.lower_posterior.run(None, {"features": _f32(features), "z2": _f32(z2)})
        return mean, logvar

    def lower_prior(self, z2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """p(z1 | z2)'s mean and logvar (N, D1)."""
        mean, logvar = self.lower_prior_graph.run(None, {"z2": _f32(z2)})
        return mean, logvar

    def decode(self, z1: np.ndarray, z2: np.ndarray) -> tuple[np.ndarray, ...]:
        """p(x | z1, z2): the likelihood's parameters, each (N, C, H, W)."""
        outputs = self.decoder_levels.run(None, {"z1": _f32(z1), "z2": _f32(z2)})
        return self.vae.io.decoder_params(outputs)


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def open_levels(vae: OnnxVAE, options: ort.SessionOptions, chosen: list[str]) -> OnnxLevels | None:
    """The manifest's lower-level graphs, hash-checked, or None for a one-level model."""
    spec = vae.manifest.levels
    if spec is None:
        return None
    graphs = (spec.features, spec.lower_posterior, spec.lower_prior, spec.decoder_levels)
    features, posterior, prior, decoder = (_session(vae.directory, info, options, chosen) for info in graphs)
    return OnnxLevels(vae, features, posterior, prior, decoder)


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


# onnxruntime's execution providers by the names VAE_EXECUTION_PROVIDER takes; CPU is always the fallback.
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def providers(name: str) -> list[str]:
    """The providers for `name`, refused when this onnxruntime lacks them (onnxruntime-gpu gives CUDA)."""
    if name not in PROVIDERS:
        raise ModelLoadError(f"execution provider {name!r}: choose one of {', '.join(PROVIDERS)}")
    missing = [p for p in PROVIDERS[name] if p not in ort.get_available_providers()]
    if missing:
        raise ModelLoadError(
            f"execution provider {name!r} needs {', '.join(missing)}, which this onnxruntime lacks (it has "
            f"{', '.join(ort.get_available_providers())}): install onnxruntime-gpu for CUDA, or use cpu"
        )
    return PROVIDERS[name]


def load_model_dir(directory: str | Path, threads: int = 1, variant: str = "fp32", provider: str = "cpu") -> OnnxVAE:
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise ModelLoadError(
            f"{manifest_path} not found: point VAE_MODEL_DIR (or --model-dir) at a directory written by vae-export"
        )
    try:
        manifest = Manifest.read(manifest_path)
    except (ValidationError, ValueError) as exc:
        raise ModelLoadError(f"{manifest_path} is not a valid vae-service manifest: {exc}") from exc
    problem = parity_problem(manifest.parity)
    if problem:
        raise ModelLoadError(
            f"{manifest_path}: {problem}; the graphs may not compute what the model does. "
            "Refusing to serve them: re-export the model with vae-export."
        )
    return open_graphs(directory, manifest, threads, variant, provider)


def open_graphs(
    directory: Path, manifest: Manifest, threads: int = 1, variant: str = "fp32", provider: str = "cpu"
) -> OnnxVAE:
    """The graphs `manifest` names, hash-checked, in onnxruntime. vae-export runs its parity check
    through this before any manifest is on disk; the service goes through `load_model_dir`. Both variants
    load the same fp32 prior graph: an int8 prior would move log p(z), and the ELBO with it."""
    if variant == "int8":
        if manifest.int8 is None:
            raise ModelLoadError(f"{directory} has no int8 variant; export with vae-export --int8")
        graphs = (manifest.int8.encoder, manifest.int8.decoder)
    else:
        graphs = (manifest.encoder, manifest.decoder)
    options = session_options(threads)
    chosen = providers(provider)
    encoder, decoder = (_session(directory, info, options, chosen) for info in graphs)
    prior: Prior = (
        StandardNormal(manifest.latent_dim)
        if manifest.prior is None
        else load_prior(directory, manifest.prior, manifest.latent_dim, options)
    )
    vae = OnnxVAE(
        manifest=manifest,
        encoder=encoder,
        decoder=decoder,
        directory=directory,
        prior=prior,
        anomaly=load_calibration(directory, manifest),
    )
    object.__setattr__(vae, "levels", open_levels(vae, options, chosen))
    # Dynamic int8 quantisation takes its activation scales from the whole batch (DynamicQuantizeLinear),
    # so the int8 variant's rows do depend on their batch, by design and within its recorded parity.
    vae.checks.update(check_contract(vae, f"{directory} ({variant})", batch_independent=variant != "int8"))
    return vae


def check_contract(vae: OnnxVAE, where: str, batch_independent: bool = True) -> dict[str, float]:
    """What the loader asks of any pair of graphs before it serves them (docs/contract.md): the bound
    names, dtypes, ranks, a dynamic batch axis and the sizes, then determinism and rows that do not depend
    on their batch, on a few seeded inputs. Returns the figures; raises ModelLoadError."""
    try:
        check_signatures(vae.manifest, vae.encoder, vae.decoder)
        return check_behaviour(vae.encode, vae.decode, vae.manifest, batch_independent=batch_independent)
    except ContractError as exc:
        raise ModelLoadError(f"{where}: {exc}") from exc


def load_prior(directory: Path, spec: PriorSpec, latent_dim: int, options: ort.SessionOptions) -> Mixture:
    """The mixture prior.onnx holds: its parameters, read once from the graph's constant outputs, and a
    log_prob that runs the graph. Refused unless the graph's log_prob is the mixture of those parameters."""
    session = _session(directory, spec.graph, options)
    path = directory / spec.graph.file
    if list(spec.graph.outputs) != list(PRIOR_OUTPUTS) or list(spec.graph.inputs) != ["z"]:
        raise ModelLoadError(
            f"{path}: a prior graph maps z to {', '.join(PRIOR_OUTPUTS)}; the manifest declares "
            f"{list(spec.graph.inputs)} to {list(spec.graph.outputs)}"
        )

    def log_prob(z: np.ndarray) -> np.ndarray:
        log_p: np.ndarray = session.run(["log_prob"], {"z": z})[0]  # (N,); onnxruntime is untyped
        return log_p

    try:
        _, means, logvars, log_weights = session.run(None, {"z": np.zeros((1, latent_dim), dtype=np.float32)})
        prior = Mixture(means, logvars, log_weights, log_prob_fn=log_prob, name=spec.name)
    except Exception as exc:  # onnxruntime's own errors, or parameters that are not a mixture
        raise ModelLoadError(f"{path} does not compute a prior over {latent_dim} latent dimensions: {exc}") from exc
    if prior.means.shape != (spec.components, latent_dim):
        raise ModelLoadError(
            f"{path} holds {prior.components} components over {prior.latent_dim} dimensions; the "
            f"manifest says {spec.components} over {latent_dim}"
        )
    # The parameters drive sampling and the graph drives scoring: they must be the same mixture.
    probe = np.concatenate([np.zeros((1, latent_dim), dtype=np.float32), prior.means])  # (1 + K, D)
    graph, expected = prior.log_prob(probe), prior.numpy_log_prob(probe)
    if not np.allclose(graph, expected, rtol=1e-5, atol=1e-3):
        worst = float(np.max(np.abs(graph - expected)))
        raise ModelLoadError(
            f"{path}: its log_prob differs from the mixture it outputs by up to {worst:.3g} nats; re-export the model"
        )
    return prior


def load_calibration(directory: Path, manifest: Manifest) -> Calibration | None:
    """The anomaly calibration the manifest lists, hash-checked; None when it lists none."""
    spec = manifest.anomaly
    if spec is None:
        return None
    path = directory / spec.file
    data = _checked_bytes(path, spec.sha256, "anomaly calibration")
    try:
        calibration = Calibration.from_json(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(
            f"{path} is not a valid anomaly calibration ({exc}); re-run "
            "python -m export.calibrate on the model directory"
        ) from exc
    size = tuple(manifest.input.shape[1:])
    if calibration.map is not None and calibration.map.shape != size:
        raise ModelLoadError(
            f"{path}: its anomaly map calibration is {calibration.map.shape}, the model's images {size}; re-run "
            "python -m export.calibrate on the model directory"
        )
    return calibration


def _checked_bytes(path: Path, sha256: str, what: str) -> bytes:
    """The file's bytes, when their SHA-256 is the manifest's."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ModelIntegrityError(
            f"{path}: SHA-256 is {actual} but the manifest says {sha256}; the {what} "
            "was modified or corrupted. Refusing to serve it: re-export the model."
        )
    return data


def _session(
    directory: Path, info: GraphInfo, options: ort.SessionOptions, chosen: list[str] | None = None
) -> ort.InferenceSession:
    path = directory / info.file
    data = _checked_bytes(path, info.sha256, "graph")
    try:
        session = ort.InferenceSession(data, options, providers=chosen or PROVIDERS["cpu"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelLoadError(f"onnxruntime cannot load {path}: {exc}") from exc
    names_in = [i.name for i in session.get_inputs()]
    names_out = [o.name for o in session.get_outputs()]
    if names_in != list(info.inputs) or names_out != list(info.outputs):
        raise ModelLoadError(
            f"{path} has inputs {names_in} and outputs {names_out}; the manifest declares "
            f"{list(info.inputs)} and {list(info.outputs)}"
        )
    return session
