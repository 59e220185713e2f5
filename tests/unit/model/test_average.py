"""vae-train --keep-epochs and vae-average: the mean of one run's epochs, as a checkpoint like any other."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch

from model import average as average_module
from model import checkpoint
from model.average import main as average_main
from model.trainer import epoch_file, train
from tests.unit.model.test_train import IWAE, MOG


@pytest.fixture(scope="module")
def kept_run(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(MOG, IWAE, tiny_dataset, out, progress=False, keep_epochs=True)
    return out


def test_keep_epochs_keeps_the_end_of_every_epoch(kept_run):
    assert sorted(p.name for p in kept_run.glob("epoch-*.pt")) == [epoch_file(e) for e in (1, 2, 3)]
    last, third = checkpoint.load(kept_run / "last.pt"), checkpoint.load(kept_run / epoch_file(3))
    assert third.epoch == 3 and third.metrics == last.metrics
    assert third.optimizer_state is None and last.optimizer_state is not None  # last.pt is what resumes
    assert not third.resumable and last.resumable
    for name, tensor in last.model_state.items():
        assert torch.equal(third.model_state[name], tensor), name


def test_the_average_is_the_mean_of_the_weights_and_records_its_inputs(kept_run, tiny_dataset, monkeypatch, capsys):
    monkeypatch.setattr(average_module, "load_dataset", lambda *args: tiny_dataset)
    inputs = [kept_run / epoch_file(3), kept_run / epoch_file(2)]  # any order
    out = kept_run / "average.pt"
    assert average_main([*map(str, inputs), "--out", str(out), "--threads", "1"]) == 0
    model, state = checkpoint.load_model(out)  # loads like any checkpoint
    two, three = (checkpoint.load(kept_run / epoch_file(e)).model_state for e in (2, 3))
    for name, tensor in model.state_dict().items():
        assert torch.allclose(tensor, (two[name] + three[name]) / 2, atol=1e-7), name
    assert not torch.equal(two["prior.means"], three["prior.means"])  # the epochs differ: a real mean
    record = state.averaged
    assert record.epochs == [2, 3] and record.command[0] == "vae-average"
    assert [c["sha256"] for c in record.checkpoints] == [
        hashlib.sha256((kept_run / epoch_file(e)).read_bytes()).hexdigest() for e in (2, 3)
    ]
    assert state.epoch == 3 and state.command == checkpoint.load(inputs[0]).command
    assert state.optimizer_state is None and state.rng_state is None  # nothing to resume
    printed = capsys.readouterr().out
    assert "average of epochs 2..3" in printed and f"{record.validation_bound:.4f}" in printed


@pytest.mark.parametrize(
    "which, message",
    [
        ((2, 2), "same epoch is given twice"),
        ((2, "other"), "are not of one training run"),
        ((2,), "two or more checkpoints"),
        ((2, "garbage"), "is not a vae-service checkpoint"),
    ],
)
def test_it_refuses_inputs_that_are_not_distinct_epochs_of_one_run(
    kept_run, tiny_dataset, tmp_path, which, message, capsys
):
    other = tmp_path / "other"
    if "other" in which:  # the same flags, a fresh run: its history is its own
        train(
            MOG,
            IWAE.__class__(**{**IWAE.to_dict(), "epochs": 3}),
            tiny_dataset,
            other,
            progress=False,
            keep_epochs=True,
        )
    (tmp_path / "garbage").write_bytes(b"\x80\x04not a pickle")
    paths = [
        str(kept_run / epoch_file(w))
        if isinstance(w, int)
        else str(other / epoch_file(3))
        if w == "other"
        else str(tmp_path / w)
        for w in which
    ]
    assert average_main([*paths, "--out", str(tmp_path / "a.pt"), "--no-validate"]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "a.pt").exists()


@pytest.mark.parametrize("out", ["last.pt", "best.pt", "epoch-002.pt"])
def test_it_will_not_write_over_the_runs_checkpoints_or_its_inputs(kept_run, out, capsys):
    before = (kept_run / out).read_bytes()
    assert (
        average_main(
            [
                str(kept_run / epoch_file(2)),
                str(kept_run / epoch_file(3)),
                "--out",
                str(kept_run / out),
                "--no-validate",
            ]
        )
        == 2
    )
    assert "choose another name" in capsys.readouterr().err and (kept_run / out).read_bytes() == before


def test_data_other_than_the_runs_is_not_used_to_score_it(kept_run, tiny_dataset, monkeypatch, tmp_path, capsys):
    changed = dataclasses.replace(tiny_dataset, checksums=dict.fromkeys(tiny_dataset.checksums, "0" * 64))
    monkeypatch.setattr(average_module, "load_dataset", lambda *args: changed)
    assert (
        average_main([str(kept_run / epoch_file(2)), str(kept_run / epoch_file(3)), "--out", str(tmp_path / "a.pt")])
        == 2
    )
    err = capsys.readouterr().err
    assert "not those the run trained on" in err and "--no-validate" in err and not (tmp_path / "a.pt").exists()
