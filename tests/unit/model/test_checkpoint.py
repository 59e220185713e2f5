"""The checkpoint record: it saves and loads itself, old files (the shipped ones included) still load, and a
file that is not a checkpoint, or of a newer format, is refused with a message."""

import dataclasses
import math

import pytest
import torch

from model import checkpoint
from model.checkpoint import Averaged, Checkpoint, CheckpointError
from model.config import ModelConfig, TrainConfig
from model.vae import VAE
from tests.conftest import REPO

SHIPPED = sorted(REPO.glob("artifacts/*/*/checkpoint.pt"))
MODEL = ModelConfig(arch="mlp", decoder="mlp", input_shape=(1, 8, 8), latent_dim=2, hidden=(8,))


def small_record(**fields) -> Checkpoint:
    torch.manual_seed(0)
    return Checkpoint(
        model_config=MODEL,
        train_config=TrainConfig(dataset="tiny", epochs=2),
        model_state=VAE(MODEL).state_dict(),
        epoch=1,
        metrics=[{"epoch": 1, "selection": -5.0}],
        data_checksums={"train": "ab"},
        best_selection=-5.0,
        command=["vae-train"],
        **fields,
    )


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: "/".join(p.parts[-3:-1]))
def test_every_shipped_checkpoint_loads_and_rebuilds_its_model(path):
    record = Checkpoint.load(path)
    model = record.build_model()
    assert model.config == record.model_config and not model.training
    assert record.best_selection is not None and math.isfinite(record.best_selection)  # read from best_test_elbo
    assert record.epoch == record.metrics[-1]["epoch"] and record.train_config.seed == 0
    assert not record.resumable  # shipped slim: no optimizer state


def test_a_record_saves_and_loads_itself(tmp_path):
    record = small_record(averaged=Averaged(epochs=[1, 2], checkpoints=[], command=["vae-average"]))
    record.save(tmp_path / "a.pt")
    loaded = Checkpoint.load(tmp_path / "a.pt")
    for field in dataclasses.fields(Checkpoint):
        if field.name != "model_state":
            assert getattr(loaded, field.name) == getattr(record, field.name), field.name
    assert all(torch.equal(loaded.model_state[k], v) for k, v in record.model_state.items())
    assert not list(tmp_path.glob("*.tmp"))  # written through a temporary file, renamed into place


def test_a_file_of_the_old_layout_reads_its_best_test_elbo_as_the_best_selection(tmp_path):
    payload = small_record().to_payload()
    payload["best_test_elbo"] = payload.pop("best_selection")
    for key in ("world_size", "rank_rng_states"):  # files from before torchrun support have neither
        del payload[key]
    torch.save(payload, tmp_path / "old.pt")
    record = Checkpoint.load(tmp_path / "old.pt")
    assert record.best_selection == -5.0 and record.world_size == 1 and record.rank_rng_states is None


def test_without_training_state_keeps_the_model_and_its_history():
    record = small_record(optimizer_state={"state": {}}, rng_state=torch.zeros(3))
    slim = record.without_training_state()
    assert slim.optimizer_state is None and slim.rng_state is None and slim.scheduler_state is None
    assert slim.model_state is record.model_state and slim.metrics == record.metrics


def test_slim_writes_the_record_without_its_training_state(tmp_path):
    small_record(optimizer_state={"state": {}}, rng_state=torch.zeros(3)).save(tmp_path / "a.pt")
    checkpoint.slim(tmp_path / "a.pt", tmp_path / "b.pt")
    assert checkpoint.load(tmp_path / "b.pt").optimizer_state is None


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"\x80\x04not a pickle", "is not a vae-service checkpoint"),
        ({"format": "something else"}, "is not a vae-service checkpoint"),
        ({"format": checkpoint.FORMAT, "format_version": 99}, "Upgrade vae-service"),
        ({"format": checkpoint.FORMAT, "format_version": 1}, "is not a readable vae-service checkpoint"),
    ],
)
def test_what_is_not_a_checkpoint_is_refused_with_a_message(tmp_path, content, message):
    path = tmp_path / "x.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        Checkpoint.load(path)
