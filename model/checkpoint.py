"""Self-describing checkpoints: a model can be rebuilt from the file alone."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.config import ModelConfig, TrainConfig
from model.vae import VAE

FORMAT = "vae-service/checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """The file is not a vae-service checkpoint, or a newer format than this code reads."""


def library_versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}


def git_commit() -> str | None:
    """The commit of the code that is running, with '-dirty' when the tree has changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def save(
    path: str | Path,
    model: VAE,
    train_config: TrainConfig,
    *,
    epoch: int,
    metrics: list[dict[str, Any]],
    data_checksums: dict[str, str],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    rng_state: torch.Tensor | None = None,
    best_test_elbo: float | None = None,
    command: list[str] | None = None,
    world_size: int = 1,
    rank_rng_states: list[torch.Tensor] | None = None,
) -> None:
    """Atomic write (temp file + rename), so an interrupted save never leaves a broken file.

    `world_size` is the number of training processes (torchrun's); with more than one, `rank_rng_states`
    holds each rank's generator state (`rng_state` is rank 0's), so --resume continues every stream."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "train_config": train_config.to_dict(),
        "model_state": model.state_dict(),
        "optimizer_state": optimizer.state_dict() if optimizer else None,
        "scheduler_state": scheduler.state_dict() if scheduler else None,
        "rng_state": rng_state,
        "world_size": world_size,  # absent from files written before torchrun support: read as 1
        "rank_rng_states": rank_rng_states,
        "epoch": epoch,
        "metrics": metrics,
        "best_test_elbo": best_test_elbo,
        "seed": train_config.seed,
        "data_checksums": data_checksums,
        "versions": library_versions(),
        "git_commit": git_commit(),
        "command": command if command is not None else sys.argv,
    }
    write(path, payload)


def write(path: str | Path, payload: dict[str, Any]) -> None:
    """Atomic write (temp file + rename) of a checkpoint payload."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch.load raises whatever the unpickler meets in a file that is not its own
        raise CheckpointError(f"{path} is not a vae-service checkpoint ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a vae-service checkpoint")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {payload['format_version']}; this code reads up to "
            f"{FORMAT_VERSION}. Upgrade vae-service."
        )
    return payload


def load_model(path: str | Path) -> tuple[VAE, dict[str, Any]]:
    """Rebuild the model from the checkpoint's own config; returns it in eval mode with the payload."""
    payload = load(path)
    model = VAE(ModelConfig.from_dict(payload["model_config"]))
    model.load_state_dict(payload["model_state"])
    model.eval()
    return model, payload


def slim(src: str | Path, dst: str | Path) -> None:
    """A copy without optimizer and scheduler state: what ships beside the exported graphs."""
    payload = load(src)
    payload.update(optimizer_state=None, scheduler_state=None, rng_state=None, rank_rng_states=None)
    torch.save(payload, dst)
