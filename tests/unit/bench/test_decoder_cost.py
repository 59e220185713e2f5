"""bench.decoder_cost's side-by-side costs of the shipped graphs: every bundled version, the work of one
importance sample each (for a two-level VAE its three graphs), and each round's ratio to 3.1.0's."""

from __future__ import annotations

import numpy as np

from bench import decoder_cost
from model.config import ModelConfig
from model.core.artifact import load_model_dir
from tests.unit.export.exports import train_and_export


def test_every_bundled_version_is_measured_beside_the_reference_in_the_same_rounds():
    versions = decoder_cost.shipped_versions()
    assert decoder_cost.REFERENCE in versions and "fashion-mnist-gaussian 1.0.0" in versions
    chosen = {name: versions[name] for name in (decoder_cost.REFERENCE, "fashion-mnist-gaussian 1.0.0")}
    costs = decoder_cost.shipped(chosen, rounds=3, batch=8)
    assert set(costs) == set(chosen)
    for figures in costs.values():
        assert len(figures["rounds"]) == 3 and figures["us_per_sample"] > 0
        assert figures[f"vs_{decoder_cost.REFERENCE}"]["n"] == 3
    assert costs[decoder_cost.REFERENCE][f"vs_{decoder_cost.REFERENCE}"]["median"] == 1.0
    alone = decoder_cost.shipped({"x": versions["fashion-mnist-gaussian 1.0.0"]}, rounds=1, batch=4)
    assert f"vs_{decoder_cost.REFERENCE}" not in alone["x"]  # no reference in the run: no ratio


def test_a_two_level_samples_work_is_its_three_graphs(tmp_path):
    config = ModelConfig(
        arch="conv", input_shape=(1, 8, 8), latent_dim=3, lower_latent_dim=4, hidden=(32,), conv_channels=(8,)
    )
    directory, _ = train_and_export(tmp_path, config, "--no-calibrate")
    model = load_model_dir(directory)
    decoded, prior, posterior = decoder_cost.sample_work(model, batch=5)()
    assert [p.shape for p in decoded] == [(5, 1, 8, 8)]
    assert [a.shape for a in (*prior, *posterior)] == [(5, 4)] * 4
    one_level = decoder_cost.sample_work(load_model_dir(decoder_cost.shipped_versions()[decoder_cost.REFERENCE]), 5)()
    assert np.asarray(one_level[0]).shape == (5, 1, 28, 28)  # one level: its decoder's outputs
