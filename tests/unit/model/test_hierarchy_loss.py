"""The two-level VAE in torch (model/vae.py, model/hierarchy_loss.py): its bounds equal the numpy core's
(model/core/hierarchy.py) on the same noise; its encoder gradient is DReG's, every sample's path scaled by
w~_s^2 exactly once, and its decoder's the IWAE bound's; it trains, checkpoints and resumes."""

import json

import numpy as np
import pytest
import torch

from model import checkpoint, losses
from model import data as data_module
from model.config import ModelConfig, TrainConfig
from model.core import hierarchy
from model.core.artifact import load_model_dir
from model.core.likelihoods import get as likelihood
from model.core.manifest import LEVEL_GRAPHS
from model.core.preprocess import image_stream
from model.hierarchy_loss import kl_normal_diag, two_level_terms
from model.torch_backend import TwoLevelTorchBackend
from model.trainer import train
from model.vae import VAE
from tests.conftest import write_tiny_idx_dataset

TWO = ModelConfig(
    arch="conv", input_shape=(1, 8, 8), latent_dim=3, lower_latent_dim=4, hidden=(32,), conv_channels=(8,)
)
CONFIG = TrainConfig(dataset="tiny", epochs=3, batch_size=32, lr=3e-3, kl_warmup_epochs=1, threads=1)


def tiny_data_flags(tmp_path, monkeypatch) -> list[str]:
    """vae-export's flags for the tiny data set (the fixture's files, registered under its name)."""
    monkeypatch.setitem(data_module.DATASETS, "tiny", write_tiny_idx_dataset(tmp_path / "data"))
    return ["--data-dir", str(tmp_path / "data"), "--threads", "1"]


def model_and_images(config: ModelConfig = TWO, count: int = 3, seed: int = 0) -> tuple[VAE, torch.Tensor]:
    torch.manual_seed(seed)
    model = VAE(config)
    with torch.no_grad():  # a livelier prior than the zero-initialised one, so every term matters
        for parameter in model.lower.prior_net.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    x = (torch.rand(count, *config.input_shape, generator=torch.Generator().manual_seed(seed)) > 0.5).float()
    return model, x


def test_the_bounds_are_the_numpy_cores_on_the_same_noise():
    model, x = model_and_images()
    model.eval()
    k, noise = 64, TWO.noise_dim
    core = hierarchy.score_two_levels(TwoLevelTorchBackend(model), likelihood("bernoulli"), x.numpy(), seed=5, k=k)
    for i, image in enumerate(x.numpy()):
        stream = image_stream(5, image)  # the core's draws: the ELBO's, then k samples' (N(0, I): no components)
        first = torch.from_numpy(stream.standard_normal(noise, dtype=np.float32))[None]
        samples = torch.from_numpy(stream.standard_normal((k, noise), dtype=np.float32))[:, None]
        with torch.no_grad():
            elbo = two_level_terms(model, x[i : i + 1], first, beta=1.0)["elbo"]
            bound = two_level_terms(model, x[i : i + 1], samples, beta=1.0)["iwae"]
        assert float(elbo) == pytest.approx(core.elbo[i], abs=1e-3)
        assert float(bound) == pytest.approx(core.log_likelihood[i], abs=1e-3)


def encoder_and_decoder(model: VAE) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    encoder = [*model.encoder.parameters(), *model.lower.posterior_net.parameters()]
    decoder = [*model.decoder.parameters(), *model.lower.prior_net.parameters(), *model.prior.parameters()]
    return encoder, decoder


def log_weights_by_hand(model: VAE, x: torch.Tensor, eps: torch.Tensor, stop: bool) -> torch.Tensor:
    """log w (S, B) built without hooks; `stop`: q's parameters stopped inside log q (DReG's path terms)."""
    upper, lower = TWO.latent_dim, model.lower
    features = model.encoder.body(x)
    mean2, logvar2 = model.encoder.posterior(features)
    z2 = losses.reparameterize(mean2, logvar2, eps[..., :upper])
    shared = features.expand(eps.shape[0], *features.shape)
    mean1, logvar1 = lower.posterior(shared, z2)
    z1 = losses.reparameterize(mean1, logvar1, eps[..., upper:])
    if stop:
        saved = [p.detach().clone() for p in lower.posterior_net.parameters()]
        q1 = torch.func.functional_call(
            lower.posterior_net,
            dict(zip([n for n, _ in lower.posterior_net.named_parameters()], saved, strict=True)),
            (torch.cat([shared.detach(), z2], -1),),
        )
        q_mean1, q_logvar1 = q1.chunk(2, -1)
        q_logvar1 = q_logvar1.clamp(TWO.logvar_min, TWO.logvar_max)
        log_q = losses.log_normal_diag(z2, mean2.detach(), logvar2.detach()) + losses.log_normal_diag(
            z1, q_mean1, q_logvar1
        )
    else:
        log_q = losses.log_normal_diag(z2, mean2, logvar2) + losses.log_normal_diag(z1, mean1, logvar1)
    s, b = eps.shape[:2]
    params = model.decode_levels(z1.reshape(s * b, -1), z2.reshape(s * b, -1))
    repeated = x.expand(s, *x.shape).reshape(s * b, *x.shape[1:])
    log_px = likelihood("bernoulli").torch_log_prob(repeated, params).view(s, b)
    log_p = model.prior.log_prob(z2.reshape(s * b, -1)).view(s, b) + losses.log_normal_diag(z1, *lower.prior(z2))
    return log_px + log_p - log_q


def test_the_encoder_gradient_is_dregs_each_path_once_and_the_decoders_the_bounds():
    model, x = model_and_images(count=2)
    eps = torch.randn(5, 2, TWO.noise_dim, generator=torch.Generator().manual_seed(1))
    encoder, decoder = encoder_and_decoder(model)
    objective = two_level_terms(model, x, eps, beta=1.0)["objective"].sum()
    got_encoder = torch.autograd.grad(objective, encoder, retain_graph=True, allow_unused=True)
    got_decoder = torch.autograd.grad(objective, decoder, allow_unused=True)

    log_w = log_weights_by_hand(model, x, eps, stop=True)
    w2 = torch.softmax(log_w.detach(), 0).pow(2)
    expected_encoder = torch.autograd.grad((w2 * log_w).sum(), encoder, retain_graph=True, allow_unused=True)
    plain = torch.logsumexp(log_weights_by_hand(model, x, eps, stop=False), 0).sum()
    expected_decoder = torch.autograd.grad(plain, decoder, allow_unused=True)
    for got, expected in [
        *zip(got_encoder, expected_encoder, strict=True),
        *zip(got_decoder, expected_decoder, strict=True),
    ]:
        assert (got is None) == (expected is None)
        if got is not None:
            assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_decode_goes_through_both_levels_with_the_lower_levels_mean():
    model, _ = model_and_images()
    z2 = torch.randn(4, TWO.latent_dim)
    mean1, _ = model.lower.prior(z2)
    (through,) = model.decode(z2)
    (direct,) = model.decode_levels(mean1, z2)
    assert torch.equal(through, direct) and through.shape == (4, *TWO.input_shape)


def test_the_analytic_kl_of_two_gaussians_is_torch_distributions():
    mq, lq, mp, lp = torch.randn(4, 2, 5).unbind(0)
    q = torch.distributions.Normal(mq, (0.5 * lq).exp())
    p = torch.distributions.Normal(mp, (0.5 * lp).exp())
    assert torch.allclose(kl_normal_diag(mq, lq, mp, lp), torch.distributions.kl_divergence(q, p).sum(-1), atol=1e-5)


def test_a_two_level_vae_trains_checkpoints_and_resumes(tiny_dataset, tmp_path):
    config = ModelConfig(**{**TWO.to_dict(), "prior": "mog", "prior_components": 4})
    iwae = TrainConfig(**{**CONFIG.to_dict(), "objective": "iwae-dreg", "samples": 3, "kl_warmup_epochs": 0})
    straight = train(config, iwae, tiny_dataset, tmp_path / "a", progress=False)
    history = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["test_elbo"] > history[0]["test_elbo"]
    model, record = checkpoint.load_model(tmp_path / "a" / "best.pt")
    assert model.config == config and model.lower is not None and record.model_config.levels == 2
    train(config, iwae, tiny_dataset, tmp_path / "b", progress=False, stop_after=2)
    resumed = train(config, iwae, tiny_dataset, tmp_path / "b", progress=False, resume=True)
    assert resumed["test_elbo"] == straight["test_elbo"]


def test_the_vampprior_is_refused_for_two_levels():
    with pytest.raises(ValueError, match="two-level VAE takes the standard_normal or mog prior"):
        ModelConfig(**{**TWO.to_dict(), "prior": "vamp", "prior_components": 4})


def test_vae_eval_scores_a_two_level_vae_over_torch_and_over_its_exported_graphs(
    tiny_dataset, tmp_path, capsys, monkeypatch
):
    from model.core.preprocess import array_to_png
    from model.evaluate import main as evaluate_main
    from model.torch_backend import TwoLevelTorchBackend as Backend

    one_epoch = TrainConfig(**{**CONFIG.to_dict(), "epochs": 1})
    train(TWO, one_epoch, tiny_dataset, tmp_path, progress=False)
    images = tmp_path / "images"
    images.mkdir()
    for i, x in enumerate(tiny_dataset.test[:4]):
        (images / f"{i}.png").write_bytes(array_to_png(x))
    flags = ["--images-dir", str(images), "--k", "20", "--seed", "3", "--threads", "1", "--no-progress"]
    assert evaluate_main([str(tmp_path / "best.pt"), *flags, "--report", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["metrics"]["log_likelihood"] > report["metrics"]["elbo"]
    assert (tmp_path / "report" / report["figures"]["samples"]["file"]).stat().st_size > 500
    model, _ = checkpoint.load_model(tmp_path / "best.pt")
    with np.load(tmp_path / "report" / "scores.npz") as archive:
        stored = archive["log_likelihood"]
    from model.core.preprocess import PreprocessContract
    from model.data import read_image_folder

    pixels, _ = read_image_folder(images, PreprocessContract(input_shape=TWO.input_shape))
    bernoulli = likelihood("bernoulli")
    direct = hierarchy.score_two_levels(Backend(model), bernoulli, bernoulli.images_to_data_space(pixels, 0), 3, k=20)
    np.testing.assert_allclose(np.sort(direct.log_likelihood), np.sort(stored), rtol=1e-6)

    from export.cli import main as export_main

    onnx_dir = tmp_path / "onnx"
    data = tiny_data_flags(tmp_path, monkeypatch)
    assert export_main([str(tmp_path / "best.pt"), str(onnx_dir), *data, "--int8"]) != 0
    assert "exported in fp32 only" in capsys.readouterr().err and not onnx_dir.exists()
    assert export_main([str(tmp_path / "best.pt"), str(onnx_dir), *data]) == 0
    manifest = json.loads((onnx_dir / "manifest.json").read_text())
    assert manifest["levels"]["lower_latent_dim"] == TWO.lower_latent_dim
    assert set(manifest["parity"]["max_abs_diff"]) >= {f"levels.{name}" for name in LEVEL_GRAPHS}
    # scored from its graphs: the same numbers as over torch, on the same noise
    graphs = flags + ["--onnx-dir", str(onnx_dir), "--report", str(tmp_path / "graphs")]
    assert evaluate_main([str(tmp_path / "best.pt"), *graphs]) == 0
    scored = json.loads((tmp_path / "graphs" / "report.json").read_text())
    assert scored["scored_with"]["backend"] == "onnxruntime" and scored["scored_with"]["levels"] == 2
    assert scored["scored_with"]["decoder_levels_sha256"] == manifest["levels"]["decoder_levels"]["sha256"]
    with np.load(tmp_path / "graphs" / "scores.npz") as archive:
        np.testing.assert_allclose(np.sort(archive["log_likelihood"]), np.sort(stored), atol=1e-3)


def test_a_two_level_export_loads_in_the_core_and_the_service_and_eval_refuses_it_another_checkpoint(
    tiny_dataset, tmp_path, capsys, monkeypatch
):
    from export.cli import main as export_main
    from model.evaluate import main as evaluate_main

    one_epoch = TrainConfig(**{**CONFIG.to_dict(), "epochs": 1})
    train(TWO, one_epoch, tiny_dataset, tmp_path / "two", progress=False)
    data = tiny_data_flags(tmp_path, monkeypatch)
    assert export_main([str(tmp_path / "two" / "best.pt"), str(tmp_path / "onnx"), *data]) == 0
    model, _ = checkpoint.load_model(tmp_path / "two" / "best.pt")
    levels = load_model_dir(tmp_path / "onnx").levels
    assert levels is not None and levels.lower_latent_dim == TWO.lower_latent_dim
    x = np.random.default_rng(1).random((5, *TWO.input_shape), dtype=np.float32)
    z2 = np.random.default_rng(2).standard_normal((5, TWO.latent_dim), dtype=np.float32)
    reference = TwoLevelTorchBackend(model)
    for got, want in zip(levels.encode(x), reference.encode(x), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    for got, want in zip(levels.lower_prior(z2), reference.lower_prior(z2), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    from service.app import load_engine
    from service.settings import Settings

    engine = load_engine(tmp_path / "onnx", Settings(model_dir=tmp_path / "onnx"))
    assert engine.scorer is engine.model.levels  # the service scores with both levels (its routes' tests)
    one = ModelConfig(arch="conv", input_shape=(1, 8, 8), latent_dim=3, hidden=(32,), conv_channels=(8,))
    train(one, one_epoch, tiny_dataset, tmp_path / "one", progress=False)
    flags = ["--k", "5", "--threads", "1", "--no-progress", "--report", str(tmp_path / "r")]
    code = evaluate_main([str(tmp_path / "one" / "best.pt"), "--onnx-dir", str(tmp_path / "onnx"), *flags])
    assert code == 2 and "was not exported from" in capsys.readouterr().err


def test_the_two_level_parts_export_to_graphs_that_match_torch_at_any_batch(tmp_path):
    import onnxruntime as ort

    from export.exporter import export_levels

    model, _ = model_and_images()
    model.eval()
    export_levels(model, tmp_path, {"name": "test"})
    rng = np.random.default_rng(0)
    for batch in (1, 5):
        x = rng.random((batch, *TWO.input_shape), dtype=np.float32)
        z1 = rng.standard_normal((batch, TWO.lower_latent_dim), dtype=np.float32)
        z2 = rng.standard_normal((batch, TWO.latent_dim), dtype=np.float32)
        with torch.no_grad():
            features = model.encoder.body(torch.from_numpy(x))
            expected = {
                "features": ({"image": x}, (*model.encoder.posterior(features), features)),
                "lower_posterior": (
                    {"features": features.numpy(), "z2": z2},
                    model.lower.posterior(features, torch.from_numpy(z2)),
                ),
                "lower_prior": ({"z2": z2}, model.lower.prior(torch.from_numpy(z2))),
                "decoder_levels": (
                    {"z1": z1, "z2": z2},
                    model.decode_levels(torch.from_numpy(z1), torch.from_numpy(z2)),
                ),
                "decoder": ({"z": z2}, model.decode(torch.from_numpy(z2))),
            }
        for name, (feeds, outputs) in expected.items():
            session = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
            got = session.run(None, feeds)
            assert len(got) == len(outputs), name
            for value, reference in zip(got, outputs, strict=True):
                np.testing.assert_allclose(value, reference.numpy(), atol=2e-5, err_msg=name)
