import json
import math

import numpy as np
import pytest

from bench import model_card
from tests.conftest import REPO


def manifest(name: str, version: str, likelihood: str, nll: float) -> dict:
    """The fields the card reads, shaped as the exporter writes them."""
    return {
        "name": name,
        "version": version,
        "latent_dim": 32,
        "likelihood": {"name": likelihood},
        "training": {
            "epoch": 20,
            "dataset": "fashion-mnist",
            "command": ["vae-train", "--out", "runs/x"],
            "model_config": {"arch": "conv", "decoder": "conv", "gaussian_scale": "per_pixel"},
            "train_config": {"epochs": 20, "test_binarize_seed": 0},
        },
        "metrics": {
            "images": 10000,
            "nll_elbo_nats": nll + 3,
            "bits_per_dim_elbo": 0.5,
            "reconstruction": -nll,
            "kl": 20.0,
            "iwae_k": 5000,
            "nll_nats": nll,
            "bits_per_dim": 0.4,
            "command": ["vae-eval", "runs/x/best.pt"],
        },
        "parity": {"images": 1000, "latents": 1000, "max_abs_diff": {"mean": 2e-5}},
    }


def write(repository, m: dict) -> None:
    folder = repository / m["name"] / m["version"]
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(m))


def test_each_model_gets_its_newest_version_and_the_default_model_comes_first(tmp_path):
    write(tmp_path, manifest("a-gaussian", "1.0.0", "gaussian", -1500.0))
    write(tmp_path, manifest("fashion-mnist-vae", "1.9.0", "bernoulli", 230.0))
    write(tmp_path, manifest("fashion-mnist-vae", "1.10.0", "bernoulli", 227.5))  # numerically newer
    (tmp_path / "fashion-mnist-vae" / "notes").mkdir()  # not a version: no manifest
    card = model_card.model_card_section(tmp_path)
    assert card.index("### `fashion-mnist-vae` 1.10.0, beside 1.9.0") < card.index("### `a-gaussian` 1.0.0")
    assert "**227.50**" in card
    assert (
        "the shipped model is 1.20 nats ahead of plain VAE, Gaussian prior; 0.15 nats behind VAE, VampPrior; "
        "0.75 nats behind VAE, Exemplar prior; 0.78 nats behind two stochastic layers (HVAE), VampPrior; "
        "0.97 nats behind two stochastic layers (HVAE), Exemplar prior;"
    ) in card
    assert "per-pixel learned sigma" in card and "dequantised once" in card


def test_a_model_short_of_its_reference_is_said(tmp_path):
    write(tmp_path, manifest("fashion-mnist-vae", "1.0.0", "bernoulli", 229.0))
    assert "does not yet beat the reference: it is 0.30 nats short" in model_card.model_card_section(tmp_path)


def test_the_gaussian_floor_is_the_cross_entropy_of_bin_noise_under_its_best_gaussian():
    # U(0, w) under N(w/2, w^2/12): E[-log2 density] in units of the bin, by a fine Riemann sum
    n, w = 100_000, 1.0
    u = (0.5 + np.arange(n)) / n * w
    sigma2 = w * w / 12
    bits = float(((u - w / 2) ** 2 / (2 * sigma2) + 0.5 * math.log(2 * math.pi * sigma2)).mean()) / math.log(2)
    assert pytest.approx(bits, abs=1e-6) == model_card.GAUSSIAN_FLOOR_BITS
    assert round(model_card.GAUSSIAN_FLOOR_BITS, 2) == 0.25


def test_the_bundled_repository_renders():
    card = model_card.model_card_section(REPO / "artifacts")
    assert "### `fashion-mnist-vae`" in card and "NLL, IWAE k=5000" in card


def test_a_pixels_cost_at_the_floor_scale_is_the_floor():
    assert model_card.gaussian_pixel_bits((1 / 256) / math.sqrt(12)) == pytest.approx(model_card.GAUSSIAN_FLOOR_BITS)
    assert model_card.gaussian_pixel_bits(2 / 256 / math.sqrt(12)) == pytest.approx(model_card.GAUSSIAN_FLOOR_BITS + 1)


def test_versions_stand_side_by_side_newest_first_with_their_prior_and_objective(tmp_path):
    old = manifest("fashion-mnist-vae", "2.0.0", "bernoulli", 227.67)
    new = manifest("fashion-mnist-vae", "3.0.0", "bernoulli", 226.40)
    new["prior"] = {"name": "mog", "components": 200}
    new["training"]["train_config"].update(
        objective="iwae-dreg", samples=5, validation=10000, init_from="artifacts/x/checkpoint.pt", init_sha256="ab" * 32
    )
    write(tmp_path, old)
    write(tmp_path, new)
    card = model_card.model_card_section(tmp_path)
    assert "| 3.0.0: nats | bits/dim | 2.0.0: nats | bits/dim |" in card
    assert "| prior | mixture of 200 Gaussians |  | N(0, I) |  |" in card
    assert "| training objective | IWAE bound, k=5, DReG gradients |  | ELBO |  |" in card
    assert "| **NLL, IWAE k=5000** | **226.40** | **0.4000** | **227.67** | **0.4000** |" in card
    assert "best bound on a held-out validation split" in card and "starting from `artifacts/x/checkpoint.pt`" in card
    assert (
        "0.32 nats ahead of two stochastic layers (HVAE), VampPrior; 0.13 nats ahead of two stochastic layers "
        "(HVAE), Exemplar prior; 1.02 nats behind ConvHVAE, Gaussian prior" in card
    )


def test_an_averaged_model_says_which_epochs_and_how(tmp_path):
    m = manifest("fashion-mnist-vae", "1.0.0", "bernoulli", 226.0)
    m["training"]["averaged"] = {
        "epochs": [8, 9, 10],
        "command": ["vae-average", "runs/x/epoch-008.pt", "--out", "runs/x/average.pt"],
    }
    write(tmp_path, m)
    card = model_card.model_card_section(tmp_path)
    assert (
        "the mean of the weights at the ends of epochs 8 to 10 of 20 (`vae-average runs/x/epoch-008.pt --out "
        "runs/x/average.pt`) on fashion-mnist"
    ) in card
    assert "(epoch 20 of 20)" not in card  # the average is no single epoch
    assert model_card.epoch_list([3, 5, 6]) == "3, 5, 6" and model_card.epoch_list([4, 5]) == "4, 5"


def test_the_served_default_is_each_models_highest_version(tmp_path):
    write(tmp_path, manifest("fashion-mnist-vae", "2.0.0", "bernoulli", 230.0))
    write(tmp_path, manifest("fashion-mnist-vae", "10.0.0", "bernoulli", 227.5))
    assert model_card.served_default("fashion-mnist-vae", tmp_path) == "10.0.0"
    assert model_card.served_default("no-such-model", tmp_path) is None


def test_a_run_is_named_by_the_version_its_training_command_made(tmp_path):
    write(tmp_path, manifest("a-gaussian", "1.0.0", "gaussian", -1500.0))  # trained with --out runs/x
    line = model_card.runs_models({"per_pixel": "runs/x", "shared": "runs/y"}, tmp_path)
    assert line == "Of these runs, the per-pixel run is `a-gaussian` 1.0.0 (its manifest's training command).\n\n"
    assert model_card.runs_models({"shared": "runs/y"}, tmp_path) == ""


def test_the_page_names_each_version_and_copies_its_figures(tmp_path):
    repository = tmp_path / "repository"
    write(repository, manifest("fashion-mnist-vae", "3.1.0", "bernoulli", 226.4))
    report = repository / "fashion-mnist-vae" / "3.1.0" / "report"
    report.mkdir()
    (report / "samples.png").write_bytes(b"png")
    page = model_card.write_page(tmp_path / "docs" / "model-card.md", tmp_path / "docs" / "figures", repository)
    text = page.read_text()
    assert text.startswith("# Model card") and "## `fashion-mnist-vae` 3.1.0" in text
    assert "(figures/fashion-mnist-vae-3.1.0-samples.png)" in text and "reconstructions" not in text.split("## ")[-1]
    assert (tmp_path / "docs" / "figures" / "fashion-mnist-vae-3.1.0-samples.png").read_bytes() == b"png"


def test_the_docs_model_card_page_is_generated_from_the_bundled_repository(tmp_path):
    page = model_card.write_page(tmp_path / "model-card.md", tmp_path / "figures", REPO / "artifacts")
    assert page.read_text() == (REPO / "docs" / "model-card.md").read_text(), (
        "docs/model-card.md is stale: run `python -m bench.report`"
    )


def test_a_version_scored_on_a_prefix_of_the_test_set_is_compared_with_nothing_scored_on_other_images(tmp_path):
    write(tmp_path, manifest("fashion-mnist-vae", "3.1.0", "bernoulli", 226.4))
    prefix = manifest("fashion-mnist-vae", "4.0.0", "bernoulli", 221.35)  # easy first images, not a better model
    prefix["metrics"].update(images=200, of_images=10000)
    write(tmp_path, prefix)
    card = model_card.model_card_section(tmp_path)
    assert "### `fashion-mnist-vae` 4.0.0\n" in card and "beside" not in card
    assert "| test set (200 images, binarised once, seed 0) | 4.0.0: nats | bits/dim |" in card
    assert "226.40" not in card and "reference:" not in card and "ahead of" not in card
    assert "Scored on the first 200 of the 10,000 test images (`vae-eval --limit`)" in card
    assert "nor with 3.1.0, scored on other images." in card


def test_a_two_level_versions_latents_and_kl_name_both_levels(tmp_path):
    two = manifest("fashion-mnist-vae", "4.0.0", "bernoulli", 225.0)
    two["levels"] = {"lower_latent_dim": 16}
    write(tmp_path, two)
    card = model_card.model_card_section(tmp_path)
    assert "32 latent dimensions over a lower level of 16," in card
    assert "| KL(q(z\\|x) \\|\\| p(z)), both levels | 20.00 |" in card
    one = model_card.model_card_section(REPO / "artifacts")
    assert "32 latent dimensions, bernoulli" in one and "both levels" not in one
