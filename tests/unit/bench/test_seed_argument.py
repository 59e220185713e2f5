"""bench/seed_argument.py on a linear-Gaussian fake: its curves are /elbo's numbers at each k, its
image variants are what they say, and its docs table renders (no real model, no torch)."""

import math

import numpy as np
import pytest

from bench import seed_argument as bench
from model.core import scoring
from tests.unit.service.fakes import LinearGaussianVAE


def test_the_k_grid_runs_from_1_to_k_max_through_every_decade():
    ks = bench.k_grid(5000)
    assert ks[0] == 1 and ks[-1] == 5000 and {10, 100, 1000} <= set(ks) and ks == sorted(set(ks))
    assert len(ks) >= 20


def test_prefix_statistics_are_the_scores_at_each_k():
    fake = LinearGaussianVAE()
    data = fake.likelihood.images_to_data_space(fake.draw(2, seed=4), 0)
    ks = [2, 9, 40]
    for estimator in ("prior", "importance"):
        stats = bench.prefix_statistics(scoring.log_weights(fake, fake.likelihood, data, 1, 40, estimator), ks)
        for j, k in enumerate(ks):
            scores = scoring.score(fake, fake.likelihood, data, 1, k=k, estimator=estimator)
            np.testing.assert_allclose(stats["estimate"][:, j], scores.log_likelihood, rtol=1e-10)
            np.testing.assert_allclose(stats["standard_error"][:, j], scores.standard_error, rtol=1e-6)
            np.testing.assert_allclose(stats["effective_sample_size"][:, j], scores.effective_sample_size, rtol=1e-8)


def test_a_shift_moves_the_image_right_and_blackens_the_left_columns():
    image = np.arange(1, 17, dtype=np.float32).reshape(1, 4, 4) / 16
    moved = bench.shifted(image, 1)
    np.testing.assert_array_equal(moved[..., 1:], image[..., :3])
    assert np.all(moved[..., 0] == 0)


def test_the_erased_patch_is_black_and_on_the_object():
    image = np.zeros((1, 10, 10), dtype=np.float32)
    image[0, 6:10, 6:10] = 1.0  # the object fills the bottom-right corner
    out = bench.erased(image, 3)
    assert out.sum() == image.sum() - 9  # the whole patch fell on the object, clipped inside the image
    assert np.all(out[0, :6] == image[0, :6])


def test_run_measures_both_estimators_on_every_variant():
    fake = LinearGaussianVAE()
    images = fake.draw(3, seed=2)
    result = bench.run(fake, fake.likelihood, images, [0, 1], 2, patch=3, seed=0, binarize_seed=0, k_max=200)
    curves = result["convergence"]["curves"]
    assert result["convergence"]["k"][-1] == 200 and set(curves) == {"prior", "importance"}
    assert curves["prior"]["standard_error"][0][0] is None  # one sample has no standard error
    final_ess = {e: np.array(curves[e]["effective_sample_size"])[:, -1] for e in curves}
    assert np.all(final_ess["prior"] < final_ess["importance"])
    rows = result["erased_versus_shifted"]
    assert [r["variant"] for r in rows] == ["original", "3x3 patch erased", "shifted 1 pixel", "shifted 2 pixels"]
    assert rows[0]["distance"] == 0 and all(r["distance"] > 0 for r in rows[1:])
    data = fake.likelihood.images_to_data_space(images[2:], 0)
    direct = scoring.score(fake, fake.likelihood, data, 0, k=200, estimator="prior")
    assert rows[0]["prior"]["estimate"] == pytest.approx(direct.log_likelihood[0], rel=1e-12)


def test_the_docs_section_names_the_command_and_every_variant():
    fake = LinearGaussianVAE()
    result = bench.run(
        fake, fake.likelihood, fake.draw(2, seed=2), [0, 1], 1, patch=2, seed=0, binarize_seed=0, k_max=100
    )
    result.update(
        command="python -m bench.seed_argument",
        model={"name": "fake-vae", "version": "9.9.9"},
        machine={"time": "2026-01-01 00:00 UTC"},
    )
    text = bench.argument_section(result)
    assert "`python -m bench.seed_argument`" in text and "`fake-vae` 9.9.9" in text
    for variant in ("original", "2x2 patch erased", "shifted 1 pixel", "shifted 2 pixels"):
        assert f"| {variant} |" in text
    assert "| k | 10 | 100 |" in text and "| prior: gap, ESS |" in text
    assert math.isfinite(result["seconds"])


def test_a_missing_gaussian_model_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no exported model under .*pass --model-dir"):
        bench.latest_version(tmp_path / "fashion-mnist-gaussian")
    for version in ("0.9.0", "0.10.0"):
        (tmp_path / "m" / version).mkdir(parents=True)
        (tmp_path / "m" / version / "manifest.json").write_text("{}")
    assert bench.latest_version(tmp_path / "m").name == "0.10.0"
