"""Load a model directory (encoder.onnx, decoder.onnx, manifest.json) into onnxruntime.

Every graph's bytes are hashed and compared with the manifest before onnxruntime sees them, and
onnxruntime is given those same bytes, so what was checked is what runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import ValidationError

from model.core import likelihoods
from model.core.anomaly import Calibration
from model.core.likelihoods import Likelihood
from model.core.manifest import GraphInfo, Manifest, parity_problem


class ModelLoadError(RuntimeError):
    """The model directory cannot be served; the message says why and what to do."""


class ModelIntegrityError(ModelLoadError):
    """A graph's SHA-256 differs from the manifest's: the file was modified or corrupted."""


@dataclass(frozen=True)
class OnnxVAE:
    """The two graphs as a `model.core.scoring.Backend`: numpy in, numpy out."""

    manifest: Manifest
    encoder: ort.InferenceSession
    decoder: ort.InferenceSession
    directory: Path
    anomaly: Calibration | None = None  # None: the export has no anomaly calibration

    @property
    def latent_dim(self) -> int:
        return self.manifest.latent_dim

    @property
    def likelihood(self) -> Likelihood:
        return likelihoods.get(self.manifest.likelihood.name)

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, C, H, W) float32 in the model's input scale -> mean (N, D), logvar (N, D)"""
        mean, logvar = self.encoder.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)})
        return mean, logvar

    def decode(self, z: np.ndarray) -> tuple[np.ndarray, ...]:
        """(K, D) float32 -> the likelihood's parameters, each (K, C, H, W)"""
        return tuple(self.decoder.run(None, {"z": np.ascontiguousarray(z, dtype=np.float32)}))


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def load_model_dir(directory: str | Path, threads: int = 1, variant: str = "fp32") -> OnnxVAE:
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise ModelLoadError(f"{manifest_path} not found: point VAE_MODEL_DIR (or --model-dir) at a directory "
                             "written by vae-export")
    try:
        manifest = Manifest.read(manifest_path)
    except (ValidationError, ValueError) as exc:
        raise ModelLoadError(f"{manifest_path} is not a valid vae-service manifest: {exc}") from exc
    problem = parity_problem(manifest.parity)
    if problem:
        raise ModelLoadError(f"{manifest_path}: {problem}; the graphs may not compute what the model does. "
                             "Refusing to serve them: re-export the model with vae-export.")
    return open_graphs(directory, manifest, threads, variant)


def open_graphs(directory: Path, manifest: Manifest, threads: int = 1, variant: str = "fp32") -> OnnxVAE:
    """The graphs `manifest` names, hash-checked, in onnxruntime. vae-export runs its parity check
    through this before any manifest is on disk; the service goes through `load_model_dir`."""
    if variant == "int8":
        if manifest.int8 is None:
            raise ModelLoadError(f"{directory} has no int8 variant; export with vae-export --int8")
        graphs = (manifest.int8.encoder, manifest.int8.decoder)
    else:
        graphs = (manifest.encoder, manifest.decoder)
    options = session_options(threads)
    encoder, decoder = (_session(directory, info, options) for info in graphs)
    return OnnxVAE(manifest=manifest, encoder=encoder, decoder=decoder, directory=directory,
                   anomaly=load_calibration(directory, manifest))


def load_calibration(directory: Path, manifest: Manifest) -> Calibration | None:
    """The anomaly calibration the manifest lists, hash-checked; None when it lists none."""
    spec = manifest.anomaly
    if spec is None:
        return None
    path = directory / spec.file
    data = _checked_bytes(path, spec.sha256, "anomaly calibration")
    try:
        return Calibration.from_json(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path} is not a valid anomaly calibration ({exc}); re-run "
                             "python -m export.calibrate on the model directory") from exc


def _checked_bytes(path: Path, sha256: str, what: str) -> bytes:
    """The file's bytes, when their SHA-256 is the manifest's."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ModelIntegrityError(f"{path}: SHA-256 is {actual} but the manifest says {sha256}; the {what} "
                                  "was modified or corrupted. Refusing to serve it: re-export the model.")
    return data


def _session(directory: Path, info: GraphInfo, options: ort.SessionOptions) -> ort.InferenceSession:
    path = directory / info.file
    data = _checked_bytes(path, info.sha256, "graph")
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelLoadError(f"onnxruntime cannot load {path}: {exc}") from exc
    names_in = [i.name for i in session.get_inputs()]
    names_out = [o.name for o in session.get_outputs()]
    if names_in != list(info.inputs) or names_out != list(info.outputs):
        raise ModelLoadError(f"{path} has inputs {names_in} and outputs {names_out}; the manifest declares "
                             f"{list(info.inputs)} and {list(info.outputs)}")
    return session
