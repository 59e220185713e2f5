"""Self-describing checkpoints: a frozen `Checkpoint` record that saves and loads itself, so a model can be
rebuilt from the file alone and no caller reads the file by string key."""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.config import ModelConfig, TrainConfig
from model.vae import VAE

FORMAT = "vae-service/checkpoint"
FORMAT_VERSION = 1
# The payload key of `Checkpoint.best_selection`; files written before it was named for what it holds
# (the best selection bound, a validation bound when the run has a validation split) used this one.
OLD_BEST_KEY = "best_test_elbo"


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


@dataclass(frozen=True)
class Averaged:
    """What `vae-average` averaged into a checkpoint: the input epochs, each input's path, epoch and SHA-256,
    its command, and (when scored) the average's bound on the run's validation split."""

    epochs: list[int]
    checkpoints: list[dict[str, Any]]
    command: list[str]
    validation_bound: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.validation_bound is None:  # as files written before it was scored hold it
            del data["validation_bound"]
        return data


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint: the configs the model is built from, its weights, where training stood, and provenance.

    `optimizer_state`, `scheduler_state` and the noise generators' states are what `--resume` needs; a
    checkpoint without them (an epoch kept for vae-average, a shipped one) rebuilds the model only.
    `world_size` is the number of training processes (torchrun's); with more than one, `rank_rng_states`
    holds each rank's generator state (`rng_state` is rank 0's), so --resume continues every stream."""

    model_config: ModelConfig
    train_config: TrainConfig
    model_state: dict[str, torch.Tensor]
    epoch: int
    metrics: list[dict[str, Any]]  # one record per completed epoch (metrics.jsonl)
    data_checksums: dict[str, str]
    best_selection: float | None = None  # the best epoch's selection bound so far (validation, else test ELBO)
    optimizer_state: dict[str, Any] | None = None
    scheduler_state: dict[str, Any] | None = None
    rng_state: torch.Tensor | None = None
    world_size: int = 1
    rank_rng_states: list[torch.Tensor] | None = None
    versions: dict[str, str] = field(default_factory=library_versions)
    git_commit: str | None = field(default_factory=git_commit)
    command: list[str] = field(default_factory=lambda: list(sys.argv))
    averaged: Averaged | None = None

    @property
    def resumable(self) -> bool:
        return self.optimizer_state is not None and self.rng_state is not None

    def build_model(self) -> VAE:
        """The model, rebuilt from the checkpoint's own config, in eval mode."""
        model = VAE(self.model_config)
        model.load_state_dict(self.model_state)
        model.eval()
        return model

    def without_training_state(self) -> Checkpoint:
        """A copy without optimizer, scheduler and noise state: what ships beside the exported graphs."""
        return dataclasses.replace(
            self, optimizer_state=None, scheduler_state=None, rng_state=None, rank_rng_states=None
        )

    def to_payload(self) -> dict[str, Any]:
        """The dict written to disk: plain types only, so the file loads without this class."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_config": self.model_config.to_dict(),
            "train_config": self.train_config.to_dict(),
            "model_state": self.model_state,
            "optimizer_state": self.optimizer_state,
            "scheduler_state": self.scheduler_state,
            "rng_state": self.rng_state,
            "world_size": self.world_size,
            "rank_rng_states": self.rank_rng_states,
            "epoch": self.epoch,
            "metrics": self.metrics,
            "best_selection": self.best_selection,
            "seed": self.train_config.seed,  # for readers of the file alone; the record's is train_config.seed
            "data_checksums": self.data_checksums,
            "versions": self.versions,
            "git_commit": self.git_commit,
            "command": self.command,
            **({"averaged": self.averaged.to_dict()} if self.averaged else {}),
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Checkpoint:
        """The record of a payload of any format version up to `FORMAT_VERSION`: files written before a
        field existed read as its default (`world_size` 1, no `averaged`), `best_test_elbo` as
        `best_selection`, and their configs with the fields added since at their defaults."""
        averaged = payload.get("averaged")
        return cls(
            model_config=ModelConfig.from_dict(payload["model_config"]),
            train_config=TrainConfig.from_dict(payload["train_config"]),
            model_state=payload["model_state"],
            epoch=payload["epoch"],
            metrics=payload["metrics"],
            data_checksums=payload["data_checksums"],
            best_selection=payload.get("best_selection", payload.get(OLD_BEST_KEY)),
            optimizer_state=payload.get("optimizer_state"),
            scheduler_state=payload.get("scheduler_state"),
            rng_state=payload.get("rng_state"),
            world_size=payload.get("world_size", 1),
            rank_rng_states=payload.get("rank_rng_states"),
            versions=payload.get("versions", {}),
            git_commit=payload.get("git_commit"),
            command=payload.get("command", []),
            averaged=Averaged(**averaged) if averaged else None,
        )

    def save(self, path: str | Path) -> None:
        """Atomic write (temp file + rename), so an interrupted save never leaves a broken file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.to_payload(), tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        payload = read_payload(path)
        try:
            return cls.from_payload(payload)
        except (KeyError, TypeError, ValueError) as exc:  # a field missing, or a config this code refuses
            raise CheckpointError(f"{path} is not a readable vae-service checkpoint: {exc}") from exc


def read_payload(path: str | Path) -> dict[str, Any]:
    """The checked payload dict of a checkpoint file (`Checkpoint.load` is what callers want)."""
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


def load(path: str | Path) -> Checkpoint:
    return Checkpoint.load(path)


def load_model(path: str | Path) -> tuple[VAE, Checkpoint]:
    """Rebuild the model from the checkpoint's own config; returns it in eval mode with the record."""
    record = Checkpoint.load(path)
    return record.build_model(), record


def slim(src: str | Path, dst: str | Path) -> None:
    """A copy without optimizer and scheduler state: what ships beside the exported graphs."""
    Checkpoint.load(src).without_training_state().save(dst)
