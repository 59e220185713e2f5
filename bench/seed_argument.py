"""Why a VAE samples z from q(z|x), measured: `python -m bench.seed_argument [--model-dir DIR]`.

Runs on the serving artifacts through `model.core` (onnxruntime, no torch), with the service's noise:
every number here is what `POST /elbo?k=K&seed=S&estimator=prior|importance` answers for the same
image, seed and dequantisation seed (the model's test-set seed).

- Convergence: for a few Fashion-MNIST test images, the prior (naive Monte Carlo) and the importance
  (IWAE) estimates of log p(x) and the effective sample size of their weights, at k from 1 to K. One
  draw of K weights per image and estimator gives every k: the first k weights are /elbo's at that k.
- Erased versus shifted: one test image, a copy with a patch erased, copies shifted right by 1 and 2
  pixels; for each, the Euclidean distance to the image, and both estimates at k = K.

Writes bench/results/seed_argument.json and seed_argument.png (or --out-dir); `python -m bench.report`
puts the table in docs/design/sampling.md. Default model: the latest version in artifacts/fashion-mnist-gaussian/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.provenance import git_state, model_on_disk
from model.core import distributions as dist
from model.core import scoring
from model.core.likelihoods import Likelihood

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
GAUSSIAN_MODEL = REPO / "artifacts" / "fashion-mnist-gaussian"
ESTIMATORS = ("prior", "importance")


def latest_version(model: Path) -> Path:
    """MODEL/<highest version with a manifest>, or an error that says how to make one."""
    from service.registry import version_key

    versions = sorted((p.parent for p in model.glob("*/manifest.json")), key=lambda p: version_key(p.name))
    if not versions:
        raise SystemExit(
            f"no exported model under {model}: train and export the Gaussian model "
            "(vae-train --likelihood gaussian ..., then vae-export ... --name fashion-mnist-gaussian), "
            "or pass --model-dir DIR"
        )
    return versions[-1]


def k_grid(k_max: int, points: int = 25) -> list[int]:
    """About `points` log-spaced sample sizes from 1 to k_max, both included, and every power of 10 between."""
    decades = {10**j for j in range(int(math.log10(k_max)) + 1)}
    return sorted({int(round(k)) for k in np.logspace(0, math.log10(k_max), points)} | decades | {k_max})


def prefix_statistics(log_w: np.ndarray, ks: list[int]) -> dict[str, np.ndarray]:
    """The estimate, its standard error and ESS of the first k weights, for each k: (N, K) -> each (N, len(ks))."""
    columns = np.array(ks) - 1
    log_sum = np.logaddexp.accumulate(log_w, axis=1)[:, columns]
    log_sum_squares = np.logaddexp.accumulate(2.0 * log_w, axis=1)[:, columns]
    k = np.array(ks, dtype=np.float64)
    return {
        "estimate": log_sum - np.log(k),
        "standard_error": dist.log_mean_exp_standard_error(log_sum, log_sum_squares, k),
        "effective_sample_size": dist.effective_sample_size(log_sum, log_sum_squares),
    }


def shifted(image: np.ndarray, pixels: int) -> np.ndarray:
    """(C, H, W) moved `pixels` to the right, the uncovered columns black."""
    out = np.zeros_like(image)
    out[..., pixels:] = image[..., : image.shape[-1] - pixels]
    return out


def erased(image: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) with a black size x size patch centred on the image's brightness centroid."""
    weights = image.sum(axis=0)  # (H, W)
    rows, cols = np.indices(weights.shape)
    centre = [int(round(float((axis * weights).sum() / weights.sum()))) for axis in (rows, cols)]
    top, left = (min(max(c - size // 2, 0), n - size) for c, n in zip(centre, weights.shape, strict=False))
    out = image.copy()
    out[:, top : top + size, left : left + size] = 0.0
    return out


def variants(image: np.ndarray, patch: int) -> dict[str, np.ndarray]:
    return {
        "original": image,
        f"{patch}x{patch} patch erased": erased(image, patch),
        "shifted 1 pixel": shifted(image, 1),
        "shifted 2 pixels": shifted(image, 2),
    }


def convergence(
    backend: scoring.Backend, likelihood: Likelihood, pixels: np.ndarray, seed: int, binarize_seed: int, k_max: int
) -> dict[str, Any]:
    data = likelihood.images_to_data_space(pixels, binarize_seed)
    ks = k_grid(k_max)
    curves = {}
    for estimator in ESTIMATORS:
        stats = prefix_statistics(scoring.log_weights(backend, likelihood, data, seed, k_max, estimator), ks)
        curves[estimator] = {name: _plain(values) for name, values in stats.items()}
    return {"k": ks, "curves": curves}


def erased_versus_shifted(
    backend: scoring.Backend,
    likelihood: Likelihood,
    image: np.ndarray,
    patch: int,
    seed: int,
    binarize_seed: int,
    k: int,
) -> list[dict[str, Any]]:
    named = variants(image, patch)
    pixels = np.stack(list(named.values()))
    data = likelihood.images_to_data_space(pixels, binarize_seed)
    scores = {e: scoring.score(backend, likelihood, data, seed, k=k, estimator=e) for e in ESTIMATORS}
    rows = []
    for i, name in enumerate(named):
        row = {
            "variant": name,
            "distance": float(np.linalg.norm(pixels[i] - image)),
            "elbo": float(scores["importance"].elbo[i]),
        }
        for estimator, s in scores.items():
            row[estimator] = {
                "estimate": float(s.log_likelihood[i]),
                "standard_error": float(s.standard_error[i]),
                "effective_sample_size": float(s.effective_sample_size[i]),
            }
        rows.append(row)
    return rows


def run(
    backend: scoring.Backend,
    likelihood: Likelihood,
    test_images: np.ndarray,
    indices: list[int],
    argument_index: int,
    patch: int,
    seed: int,
    binarize_seed: int,
    k_max: int,
) -> dict[str, Any]:
    """The measurements, on any backend: the convergence curves and the erased-versus-shifted table."""
    began = time.perf_counter()
    result = {
        "images": indices,
        "seed": seed,
        "binarize_seed": binarize_seed,
        "k_max": k_max,
        "likelihood": likelihood.name,
        "dims": int(np.prod(test_images.shape[1:])),
        "convergence": convergence(backend, likelihood, test_images[indices], seed, binarize_seed, k_max),
        "argument_image": argument_index,
        "patch": patch,
        "erased_versus_shifted": erased_versus_shifted(
            backend, likelihood, test_images[argument_index], patch, seed, binarize_seed, k_max
        ),
    }
    result["seconds"] = round(time.perf_counter() - began, 1)
    return result


def _plain(values: np.ndarray) -> list:
    """JSON lists, nan (the standard error of one sample) as null."""
    return [[None if math.isnan(v) else float(v) for v in row] for row in np.asarray(values)]


def figure(result: dict[str, Any], pictures: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conv, ks = result["convergence"], np.array(result["convergence"]["k"])
    reference = np.array(conv["curves"]["importance"]["estimate"])[:, -1:]  # the best estimate at hand
    fig = plt.figure(figsize=(11, 7.2), dpi=90)
    grid = fig.add_gridspec(2, len(pictures), height_ratios=[1.5, 1])
    gap_ax, ess_ax = fig.add_subplot(grid[0, :2]), fig.add_subplot(grid[0, 2:])
    colours = {"prior": "tab:red", "importance": "tab:blue"}
    for estimator, curves in conv["curves"].items():
        for i in range(len(result["images"])):
            label = f"{estimator}: z ~ {'N(0, I)' if estimator == 'prior' else 'q(z|x)'}" if i == 0 else None
            gap = np.array(curves["estimate"][i]) - reference[i]
            gap_ax.plot(ks, gap, color=colours[estimator], alpha=0.75, label=label)
            ess_ax.plot(ks, curves["effective_sample_size"][i], color=colours[estimator], alpha=0.75, label=label)
    gap_ax.set(
        xscale="log",
        yscale="symlog",
        xlabel="samples k",
        ylabel=f"estimate - importance estimate at k={ks[-1]} (nats)",
        title=f"log p(x) estimates, {len(result['images'])} test images",
    )
    gap_ax.axhline(0, color="black", lw=0.5)
    ess_ax.plot(ks, ks, color="grey", ls=":", label="ESS = k")
    ess_ax.set(
        xscale="log",
        yscale="log",
        xlabel="samples k",
        ylabel="effective sample size",
        title="effective sample size of the weights",
    )
    for ax in (gap_ax, ess_ax):
        ax.legend(fontsize=8)
    for j, (row, (name, image)) in enumerate(zip(result["erased_versus_shifted"], pictures.items(), strict=False)):
        ax = fig.add_subplot(grid[1, j])
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=1)
        ax.set_title(
            f"{name}\n|x' - x| = {row['distance']:.2f}\nprior {row['prior']['estimate']:.0f}, "
            f"q(z|x) {row['importance']['estimate']:.0f} nats",
            fontsize=8,
        )
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def argument_section(result: dict[str, Any]) -> str:
    """The docs' table: erased versus shifted, then the ESS at a few k."""
    model, k = result["model"], result["k_max"]
    lines = [
        f"Measured by `{result['command']}` on {result['machine']['time']}, model `{model['name']}` "
        f"{model['version']} ({result['likelihood']} likelihood), seed {result['seed']}, dequantisation seed "
        f"{result['binarize_seed']}: the numbers `POST /elbo?k={k}&seed={result['seed']}&estimator=...` gives. "
        f"Test image {result['argument_image']}; log p(x) in nats (of the 8-bit image for a Gaussian "
        "decoder), Monte Carlo standard error in brackets, ESS = effective sample size.",
        "",
        "| image | distance to the original | naive estimate (z ~ N(0, I)), ESS | importance estimate "
        "(z ~ q(z\\|x)), ESS | ELBO |",
        "|---|---|---|---|---|",
    ]
    for row in result["erased_versus_shifted"]:
        p, q = row["prior"], row["importance"]
        lines.append(
            f"| {row['variant']} | {row['distance']:.2f} | {p['estimate']:.1f} ({p['standard_error']:.2f}), "
            f"{p['effective_sample_size']:.1f} | {q['estimate']:.1f} ({q['standard_error']:.2f}), "
            f"{q['effective_sample_size']:.1f} | {row['elbo']:.1f} |"
        )
    rows = result["erased_versus_shifted"]
    order = {
        "distance (nearest first)": sorted(rows, key=lambda r: r["distance"]),
        "the naive estimate": sorted(rows, key=lambda r: -r["prior"]["estimate"]),
        "the importance estimate": sorted(rows, key=lambda r: -r["importance"]["estimate"]),
    }
    lines += [
        "",
        "Ranked, most likely first, "
        + "; ".join(f"by {how}: {' > '.join(r['variant'] for r in ranked)}" for how, ranked in order.items())
        + ".",
    ]
    conv, ks = result["convergence"], result["convergence"]["k"]
    shown = [i for i, k in enumerate(ks) if k in (10, 100, 1000, ks[-1])] or [len(ks) - 1]
    lines += [
        "",
        f"Convergence on test images {', '.join(map(str, result['images']))}: median over the images of "
        "the gap to the importance estimate at the largest k (nats), and of the ESS.",
        "",
        "| k | " + " | ".join(str(ks[i]) for i in shown) + " |",
        "|---|" + "---|" * len(shown),
    ]
    reference = np.array(conv["curves"]["importance"]["estimate"])[:, -1]
    for estimator in ESTIMATORS:
        curves = conv["curves"][estimator]
        gaps = np.median(np.array(curves["estimate"])[:, shown] - reference[:, None], axis=0)
        ess = np.median(np.array(curves["effective_sample_size"])[:, shown], axis=0)
        lines.append(
            f"| {estimator}: gap, ESS | "
            + " | ".join(f"{g:.1f}, {e:.1f}" for g, e in zip(gaps, ess, strict=False))
            + " |"
        )
    return "\n".join(lines) + "\n"


def _write_atomically(path: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as handle:
        handle.write(data)
    os.chmod(handle.name, 0o644)  # a temporary file is private; a result is for everyone to read
    os.replace(handle.name, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.seed_argument", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="an exported model (default: the latest version in artifacts/fashion-mnist-gaussian/)",
    )
    p.add_argument("--images", type=int, nargs="+", default=[0, 1, 2, 3], help="test images for the curves")
    p.add_argument("--argument-image", type=int, default=0, help="the test image erased and shifted")
    p.add_argument("--patch", type=int, default=4, help="side of the erased square, pixels")
    p.add_argument("--k", type=int, default=5000, help="largest number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    from model.core.artifact import load_model_dir
    from model.data import load_dataset

    model_dir = args.model_dir or latest_version(GAUSSIAN_MODEL)
    model = load_model_dir(model_dir, threads=args.threads)
    binarize_seed = int(model.manifest.training.get("train_config", {}).get("test_binarize_seed", 0))
    test = load_dataset("fashion-mnist").test
    result = run(
        model, model.likelihood, test, args.images, args.argument_image, args.patch, args.seed, binarize_seed, args.k
    )
    result.update(
        command="python -m bench.seed_argument" + (f" --model-dir {model_dir}" if args.model_dir else ""),
        model=model_on_disk(Path(model_dir)),
        git=git_state(),
        machine={
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        },
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out_dir) as scratch:
        picture = Path(scratch) / "seed_argument.png"
        figure(result, variants(test[args.argument_image], args.patch), picture)
        os.replace(picture, args.out_dir / "seed_argument.png")
    _write_atomically(args.out_dir / "seed_argument.json", (json.dumps(result, indent=2) + "\n").encode())
    print(argument_section(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
