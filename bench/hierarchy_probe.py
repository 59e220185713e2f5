"""Where a VAE's nats sit, level by level, and whether it beats a shipped version, without a run of hours.

    python -m bench.hierarchy_probe CHECKPOINT [--images 2000]
        [--paired REPORT --against artifacts/fashion-mnist-vae/3.1.0 [DIR ...]]
        -> bench/results/hierarchy_probe.json (one entry per checkpoint, keyed by its SHA-256)

Two readings (issue 33, docs/design/hierarchy.md):

- levels: on the first N images of vae-eval's fixed binarised test set, each level's KL and its active
  units (Burda et al. 2016: the dimensions whose posterior mean varies over the images by more than
  0.01). The top level's KL is against the model's prior (analytic for N(0, I), one sample for a
  mixture); a two-level model's lower level's is KL(q(z1 | x, z2) || p(z1 | z2)) at a z2 drawn from
  q(z2 | x). A level whose units have collapsed onto its prior carries no information about the image.
- paired: the per-image log-likelihoods of a `vae-eval --limit N` report (its scores.npz) against a
  shipped version's report on the same images, test set, noise seed and k: the mean difference and its
  standard error. Two models' scores of the same image move together, so their difference varies far
  less than the scores do: 200 images at k=5000 (minutes) tell a half-nat difference from noise, where
  the full test set takes hours.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.provenance import git_state
from bench.run import RESULTS, machine
from model.checkpoint import load_model
from model.core import likelihoods
from model.core.preprocess import PreprocessContract
from model.data import sha256_file
from model.evaluate import fixed_test_images
from model.hierarchy_loss import kl_normal_diag
from model.losses import reparameterize
from model.vae import VAE

ACTIVE = 0.01  # the variance over images of a unit's posterior mean above which it is active


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.hierarchy_probe", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("checkpoint", help="a checkpoint written by vae-train")
    p.add_argument("--images", type=int, default=2000, help="the first N test images (default: 2000)")
    p.add_argument("--seed", type=int, default=0, help="the noise of the z2 each lower level is read at")
    p.add_argument("--paired", help="a vae-eval report folder of this checkpoint (report.json, scores.npz)")
    p.add_argument("--against", nargs="+", default=[], help="shipped versions' folders; their report/ the other side")
    p.add_argument("--results", default=str(RESULTS / "hierarchy_probe.json"))
    return p.parse_args(argv)


def active_units(mean: torch.Tensor) -> int:
    """The dimensions of posterior means (N, D) that vary over the N images by more than ACTIVE."""
    return int((mean.var(dim=0) > ACTIVE).sum())


def levels(model: VAE, x: torch.Tensor, seed: int) -> dict[str, Any]:
    """Each level's mean KL (nats) and active units over the images x (N, C, H, W) in data space."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        features = model.encoder.body(x)
        mean2, logvar2 = model.encoder.posterior(features)
        z2 = reparameterize(mean2, logvar2, torch.randn(mean2.shape, generator=generator))
        kl2 = model.prior.kl(z2, mean2, logvar2)
        out: dict[str, Any] = {
            "top": {"dims": mean2.shape[1], "kl": float(kl2.mean()), "active_units": active_units(mean2)}
        }
        if model.lower is not None:
            mean1, logvar1 = model.lower.posterior(features, z2)
            kl1 = kl_normal_diag(mean1, logvar1, *model.lower.prior(z2))
            out["lower"] = {"dims": mean1.shape[1], "kl": float(kl1.mean()), "active_units": active_units(mean1)}
    out["kl"] = sum(level["kl"] for level in out.values())
    return out


def test_images(model: VAE, dataset: str, data_dir: str | None, count: int, seed: int) -> torch.Tensor:
    """The first `count` images of the fixed test set vae-eval scores, in the likelihood's data space."""
    config = model.config
    contract = PreprocessContract(input_shape=config.input_shape)
    images = fixed_test_images(dataset, data_dir, contract, likelihoods.get(config.likelihood), seed, count)
    return torch.from_numpy(np.ascontiguousarray(images.data_x, dtype=np.float32))


def paired(report: Path, against: Path) -> dict[str, Any]:
    """A report's per-image log-likelihoods against `against`/report's on the same first images; refused
    unless both scored the same test set with the same noise seed and k."""
    mine, theirs = (json.loads((folder / "report.json").read_text()) for folder in (report, against / "report"))
    for key in ("test_set", "noise_seed"):
        if mine[key] != theirs[key]:
            raise SystemExit(f"not the same {key}: {mine[key]!r} against {theirs[key]!r}")
    if mine["metrics"]["iwae_k"] != theirs["metrics"]["iwae_k"] or mine["data"] != theirs["data"]:
        raise SystemExit("not the same k or the same data: the scores cannot be paired")
    ours = np.load(report / "scores.npz")["log_likelihood"]
    other = np.load(against / "report" / "scores.npz")["log_likelihood"]
    if len(ours) > len(other):
        raise SystemExit(f"{len(ours)} images against {len(other)}: score a prefix of the other's")
    other = other[: len(ours)]
    difference = ours - other
    return {
        "report": str(report),
        "against": str(against),
        "images": len(ours),
        "k": mine["metrics"]["iwae_k"],
        "nll_nats": float(-ours.mean()),
        "against_nll_nats": float(-other.mean()),
        "gain_nats": float(difference.mean()),  # > 0: this checkpoint scores the images higher
        "standard_error": float(difference.std(ddof=1) / math.sqrt(len(ours))),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model, record = load_model(args.checkpoint)
    train = record.train_config
    x = test_images(model, train.dataset, train.data_dir, args.images, train.test_binarize_seed)
    entry: dict[str, Any] = {
        "checkpoint": args.checkpoint,
        "epoch": record.epoch,
        "command": f"python -m bench.hierarchy_probe {args.checkpoint} --images {args.images}",
        "images": len(x),
        "levels": levels(model, x, args.seed),
    }
    if args.paired:
        if not args.against:
            raise SystemExit("--paired needs --against, the shipped version to pair with")
        entry["paired"] = [paired(Path(args.paired), Path(against)) for against in args.against]
        entry["command"] += f" --paired {args.paired} --against {' '.join(args.against)}"
    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {"entries": {}}
    results["entries"][sha256_file(Path(args.checkpoint))] = {**entry, "machine": machine(), "git": git_state()}
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(entry, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
