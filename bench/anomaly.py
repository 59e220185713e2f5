"""The anomaly benchmark: `python -m bench.anomaly` (needs the `bench` extra: scikit-learn, scikit-image).

Inliers are Fashion-MNIST test images, never used to fit or calibrate: the first half goes with the
tuning sets, the second half with the held-out sets. Scores are fitted and referenced on the
validation split of the training data that vae-export uses (export/calibrate.py).

The outlier sets are split before any result is seen. The candidate scores are compared on TUNING
only (`SELECTION`); the headline figures are HELD_OUT.
Every image goes through the service's preprocessing contract (resize to 28x28, grey), as an upload
would. Writes bench/results/anomaly.json and bench/results/anomaly_scores.png; `python -m bench.report`
puts the table in docs/anomaly.md. The model is the one the bundled repository serves by default (the highest
version of artifacts/fashion-mnist-vae/) unless --model-dir names another.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from bench.provenance import default_model_dir
from export import calibrate as calibration
from model.core import anomaly
from model.core.artifact import load_model_dir
from model.core.preprocess import PreprocessContract, image_to_array
from model.core.scoring import score as elbo_score
from model.data import load_dataset

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
TUNING = ("digits", "noise", "vflip", "blur")
HELD_OUT = ("lfw", "photos", "constant", "hflip", "inverted", "occlusion", "shift")
# The target (AUROC >= 0.95) excludes flips and corruptions; for them the score must beat the raw likelihood.
EXEMPT = ("vflip", "hflip", "blur", "occlusion", "shift")
TARGET_AUROC = 0.95
DERIVED = 2000  # Fashion-MNIST test images per flipped or corrupted set
PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "rocket",
    "text",
    "cell",
)  # bundled, offline
CANDIDATES: dict[str, dict[str, Any]] = {
    "likelihood": {"method": "likelihood"},
    "complexity_png": {"method": "complexity", "complexity": "complexity_bits"},
    "complexity_data": {"method": "complexity", "complexity": "data_complexity_bits"},
    "typicality_kde_4": {
        "method": "typicality",
        "estimator": "kde",
        "statistics": ("elbo", "kl", "latent_norm", "complexity_bits"),
    },
    "typicality_kde_all": {"method": "typicality", "estimator": "kde", "statistics": anomaly.STATISTICS},
    "typicality_kde_terms": {
        "method": "typicality",
        "estimator": "kde",
        "statistics": ("reconstruction", "kl", "latent_norm", "posterior_logvar", "data_complexity_bits"),
    },
    "typicality_gaussian_all": {"method": "typicality", "estimator": "gaussian", "statistics": anomaly.STATISTICS},
    "typicality_gaussian_4": {
        "method": "typicality",
        "estimator": "gaussian",
        "statistics": ("elbo", "kl", "latent_norm", "complexity_bits"),
    },
    "typicality_gaussian_terms": {
        "method": "typicality",
        "estimator": "gaussian",
        "statistics": ("reconstruction", "kl", "latent_norm", "posterior_logvar", "data_complexity_bits"),
    },
}
BASELINE = "likelihood"
CALIBRATED = (0.005, 0.02)  # the bounds on the false-positive rate at the 1% threshold
SELECTION = (
    "highest mean AUROC over the tuning sets among the candidates whose 1% threshold (from the training "
    "split) flags 0.5-2% of the tuning inliers; all candidates if none does"
)


def _contract_array(images: np.ndarray, contract: PreprocessContract) -> np.ndarray:
    """(N, H, W) or (N, H, W, 3) uint8 at any size -> (N, C, 28, 28) through the upload path."""
    return np.stack([image_to_array(Image.fromarray(image), contract) for image in images])


def _to_uint8(values: np.ndarray, top: float) -> np.ndarray:
    return np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)


def digits(contract: PreprocessContract, rng: np.random.Generator, test: np.ndarray) -> np.ndarray:
    from sklearn.datasets import load_digits

    return _contract_array(_to_uint8(load_digits().images, 16.0), contract)  # 1,797 8x8 -> 28x28


def lfw(contract: PreprocessContract, rng: np.random.Generator, test: np.ndarray) -> np.ndarray:
    from skimage.data import lfw_subset

    return _contract_array(_to_uint8(lfw_subset(), 1.0), contract)  # 100 faces, 100 non-faces, 25x25


def photos(contract: PreprocessContract, rng: np.random.Generator, test: np.ndarray, count: int = 2000) -> np.ndarray:
    """Square crops (28 to 160 px) at random places of skimage's bundled photos, grey."""
    import skimage.data

    sources = [np.asarray(Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("L")) for name in PHOTOS]
    crops = []
    for _ in range(count):
        image = sources[rng.integers(len(sources))]
        side = int(rng.integers(28, min(161, *image.shape)))
        top, left = (int(rng.integers(0, extent - side + 1)) for extent in image.shape)
        crops.append(image_to_array(Image.fromarray(image[top : top + side, left : left + side]), contract))
    return np.stack(crops)


def noise(contract: PreprocessContract, rng: np.random.Generator, test: np.ndarray) -> np.ndarray:
    return np.rint(rng.random((1000, *contract.input_shape)) * 255).astype(np.float32) / 255.0


def constant(contract: PreprocessContract, rng: np.random.Generator, test: np.ndarray) -> np.ndarray:
    """Every grey level, 0 (black: a transparent PNG composited) to 255."""
    return np.broadcast_to(
        (np.arange(256, dtype=np.float32) / 255.0)[:, None, None, None], (256, *contract.input_shape)
    ).copy()


def vflip(contract, rng, test):
    return test[:, :, ::-1, :].copy()


def hflip(contract, rng, test):
    return test[:, :, :, ::-1].copy()


def inverted(contract, rng, test):
    return 1.0 - test


def blur(contract, rng, test):
    """Gaussian blur, radius 1 to 2 px."""
    out = [
        image_to_array(Image.fromarray(_to_uint8(x[0], 1.0)).filter(ImageFilter.GaussianBlur(float(r))), contract)
        for x, r in zip(test, rng.uniform(1.0, 2.0, len(test)), strict=False)
    ]
    return np.stack(out)


def occlusion(contract, rng, test):
    """A square of 8 to 14 px, black or white, at a random place."""
    out = test.copy()
    for image in out:
        side = int(rng.integers(8, 15))
        top, left = (int(rng.integers(0, extent - side + 1)) for extent in image.shape[1:])
        image[:, top : top + side, left : left + side] = float(rng.integers(2))
    return out


def shift(contract, rng, test):
    """Moved 4 to 8 px in a random direction, the uncovered border black."""
    out = np.zeros_like(test)
    height, width = test.shape[2:]
    for image, target in zip(test, out, strict=False):
        dy, dx = rng.integers(-8, 9, 2)
        while max(abs(dy), abs(dx)) < 4:
            dy, dx = rng.integers(-8, 9, 2)
        src = image[:, max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
        target[:, max(0, dy) : max(0, dy) + src.shape[1], max(0, dx) : max(0, dx) + src.shape[2]] = src
    return out


SETS: dict[str, Callable[..., np.ndarray]] = {
    "digits": digits,
    "noise": noise,
    "vflip": vflip,
    "blur": blur,
    "lfw": lfw,
    "photos": photos,
    "constant": constant,
    "hflip": hflip,
    "inverted": inverted,
    "occlusion": occlusion,
    "shift": shift,
}
DESCRIPTIONS = {
    "digits": "scikit-learn digits, 8x8 scaled to 28x28",
    "noise": "uniform noise",
    "vflip": "Fashion-MNIST flipped vertically",
    "blur": "Fashion-MNIST blurred (Gaussian, 1-2 px)",
    "lfw": "scikit-image lfw_subset, faces and non-faces",
    "photos": "crops of scikit-image's bundled photos",
    "constant": "constant images, every grey level",
    "hflip": "Fashion-MNIST flipped horizontally",
    "inverted": "Fashion-MNIST inverted",
    "occlusion": "Fashion-MNIST with an 8-14 px square occluded",
    "shift": "Fashion-MNIST shifted 4-8 px",
}


def figures(inliers: np.ndarray, outliers: np.ndarray) -> dict[str, float]:
    """AUROC, AUPRC (outliers positive) and the false-positive rate at 95% true-positive rate."""
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    labels = np.r_[np.zeros(len(inliers)), np.ones(len(outliers))]
    scores = np.r_[inliers, outliers]
    fpr, tpr, _ = roc_curve(labels, scores)
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "auprc": float(average_precision_score(labels, scores)),
        "fpr_at_95_tpr": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
    }


def fit_candidate(spec: dict[str, Any], fit_stats: dict[str, np.ndarray]) -> anomaly.Score:
    if spec["method"] == "complexity":
        return anomaly.ComplexityScore(spec["complexity"])
    if spec["method"] == "typicality":
        return anomaly.TypicalityScore.fit(fit_stats, tuple(spec["statistics"]), spec["estimator"])
    return anomaly.LikelihoodScore()


def cost_ratio(model, test: np.ndarray, repeats: int = 5, batch: int = 16) -> dict[str, float]:
    """Seconds per image of the anomaly statistics and of /elbo?k=1's scoring, best of `repeats` passes
    over the same images in request-sized batches (the machine was shared: a rough figure)."""
    likelihood = model.likelihood

    def elbo_pass():
        for i in range(0, len(test), batch):
            elbo_score(model, likelihood, likelihood.images_to_data_space(test[i : i + batch], 0), 0, k=1)

    def anomaly_pass():
        for i in range(0, len(test), batch):
            anomaly.statistics(model, likelihood, test[i : i + batch], 0, 0)

    best = {}
    for name, run in (("elbo_k1", elbo_pass), ("anomaly", anomaly_pass)):
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            run()
            times.append(time.perf_counter() - began)
        best[name] = min(times) / len(test)
    return {
        "elbo_k1_s_per_image": best["elbo_k1"],
        "anomaly_s_per_image": best["anomaly"],
        "ratio": best["anomaly"] / best["elbo_k1"],
        "batch": batch,
        "images": len(test),
    }


def run(threads: int, seed: int, model_dir: Path | None = None) -> dict[str, Any]:
    model = load_model_dir(model_dir or default_model_dir(), threads=threads)
    manifest = model.manifest
    contract = PreprocessContract.from_dict(manifest.preprocessing)
    binarize_seed = int(manifest.training["train_config"]["test_binarize_seed"])
    data = load_dataset("fashion-mnist")
    fit_images, reference_images, split = calibration.validation_split(data.train, calibration.DEFAULT_COUNT)
    half = len(data.test) // 2
    inliers = {"tuning": data.test[:half], "held_out": data.test[half:]}

    def stats_of(images):
        return calibration.batched_statistics(model, images, seed, binarize_seed)

    began = time.perf_counter()
    fit_stats, reference_stats = stats_of(fit_images), stats_of(reference_images)
    inlier_stats = {part: stats_of(images) for part, images in inliers.items()}
    outlier_stats, sizes = {}, {}
    for index, name in enumerate(SETS):
        part = "tuning" if name in TUNING else "held_out"
        rng = np.random.default_rng([seed, index])
        source = inliers[part][rng.permutation(half)[:DERIVED]]
        images = SETS[name](contract, rng, source).astype(np.float32)
        outlier_stats[name], sizes[name] = stats_of(images), len(images)
    print(
        f"statistics of {sum(sizes.values()) + 4 * calibration.DEFAULT_COUNT} images in "
        f"{time.perf_counter() - began:.0f} s"
    )

    candidates = {name: fit_candidate(spec, fit_stats) for name, spec in CANDIDATES.items()}
    per_set: dict[str, Any] = {}
    for name in SETS:
        part = "tuning" if name in TUNING else "held_out"
        per_set[name] = {
            "part": part,
            "images": sizes[name],
            "description": DESCRIPTIONS[name],
            "exempt": name in EXEMPT,
            "scores": {
                cand: figures(score(inlier_stats[part]), score(outlier_stats[name]))
                for cand, score in candidates.items()
            },
        }
    tuning_mean = {cand: float(np.mean([per_set[s]["scores"][cand]["auroc"] for s in TUNING])) for cand in candidates}
    # The 1% threshold read from the training split's reference scores, applied to the tuning inliers.
    tuning_fpr = {}
    for cand, score in candidates.items():
        threshold = anomaly.Calibration.build(score, reference_stats, seed, binarize_seed, split).threshold(0.01)
        tuning_fpr[cand] = float(np.mean(score(inlier_stats["tuning"]) > threshold))
    calibrated = [cand for cand in candidates if CALIBRATED[0] <= tuning_fpr[cand] <= CALIBRATED[1]]
    # The held-out sets and held-out inliers play no part in the choice.
    chosen = max(calibrated or candidates, key=lambda cand: tuning_mean[cand])

    score = candidates[chosen]
    calib = anomaly.Calibration.build(score, reference_stats, seed, binarize_seed, split)
    fresh = {part: score(stats) for part, stats in inlier_stats.items()}
    all_test = np.r_[fresh["tuning"], fresh["held_out"]]
    calibration_figures = {
        f"fpr_{int(rate * 1000)}permil": {
            "target": rate,
            "threshold": calib.threshold(rate),
            "test_all": float(np.mean(all_test > calib.threshold(rate))),
            "test_held_out": float(np.mean(fresh["held_out"] > calib.threshold(rate))),
            "training_reference": float(np.mean(calib.reference > calib.threshold(rate))),
        }
        for rate in (0.01, 0.05, 0.001)
    }
    raw = candidates[BASELINE]
    raw_calib = anomaly.Calibration.build(raw, reference_stats, seed, binarize_seed, split)
    raw_test = np.r_[raw(inlier_stats["tuning"]), raw(inlier_stats["held_out"])]
    calibration_figures["baseline_fpr_10permil_test_all"] = float(np.mean(raw_test > raw_calib.threshold(0.01)))
    test_percentiles = calib.percentile(all_test)
    calibration_figures["median_test_percentile"] = float(np.median(test_percentiles))

    results = {
        "model": {
            "name": manifest.name,
            "version": manifest.version,
            "encoder_sha256": manifest.encoder.sha256,
            "decoder_sha256": manifest.decoder.sha256,
        },
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "threads": threads,
            "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        },
        "seed": seed,
        "binarize_seed": binarize_seed,
        "inliers": {"tuning": "Fashion-MNIST test[0:5000]", "held_out": "Fashion-MNIST test[5000:10000]"},
        "calibration_split": split,
        "tuning_sets": list(TUNING),
        "held_out_sets": list(HELD_OUT),
        "exempt_sets": list(EXEMPT),
        "target_auroc": TARGET_AUROC,
        "candidates": CANDIDATES,
        "selection": SELECTION,
        "tuning_mean_auroc": tuning_mean,
        "tuning_fpr_at_1pct_threshold": tuning_fpr,
        "chosen": chosen,
        "baseline": BASELINE,
        "sets": per_set,
        "calibration": calibration_figures,
        "cost": cost_ratio(model, data.test[:512]),
    }
    histogram(results, score, raw, inlier_stats["held_out"], outlier_stats)
    return results


def histogram(
    results: dict[str, Any], score, raw, inliers: dict[str, np.ndarray], outliers: dict[str, dict[str, np.ndarray]]
) -> None:
    """Held-out inlier and outlier scores, raw likelihood beside the chosen score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for axis, (title, fn) in zip(
        axes, (("raw likelihood: -ELBO (nats)", raw), (f"chosen: {results['chosen']}", score)), strict=False
    ):
        inlier = fn(inliers)
        values = {name: fn(outliers[name]) for name in HELD_OUT}
        # Both scores are positive (-ELBO, half a squared distance) and span decades: log-spaced bins.
        low, high = np.percentile(np.r_[inlier, *values.values()], [0.1, 99.9])
        low = max(low, 1e-2)
        bins = np.geomspace(low, high, 80)
        axis.hist(
            np.clip(inlier, low, high),
            bins=bins,
            color="black",
            alpha=0.5,
            weights=np.full(len(inlier), 1 / len(inlier)),
            label="Fashion-MNIST test (inliers)",
        )
        for name, v in values.items():
            axis.hist(
                np.clip(v, low, high), bins=bins, histtype="step", weights=np.full(len(v), 1 / len(v)), label=name
            )
        axis.set_title(title)
        axis.set_xscale("log")
        axis.set_xlabel("score (higher = more anomalous; log scale, clipped to the 0.1-99.9% range)")
        axis.set_ylabel("share of the set's images")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "anomaly_scores.png", dpi=90)
    plt.close(fig)


def anomaly_section(results: dict[str, Any]) -> str:
    """The docs' table (docs/anomaly.md): per set, the raw likelihood's figures beside the chosen score's;
    misses in bold."""
    chosen, base = results["chosen"], results["baseline"]
    lines = [
        f"Measured by `python -m bench.anomaly` on {results['machine']['time']}; model "
        f"`{results['model']['name']}` {results['model']['version']}. Chosen score: `{chosen}` "
        f"({results['selection']}). Inliers: {results['inliers']['held_out']} for held-out sets, "
        f"{results['inliers']['tuning']} for tuning sets. Raw = -ELBO (k=1).",
        "",
        "| set | part | images | AUROC raw / chosen | AUPRC raw / chosen | FPR@95%TPR raw / chosen | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for _name, row in sorted(results["sets"].items(), key=lambda kv: (kv[1]["part"] != "held_out", kv[0])):
        r, c = row["scores"][base], row["scores"][chosen]
        if row["exempt"]:
            met = c["auroc"] > r["auroc"]
            target = f"beat raw: {_yes(met)}"
        else:
            met = c["auroc"] >= results["target_auroc"]
            target = f"AUROC >= {results['target_auroc']}: {_yes(met)}"
        lines.append(
            f"| {row['description']} | {row['part'].replace('_', '-')} | {row['images']} | "
            f"{r['auroc']:.3f} / {c['auroc']:.3f} | {r['auprc']:.3f} / {c['auprc']:.3f} | "
            f"{r['fpr_at_95_tpr']:.3f} / {c['fpr_at_95_tpr']:.3f} | {target} |"
        )
    cal, cost = results["calibration"], results["cost"]
    one = cal["fpr_10permil"]
    ok = 0.005 <= one["test_held_out"] <= 0.02
    lines += [
        "",
        f"Calibration: at the 1% threshold (from the training split's reference scores), the false-positive "
        f"rate on the 5,000 held-out Fashion-MNIST test images is {100 * one['test_held_out']:.2f}% "
        f"(target 0.5-2%: {_yes(ok)}); on all 10,000: {100 * one['test_all']:.2f}% at 1%, "
        f"{100 * cal['fpr_50permil']['test_all']:.2f}% at 5%, {100 * cal['fpr_1permil']['test_all']:.2f}% at "
        f"0.1%. The raw likelihood calibrated the same way: {100 * cal['baseline_fpr_10permil_test_all']:.2f}% "
        "at 1%.",
        f"Cost: {1e6 * cost['anomaly_s_per_image']:.0f} us per image against "
        f"{1e6 * cost['elbo_k1_s_per_image']:.0f} us for the /elbo?k=1 scoring, {cost['ratio']:.2f}x "
        f"(batches of {cost['batch']}, on a shared machine).",
        "",
    ]
    return "\n".join(lines) + "\n"


def _yes(value: bool) -> str:
    return "yes" if value else "**no**"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.anomaly", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="a directory written by vae-export (default: the served default, the highest version "
        "in artifacts/fashion-mnist-vae/)",
    )
    args = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = run(args.threads, args.seed, args.model_dir)
    (RESULTS / "anomaly.json").write_text(json.dumps(results, indent=2) + "\n")
    print(anomaly_section(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
