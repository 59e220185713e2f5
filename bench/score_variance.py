"""How noisy one image's score is: the spread over noise seeds of the ELBO (one sample) and of the
IWAE estimate at several k, on the shipped model (onnxruntime), for the first few images of the
fixed binarised Fashion-MNIST test set. Each (image, seed) pair draws its own stream, so the spread
over seeds is the estimator's noise for that image.

    python -m bench.score_variance   -> bench/results/score_variance.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.provenance import default_model_dir
from bench.run import RESULTS, machine
from model.core import scoring
from model.core.artifact import load_model_dir
from model.data import fixed_test_set, load_dataset

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.score_variance",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model-dir", default=str(default_model_dir()), help="default: the served default version")
    p.add_argument("--images", type=int, default=4, help="the first N images of the test set")
    p.add_argument("--seeds", type=int, default=10, help="noise seeds 0..N-1")
    p.add_argument("--k", type=int, nargs="+", default=[100, 1000, 5000], help="IWAE sample counts")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def spread(values: np.ndarray) -> dict[str, Any]:
    """(seeds, images) -> per image: mean and sample standard deviation over the seeds, and the root
    mean square of those deviations over the images."""
    std = values.std(axis=0, ddof=1)  # (images,)
    return {"mean": values.mean(axis=0).tolist(), "std": std.tolist(), "rms_std": float(np.sqrt(np.mean(std**2)))}


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = load_model_dir(args.model_dir, threads=args.threads)
    seed = int(model.manifest.training["train_config"]["test_binarize_seed"])
    data = load_dataset(model.manifest.training["train_config"]["dataset"])
    x = fixed_test_set(data.test, model.likelihood, seed)[: args.images]  # (N, C, H, W), the bits vae-eval scores
    began = time.perf_counter()
    elbo = np.array([scoring.score(model, model.likelihood, x, s).elbo for s in range(args.seeds)])  # (S, N)
    iwae = {
        k: np.array([scoring.score(model, model.likelihood, x, s, k=k).log_likelihood for s in range(args.seeds)])
        for k in args.k
    }
    results = {
        "machine": machine(),
        "command": "python -m bench.score_variance",
        "git_commit": git_commit(),
        "model": {
            "name": model.manifest.name,
            "version": model.manifest.version,
            "encoder_sha256": model.manifest.encoder.sha256,
            "decoder_sha256": model.manifest.decoder.sha256,
        },
        "test_images": list(range(args.images)),
        "test_set": f"{model.likelihood.name} data space, fixed once with seed {seed}",
        "seeds": list(range(args.seeds)),
        "nats": {"elbo": spread(elbo), **{f"iwae_k{k}": spread(values) for k, values in iwae.items()}},
        "seconds": time.perf_counter() - began,
        "threads": args.threads,
    }
    for name, row in results["nats"].items():
        print(
            f"{name:10s} " + "  ".join(f"{m:8.2f} +- {s:5.2f}" for m, s in zip(row["mean"], row["std"], strict=False))
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "score_variance.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
