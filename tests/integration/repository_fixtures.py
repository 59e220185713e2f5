"""Building blocks for the model-repository tests: a second model trained and exported here with
the real CLIs, repositories laid out as DIR/<name>/<version>/, tampered and mislabelled versions,
and a server started on a repository."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from model.core.preprocess import array_to_png
from tests.conftest import REPO, synthetic_images
from tests.integration.conftest import Server

DEFAULT_MODEL = "fashion-mnist-vae"
ADMIN_TOKEN = "test-admin-token"
# The second model: small and quick, but with the shipped model's input shape and latent size, so
# one set of request bodies fits both.
TINY_SIZE, TINY_LATENT_DIM = 28, 32


def shipped_model_dir() -> Path:
    """The bundled model: in the bundled repository once it exists, else its older single-model place."""
    for candidate in (REPO / "artifacts" / DEFAULT_MODEL / "2.0.0", REPO / "artifacts" / "fashion-mnist"):
        if (candidate / "manifest.json").is_file():
            return candidate
    raise FileNotFoundError(f"no bundled model under {REPO / 'artifacts'}")


def write_image_folder(directory: Path, train: int, test: int) -> Path:
    """A `--dataset folder` tree (train/ and test/) of synthetic 28x28 PNGs: no download needed."""
    for split, count, seed in (("train", train, 1), ("test", test, 2)):
        (directory / split).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(synthetic_images(count, TINY_SIZE, seed)):
            (directory / split / f"{i:04d}.png").write_bytes(array_to_png(image[None] / 255.0))
    return directory


def train_tiny_checkpoint(root: Path) -> Path:
    """One epoch of a small MLP VAE through `vae-train`'s main; returns its best.pt."""
    from model.train import main as train_main

    data = write_image_folder(root / "data", train=256, test=64)
    argv = [
        "--dataset",
        "folder",
        "--data-dir",
        str(data),
        # the fixtures' models are Bernoulli and calibrate as before the folder defaults (tests/unit/model covers those)
        "--likelihood",
        "bernoulli",
        "--calibration-split",
        "0",
        "--arch",
        "mlp",
        "--decoder",
        "mlp",
        "--hidden",
        "64",
        "--latent-dim",
        str(TINY_LATENT_DIM),
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--kl-warmup-epochs",
        "0",
        "--threads",
        "1",
        "--seed",
        "3",
        "--no-progress",
        "--out",
        str(root / "run"),
    ]
    assert train_main(argv) == 0
    return root / "run" / "best.pt"


def export_version(checkpoint: Path, out: Path, name: str, version: str) -> Path:
    """`vae-export CHECKPOINT OUT --name NAME --version VERSION`, with a short parity check."""
    from export.cli import main as export_main

    argv = [str(checkpoint), str(out), "--name", name, "--version", version, "--parity-count", "64", "--threads", "1"]
    assert export_main(argv) == 0
    return out


def manifest_of(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def add_version(repository: Path, source: Path, name: str | None = None, version: str | None = None) -> Path:
    """Copy a model directory into REPOSITORY/<name>/<version>/ (default: the source manifest's own
    name and version). Given another name or version, the copy's manifest is relabelled to match,
    which leaves every hash in it valid (the manifest does not hash itself)."""
    manifest = manifest_of(source)
    name, version = name or manifest["name"], version or manifest["version"]
    target = repository / name / version
    shutil.copytree(source, target)
    if (name, version) != (manifest["name"], manifest["version"]):
        relabel(target, name, version)
    return target


def relabel(directory: Path, name: str, version: str) -> None:
    manifest = manifest_of(directory)
    manifest.update(name=name, version=version)
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def flip_a_byte(path: Path, offset: int = -10) -> None:
    """Corrupt a graph so that its SHA-256 no longer matches the manifest."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def write_version_policy(repository: Path, name: str, policy: dict) -> None:
    (repository / name / "config.json").write_text(json.dumps({"version_policy": policy}) + "\n")


def repository_server(tmp: Path, repository: Path, **env: str) -> Server:
    """`vae-serve` on a repository. Server always sets VAE_MODEL_DIR to the bundled model, so this
    relies on VAE_MODEL_REPOSITORY winning when both are set."""
    return Server(tmp, VAE_MODEL_REPOSITORY=str(repository), **env)


def bearer(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def index_states(entries: list[dict]) -> dict[tuple[str, str], tuple[str, str]]:
    """The repository index as {(name, version): (state, reason)}."""
    return {(e["name"], e["version"]): (e["state"], e["reason"]) for e in entries}


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
