"""`vae-eval`: test-set ELBO, its two terms and the IWAE log-likelihood, plus a report folder."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model import checkpoint, figures
from model.checkpoint import Checkpoint
from model.core import hierarchy, likelihoods, scoring
from model.core.artifact import OnnxLevels
from model.core.likelihoods import Likelihood
from model.core.manifest import LEVEL_GRAPHS
from model.core.preprocess import PreprocessContract
from model.data import DataChecksumError, DataMissingError, fixed_test_set, load_dataset, read_image_folder, sha256_file
from model.torch_backend import TorchBackend, TwoLevelTorchBackend
from model.vae import VAE

PARTIAL = "partial.npz"  # in the report folder: the scores so far, until the run completes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="vae-eval", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("checkpoint", help="a checkpoint written by vae-train")
    p.add_argument(
        "--onnx-dir",
        default=None,
        help="score with the exported graphs in this directory (onnxruntime) instead of torch; "
        "they must have been exported from CHECKPOINT",
    )
    p.add_argument("--k", type=int, default=1000, help="importance samples for the IWAE estimate (1: ELBO only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-image noise streams")
    p.add_argument("--dataset", default=None, help="default: the checkpoint's training dataset")
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--images-dir", default=None, help="evaluate a folder of images (sorted by name) instead of the test set"
    )
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report", default=None, help="report folder (default: next to the checkpoint)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from REPORT/partial.npz, the scores an interrupted run with the same settings left",
    )
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


SCORE_FIELDS = ("elbo", "reconstruction", "kl", "log_likelihood", "standard_error", "effective_sample_size")


def evaluate(
    backend: scoring.Backend,
    likelihood: Likelihood,
    x: np.ndarray,
    seed: int,
    k: int,
    batch_size: int,
    progress: bool = True,
    partial: Path | None = None,
    fingerprint: dict[str, Any] | None = None,
    resume: bool = False,
) -> tuple[scoring.Scores, float]:
    """Score every image; each image's noise stream is keyed by the seed and its content, so the
    batching does not change the numbers. With `partial`, the scores so far are written there after
    every batch, and `resume` continues from them when they were made with the same `fingerprint`
    (checkpoint, graphs, data, k, seed, batch size): the result is that of an uninterrupted run.
    Returns the scores and the seconds spent scoring, over every resumed run."""
    fields = SCORE_FIELDS if k > 1 else SCORE_FIELDS[:3]
    done, seconds = _read_partial(partial, fingerprint) if resume and partial else ({}, 0.0)
    parts = [done] if done else []
    first = len(done["elbo"]) if done else 0
    if first:
        print(f"vae-eval: --resume: {first} of {len(x)} images already scored in {partial}", flush=True)
    began = time.perf_counter()
    for start in tqdm(range(first, len(x), batch_size), desc=f"scoring (k={k})", disable=not progress, leave=False):
        scores = score(backend, likelihood, x[start : start + batch_size], seed, k=k)
        parts.append({name: getattr(scores, name) for name in fields})
        if partial:
            _write_partial(partial, fingerprint, parts, seconds + time.perf_counter() - began)
    cat = {name: np.concatenate([p[name] for p in parts]) for name in fields}
    scores = scoring.Scores(k=k, dims=int(np.prod(x.shape[1:])), **{name: cat.get(name) for name in SCORE_FIELDS})
    return scores, seconds + time.perf_counter() - began


def _write_partial(
    path: Path, fingerprint: dict[str, Any] | None, parts: list[dict[str, np.ndarray]], seconds: float
) -> None:
    """Atomically (temp file + rename): a run killed mid-write leaves the previous batch's file."""
    arrays = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, fingerprint=json.dumps(fingerprint, sort_keys=True), seconds=seconds, **arrays)
    tmp.replace(path)


def _read_partial(path: Path, fingerprint: dict[str, Any] | None) -> tuple[dict[str, np.ndarray], float]:
    if not path.is_file():
        return {}, 0.0
    with np.load(path) as saved:
        if str(saved["fingerprint"]) != json.dumps(fingerprint, sort_keys=True):
            raise ValueError(
                f"--resume: {path} was scored with another checkpoint, graphs, data, k, seed or "
                "batch size; remove it or run without --resume"
            )
        return {name: saved[name] for name in saved.files if name not in ("fingerprint", "seconds")}, float(
            saved["seconds"]
        )


def score(backend: Any, likelihood: Likelihood, x: np.ndarray, seed: int, k: int) -> scoring.Scores:
    """`model.core.scoring.score`, or for a two-level VAE's backend `model.core.hierarchy.score_two_levels`."""
    return hierarchy.score(backend, likelihood, x, seed, k=k)


def make_figures(
    backend: scoring.Backend,
    record: Checkpoint,
    likelihood: Likelihood,
    pixels: np.ndarray,
    data_x: np.ndarray,
    labels: np.ndarray | None,
    report: Path,
    seed: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(backend, TwoLevelTorchBackend):  # the figures live in z2's space, decode() going through z1
        backend = TorchBackend(backend.model)
    elif isinstance(backend, OnnxLevels):  # its OnnxVAE: decoder.onnx takes z2 through both levels
        backend = backend.vae
    z = scoring.prior_of(backend, record.model_config.latent_dim).sample(64, np.random.default_rng(seed))
    out["samples"] = figures.samples(
        likelihood.pixel_mean(backend.decode(z)), report / "samples.png", seed=seed, temperature=1.0
    )
    all_mean, all_logvar = backend.encode(data_x)  # (N, D) each: once, for every figure below
    indices = list(range(min(16, len(pixels))))
    mean = all_mean[indices]
    params = backend.decode(mean)
    recon_ll = likelihood.log_prob_8bit(data_x[indices].reshape(len(indices), -1), params)
    out["reconstructions"] = figures.reconstructions(
        pixels[indices], likelihood.pixel_mean(params), recon_ll, indices, report / "reconstructions.png"
    )
    kl_per_dim = 0.5 * (all_mean**2 + np.exp(all_logvar) - 1 - all_logvar).mean(axis=0)  # (D,)
    dims = [int(d) for d in np.argsort(-kl_per_dim)[:8]]
    values = [float(v) for v in np.linspace(-3, 3, 11)]
    rows = np.repeat(mean[:1], len(dims) * len(values), axis=0)
    for r, d in enumerate(dims):
        rows[r * len(values) : (r + 1) * len(values), d] = values
    out["traversals"] = figures.traversals(
        likelihood.pixel_mean(backend.decode(rows)),
        dims,
        values,
        [float(kl_per_dim[d]) for d in dims],
        report / "traversals.png",
    )
    out["latent_map"] = figures.latent_map(all_mean, labels, report / "latent_map.png")
    out["learning_curves"] = figures.learning_curves(record.metrics, report / "learning_curves.png")
    return out


@dataclass(frozen=True)
class Images:
    """What is scored: the [0, 1] pixels, their labels (a data set's), where they came from, and the pixels
    in the likelihood's data space with a description of how they were drawn."""

    pixels: np.ndarray  # (N, C, H, W)
    labels: np.ndarray | None
    source: dict[str, Any]
    data_x: np.ndarray  # (N, C, H, W)
    test_set: str
    available: int  # the images the source holds: more than N when --limit scored only the first N


def read_images(args: argparse.Namespace, record: Checkpoint) -> Images:
    """The images to score, from --images-dir or the data set's test split, limited to --limit."""
    config, train_config = record.model_config, record.train_config
    contract = PreprocessContract(input_shape=config.input_shape)
    seed = train_config.test_binarize_seed
    likelihood = likelihoods.get(config.likelihood)
    if not args.images_dir:
        dataset, data_dir = args.dataset or train_config.dataset, args.data_dir or train_config.data_dir
        return fixed_test_images(dataset, data_dir, contract, likelihood, seed, args.limit)
    pixels, _ = read_image_folder(Path(args.images_dir), contract)  # sorted by name, no split
    available = len(pixels)
    pixels = pixels[: args.limit or None]
    # image by image, as /elbo does, so both agree on any images in any order
    data_x = likelihood.images_to_data_space(pixels, seed)
    test_set = f"{likelihood.name} data space, each image drawn from seed {seed} and its content"
    return Images(pixels, None, {"images_dir": str(args.images_dir)}, data_x, test_set, available)


def fixed_test_images(
    dataset: str,
    data_dir: str | None,
    contract: PreprocessContract,
    likelihood: Likelihood,
    seed: int,
    limit: int | None = None,
) -> Images:
    """The data set's test split, or its first `limit` images, as the literature's fixed test set: binarised
    (or dequantised) once, as a whole, with `seed` (a prefix gets the bits it has in the whole)."""
    data = load_dataset(dataset, data_dir, contract)
    pixels = data.test[: limit or None]
    labels = data.test_labels[: limit or None] if data.test_labels is not None else None
    source = {"dataset": data.name, "split": "test", "checksums": data.checksums}
    data_x = fixed_test_set(pixels, likelihood, seed)
    test_set = f"{likelihood.name} data space, fixed once with seed {seed}"
    return Images(pixels, labels, source, data_x, test_set, len(data.test))


def choose_backend(args: argparse.Namespace, model: VAE) -> tuple[Any, dict[str, Any]]:
    """The torch model, or with --onnx-dir its exported graphs (which must be CHECKPOINT's), and what
    scored: the backend and the hashes of the graphs. A two-level VAE's backend is a
    `model.core.hierarchy.TwoLevelBackend`, over torch or over its graphs (`OnnxLevels`)."""
    levels: dict[str, Any] = {"levels": 2} if model.lower is not None else {}
    if not args.onnx_dir:
        backend: Any = TwoLevelTorchBackend(model) if model.lower is not None else TorchBackend(model)
        return backend, {"backend": "torch", **levels, "prior": backend.prior.name}
    from model.core.artifact import load_model_dir

    onnx_model = load_model_dir(args.onnx_dir, threads=args.threads)
    manifest = onnx_model.manifest
    source = manifest.source_checkpoint
    if source is None or source.sha256 != sha256_file(args.checkpoint):
        raise ValueError(f"{args.onnx_dir} was not exported from {args.checkpoint}")
    backend = onnx_model if onnx_model.levels is None else onnx_model.levels
    scored_with = {
        "backend": "onnxruntime",
        "encoder_sha256": manifest.encoder.sha256,
        "decoder_sha256": manifest.decoder.sha256,
        **({"prior_sha256": manifest.prior.graph.sha256} if manifest.prior else {}),
        **levels,
        **(
            {f"{name}_sha256": getattr(manifest.levels, name).sha256 for name in LEVEL_GRAPHS}
            if manifest.levels is not None
            else {}
        ),
        "prior": backend.prior.name,  # both backends carry one: N(0, I) is "standard_normal"
    }
    return backend, scored_with


def write_scores(report: Path, result: dict[str, Any], scores: scoring.Scores) -> None:
    """report.json and scores.npz; the partial scores of an interrupted run are no longer needed."""
    (report / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    np.savez_compressed(
        report / "scores.npz",
        elbo=scores.elbo,
        reconstruction=scores.reconstruction,
        kl=scores.kl,
        **({"log_likelihood": scores.log_likelihood} if scores.log_likelihood is not None else {}),
    )
    (report / PARTIAL).unlink(missing_ok=True)


def summary_line(summary: dict[str, Any], k: int) -> str:
    line = (
        f"{summary['images']} images: ELBO {summary['elbo']:.2f} nats (reconstruction "
        f"{summary['reconstruction']:.2f}, KL {summary['kl']:.2f}), {summary['bits_per_dim_elbo']:.4f} bits/dim"
    )
    if summary["nll_nats"] is not None:
        line += f"; IWAE k={k}: NLL {summary['nll_nats']:.2f} nats, {summary['bits_per_dim']:.4f} bits/dim"
    return line


def run_fingerprint(
    args: argparse.Namespace, checkpoint_sha256: str, scored_with: dict[str, Any], images: Images
) -> dict[str, Any]:
    """What --resume requires to be the same as the interrupted run's."""
    return {
        "checkpoint_sha256": checkpoint_sha256,
        "scored_with": scored_with,
        "data": images.source,
        "test_set": images.test_set,
        "images": len(images.data_x),
        "k": args.k,
        "seed": args.seed,
        "batch_size": args.batch_size,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        model, record = checkpoint.load_model(args.checkpoint)
        images = read_images(args, record)
        backend, scored_with = choose_backend(args, model)
    except (DataMissingError, DataChecksumError, checkpoint.CheckpointError, ValueError) as exc:
        print(f"vae-eval: {exc}", file=sys.stderr)
        return 2
    likelihood = likelihoods.get(record.model_config.likelihood)
    report = Path(args.report) if args.report else Path(args.checkpoint).parent / "report"
    report.mkdir(parents=True, exist_ok=True)
    checkpoint_sha256 = sha256_file(args.checkpoint)
    fingerprint = run_fingerprint(args, checkpoint_sha256, scored_with, images)
    try:
        scores, seconds = evaluate(
            backend,
            likelihood,
            images.data_x,
            args.seed,
            args.k,
            args.batch_size,
            progress=not args.no_progress,
            partial=report / PARTIAL,
            fingerprint=fingerprint,
            resume=args.resume,
        )
    except ValueError as exc:
        print(f"vae-eval: {exc}", file=sys.stderr)
        return 2
    summary = scoring.summarize(scores)
    if images.available > len(images.data_x):  # a prefix: its figures are not the whole test set's
        summary["of_images"] = images.available
    result = {
        "checkpoint": str(args.checkpoint),
        "checkpoint_sha256": checkpoint_sha256,
        "epoch": record.epoch,
        **({"averaged": record.averaged.to_dict()} if record.averaged else {}),  # the epochs it is the mean of
        "model_config": record.model_config.to_dict(),
        "data": images.source,
        "test_set": images.test_set,
        "noise_seed": args.seed,
        "scored_with": scored_with,
        "metrics": summary,
        "seconds": seconds,
        "threads": args.threads,
        "versions": checkpoint.library_versions(),
        "command": ["vae-eval", *(argv if argv is not None else sys.argv[1:])],
    }
    if not args.no_figures:
        result["figures"] = make_figures(
            backend, record, likelihood, images.pixels, images.data_x, images.labels, report, args.seed
        )
    write_scores(report, result, scores)
    print(summary_line(summary, args.k) + f"  [{seconds:.1f}s] -> {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
