"""vae-train --keep-epochs and vae-average: the mean of one run's epochs, as a checkpoint like any other."""

from __future__ import annotations

import hashlib

import pytest
import torch

from model import average as average_module
from model import checkpoint
from model.average import main as average_main
from model.train import epoch_file, train
from tests.unit.model.test_train import IWAE, MOG


@pytest.fixture(scope="module")
def kept_run(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(MOG, IWAE, tiny_dataset, out, progress=False, keep_epochs=True)
    return out


def test_keep_epochs_keeps_the_end_of_every_epoch(kept_run):
    assert sorted(p.name for p in kept_run.glob("epoch-*.pt")) == [epoch_file(e) for e in (1, 2, 3)]
    last, third = checkpoint.load(kept_run / "last.pt"), checkpoint.load(kept_run / epoch_file(3))
    assert third["epoch"] == 3
    for name, tensor in last["model_state"].items():
        assert torch.equal(third["model_state"][name], tensor), name


def test_the_average_is_the_mean_of_the_weights_and_records_its_inputs(kept_run, tiny_dataset, monkeypatch,
                                                                       capsys):
    monkeypatch.setattr(average_module, "load_dataset", lambda *args: tiny_dataset)
    inputs = [kept_run / epoch_file(3), kept_run / epoch_file(2)]  # any order
    out = kept_run / "average.pt"
    assert average_main([*map(str, inputs), "--out", str(out), "--threads", "1"]) == 0
    model, payload = checkpoint.load_model(out)  # loads like any checkpoint
    two, three = (checkpoint.load(kept_run / epoch_file(e))["model_state"] for e in (2, 3))
    for name, tensor in model.state_dict().items():
        assert torch.allclose(tensor, (two[name] + three[name]) / 2, atol=1e-7), name
    assert not torch.equal(two["prior.means"], three["prior.means"])  # the epochs differ: a real mean
    record = payload["averaged"]
    assert record["epochs"] == [2, 3] and record["command"][0] == "vae-average"
    assert [c["sha256"] for c in record["checkpoints"]] == [
        hashlib.sha256((kept_run / epoch_file(e)).read_bytes()).hexdigest() for e in (2, 3)]
    assert payload["epoch"] == 3 and payload["command"] == checkpoint.load(inputs[0])["command"]
    assert payload["optimizer_state"] is None and payload["rng_state"] is None  # nothing to resume
    printed = capsys.readouterr().out
    assert "average of epochs 2..3" in printed and f"{record['validation_bound']:.4f}" in printed


@pytest.mark.parametrize("which, message", [((2, 2), "same epoch is given twice"),
                                            ((2, "other"), "different training runs")])
def test_it_refuses_inputs_that_are_not_distinct_epochs_of_one_run(kept_run, tiny_dataset, tmp_path, which,
                                                                   message, capsys):
    other = tmp_path / "other"
    if "other" in which:
        train(MOG, IWAE.__class__(**{**IWAE.to_dict(), "epochs": 1, "lr": 1e-3}), tiny_dataset, other,
              progress=False)
    paths = [str(kept_run / epoch_file(w)) if w != "other" else str(other / "last.pt") for w in which]
    assert average_main([*paths, "--out", str(tmp_path / "a.pt"), "--no-validate"]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "a.pt").exists()
