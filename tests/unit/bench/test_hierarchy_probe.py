"""bench.hierarchy_probe: each level's KL and active units, and a report's per-image scores paired with a
shipped version's on the same images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import hierarchy_probe
from model.config import ModelConfig
from model.hierarchy_loss import kl_normal_diag
from model.vae import VAE
from tests.unit.export.exports import TWO_LEVELS


def images(count: int = 64, seed: int = 0) -> torch.Tensor:
    return (torch.rand((count, 1, 8, 8), generator=torch.Generator().manual_seed(seed)) < 0.4).float()


def test_a_level_whose_means_do_not_move_has_no_active_unit():
    torch.manual_seed(0)
    model = VAE(TWO_LEVELS).eval()
    x = images()
    live = hierarchy_probe.levels(model, x, seed=0)
    assert live["top"]["dims"] == 3 and live["lower"]["dims"] == 4
    assert live["top"]["active_units"] <= 3 and live["lower"]["active_units"] <= 4
    with torch.no_grad():  # the top level's head: its means no longer read the image
        model.encoder.head.weight[:3].zero_()
    dead = hierarchy_probe.levels(model, x, seed=0)
    assert dead["top"]["active_units"] == 0
    assert dead["kl"] == pytest.approx(dead["top"]["kl"] + dead["lower"]["kl"])


def test_the_lower_levels_kl_is_read_at_a_z2_drawn_from_the_posterior():
    torch.manual_seed(1)
    model = VAE(TWO_LEVELS).eval()
    x = images(16)
    with torch.no_grad():
        features = model.encoder.body(x)
        mean2, logvar2 = model.encoder.posterior(features)
        eps = torch.randn(mean2.shape, generator=torch.Generator().manual_seed(7))
        z2 = mean2 + (0.5 * logvar2).exp() * eps
        mean1, logvar1 = model.lower.posterior(features, z2)
        expected = kl_normal_diag(mean1, logvar1, *model.lower.prior(z2)).mean()
    assert hierarchy_probe.levels(model, x, seed=7)["lower"]["kl"] == pytest.approx(float(expected), rel=1e-5)
    assert hierarchy_probe.levels(model, x, seed=8)["lower"]["kl"] != pytest.approx(float(expected), rel=1e-5)


def test_a_one_level_model_has_its_one_level():
    config = ModelConfig(arch="conv", input_shape=(1, 8, 8), latent_dim=4, hidden=(32,), conv_channels=(8,))
    torch.manual_seed(0)
    out = hierarchy_probe.levels(VAE(config).eval(), images(), seed=0)
    assert set(out) == {"top", "kl"} and out["kl"] == out["top"]["kl"] > 0


def report(folder: Path, scores: np.ndarray, k: int = 5000, noise_seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    np.savez(folder / "scores.npz", log_likelihood=scores)
    data = {"dataset": "fashion-mnist", "split": "test", "checksums": {"a": "1"}}
    body = {"test_set": "bernoulli, fixed once with seed 0", "noise_seed": noise_seed, "data": data}
    (folder / "report.json").write_text(json.dumps({**body, "metrics": {"iwae_k": k}}))
    return folder


def test_paired_scores_are_the_same_images_difference_and_its_standard_error(tmp_path):
    shipped = np.array([-100.0, -200.0, -150.0, -120.0, -300.0])
    report(tmp_path / "shipped" / "report", shipped)
    gains = np.array([0.5, 1.5, 1.0, 0.0, 2.0])
    ours = report(tmp_path / "ours", shipped[:5] + gains)
    out = hierarchy_probe.paired(ours, tmp_path / "shipped")
    assert out["images"] == 5 and out["gain_nats"] == pytest.approx(1.0)
    assert out["standard_error"] == pytest.approx(gains.std(ddof=1) / math.sqrt(5))
    assert out["nll_nats"] == pytest.approx(-(shipped + gains).mean())
    prefix = report(tmp_path / "prefix", shipped[:2] - 1.0)  # a --limit run: the first images only
    assert hierarchy_probe.paired(prefix, tmp_path / "shipped")["against_nll_nats"] == pytest.approx(150.0)


@pytest.mark.parametrize("change", [{"k": 1000}, {"noise_seed": 1}])
def test_scores_of_another_k_or_noise_are_not_paired(tmp_path, change):
    report(tmp_path / "shipped" / "report", np.zeros(4))
    ours = report(tmp_path / "ours", np.ones(4), **change)
    with pytest.raises(SystemExit, match="not the same"):
        hierarchy_probe.paired(ours, tmp_path / "shipped")


def test_more_images_than_the_other_side_scored_are_refused(tmp_path):
    report(tmp_path / "shipped" / "report", np.zeros(3))
    with pytest.raises(SystemExit, match="4 images against 3"):
        hierarchy_probe.paired(report(tmp_path / "ours", np.ones(4)), tmp_path / "shipped")


def test_the_command_records_a_checkpoints_levels_by_its_sha256(tmp_path, monkeypatch):
    from model import data as data_module
    from model.config import TrainConfig
    from model.data import load_idx_dataset, sha256_file
    from model.trainer import train
    from tests.conftest import write_tiny_idx_dataset

    spec = write_tiny_idx_dataset(tmp_path / "data", size=8, train=128, test=32)
    monkeypatch.setitem(data_module.DATASETS, "tiny", spec)
    config = TrainConfig(dataset="tiny", data_dir=str(tmp_path / "data"), epochs=1, batch_size=32, threads=1)
    train(TWO_LEVELS, config, load_idx_dataset(spec, tmp_path / "data"), tmp_path / "run", progress=False)
    results = tmp_path / "probe.json"
    checkpoint = str(tmp_path / "run" / "best.pt")
    assert hierarchy_probe.main([checkpoint, "--images", "20", "--results", str(results)]) == 0
    entry = json.loads(results.read_text())["entries"][sha256_file(checkpoint)]
    assert entry["images"] == 20 and entry["epoch"] == 1 and "paired" not in entry
    assert entry["levels"]["top"]["dims"] == 3 and entry["levels"]["lower"]["dims"] == 4
    assert entry["command"] == f"python -m bench.hierarchy_probe {checkpoint} --images 20"
