"""The PNG figures of a `vae-eval` report (matplotlib, headless). Each returns its numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from model.core.preprocess import make_grid


def _show_grid(images: np.ndarray, path: Path, title: str, columns: int) -> None:
    grid = make_grid(images, columns=columns)  # (C, H', W')
    fig, ax = plt.subplots(figsize=(grid.shape[2] / 40, grid.shape[1] / 40 + 0.4), dpi=100)
    ax.imshow(grid[0] if grid.shape[0] == 1 else grid.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def samples(means: np.ndarray, path: Path, seed: int, temperature: float) -> dict[str, Any]:
    """Grid of E[x|z], z ~ the prior at temperature t (`model.core.priors`)."""
    columns = int(np.ceil(np.sqrt(len(means))))
    _show_grid(means, path, f"prior samples (mean of p(x|z)), seed {seed}, temperature {temperature}", columns)
    return {
        "file": path.name,
        "n": len(means),
        "seed": seed,
        "temperature": temperature,
        "mean_pixel": float(means.mean()),
    }


def reconstructions(
    originals: np.ndarray, recon: np.ndarray, log_likelihoods: np.ndarray, indices: list[int], path: Path
) -> dict[str, Any]:
    """Originals (top row of each pair) beside the mean of p(x | z = mean of q(z|x))."""
    pairs = np.concatenate([originals, recon])  # rows: originals, then reconstructions
    _show_grid(
        pairs, path, "test images (top) and reconstructions from the posterior mean (bottom)", columns=len(originals)
    )
    return {
        "file": path.name,
        "test_indices": indices,
        "reconstruction_log_likelihood_nats": [float(v) for v in log_likelihoods],
        "mean_abs_pixel_error": float(np.abs(originals - recon).mean()),
    }


def traversals(
    rows: np.ndarray, dims: list[int], values: list[float], active_kl: list[float], path: Path
) -> dict[str, Any]:
    """rows: (len(dims) * len(values), C, H, W); one row per latent dimension."""
    _show_grid(
        rows,
        path,
        "latent traversals of the most used dimensions (rows), from the posterior mean of one test image",
        columns=len(values),
    )
    return {"file": path.name, "dims": dims, "values": values, "mean_kl_per_dim": active_kl}


def latent_map(means: np.ndarray, labels: np.ndarray | None, path: Path) -> dict[str, Any]:
    """The test set's posterior means projected on their first two principal components."""
    centred = means - means.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ vt[:2].T  # (N, 2)
    explained = (singular**2 / np.sum(singular**2))[:2]
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    if labels is not None:
        fig.colorbar(ax.scatter(coords[:, 0], coords[:, 1], c=labels, s=2, cmap="tab10"), ax=ax, label="class")
    else:
        ax.scatter(coords[:, 0], coords[:, 1], c="k", s=2)
    ax.set_title("posterior means, first two principal components", fontsize=9)
    ax.set_xlabel(f"PC1 ({explained[0]:.1%} of variance)")
    ax.set_ylabel(f"PC2 ({explained[1]:.1%} of variance)")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return {"file": path.name, "points": len(coords), "explained_variance": [float(e) for e in explained]}


def learning_curves(history: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, [h["train_elbo"] for h in history], label="train ELBO")
    ax.plot(epochs, [h["test_elbo"] for h in history], label="test ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image")
    if history:
        tail = [h["test_elbo"] for h in history[len(history) // 5 :]] + [
            h["train_elbo"] for h in history[len(history) // 5 :]
        ]
        ax.set_ylim(min(tail) - 5, max(tail) + 5)
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title("learning curves", fontsize=9)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return {
        "file": path.name,
        "epochs": epochs,
        "train_elbo": [h["train_elbo"] for h in history],
        "test_elbo": [h["test_elbo"] for h in history],
    }
