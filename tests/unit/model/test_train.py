"""Training on a tiny synthetic dataset: the loss goes down, checkpoints rebuild the model,
resume gives the same numbers as an uninterrupted run, Ctrl-C mid-epoch and --resume give the
same weights, and folders train at the size and colour asked for."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from model import checkpoint
from model import data as data_module
from model import train as train_module
from model import trainer as trainer_module
from model.config import ModelConfig, TrainConfig
from model.torch_priors import MixtureOfGaussians
from model.train import main as train_main
from model.trainer import train
from tests.conftest import REPO, write_png_folder, write_tiny_idx_dataset

MODEL = ModelConfig(arch="conv", input_shape=(1, 8, 8), latent_dim=4, hidden=(32,), conv_channels=(8,))
CONFIG = TrainConfig(dataset="tiny", epochs=3, batch_size=32, lr=3e-3, kl_warmup_epochs=1, threads=1)


def test_loss_goes_down_and_checkpoints_rebuild_the_model(tiny_dataset, tmp_path):
    last = train(MODEL, CONFIG, tiny_dataset, tmp_path, progress=False)
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["test_elbo"] > history[0]["test_elbo"] + 1.0
    assert history[-1]["train_elbo"] > history[0]["train_elbo"]
    model, record = checkpoint.load_model(tmp_path / "best.pt")
    assert model.config == MODEL == record.model_config
    assert record.train_config.epochs == 3 and record.train_config.seed == 0
    assert record.data_checksums == tiny_dataset.checksums
    assert set(record.versions) >= {"torch", "numpy", "python"}
    assert record.optimizer_state is not None and record.resumable
    assert last["epoch"] == 3


def test_resume_gives_the_same_numbers_as_an_uninterrupted_run(tiny_dataset, tmp_path):
    straight = train(MODEL, CONFIG, tiny_dataset, tmp_path / "a", progress=False)
    train(MODEL, CONFIG, tiny_dataset, tmp_path / "b", progress=False, stop_after=2)
    assert checkpoint.load(tmp_path / "b" / "last.pt").epoch == 2
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


def wait_for(condition, what: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"vae-train exited ({proc.returncode}) before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s")
        time.sleep(0.02)  # polling interval of a condition with a deadline


def test_ctrl_c_mid_epoch_and_resume_give_the_weights_of_an_uninterrupted_run(tmp_path):
    folder = write_png_folder(tmp_path / "images", count=64, size=8)
    flags = [
        "--dataset",
        "folder",
        "--data-dir",
        str(folder),
        "--image-size",
        "8",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--kl-warmup-epochs",
        "1",
        "--threads",
        "1",
        "--arch",
        "mlp",
        "--decoder",
        "mlp",
        "--hidden",
        "16",
        "--latent-dim",
        "2",
        "--no-progress",
    ]
    interrupted, straight = tmp_path / "interrupted", tmp_path / "straight"
    # A real vae-train that stops before step 3 of epoch 2 (of 8 steps) and waits there for the signal.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.unit.model.train_with_hooks",
            "--pause-at",
            "2:3",
            "--",
            *flags,
            "--out",
            str(interrupted),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        wait_for((interrupted / "paused").exists, "the pause before epoch 2, step 3", proc)
        assert checkpoint.load(interrupted / "last.pt").epoch == 1  # the steps of epoch 2 so far are not saved
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted in epoch 2" in stderr and "holds the end of epoch 1. Continue with --resume" in stderr
    assert "Traceback" not in stderr and "epoch 2/3" not in stdout
    state = checkpoint.load(interrupted / "last.pt")
    assert state.epoch == 1 and [m["epoch"] for m in state.metrics] == [1]
    assert len((interrupted / "metrics.jsonl").read_text().splitlines()) == 1

    assert train_main([*flags, "--out", str(interrupted), "--resume"]) == 0
    assert train_main([*flags, "--out", str(straight)]) == 0
    resumed, reference = checkpoint.load(interrupted / "last.pt"), checkpoint.load(straight / "last.pt")
    assert resumed.epoch == reference.epoch == 3
    assert resumed.model_state.keys() == reference.model_state.keys()
    for name, weights in reference.model_state.items():
        assert torch.equal(resumed.model_state[name], weights), name  # bitwise, not approximately
    assert torch.equal(resumed.rng_state, reference.rng_state)
    assert [m["test_elbo"] for m in resumed.metrics] == [m["test_elbo"] for m in reference.metrics]


def test_a_second_ctrl_c_stops_at_once_without_a_traceback(tmp_path, monkeypatch, capsys):
    # The first Ctrl-C only sets a flag; a second one raises KeyboardInterrupt wherever training is.
    def interrupted_twice(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", interrupted_twice)
    folder = write_png_folder(tmp_path / "images", count=4, size=8)
    assert (
        train_main(
            ["--dataset", "folder", "--data-dir", str(folder), "--image-size", "8", "--out", str(tmp_path / "run")]
        )
        == 130
    )
    assert "holds the last completed epoch. Continue with --resume" in capsys.readouterr().err


def test_an_rgb_folder_trains_a_colour_model_at_its_size_by_default_and_grey_when_asked(tmp_path, caplog):
    folder = write_png_folder(tmp_path / "images", count=12, size=32, rgb=True)
    flags = [
        "--dataset",
        "folder",
        "--data-dir",
        str(folder),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--conv-channels",
        "4",
        "--decoder-channels",
        "4",
        "--hidden",
        "8",
        "--latent-dim",
        "2",
        "--no-progress",
    ]
    with caplog.at_level(logging.WARNING, logger="model.data"):
        assert train_main([*flags, "--out", str(tmp_path / "rgb")]) == 0
        assert not caplog.records
        assert train_main([*flags, "--channels", "1", "--image-size", "28", "--out", str(tmp_path / "grey")]) == 0
    assert [r.getMessage() for r in caplog.records] == [
        f"converting 12 of 12 images in {folder} from RGB 32x32 to grey 28x28; "
        "pass --channels 3 --image-size 32 to keep them as they are"
    ]
    rgb, _ = checkpoint.load_model(tmp_path / "rgb" / "best.pt")
    grey, _ = checkpoint.load_model(tmp_path / "grey" / "best.pt")
    assert rgb.config.input_shape == (3, 32, 32) and grey.config.input_shape == (1, 28, 28)
    mean, log_scale = rgb.decode(torch.zeros(2, 2))  # colour images: a Gaussian with the decoder's scale
    assert mean.shape == log_scale.shape == (2, 3, 32, 32) and rgb.config.gaussian_scale == "decoder"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--image-size", "30"], "= 4, as each conv layer halves them: pick an --image-size divisible by 4"),
        (["--image-size", "8", "8", "8"], "--image-size takes H or H W"),
    ],
)
def test_a_shape_the_model_cannot_take_is_refused_with_the_fix(tmp_path, capsys, flags, message):
    folder = write_png_folder(tmp_path / "images", count=4, size=8)
    assert train_main(["--dataset", "folder", "--data-dir", str(folder), *flags, "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_idx_data_set_refuses_a_size_it_does_not_have(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(data_module.DATASETS, "tiny", write_tiny_idx_dataset(tmp_path, size=8, train=16, test=4))
    assert train_main(["--dataset", "tiny", "--data-dir", str(tmp_path), "--channels", "3"]) == 2
    assert "tiny images are 1x8x8 and are not converted" in capsys.readouterr().err


def test_gaussian_likelihood_trains_and_reports_8_bit_probabilities(tiny_dataset, tmp_path):
    from model.core import scoring
    from model.core.likelihoods import LIKELIHOODS
    from model.data import fixed_test_set
    from model.torch_backend import TorchBackend

    gaussian = LIKELIHOODS["gaussian"]
    config = ModelConfig(
        arch="mlp",
        decoder="mlp",
        input_shape=(1, 8, 8),
        latent_dim=3,
        hidden=(32,),
        likelihood="gaussian",
        gaussian_scale="per_pixel",
    )
    history = train(
        config, TrainConfig(dataset="tiny", epochs=2, batch_size=32, threads=1), tiny_dataset, tmp_path, progress=False
    )
    assert history["epoch"] == 2
    model, _ = checkpoint.load_model(tmp_path / "best.pt")
    x = fixed_test_set(tiny_dataset.test[:4], gaussian, 0)  # dequantised: strictly inside (0, 1)
    assert x.min() > 0.0 and x.max() < 1.0
    scores = scoring.score(TorchBackend(model), gaussian, x, seed=0, k=10)
    # log-probability of an 8-bit image: never above 0 nats, so bits/dim are positive
    assert (scores.log_likelihood < 0).all() and (scores.bits_per_dim > 0).all()
    assert model.decoder.log_sigma.shape == (1, 1, 8, 8)


MOG = ModelConfig(**{**MODEL.to_dict(), "prior": "mog", "prior_components": 8})
IWAE = TrainConfig(
    **{**CONFIG.to_dict(), "objective": "iwae-dreg", "samples": 4, "kl_warmup_epochs": 0, "validation": 40}
)


def test_iwae_dreg_with_a_learned_prior_trains_and_keeps_the_epoch_with_the_best_validation_bound(
    tiny_dataset, tmp_path
):
    train(MOG, IWAE, tiny_dataset, tmp_path, progress=False)
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["val_iwae"] > history[0]["val_iwae"]
    assert all(h["val_iwae"] >= h["val_elbo"] for h in history)  # the bound over 4 samples beats one sample's
    assert all(h["selection"] == h["val_iwae"] for h in history)
    best = max(history, key=lambda h: h["selection"])
    model, record = checkpoint.load_model(tmp_path / "best.pt")
    assert record.epoch == best["epoch"] and model.config.prior == "mog"
    assert record.best_selection == best["selection"]
    assert model.prior.means.shape == (8, 4)


def test_init_from_takes_the_encoder_and_decoder_and_fits_the_prior_to_the_posteriors(tiny_dataset, tmp_path):
    train(MODEL, TrainConfig(**{**CONFIG.to_dict(), "epochs": 1}), tiny_dataset, tmp_path / "base", progress=False)
    base, _ = checkpoint.load_model(tmp_path / "base" / "last.pt")
    import hashlib

    digest = hashlib.sha256((tmp_path / "base" / "last.pt").read_bytes()).hexdigest()
    config = TrainConfig(
        **{
            **IWAE.to_dict(),
            "epochs": 1,
            "init_from": str(tmp_path / "base" / "last.pt"),
            "init_sha256": digest,
            "prior_fit_steps": 50,
            "lr": 1e-12,
            "lr_schedule": "constant",
        }
    )
    train(MOG, config, tiny_dataset, tmp_path / "tuned", progress=False)
    tuned, record = checkpoint.load_model(tmp_path / "tuned" / "last.pt")
    for name, tensor in base.state_dict().items():  # a vanishing learning rate: the weights are the base's
        assert torch.allclose(tuned.state_dict()[name], tensor, atol=1e-6), name
    assert record.train_config.init_sha256 == digest
    assert not torch.equal(tuned.prior.means, MixtureOfGaussians(MOG).means)  # placed, not left at random


def test_init_from_the_same_prior_continues_that_model_prior_included(tiny_dataset, tmp_path):
    train(MOG, TrainConfig(**{**IWAE.to_dict(), "epochs": 1}), tiny_dataset, tmp_path / "base", progress=False)
    source = str(tmp_path / "base" / "last.pt")
    base, _ = checkpoint.load_model(source)
    config = TrainConfig(
        **{**IWAE.to_dict(), "epochs": 1, "init_from": source, "lr": 1e-12, "lr_schedule": "constant", "samples": 3}
    )
    train(MOG, config, tiny_dataset, tmp_path / "stage2", progress=False)
    tuned, _ = checkpoint.load_model(tmp_path / "stage2" / "last.pt")
    for name, tensor in base.state_dict().items():  # the learned mixture too, not placed anew
        assert torch.allclose(tuned.state_dict()[name], tensor, atol=1e-6), name
    assert any(name.startswith("prior.") for name in base.state_dict())
    with pytest.raises(ValueError, match="prior-fit-steps"):  # nothing newly placed to fit
        train(
            MOG,
            TrainConfig(**{**config.to_dict(), "prior_fit_steps": 10}),
            tiny_dataset,
            tmp_path / "c",
            progress=False,
        )


def test_init_from_refuses_another_architecture_and_a_changed_file(tiny_dataset, tmp_path):
    train(MODEL, TrainConfig(**{**CONFIG.to_dict(), "epochs": 1}), tiny_dataset, tmp_path / "base", progress=False)
    source = str(tmp_path / "base" / "last.pt")
    wider = ModelConfig(**{**MOG.to_dict(), "hidden": (16,)})
    with pytest.raises(ValueError, match="architecture differs"):
        train(
            wider, TrainConfig(**{**IWAE.to_dict(), "init_from": source}), tiny_dataset, tmp_path / "a", progress=False
        )
    with pytest.raises(ValueError, match="SHA-256"):
        train(
            MOG,
            TrainConfig(**{**IWAE.to_dict(), "init_from": source, "init_sha256": "0" * 64}),
            tiny_dataset,
            tmp_path / "b",
            progress=False,
        )


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"samples": 4}, "needs --objective iwae-dreg"),
        ({"objective": "iwae-dreg", "kl_warmup_epochs": 10}, "kl-warmup-epochs 0"),
        ({"patience": 3}, "needs a --validation split"),
    ],
)
def test_inconsistent_objective_settings_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**fields)


def test_an_init_from_that_does_not_fit_is_refused_without_a_traceback(tmp_path, capsys):
    folder = write_png_folder(tmp_path / "images", count=4, size=8)
    flags = [
        "--dataset",
        "folder",
        "--data-dir",
        str(folder),
        "--image-size",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--conv-channels",
        "4",
        "--decoder-channels",
        "4",
        "--hidden",
        "8",
        "--latent-dim",
        "2",
        "--no-progress",
    ]
    assert train_main([*flags, "--out", str(tmp_path / "base")]) == 0
    assert (
        train_main(
            [
                *flags,
                "--latent-dim",
                "3",
                "--init-from",
                str(tmp_path / "base" / "last.pt"),
                "--out",
                str(tmp_path / "wider"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "vae-train: --init-from" in err and "architecture differs" in err and "Traceback" not in err


# -- vae-train --help ----------------------------------------------------------------------------------


def _help_entries() -> dict[str, str]:
    """Each option of `vae-train --help` with its help text, joined over its wrapped lines."""
    import contextlib
    import io
    import re

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        train_module.parse_args(["--help"])
    options = out.getvalue().split("options:\n", 1)[1]
    entries: dict[str, str] = {}
    current = None
    for line in options.splitlines():
        match = re.match(r"  (-[-\w]+)(?:[ ,][^ ].*?)?(?:\s{2,}(.*))?$", line)
        if match:
            current = match.group(1)
            entries[current] = match.group(2) or ""
        elif current:
            entries[current] += " " + line.strip()
    return {option: " ".join(text.split()) for option, text in entries.items()}


def test_every_vae_train_option_has_help_and_says_its_default_once():
    entries = _help_entries()
    assert "--epochs" in entries and "--no-progress" in entries and len(entries) > 30
    for option, text in entries.items():
        if option in ("-h", "--help"):
            continue
        assert text and not text.startswith("(default"), f"{option} has no help line"
        assert text.count("(default") == 1, f"{option} must state its default once: {text!r}"


def test_the_help_gives_the_configs_defaults():
    entries = _help_entries()
    assert "(default: 170)" in entries["--epochs"] and "(default: 0.001)" in entries["--lr"]
    assert "up to 32 px: 32)" in entries["--latent-dim"] and "up to 32 px: 512 512)" in entries["--hidden"]
    assert "(default: auto)" in entries["--likelihood"] and "(default: off)" in entries["--resume"]
    assert "(default: 0.2)" in entries["--calibration-split"]


def test_the_hooks_helper_parses_its_flags_apart_from_vae_trains():
    from tests.unit.model.train_with_hooks import parse_hooks

    hooks, flags = parse_hooks(["--pause-at", "2:3", "--", "--epochs", "3"])
    assert hooks == trainer_module.TrainHooks(pause_at=(2, 3)) and flags == ["--epochs", "3"]
