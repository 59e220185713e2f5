"""Writing an imported model's version directory: the graphs as given, the manifest, the loader's checks,
and optionally metrics scored on the user's images and an anomaly calibration on their folder.

Shared by `vae-import torch` (export/import_torch.py) and `vae-import onnx` (export/import_onnx.py).
Torch-free. Built beside OUT_DIR and renamed into place only once the service's own loader accepts it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from export import calibrate
from export.declare import Declarations
from export.files import ExportError, move_into_place, target_dir
from model.core import anomaly, scoring
from model.core.artifact import ModelLoadError, OnnxVAE, load_model_dir, open_graphs, session_options
from model.core.manifest import FileHash, GraphInfo, Manifest, PriorSpec, Source
from model.data import DataFormatError, DataMissingError, read_image_folder

SCORE_K = 100  # importance samples per image for the model card's log p(x)


class ImportFailed(RuntimeError):
    """The model cannot be imported as declared; nothing was written. The message says how to fix it."""


@dataclass(frozen=True)
class Graphs:
    """The two graphs (and a prior) as bytes, and which of their names play the contract's parts."""

    encoder: bytes
    decoder: bytes
    encoder_names: tuple[str, str, str]  # input, mean output, spread output
    decoder_names: tuple[str, list[str]]  # input, outputs
    prior: bytes | None = None
    prior_components: int | None = None


def graph_info(file: str, data: bytes) -> GraphInfo:
    """A graph's names and shapes as onnxruntime reads them (a symbolic dimension by its name, an unknown
    one as "?"), its hash, and its opset (from the model's own opset import)."""
    session = ort.InferenceSession(data, session_options(1), providers=["CPUExecutionProvider"])

    def dims(args: Any) -> dict[str, list[int | str]]:
        return {a.name: [d if isinstance(d, int) else (d or "?") for d in a.shape] for a in args}

    return GraphInfo(
        file=file,
        sha256=hashlib.sha256(data).hexdigest(),
        inputs=dims(session.get_inputs()),
        outputs=dims(session.get_outputs()),
        opset=opset_of(data),
    )


def opset_of(data: bytes) -> int:
    import onnx

    model = onnx.load_from_string(data)
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def versions() -> dict[str, str]:
    import onnx

    return {
        "python": platform.python_version(),
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
    }


def build_manifest(
    directory: Path,
    decl: Declarations,
    graphs: Graphs,
    latent_dim: int,
    source: Source,
    parity: dict[str, Any],
    log_scale: float | None,
    extra: dict[str, Any] | None = None,
) -> Manifest:
    """Write the graphs into `directory` and describe them; nothing is checked yet (`open_graphs` does).
    `extra`: more manifest fields (a spatial latent's latent_shape, sizes, diffusion)."""
    infos: dict[str, GraphInfo] = {}
    for name, data in (("encoder", graphs.encoder), ("decoder", graphs.decoder), ("prior", graphs.prior)):
        if data is not None:
            (directory / f"{name}.onnx").write_bytes(data)
            infos[name] = graph_info(f"{name}.onnx", data)
    prior = None
    if "prior" in infos:
        prior = PriorSpec(
            name="mog",
            components=graphs.prior_components or 1,
            description="a mixture of diagonal Gaussians, given as prior.onnx",
            graph=infos["prior"],
        )
    preprocessing = decl.preprocessing()
    try:
        return Manifest(
            name=decl.name,
            version=decl.version,
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            source=source,
            encoder=infos["encoder"],
            decoder=infos["decoder"],
            input=decl.input_spec(),
            latent_dim=latent_dim,
            likelihood=decl.likelihood_spec(log_scale),
            preprocessing={**preprocessing.describe(), "values": decl.input_spec().describe_values()},
            training={"trained_by": "the model's author, outside vae-service", **decl.notes},  # notes may say more
            metrics={},
            parity=parity,
            prior=prior,
            contract=decl.contract(graphs.encoder_names, graphs.decoder_names),
            exporter={"tool": source.tool, **versions()},
            **(extra or {}),
        )
    except ValueError as exc:
        raise ImportFailed(f"the declarations do not make a valid manifest: {exc}") from exc


def prior_components(data: bytes, latent_dim: int) -> int:
    """K of a prior graph: its `means` output's first dimension."""
    session = ort.InferenceSession(data, session_options(1), providers=["CPUExecutionProvider"])
    try:
        outputs = session.run(["means"], {"z": np.zeros((1, latent_dim), np.float32)})
    except Exception as exc:  # onnxruntime's own errors
        raise ImportFailed(
            f"--prior: the graph does not map z [N, {latent_dim}] to log_prob, means, logvars, log_weights: {exc}"
        ) from exc
    return int(np.asarray(outputs[0]).shape[0])


def open_checked(staging: Path, manifest: Manifest, threads: int) -> OnnxVAE:
    """The graphs in onnxruntime after the loader's checks (model/core/contract.py; their figures in
    `OnnxVAE.checks`), a refusal as ImportFailed with the loader's message."""
    try:
        return open_graphs(staging, manifest, threads=threads)
    except ModelLoadError as exc:
        raise ImportFailed(str(exc).split(" (fp32): ", 1)[-1]) from exc


def write_import(out_dir: Path, decl: Declarations, build: Any) -> Manifest:
    """Make OUT_DIR from `build(staging) -> (Manifest, OnnxVAE)` (which writes the graphs, describes them and
    opens them with `open_checked`): optional metrics and calibration, then the rename into place."""
    try:
        out = target_dir(out_dir)
    except ExportError as exc:
        raise ImportFailed(str(exc)) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        manifest, model = build(staging)
        manifest = with_metrics(model, decl, manifest)
        manifest = with_calibration(staging, model, decl, manifest)
        manifest.write(staging / "manifest.json")
        load_model_dir(staging, threads=decl.threads)  # what is moved into place is what the service loads
        staging.chmod(0o755)
        move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def read_folder(directory: Path, decl: Declarations, flag: str) -> tuple[np.ndarray, dict[str, str]]:
    try:
        return read_image_folder(directory, decl.preprocessing())
    except (DataMissingError, DataFormatError) as exc:
        raise ImportFailed(f"{flag}: {exc}") from exc


def with_metrics(model: OnnxVAE, decl: Declarations, manifest: Manifest) -> Manifest:
    """The model card's metrics from the user's images (--score-dir): the ELBO and log p(x) (importance
    sampling, k = SCORE_K) in nats and bits per dimension, as `POST /elbo` computes them."""
    if decl.score_dir is None:
        return manifest
    if manifest.likelihood.name == "none":
        raise ImportFailed("--score-dir: a deterministic decoder (--likelihood none) has no likelihood to score with")
    images, checksums = read_folder(decl.score_dir, decl, "--score-dir")
    parts = []
    for start in range(0, len(images), 256):
        pixels = images[start : start + 256]
        data = model.likelihood.images_to_data_space(pixels, decl.seed)
        parts.append(scoring.score(model, model.likelihood, data, decl.seed, k=SCORE_K))
    summary = {
        name: float(np.mean(np.concatenate([getattr(p, name) for p in parts])))
        for name in ("elbo", "reconstruction", "kl", "log_likelihood")
    }
    dims = int(np.prod(manifest.input.shape))
    metrics = {
        "test": {
            "images": len(images),
            "folder": str(decl.score_dir),
            "folder_sha256": _folder_digest(checksums),
            "k": SCORE_K,
            "estimator": "importance",
            "seed": decl.seed,
            **summary,
            "elbo_bits_per_dim": -summary["elbo"] / (dims * np.log(2.0)),
            "log_likelihood_bits_per_dim": -summary["log_likelihood"] / (dims * np.log(2.0)),
        }
    }
    return manifest.model_copy(update={"metrics": metrics})


def with_calibration(directory: Path, model: OnnxVAE, decl: Declarations, manifest: Manifest) -> Manifest:
    """An anomaly calibration on the user's in-distribution images (--calibrate-dir): the score is fitted
    on one half (by content hash, so the split is fixed) and referenced on the other."""
    if decl.calibrate_dir is None:
        return manifest
    if manifest.likelihood.name == "none":
        raise ImportFailed("--calibrate-dir: the anomaly score needs a likelihood; --likelihood none has none")
    images, checksums = read_folder(decl.calibrate_dir, decl, "--calibrate-dir")
    if len(images) < 4 * calibrate.MIN_COUNT // 2:
        raise ImportFailed(
            f"--calibrate-dir holds {len(images)} images; calibrating needs at least {4 * calibrate.MIN_COUNT // 2} "
            "(thousands give usable thresholds)"
        )
    digests = list(checksums.values())
    order = sorted(range(len(images)), key=digests.__getitem__)
    half = len(order) // 2
    fit, reference = images[sorted(order[:half])], images[sorted(order[half:])]
    score = calibrate.fit_score(calibrate.METHOD, calibrate.batched_statistics(model, fit, decl.seed, decl.seed))
    stats = calibrate.batched_statistics(model, reference, decl.seed, decl.seed)
    description = {
        "split": "the user's folder, halved by content hash",
        "folder": str(decl.calibrate_dir),
        "folder_sha256": _folder_digest(checksums),
        "fit_images": len(fit),
        "reference_images": len(reference),
        "images": len(images),
    }
    calibration = anomaly.Calibration.build(score, stats, decl.seed, decl.seed, description)
    return calibrate.add_calibration(directory, manifest, calibration)


def _folder_digest(checksums: dict[str, str]) -> str:
    """One SHA-256 over a folder's files: their relative paths and contents' hashes, sorted."""
    lines = "".join(f"{path}\t{digest}\n" for path, digest in sorted(checksums.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def source_files(paths: list[Path]) -> list[FileHash]:
    return [FileHash(file=path.name, sha256=hashlib.sha256(path.read_bytes()).hexdigest()) for path in paths]


__all__ = ["Graphs", "ImportFailed", "build_manifest", "open_checked", "write_import"]
