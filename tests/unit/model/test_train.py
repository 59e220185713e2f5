"""Training on a tiny synthetic dataset: the loss goes down, checkpoints rebuild the model,
resume gives the same numbers as an uninterrupted run, and Ctrl-C saves and exits cleanly."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from model import checkpoint
from model.config import ModelConfig, TrainConfig
from model.train import kl_weight, train
from tests.conftest import REPO, write_tiny_idx_dataset

MODEL = ModelConfig(arch="conv", input_shape=(1, 8, 8), latent_dim=4, hidden=(32,), conv_channels=(8,))
CONFIG = TrainConfig(dataset="tiny", epochs=3, batch_size=32, lr=3e-3, kl_warmup_epochs=1, threads=1)


def test_loss_goes_down_and_checkpoints_rebuild_the_model(tiny_dataset, tmp_path):
    last = train(MODEL, CONFIG, tiny_dataset, tmp_path, progress=False)
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["test_elbo"] > history[0]["test_elbo"] + 1.0
    assert history[-1]["train_elbo"] > history[0]["train_elbo"]
    model, payload = checkpoint.load_model(tmp_path / "best.pt")
    assert model.config == MODEL
    assert payload["train_config"]["epochs"] == 3 and payload["seed"] == 0
    assert payload["data_checksums"] == tiny_dataset.checksums
    assert set(payload["versions"]) >= {"torch", "numpy", "python"}
    assert payload["optimizer_state"] is not None and "git_commit" in payload
    assert last["epoch"] == 3


def test_resume_gives_the_same_numbers_as_an_uninterrupted_run(tiny_dataset, tmp_path):
    straight = train(MODEL, CONFIG, tiny_dataset, tmp_path / "a", progress=False)
    train(MODEL, CONFIG, tiny_dataset, tmp_path / "b", progress=False, stop_after=2)
    assert checkpoint.load(tmp_path / "b" / "last.pt")["epoch"] == 2
    resumed = train(MODEL, CONFIG, tiny_dataset, tmp_path / "b", progress=False, resume=True)
    for key in ("train_elbo", "test_elbo", "test_kl", "lr"):
        assert resumed[key] == straight[key]
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 3


def test_the_same_seed_gives_the_same_numbers_and_another_does_not(tiny_dataset, tmp_path):
    one = TrainConfig(**{**CONFIG.to_dict(), "epochs": 1})
    a = train(MODEL, one, tiny_dataset, tmp_path / "a", progress=False)
    b = train(MODEL, one, tiny_dataset, tmp_path / "b", progress=False)
    c = train(MODEL, TrainConfig(**{**one.to_dict(), "seed": 1}), tiny_dataset, tmp_path / "c", progress=False)
    assert a["test_elbo"] == b["test_elbo"]
    assert a["test_elbo"] != c["test_elbo"]


def test_kl_warmup_ramps_linearly_to_beta():
    config = TrainConfig(beta=2.0, kl_warmup_epochs=4)
    assert kl_weight(config, 0, 0, 10) == 0.0
    assert kl_weight(config, 1, 5, 10) == pytest.approx(2.0 * 1.5 / 4)
    assert kl_weight(config, 9, 0, 10) == 2.0


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    write_tiny_idx_dataset(tmp_path / "data", size=8, train=4096, test=64)
    # The tiny files are not Fashion-MNIST: point the checksums at them through a test-only dataset name.
    out = tmp_path / "run"
    code = (
        "import sys; from model import data; from tests.conftest import write_tiny_idx_dataset;"
        f"data.DATASETS['tiny'] = write_tiny_idx_dataset(__import__('pathlib').Path({str(tmp_path / 'data')!r}),"
        " size=8, train=4096, test=64);"
        "from model.train import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--dataset", "tiny", "--epochs", "50", "--batch-size", "8", "--threads", "1",
         "--arch", "mlp", "--hidden", "16", "--latent-dim", "2", "--no-progress", "--out", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        for line in proc.stdout:
            if line.startswith("epoch 1/"):
                break
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "interrupted: saved" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr
    state = checkpoint.load(out / "last.pt")
    assert state["epoch"] >= 1
    assert isinstance(state["model_state"], dict) and torch.is_tensor(state["rng_state"])


def test_gaussian_likelihood_trains_and_reports_8_bit_probabilities(tiny_dataset, tmp_path):
    from model import scoring
    from model.data import fixed_test_set
    from model.torch_backend import TorchBackend

    config = ModelConfig(arch="mlp", decoder="mlp", input_shape=(1, 8, 8), latent_dim=3, hidden=(32,),
                         likelihood="gaussian", gaussian_scale="per_pixel")
    history = train(config, TrainConfig(dataset="tiny", epochs=2, batch_size=32, threads=1), tiny_dataset,
                    tmp_path, progress=False)
    assert history["epoch"] == 2
    model, _ = checkpoint.load_model(tmp_path / "best.pt")
    x = fixed_test_set(tiny_dataset.test[:4], "gaussian", 0)  # dequantised: strictly inside (0, 1)
    assert 0.0 < x.min() and x.max() < 1.0
    scores = scoring.score(TorchBackend(model), "gaussian", x, seed=0, k=10)
    # log-probability of an 8-bit image: never above 0 nats, so bits/dim are positive
    assert (scores.log_likelihood < 0).all() and (scores.bits_per_dim > 0).all()
    assert model.decoder.log_sigma.shape == (1, 1, 8, 8)
