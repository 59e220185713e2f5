"""model/train_autoencoder_kl.py: the loss, the schedule and the error figures by hand, and a tiny run that is
interrupted and resumed ending where an unbroken run ends."""

import json
import math

import numpy as np
import pytest
import torch

from model import train_autoencoder_kl as akl
from model.data import Dataset

pytest.importorskip("diffusers")

TINY = ["--block-out-channels", "8", "8", "--norm-num-groups", "4", "--batch-size", "16", "--threads", "1"]


def test_the_loss_is_the_l1_sum_per_image_plus_the_weighted_kl_averaged_over_the_batch():
    x = torch.zeros(2, 1, 2, 2)
    reconstruction = torch.tensor([[[[1.0, -1.0], [0.5, 0.0]]], [[[0.0, 0.0], [0.0, 0.25]]]])
    kl = torch.tensor([100.0, 300.0])
    loss, l1 = akl.autoencoder_loss(reconstruction, x, kl, kl_weight=0.01)
    assert float(l1) == pytest.approx((2.5 + 0.25) / 2)
    assert float(loss) == pytest.approx((2.5 + 1.0 + 0.25 + 3.0) / 2)


def test_the_learning_rate_falls_from_lr_to_lr_final_on_a_cosine():
    settings = akl.TrainSettings(lr=1e-3, lr_final=1e-4)
    assert akl.learning_rate(0, 101, settings) == pytest.approx(1e-3)
    assert akl.learning_rate(50, 101, settings) == pytest.approx(5.5e-4)
    assert akl.learning_rate(100, 101, settings) == pytest.approx(1e-4)


def test_errors_are_measured_on_0_1_pixels():
    pixels = np.full((2, 1, 2, 2), 0.5, np.float32)
    decoded = np.zeros((2, 1, 2, 2), np.float32)  # 0.5 on [0, 1]: exact
    decoded[1] = 0.2  # 0.6 on [0, 1]: off by 0.1
    figures = akl.reconstruction_error(pixels, decoded)
    assert figures["mse"] == pytest.approx(0.005)
    assert figures["l1"] == pytest.approx(0.05)
    assert figures["psnr_db"] == pytest.approx(10 * math.log10(1 / 0.005))


def test_shapes_refuse_groups_that_do_not_divide_the_channels():
    with pytest.raises(ValueError, match="norm-num-groups"):
        akl.AutoencoderShape(block_out_channels=(8, 12), norm_num_groups=8)
    assert akl.AutoencoderShape().latent_shape == (4, 7, 7)


@pytest.fixture
def tiny_data(monkeypatch):
    rng = np.random.default_rng(0)
    data = Dataset(
        name="fashion-mnist",
        train=rng.random((48, 1, 28, 28), dtype=np.float32),
        test=rng.random((20, 1, 28, 28), dtype=np.float32),
        test_labels=None,
        checksums={"synthetic": "0"},
        source="synthetic",
    )
    monkeypatch.setattr(akl, "load_dataset", lambda name, data_dir=None: data)
    return data


def test_a_resumed_run_ends_where_an_unbroken_run_ends(tiny_data, tmp_path, monkeypatch):
    akl.main(["--out", str(tmp_path / "whole"), "--epochs", "2", *TINY])

    real_epoch = akl.train_epoch

    def interrupted(vae, optimizer, train, epoch, settings):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(vae, optimizer, train, epoch, settings)

    monkeypatch.setattr(akl, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        akl.main(["--out", str(tmp_path / "broken"), "--epochs", "2", *TINY])
    monkeypatch.setattr(akl, "train_epoch", real_epoch)
    with pytest.raises(SystemExit, match="--resume"):
        akl.main(["--out", str(tmp_path / "broken"), "--epochs", "2", *TINY])
    with pytest.raises(SystemExit, match="same flags"):
        akl.main(["--out", str(tmp_path / "broken"), "--epochs", "3", "--resume", *TINY])
    akl.main(["--out", str(tmp_path / "broken"), "--epochs", "2", "--resume", *TINY])

    whole, broken = (akl.RunState.load(tmp_path / run / akl.CHECKPOINT) for run in ("whole", "broken"))
    for name, tensor in whole.model.items():
        torch.testing.assert_close(broken.model[name], tensor, rtol=0, atol=0, msg=name)
    report = json.loads((tmp_path / "broken" / "report" / "report.json").read_text())
    assert [i["from_epoch"] for i in report["invocations"]] == [1, 2]
    assert report["latent_shape"] == [4, 14, 14] and report["test"]["images"] == 20
    config = json.loads((tmp_path / "broken" / "autoencoder" / "config.json").read_text())
    assert config["scaling_factor"] == pytest.approx(report["latents"]["scaling_factor"])
    assert report["latents"]["scaling_factor"] == pytest.approx(1 / report["latents"]["posterior_sample"]["std"])
