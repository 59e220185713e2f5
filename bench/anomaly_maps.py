"""Where an image is anomalous: `python -m bench.anomaly_maps` (needs the `bench` extra).

Scores the served anomaly map (POST /anomaly?map=true: each pixel's deviance under q(z|x), smoothed and
read as a percentile of in-distribution pixels, model/core/anomaly_map.py) against the plain squared
reconstruction error (unsmoothed), on two sets whose defect pixels are known (bench/defects.py):

- "fashion-mnist-defects": the served default version (bench/provenance.py); 1000 Fashion-MNIST test
  images from the first half of the test set with one defect each (`fashion_defects`), against 1000
  good test images from the second half, so no image is both;
- "texture-defects": for each of scikit-image's brick, grass and gravel, a model trained and exported
  here through the real CLIs (`vae-train --dataset folder` with the folder defaults, then `vae-export`,
  which calibrates the score and the map on the images the folder holds out of training) on crops
  from the top 70% of the texture, measured on good and defective crops from the bottom 30%
  (`texture_defects`); per texture and pooled over the three (the maps' and scores' values
  concatenated as they are).

Every image is first rounded to 8 bits, as a PNG upload of it would be. Figures: pixel-level AUROC
(every pixel of the defective and the good images, defect pixels positive), PRO up to a false-positive
rate of 0.3 (bench/map_metrics.py), image-level AUROC (good against defective: the served image score
of POST /anomaly and the map's maximum; for the baseline, the sum of the squared error), and the
pixel-level AUROC per defect kind (that kind's defective images with every good image).

Trainings are cached: a run whose best.pt was completed by the same command on the same images is
reused (`--work-dir`, default runs/bench-anomaly-maps/); the exports are made again each time.
Writes bench/results/anomaly_maps.json; `python -m bench.report` puts its table in docs/anomaly.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench import defects
from bench.provenance import default_model_dir, git_state

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
RESULTS_FILE = RESULTS / "anomaly_maps.json"
DEFAULT_WORK_DIR = REPO / "runs" / "bench-anomaly-maps"
TARGET_PIXEL_AUROC = 0.90  # the target, on both sets
PRO_MAX_FPR = 0.3
FASHION_SET, TEXTURE_SET, POOLED = "fashion-mnist-defects", "texture-defects", "pooled"
FASHION_DEFECTIVE, FASHION_GOOD = 1000, 1000
TEXTURE_SIZE, TEXTURE_TRAIN, TEXTURE_TEST = 32, 600, 300
TRAIN_SEED = 0  # vae-train --seed
STAMP = "bench-anomaly-maps.json"  # beside a run's best.pt: the command and images that completed it
PACKAGES = ("vae-service", "numpy", "onnxruntime", "torch", "scikit-learn", "scikit-image", "scipy", "pillow")


@dataclass
class Maps:
    """One set's maps and image scores: served (percentiles) and baseline (squared error), good and defective."""

    served_good: np.ndarray  # (G, H, W)
    served_bad: np.ndarray  # (B, H, W)
    base_good: np.ndarray
    base_bad: np.ndarray
    score_good: np.ndarray  # (G,) the served image score
    score_bad: np.ndarray  # (B,)
    masks: np.ndarray  # (B, H, W) bool
    kinds: list[str]
    good: np.ndarray  # (G, C, H, W) the images as measured (8-bit)
    bad: np.ndarray  # (B, C, H, W)

    @classmethod
    def concatenate(cls, parts: list[Maps]) -> Maps:
        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(part, name) for part in parts])

        head = ("served_good", "served_bad", "base_good", "base_bad", "score_good", "score_bad", "masks")
        kinds = [kind for part in parts for kind in part.kinds]
        return cls(*(cat(name) for name in head), kinds, cat("good"), cat("bad"))


def as_uploaded(images: np.ndarray) -> np.ndarray:
    """Images in [0, 1] rounded to 8 bits, as the service decodes a PNG of them."""
    return (np.rint(np.clip(images, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def measure(model: Any, good: np.ndarray, defective: np.ndarray, masks: np.ndarray, kinds: list[str]) -> Maps:
    """The served map and score, as POST /anomaly?map=true computes them with the calibration's seeds, and
    the baseline's squared error, of good (G, C, H, W) and defective (B, C, H, W) images."""
    from export.calibrate import batched_statistics
    from model.core.anomaly_map import pixel_terms, squared_error

    calibration = model.anomaly
    if calibration is None or calibration.map is None:
        raise SystemExit(f"{model.manifest.name} {model.manifest.version} has no anomaly map calibration")

    def served(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        terms = pixel_terms(model, model.likelihood, images, calibration.seed, calibration.map.samples)
        stats = batched_statistics(model, images, calibration.seed, calibration.binarize_seed)
        return calibration.map(terms), calibration.score(stats)

    good, defective = as_uploaded(good), as_uploaded(defective)
    (served_good, score_good), (served_bad, score_bad) = served(good), served(defective)
    return Maps(
        served_good,
        served_bad,
        squared_error(model, model.likelihood, good),
        squared_error(model, model.likelihood, defective),
        np.asarray(score_good, dtype=np.float64),
        np.asarray(score_bad, dtype=np.float64),
        np.asarray(masks, dtype=bool),
        list(kinds),
        good,
        defective,
    )


def per_kind(bad: np.ndarray, good: np.ndarray, masks: np.ndarray, kinds: list[str]) -> dict[str, dict[str, Any]]:
    """Pixel-level AUROC per defect kind: that kind's defective maps (with their masks) and every good map."""
    from bench.map_metrics import pixel_auroc

    if len(kinds) != len(bad):
        raise ValueError(f"{len(kinds)} kinds for {len(bad)} defective maps")
    labels = np.asarray(kinds)
    out = {}
    for kind in [k for k in defects.KINDS if k in kinds] + sorted(set(kinds) - set(defects.KINDS)):
        chosen = labels == kind
        out[kind] = {"images": int(chosen.sum()), "pixel_auroc": pixel_auroc(bad[chosen], masks[chosen], good)}
    return out


def figures(maps: Maps) -> dict[str, Any]:
    """Served map and baseline: pixel AUROC, PRO (FPR <= PRO_MAX_FPR), image AUROC, per-kind pixel AUROC."""
    from bench.map_metrics import image_auroc, pixel_auroc, pro_score

    def of(bad: np.ndarray, good: np.ndarray) -> dict[str, Any]:
        return {
            "pixel_auroc": pixel_auroc(bad, maps.masks, good),
            "pro": pro_score(bad, maps.masks, PRO_MAX_FPR, good_maps=good),
            "per_kind": per_kind(bad, good, maps.masks, maps.kinds),
        }

    served, baseline = of(maps.served_bad, maps.served_good), of(maps.base_bad, maps.base_good)
    served["image_auroc"] = {
        "score": image_auroc(maps.score_good, maps.score_bad),
        "map_max": image_auroc(maps.served_good.max(axis=(1, 2)), maps.served_bad.max(axis=(1, 2))),
    }
    baseline["image_auroc"] = {"sum": image_auroc(maps.base_good.sum(axis=(1, 2)), maps.base_bad.sum(axis=(1, 2)))}
    defect_share = maps.masks.mean(axis=(1, 2))
    return {
        "good_images": len(maps.served_good),
        "defective_images": len(maps.served_bad),
        "defect_pixel_share": {"mean": float(defect_share.mean()), "min": float(defect_share.min())},
        "served": served,
        "baseline": baseline,
        "pixel_target_met": served["pixel_auroc"] >= TARGET_PIXEL_AUROC,
    }


def model_record(model_dir: Path) -> dict[str, Any]:
    from model.data import sha256_file

    manifest = json.loads((model_dir / "manifest.json").read_text())
    return {
        "name": manifest["name"],
        "version": manifest["version"],
        "manifest_sha256": sha256_file(model_dir / "manifest.json"),
        "encoder_sha256": manifest["encoder"]["sha256"],
        "decoder_sha256": manifest["decoder"]["sha256"],
        "likelihood": (manifest.get("likelihood") or {}).get("name"),
        "map_calibration": manifest.get("anomaly", {}).get("calibration", {}).get("map"),
        "directory": _shown(model_dir),
    }


def _shown(path: Path) -> str:
    """A path as the commands name it: relative to the repository when inside it."""
    path = Path(os.path.abspath(path))
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def fashion_set(threads: int, seed: int, model_dir: Path) -> tuple[Maps, dict[str, Any]]:
    from model.core.artifact import load_model_dir
    from model.data import load_dataset

    model = load_model_dir(model_dir, threads=threads)
    test = load_dataset("fashion-mnist").test
    half = len(test) // 2
    defective, masks, kinds = defects.fashion_defects(test[:half], FASHION_DEFECTIVE, seed)
    good = test[half : half + FASHION_GOOD]
    began = time.perf_counter()
    maps = measure(model, good, defective, masks, kinds)
    described = {
        "model": model_record(model_dir),
        "defective": f"Fashion-MNIST test[0:{FASHION_DEFECTIVE}], one defect each "
        f"(bench.defects.fashion_defects(test[0:{half}], {FASHION_DEFECTIVE}, seed={seed}))",
        "good": f"Fashion-MNIST test[{half}:{half + FASHION_GOOD}]",
        "defect_seed": seed,
        "map_seed": model.anomaly.seed,
        "score_seeds": {"seed": model.anomaly.seed, "binarize_seed": model.anomaly.binarize_seed},
        "measure_s": round(time.perf_counter() - began, 1),
    }
    return maps, described


def folder_digest(directory: Path) -> str:
    """SHA-256 over the folder's file names and contents, in name order."""
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def write_crops(crops: np.ndarray, directory: Path) -> str:
    """(N, 1, H, W) crops in [0, 1] as 8-bit grey PNGs 0000.png ... into `directory` (emptied first); its digest."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.png"):
        old.unlink()
    for i, crop in enumerate(crops):
        Image.fromarray(np.rint(crop[0] * 255.0).astype(np.uint8), mode="L").save(directory / f"{i:04d}.png")
    return folder_digest(directory)


def cached_training(run_dir: Path, command: list[str], data_sha256: str) -> dict[str, Any] | None:
    """The stamp of a completed training of `command` on the same images, when run_dir/best.pt is from it."""
    stamp = run_dir / STAMP
    if not (run_dir / "best.pt").exists() or not stamp.exists():
        return None
    try:
        recorded = json.loads(stamp.read_text())
    except json.JSONDecodeError:
        return None
    if recorded.get("command") != command or recorded.get("data_sha256") != data_sha256:
        return None
    return recorded if recorded.get("completed") else None


def run_logged(command: list[str], log: Path) -> float:
    """Run a CLI (python -m ...) from the repository root, its output to `log`; its wall seconds."""
    began = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run([sys.executable, *command], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise SystemExit(f"`{shlex.join(command)}` failed ({done.returncode}); the end of {log}:\n{tail}")
    return time.perf_counter() - began


def texture_model(name: str, work_dir: Path, seed: int, epochs: int | None) -> tuple[Path, dict[str, Any]]:
    """Train (or reuse) and export the model of texture `name`; its directory and how it was made."""
    base = work_dir / name
    images, run_dir, out_dir = base / "images", base / "run", base / f"texture-{name}"
    data_sha256 = write_crops(defects.texture_crops(name, TEXTURE_SIZE, TEXTURE_TRAIN, "train", seed), images)
    train = ["-m", "model.train", "--dataset", "folder", "--data-dir", _shown(images), "--out", _shown(run_dir)]
    train += ["--no-progress", "--seed", str(TRAIN_SEED)] + ([] if epochs is None else ["--epochs", str(epochs)])
    cached = cached_training(run_dir, train, data_sha256)
    if cached is None:
        print(f"{name}: training `{shlex.join(['python', *train])}`", flush=True)
        if run_dir.exists():  # an unfinished or different run: start again, not from its checkpoints
            for old in run_dir.iterdir():
                if old.is_file():
                    old.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
        train_s = run_logged(train, base / "train.log")
        stamp = {"command": train, "data_sha256": data_sha256, "seconds": round(train_s, 1), "completed": True}
        stamp["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        (run_dir / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        cached, reused = stamp, False
    else:
        print(f"{name}: reusing {run_dir / 'best.pt'} (trained in {cached['seconds']} s)", flush=True)
        reused = True
    export = ["-m", "export.cli", _shown(run_dir / "best.pt"), _shown(out_dir), "--name", f"texture-{name}"]
    print(f"{name}: exporting `{shlex.join(['python', *export])}`", flush=True)
    export_s = run_logged(export, base / "export.log")
    return out_dir, {
        "train_images": f"bench.defects.texture_crops({name!r}, {TEXTURE_SIZE}, {TEXTURE_TRAIN}, 'train', seed={seed})",
        "train_images_sha256": data_sha256,
        "train": {
            "command": shlex.join(["vae-train", *train[2:]]),
            "argv": [Path(sys.executable).name, *train],
            "seconds": cached["seconds"],
            "reused": reused,
            "epochs": epochs if epochs is not None else "default",
            "log": _shown(base / "train.log"),
            "trained": cached.get("finished"),
        },
        "export": {
            "command": shlex.join(["vae-export", *export[2:]]),
            "argv": [Path(sys.executable).name, *export],
            "seconds": round(export_s, 1),
            "log": _shown(base / "export.log"),
        },
    }


def texture_sets(
    threads: int, seed: int, work_dir: Path, epochs: int | None, textures: tuple[str, ...]
) -> tuple[dict[str, Maps], dict[str, Any]]:
    from model.core.artifact import load_model_dir

    maps, described = {}, {}
    for name in textures:
        model_dir, made = texture_model(name, work_dir, seed, epochs)
        model = load_model_dir(model_dir, threads=threads)
        shape = tuple(model.manifest.preprocessing.get("input_shape", ()))
        if shape != (1, TEXTURE_SIZE, TEXTURE_SIZE):
            raise SystemExit(f"{model_dir} takes {shape} images, not the crops' (1, {TEXTURE_SIZE}, {TEXTURE_SIZE})")
        good, defective, masks, kinds = defects.texture_defects(name, TEXTURE_SIZE, TEXTURE_TEST, seed)
        began = time.perf_counter()
        maps[name] = measure(model, good, defective, masks, kinds)
        described[name] = {
            "model": model_record(model_dir),
            **made,
            "test_images": f"bench.defects.texture_defects({name!r}, {TEXTURE_SIZE}, {TEXTURE_TEST}, seed={seed}): "
            f"{TEXTURE_TEST} good and {TEXTURE_TEST} defective crops from the bottom rows",
            "map_seed": model.anomaly.seed,
            "score_seeds": {"seed": model.anomaly.seed, "binarize_seed": model.anomaly.binarize_seed},
            "measure_s": round(time.perf_counter() - began, 1),
        }
    return maps, described


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def run(
    command: str,
    threads: int,
    seed: int,
    work_dir: Path,
    model_dir: Path | None = None,
    epochs: int | None = None,
    textures: tuple[str, ...] = defects.TEXTURES,
    grid_dir: Path | None = None,
) -> dict[str, Any]:
    began, git = time.perf_counter(), git_state()  # the code as it was when the measurement began
    fashion_dir = model_dir or default_model_dir()
    fashion_maps, fashion = fashion_set(threads, seed, fashion_dir)
    print(f"{FASHION_SET}: measured in {fashion['measure_s']} s", flush=True)
    texture_maps, textures_made = texture_sets(threads, seed, work_dir, epochs, textures)
    texture_figures = {name: figures(m) for name, m in texture_maps.items()}
    if len(texture_maps) > 1:
        texture_figures[POOLED] = figures(Maps.concatenate(list(texture_maps.values())))
    if grid_dir is not None:
        grid(grid_dir / "maps_fmnist.png", {"fashion-mnist": fashion_maps}, 3)
        grid(grid_dir / "maps_texture.png", texture_maps, 2)
    return {
        "command": command,
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": threads,
            "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "seconds": round(time.perf_counter() - began, 1),
        },
        "git": git,
        "versions": versions(),
        "seed": seed,
        "train_seed": TRAIN_SEED,
        "target_pixel_auroc": TARGET_PIXEL_AUROC,
        "pro_max_fpr": PRO_MAX_FPR,
        "images": "rounded to 8 bits, as a PNG upload is",
        "served_map": "model.anomaly.map(pixel_terms(model, likelihood, x, seed=calibration seed, "
        "samples=map calibration samples)), as POST /anomaly?map=true",
        "served_score": "model.anomaly.score(statistics(x, calibration seed, binarize seed)), as POST /anomaly",
        "baseline_map": "squared_error: (x - E[x | z = posterior mean])^2 summed over channels, unsmoothed",
        "model": fashion["model"],  # the served default's (bench.report notes a table not of it)
        "sets": {
            FASHION_SET: {**fashion, "figures": figures(fashion_maps)},
            TEXTURE_SET: {
                "textures": textures_made,
                "pooled": "the three textures' maps and scores concatenated as they are (each model's own scale)",
                "figures": texture_figures,
            },
        },
    }


def grid(path: Path, sets: dict[str, Maps], per_kind_count: int) -> None:
    """Columns of examples (per set, `per_kind_count` of each kind, then one good image); rows: image, mask,
    served map (percentile, 0.5-1), baseline (squared error, one scale per set)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns: list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, float]] = []
    for name, maps in sets.items():
        top = float(np.percentile(np.r_[maps.base_good.ravel(), maps.base_bad.ravel()], 99.9))
        for kind in defects.KINDS:
            for i in [i for i, k in enumerate(maps.kinds) if k == kind][:per_kind_count]:
                column = (maps.bad[i, 0], maps.masks[i], maps.served_bad[i], maps.base_bad[i], top)
                columns.append((f"{name}\n{kind}", *column))
        columns.append((f"{name}\ngood", maps.good[0, 0], None, maps.served_good[0], maps.base_good[0], top))
    fig, axes = plt.subplots(4, len(columns), figsize=(1.3 * len(columns), 5.6), squeeze=False)
    for c, (title, image, mask, served, base, top) in enumerate(columns):
        shown = [
            (image, "gray", 0, 1),
            (np.zeros_like(served) if mask is None else mask, "gray", 0, 1),
            (served, "inferno", 0.5, 1),
            (base, "inferno", 0, top),
        ]
        for r, (values, cmap, low, high) in enumerate(shown):
            axes[r, c].imshow(values, cmap=cmap, vmin=low, vmax=high)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[0, c].set_title(title, fontsize=7)
    for r, label in enumerate(("image", "mask", "served map", "squared error")):
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def maps_section(results: dict[str, Any]) -> str:
    """docs/anomaly.md's table: per set, the served map against the baseline; then per defect kind."""
    fashion = results["sets"][FASHION_SET]
    texture = results["sets"][TEXTURE_SET]
    target = results["target_pixel_auroc"]
    rows: list[tuple[str, str, dict[str, Any]]] = [
        (FASHION_SET, f"`{fashion['model']['name']}` {fashion['model']['version']}", fashion["figures"])
    ]
    for name, made in texture["textures"].items():
        model = f"`{made['model']['name']}` {made['model']['version']}"
        rows.append((f"{TEXTURE_SET}: {name}", model, texture["figures"][name]))
    if POOLED in texture["figures"]:
        rows.append((f"{TEXTURE_SET}: pooled", "the three above", texture["figures"][POOLED]))
    git = results["git"]
    tree = "" if git.get("dirty") is False else " (with uncommitted changes)" if git.get("dirty") else ""
    lines = [
        f"Measured by `{results['command']}` on {results['machine']['time']} at commit "
        f"`{(git.get('commit') or 'unknown')[:12]}`{tree}. Served map: what `POST /anomaly?map=true` returns "
        "(per-pixel deviance, smoothed, as a percentile of in-distribution pixels); baseline: the squared "
        "reconstruction error at the posterior mean, unsmoothed. Pixel AUROC over every pixel of the defective and "
        f"the good images; PRO up to a false-positive rate of {results['pro_max_fpr']}; image AUROC good against "
        "defective, for the served map by the `/anomaly` score and by the map's maximum, for the baseline by the "
        "sum of the squared error.",
        "",
        "| set | images good / defective | model | map | pixel AUROC | PRO | image AUROC | "
        f"pixel AUROC >= {target:.2f} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, model, fig in rows:
        served, base = fig["served"], fig["baseline"]
        counts = f"{fig['good_images']} / {fig['defective_images']}"
        lines.append(
            f"| {name} | {counts} | {model} | served | {served['pixel_auroc']:.3f} | {served['pro']:.3f} | "
            f"score {served['image_auroc']['score']:.3f}, map max {served['image_auroc']['map_max']:.3f} | "
            f"{_yes(served['pixel_auroc'] >= target)} |"
        )
        lines.append(
            f"| | | | baseline | {base['pixel_auroc']:.3f} | {base['pro']:.3f} | "
            f"sum {base['image_auroc']['sum']:.3f} | - |"
        )
    kinds = [k for k in defects.KINDS if any(k in fig["served"]["per_kind"] for _, _, fig in rows)]
    lines += [
        "",
        "Pixel AUROC per defect kind (that kind's defective images with every good image), served / baseline:",
        "",
        "| set | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for name, _, fig in rows:
        cells = []
        for kind in kinds:
            s, b = fig["served"]["per_kind"].get(kind), fig["baseline"]["per_kind"].get(kind)
            cells.append("-" if s is None else f"{s['pixel_auroc']:.3f} / {b['pixel_auroc']:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    made = [
        f"`{m['train']['command']}` {m['train']['seconds']:.0f} s, `{m['export']['command']}` "
        f"{m['export']['seconds']:.0f} s"
        for m in texture["textures"].values()
    ]
    lines += ["", "The texture models, trained and exported here (seconds on this machine): " + "; ".join(made) + "."]
    return "\n".join(lines) + "\n"


def _yes(value: bool) -> str:
    return "yes" if value else "**no**"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Whole or not at all: a failed run never leaves half a results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)


ANOMALY_FILE = RESULTS / "anomaly.json"


def merge_into_anomaly_results(results: dict[str, Any], path: Path = ANOMALY_FILE) -> None:
    """The maps' figures also go into bench/results/anomaly.json, beside the image-level results of
    `python -m bench.anomaly`, as its `maps` entry: one file holds every anomaly figure. `bench.anomaly`
    rewrites that file whole, so run this bench after it (`make bench-anomaly` does)."""
    existing = json.loads(path.read_text()) if path.is_file() else {}
    write_json(path, {**existing, "maps": results})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.anomaly_maps", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads for the measurements")
    p.add_argument("--seed", type=int, default=0, help="the defects' and the texture crops' seed")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="texture images, runs and exports")
    p.add_argument("--model-dir", type=Path, default=None, help="the Fashion-MNIST model (default: the served one)")
    p.add_argument("--epochs", type=int, default=None, help="vae-train --epochs for the textures (default: its own)")
    p.add_argument("--textures", nargs="+", default=list(defects.TEXTURES), choices=defects.TEXTURES)
    p.add_argument("--grid-dir", type=Path, default=None, help="also write example grids maps_*.png here")
    p.add_argument("--out", type=Path, default=RESULTS_FILE)
    args = p.parse_args(argv)
    command = shlex.join(["python", "-m", "bench.anomaly_maps", *(sys.argv[1:] if argv is None else argv)])
    results = run(
        command,
        args.threads,
        args.seed,
        args.work_dir,
        args.model_dir,
        args.epochs,
        tuple(args.textures),
        args.grid_dir,
    )
    write_json(args.out, results)
    if args.out == RESULTS_FILE:
        merge_into_anomaly_results(results)
    print(maps_section(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
