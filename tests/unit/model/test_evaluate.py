"""vae-eval on a tiny model: numbers, report.json and figures."""

import json

import numpy as np
import pytest

from model import checkpoint
from model.config import ModelConfig, TrainConfig
from model.core import scoring
from model.core.likelihoods import LIKELIHOODS
from model.core.preprocess import PreprocessContract, array_to_png
from model.data import read_image_folder
from model.evaluate import main
from model.torch_backend import TorchBackend
from model.trainer import train

# The decoder is pinned so the test does not follow the shipped default architecture.
MODEL = ModelConfig(
    arch="conv", input_shape=(1, 8, 8), latent_dim=4, hidden=(32,), conv_channels=(8,), decoder_channels=(8,)
)


def test_eval_writes_numbers_and_figures_for_a_folder_of_images(tiny_dataset, tmp_path):
    train(
        MODEL, TrainConfig(dataset="tiny", epochs=1, batch_size=32, threads=1), tiny_dataset, tmp_path, progress=False
    )
    images = tmp_path / "images"
    images.mkdir()
    for i, x in enumerate(tiny_dataset.test[:6]):  # grey, so the binarisation draws real noise
        (images / f"{i:02d}.png").write_bytes(array_to_png(x))
    assert (
        main(
            [
                str(tmp_path / "best.pt"),
                "--images-dir",
                str(images),
                "--k",
                "50",
                "--seed",
                "3",
                "--threads",
                "1",
                "--no-progress",
                "--report",
                str(tmp_path / "report"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    metrics = report["metrics"]
    assert metrics["images"] == 6 and metrics["iwae_k"] == 50
    assert abs(metrics["elbo"] - (metrics["reconstruction"] - metrics["kl"])) < 1e-6
    assert metrics["log_likelihood"] > metrics["elbo"]  # IWAE(k) >= ELBO
    for name in ("samples", "reconstructions", "traversals", "latent_map", "learning_curves"):
        figure = report["figures"][name]
        assert (tmp_path / "report" / figure["file"]).stat().st_size > 1000
    assert len(report["figures"]["reconstructions"]["reconstruction_log_likelihood_nats"]) == 6
    assert report["test_set"] == "bernoulli data space, each image drawn from seed 0 and its content"
    # Per image, the numbers are model.core.scoring's over the same images in any order, each binarised
    # on its own (as /elbo does), with the same seeds.
    model, _ = checkpoint.load_model(tmp_path / "best.pt")
    pixels, _ = read_image_folder(images, PreprocessContract(input_shape=MODEL.input_shape))
    order = np.array([4, 1, 5, 0, 3, 2])
    bernoulli = LIKELIHOODS["bernoulli"]
    direct = scoring.score(
        TorchBackend(model), bernoulli, bernoulli.images_to_data_space(pixels[order], 0), seed=3, k=50
    )
    with np.load(tmp_path / "report" / "scores.npz") as archive:
        stored = {key: archive[key] for key in archive.files}
    for name in ("elbo", "reconstruction", "kl", "log_likelihood"):
        np.testing.assert_allclose(getattr(direct, name), stored[name][order], rtol=1e-6, err_msg=name)
    assert "of_images" not in metrics  # every image was scored
    limited = ["--images-dir", str(images), "--k", "5", "--limit", "4", "--no-figures", "--no-progress"]
    assert main([str(tmp_path / "best.pt"), *limited, "--report", str(tmp_path / "prefix")]) == 0
    prefix = json.loads((tmp_path / "prefix" / "report.json").read_text())["metrics"]
    assert (prefix["images"], prefix["of_images"]) == (4, 6)  # a prefix says what it is a prefix of


def test_evaluate_keeps_each_images_standard_error_and_ess_across_batches():
    from model.evaluate import evaluate
    from tests.unit.model.core.test_scoring import GAUSSIAN, LinearGaussian, X

    x = np.concatenate([X, X[::-1] + 0.05])  # four images, scored two to a batch
    batched, _ = evaluate(
        LinearGaussian(shrink=0.6, widen=0.7), GAUSSIAN, x, seed=3, k=50, batch_size=2, progress=False
    )
    whole = scoring.score(LinearGaussian(shrink=0.6, widen=0.7), GAUSSIAN, x, seed=3, k=50)
    for name in ("log_likelihood", "standard_error", "effective_sample_size"):
        np.testing.assert_allclose(getattr(batched, name), getattr(whole, name), rtol=1e-6, err_msg=name)


def test_an_interrupted_evaluation_resumes_to_the_numbers_of_an_uninterrupted_one(tmp_path):
    from model.evaluate import evaluate
    from tests.unit.model.core.test_scoring import GAUSSIAN, LinearGaussian, X

    x = np.concatenate([X, X[::-1] + 0.05, X + 0.1])  # six images, two to a batch
    fingerprint = {"k": 50, "seed": 3}
    whole, _ = evaluate(LinearGaussian(shrink=0.6, widen=0.7), GAUSSIAN, x, seed=3, k=50, batch_size=2, progress=False)

    class DiesOnTheThirdBatch(LinearGaussian):
        calls = 0

        def encode(self, x):
            DiesOnTheThirdBatch.calls += 1
            if DiesOnTheThirdBatch.calls == 3:
                raise KeyboardInterrupt
            return super().encode(x)

    partial = tmp_path / "partial.npz"
    with pytest.raises(KeyboardInterrupt):
        evaluate(
            DiesOnTheThirdBatch(shrink=0.6, widen=0.7),
            GAUSSIAN,
            x,
            seed=3,
            k=50,
            batch_size=2,
            progress=False,
            partial=partial,
            fingerprint=fingerprint,
        )
    with np.load(partial) as kept:
        assert len(kept["elbo"]) == 4  # two batches kept
    counting = DiesOnTheThirdBatch(shrink=0.6, widen=0.7)
    DiesOnTheThirdBatch.calls = -10  # it would die only far later
    resumed, seconds = evaluate(
        counting,
        GAUSSIAN,
        x,
        seed=3,
        k=50,
        batch_size=2,
        progress=False,
        partial=partial,
        fingerprint=fingerprint,
        resume=True,
    )
    assert DiesOnTheThirdBatch.calls == -9  # one batch scored: the third
    for name in ("elbo", "kl", "log_likelihood", "standard_error", "effective_sample_size"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name), err_msg=name)
    assert seconds > 0
    with pytest.raises(ValueError, match="another checkpoint"):
        evaluate(
            counting,
            GAUSSIAN,
            x,
            seed=3,
            k=50,
            batch_size=2,
            progress=False,
            partial=partial,
            fingerprint={**fingerprint, "k": 51},
            resume=True,
        )
