"""model/core/contract.py: GraphAdapter maps [0, 1] pixels to a graph's own feed and its outputs back to the
contract's forms (a change of variables for a Gaussian decoder); check_signatures and check_behaviour refuse
graphs that break the contract, with messages that say what is wrong and how to fix it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from model.core.contract import FLOAT, ContractError, GraphAdapter, check_behaviour, check_signatures
from model.core.likelihoods import LIKELIHOODS
from model.core.manifest import (
    ContractSpec,
    DecoderIO,
    EncoderIO,
    FileHash,
    GraphInfo,
    InputSpec,
    LikelihoodSpec,
    Manifest,
    Source,
)

HASH = "0" * 64
GRAPH = GraphInfo(file="x.onnx", sha256=HASH, inputs={}, outputs={}, opset=20)
SHAPE = (1, 2, 3)  # C, H, W: H != W, so a transposed reshape would show
LATENT = 3
BERNOULLI = LikelihoodSpec(name="bernoulli", outputs=["logits"], data_space="binary")
GAUSSIAN = LikelihoodSpec(name="gaussian", outputs=["mean", "log_scale"], data_space="dequantised")


def make_manifest(
    shape: tuple[int, int, int] = SHAPE,
    likelihood: LikelihoodSpec = BERNOULLI,
    contract: ContractSpec | None = None,
    **values: Any,
) -> Manifest:
    """A manifest for graphs of `shape`; `values` are InputSpec's range/mean/std. Without a contract it is
    vae-export's (source_checkpoint), with one an import's (source)."""
    imported = {"source": Source(tool="vae-import onnx")}
    exported = {"source_checkpoint": FileHash(file="c.pt", sha256=HASH)}
    return Manifest(
        name="m",
        version="1.0.0",
        created="2026-01-01T00:00:00+00:00",
        **(exported if contract is None else imported),
        encoder=GRAPH,
        decoder=GRAPH,
        input=InputSpec(shape=list(shape), channels=shape[0], **values),
        latent_dim=LATENT,
        likelihood=likelihood,
        preprocessing={},
        training={},
        metrics={},
        parity={},
        contract=contract,
        exporter={},
    )


def contract(outputs: list[str], **decoder: Any) -> ContractSpec:
    return ContractSpec(decoder=DecoderIO(outputs=outputs, **decoder))


def pixels(count: int = 2, shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, *shape), dtype=np.float32)


# GraphAdapter: the feed


def test_a_vae_export_manifest_is_native_and_feeds_the_pixels_unchanged():
    adapter = GraphAdapter.of(make_manifest())
    x = pixels()
    feed = adapter.encoder_feed(x)
    assert adapter.native and adapter.scale is None and adapter.shift is None
    assert list(feed) == ["image"] and feed["image"].dtype == np.float32
    np.testing.assert_array_equal(feed["image"], x)
    assert adapter.encoder_outputs == ["mean", "logvar"]
    assert adapter.decoder_outputs == ["logits"]


@pytest.mark.parametrize("likelihood", [BERNOULLI, GAUSSIAN], ids=["bernoulli", "gaussian"])
def test_a_vae_export_manifest_passes_decoder_outputs_and_posterior_through(likelihood):
    adapter = GraphAdapter.of(make_manifest(likelihood=likelihood))
    outputs = [pixels(seed=i) - 0.5 for i in range(len(likelihood.outputs))]
    params = adapter.decoder_params(outputs)
    assert len(params) == len(outputs) and all(p is o for p, o in zip(params, outputs, strict=True))
    mean, spread = pixels(seed=3)[:, 0, 0], pixels(seed=4)[:, 0, 0]
    assert all(a is b for a, b in zip(adapter.posterior(mean, spread), (mean, spread), strict=True))


def test_an_import_in_0_1_values_is_not_native_but_feeds_the_pixels_unchanged():
    adapter = GraphAdapter.of(make_manifest(contract=contract(["logits"])))
    x = pixels()
    assert not adapter.native and adapter.scale is None
    np.testing.assert_array_equal(adapter.encoder_feed(x)["image"], x)


def test_a_minus_one_to_one_range_feeds_two_pixels_minus_one():
    adapter = GraphAdapter.of(make_manifest(contract=contract(["logits"]), range=[-1.0, 1.0]))
    x = pixels()
    feed = adapter.encoder_feed(x)["image"]
    assert not adapter.native and feed.dtype == np.float32 and feed.shape == x.shape
    np.testing.assert_allclose(feed, 2.0 * x - 1.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(adapter.encoder_feed(np.zeros_like(x))["image"], -1.0)
    np.testing.assert_allclose(adapter.encoder_feed(np.ones_like(x))["image"], 1.0)


def test_mean_and_std_normalise_each_channel_as_torchvision_normalize():
    mean, std = [0.5, 0.4, 0.3], [0.25, 0.5, 0.2]
    manifest = make_manifest((3, 2, 3), contract=contract(["logits"]), mean=mean, std=std)
    x = pixels(shape=(3, 2, 3))
    feed = GraphAdapter.of(manifest).encoder_feed(x)["image"]
    expected = (torch.from_numpy(x) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    np.testing.assert_allclose(feed, expected.numpy(), rtol=1e-6, atol=1e-6)


def test_a_flat_layout_feeds_the_graphs_own_input_as_rows_of_c_h_w_values():
    io = EncoderIO(image="pixels", mean="mu", spread="sigma", layout="flat")
    manifest = make_manifest(
        (3, 2, 3),
        contract=ContractSpec(encoder=io, decoder=DecoderIO(outputs=["logits"])),
        mean=[0.5, 0.25, 0.0],
        std=[0.5, 0.25, 1.0],
    )
    x = pixels(shape=(3, 2, 3))
    feed = GraphAdapter.of(manifest).encoder_feed(x)
    assert list(feed) == ["pixels"] and feed["pixels"].shape == (2, 18)
    normalised = (x - np.reshape([0.5, 0.25, 0.0], (1, 3, 1, 1))) / np.reshape([0.5, 0.25, 1.0], (1, 3, 1, 1))
    np.testing.assert_allclose(feed["pixels"], normalised.reshape(2, 18), atol=1e-6)  # channel by channel
    assert GraphAdapter.of(manifest).encoder_outputs == ["mu", "sigma"]


# GraphAdapter: the posterior


@pytest.mark.parametrize(
    "posterior, spread, logvar",
    [
        ("logvar", [-1.0, 0.0, 2.0], [-1.0, 0.0, 2.0]),
        ("log_scale", [-1.0, 0.0, 2.0], [-2.0, 0.0, 4.0]),
        ("scale", [0.5, 1.0, 3.0], [2 * math.log(0.5), 0.0, 2 * math.log(3.0)]),
    ],
)
def test_the_posteriors_spread_becomes_a_log_variance(posterior, spread, logvar):
    io = EncoderIO(posterior=posterior)
    adapter = GraphAdapter.of(make_manifest(contract=ContractSpec(encoder=io, decoder=DecoderIO(outputs=["logits"]))))
    mean = np.array([[0.1, 0.2, 0.3]], np.float32)
    got_mean, got_logvar = adapter.posterior(mean, np.array([spread], np.float32))
    np.testing.assert_array_equal(got_mean, mean)
    assert got_logvar.dtype == np.float32
    np.testing.assert_allclose(got_logvar, [logvar], rtol=1e-6, atol=1e-7)
    # the log-variance is what the KL needs: exp(logvar) is the variance the posterior form describes
    variance = {"logvar": np.exp(spread), "log_scale": np.exp(spread) ** 2, "scale": np.square(spread)}[posterior]
    np.testing.assert_allclose(np.exp(got_logvar[0]), variance, rtol=1e-5)


def test_a_scale_of_zero_is_a_log_variance_of_minus_infinity_without_a_warning(recwarn):
    io = EncoderIO(posterior="scale")
    adapter = GraphAdapter.of(make_manifest(contract=ContractSpec(encoder=io, decoder=DecoderIO(outputs=["logits"]))))
    _, logvar = adapter.posterior(np.zeros((1, 2), np.float32), np.array([[0.0, 1.0]], np.float32))
    assert logvar[0, 0] == -np.inf and logvar[0, 1] == 0.0
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


# GraphAdapter: the decoder's parameters


def model_space_gaussian(seed: int, count: int = 4, shape: tuple[int, int, int] = SHAPE):
    """A decoder's mean (in [-1, 1]) and log-scale per pixel, in the model's own values, (K, C, H, W)."""
    rng = np.random.default_rng(seed)
    mean = np.tanh(rng.normal(size=(count, *shape))).astype(np.float32)
    log_scale = rng.normal(-1.5, 0.3, (count, *shape)).astype(np.float32)
    return mean, log_scale


def direct_log_density(y: np.ndarray, mean: np.ndarray, log_scale: np.ndarray) -> np.ndarray:
    """log N(y | mean, exp(log_scale)^2) summed over the pixels, computed in the model's own values by torch."""
    normal = torch.distributions.Normal(torch.from_numpy(mean).double(), torch.from_numpy(log_scale).double().exp())
    return normal.log_prob(torch.from_numpy(y).double()).flatten(1).sum(1).numpy()


def served_log_density(adapter: GraphAdapter, x: np.ndarray, outputs: list[np.ndarray]) -> np.ndarray:
    params = adapter.decoder_params(outputs)
    assert len(params) == 2 and all(p.shape == outputs[0].shape[:1] + x.shape for p in params)
    return LIKELIHOODS["gaussian"].log_prob(x.reshape(-1), tuple(p.reshape(len(p), -1) for p in params))


SECOND_OUTPUT = {"log_scale": lambda s: s, "logvar": lambda s: 2.0 * s, "scale": np.exp}


@pytest.mark.parametrize("scale_output", sorted(SECOND_OUTPUT))
def test_a_gaussian_in_minus_one_to_one_values_keeps_its_density_up_to_the_jacobian(scale_output):
    manifest = make_manifest(
        likelihood=GAUSSIAN, contract=contract(["mu", "spread"], scale_output=scale_output), range=[-1.0, 1.0]
    )
    adapter = GraphAdapter.of(manifest)
    mean, log_scale = model_space_gaussian(seed=1)
    x = pixels(count=1)[0]  # one image in [0, 1] pixels
    y = (2.0 * x - 1.0)[None]  # the same image in the model's values: a = 2, b = -1
    served = served_log_density(adapter, x, [mean, SECOND_OUTPUT[scale_output](log_scale).astype(np.float32)])
    jacobian = x.size * math.log(2.0)  # sum over pixels of ln a
    np.testing.assert_allclose(served, direct_log_density(y, mean, log_scale) + jacobian, rtol=1e-5)
    params = adapter.decoder_params([mean, SECOND_OUTPUT[scale_output](log_scale).astype(np.float32)])
    np.testing.assert_allclose(params[0], (mean + 1.0) / 2.0, atol=1e-6)
    np.testing.assert_allclose(params[1], log_scale - math.log(2.0), atol=1e-5)


def test_a_gaussian_normalised_per_channel_keeps_its_density_up_to_the_jacobian():
    shape, mean_c, std_c = (3, 2, 2), [0.5, 0.4, 0.3], [0.25, 0.5, 0.2]
    manifest = make_manifest(shape, GAUSSIAN, contract(["mu", "log_sigma"]), mean=mean_c, std=std_c)
    mean, log_scale = model_space_gaussian(seed=2, shape=shape)
    x = pixels(count=1, shape=shape)[0]
    y = ((x - np.reshape(mean_c, (3, 1, 1))) / np.reshape(std_c, (3, 1, 1)))[None].astype(np.float32)
    served = served_log_density(GraphAdapter.of(manifest), x, [mean, log_scale])
    jacobian = shape[1] * shape[2] * sum(math.log(1.0 / s) for s in std_c)
    np.testing.assert_allclose(served, direct_log_density(y, mean, log_scale) + jacobian, rtol=1e-5)


def test_a_gaussian_in_0_1_values_is_read_unchanged():
    adapter = GraphAdapter.of(make_manifest(likelihood=GAUSSIAN, contract=contract(["mu", "log_sigma"])))
    mean, log_scale = model_space_gaussian(seed=3)
    params = adapter.decoder_params([mean, log_scale])
    np.testing.assert_array_equal(params[0], mean)
    np.testing.assert_array_equal(params[1], log_scale)


@pytest.mark.parametrize("low_high, a", [((0.0, 1.0), 1.0), ((-1.0, 1.0), 2.0)])
def test_a_constant_log_scale_is_broadcast_to_every_pixel_in_pixel_units(low_high, a):
    sigma = 0.1
    spec = LikelihoodSpec(name="gaussian", outputs=["mean"], data_space="d", scale="fixed", log_scale=math.log(sigma))
    adapter = GraphAdapter.of(make_manifest(likelihood=spec, contract=contract(["recon"]), range=list(low_high)))
    mean, _ = model_space_gaussian(seed=4)
    params = adapter.decoder_params([mean])
    assert len(params) == 2 and params[1].shape == mean.shape and params[1].dtype == np.float32
    np.testing.assert_allclose(params[1], math.log(sigma) - math.log(a), atol=1e-6)
    np.testing.assert_allclose(params[0], (mean - low_high[0]) / a, atol=1e-6)
    x = pixels(count=1)[0]
    y = (low_high[0] + a * x)[None].astype(np.float32)
    direct = direct_log_density(y, mean, np.full_like(mean, math.log(sigma)))
    served = LIKELIHOODS["gaussian"].log_prob(x.reshape(-1), tuple(p.reshape(len(p), -1) for p in params))
    np.testing.assert_allclose(served, direct + x.size * math.log(a), rtol=1e-5)


def test_bernoulli_logits_are_the_same_in_every_input_scaling():
    adapter = GraphAdapter.of(make_manifest(contract=contract(["recon_logits"]), mean=[0.5], std=[0.25]))
    logits = pixels() * 8.0 - 4.0
    (params,) = adapter.decoder_params([logits])
    np.testing.assert_array_equal(params, logits)


def test_a_deterministic_decoders_mean_is_mapped_back_to_pixels():
    spec = LikelihoodSpec(name="none", outputs=["mean"], data_space="none")
    adapter = GraphAdapter.of(make_manifest(likelihood=spec, contract=contract(["image_out"]), range=[-1.0, 1.0]))
    mean = pixels() * 2.0 - 1.0
    (params,) = adapter.decoder_params([mean])
    assert params.dtype == np.float32
    np.testing.assert_allclose(params, (mean + 1.0) / 2.0, atol=1e-6)


def test_flat_decoder_outputs_are_reshaped_to_c_h_w_in_row_major_order():
    shape = (3, 2, 3)
    manifest = make_manifest(shape, GAUSSIAN, contract(["mu", "log_sigma"], flat=True))
    flat_mean = np.arange(2 * 18, dtype=np.float32).reshape(2, 18) / 36.0
    flat_log_scale = -np.arange(2 * 18, dtype=np.float32).reshape(2, 18) / 36.0
    mean, log_scale = GraphAdapter.of(manifest).decoder_params([flat_mean, flat_log_scale])
    assert mean.shape == log_scale.shape == (2, *shape)
    c, h, w = 2, 1, 2
    assert mean[1, c, h, w] == flat_mean[1, c * 6 + h * 3 + w]
    assert log_scale[1, c, h, w] == flat_log_scale[1, c * 6 + h * 3 + w]


def test_flat_bernoulli_probabilities_are_reshaped_and_otherwise_unchanged():
    probs_spec = LikelihoodSpec(name="bernoulli", outputs=["probs"], data_space="binary")
    manifest = make_manifest(likelihood=probs_spec, contract=contract(["recon"], flat=True), range=[-1.0, 1.0])
    probs = np.random.default_rng(5).random((4, 6), dtype=np.float32)
    (params,) = GraphAdapter.of(manifest).decoder_params([probs])
    np.testing.assert_array_equal(params, probs.reshape(4, *SHAPE))


# check_signatures: the graphs' names, dtypes, ranks, batch axis and sizes, read from (fake) sessions


@dataclass(frozen=True)
class Arg:
    """What onnxruntime's NodeArg tells: a name, a type and a shape (int, or a symbol for a dynamic axis)."""

    name: str
    type: str = FLOAT
    shape: tuple[Any, ...] = ()


class Session:
    def __init__(self, inputs: list[Arg], outputs: list[Arg]) -> None:
        self.inputs, self.outputs = inputs, outputs

    def get_inputs(self) -> list[Arg]:
        return self.inputs

    def get_outputs(self) -> list[Arg]:
        return self.outputs


def sessions(**changes: Arg | list[Arg]) -> tuple[Session, Session]:
    """A pair meeting vae-export's contract for make_manifest(); `changes` replace one part: image, mean,
    logvar, z, logits (an Arg or a list of them)."""
    parts: dict[str, Any] = {
        "image": Arg("image", shape=("N", *SHAPE)),
        "mean": Arg("mean", shape=("N", LATENT)),
        "logvar": Arg("logvar", shape=("N", LATENT)),
        "z": Arg("z", shape=("N", LATENT)),
        "logits": Arg("logits", shape=("N", *SHAPE)),
        **changes,
    }
    listed = {k: v if isinstance(v, list) else [v] for k, v in parts.items()}
    encoder = Session(listed["image"], listed["mean"] + listed["logvar"])
    return encoder, Session(listed["z"], listed["logits"])


def refusal(manifest: Manifest, encoder: Session, decoder: Session) -> str:
    with pytest.raises(ContractError) as info:
        check_signatures(manifest, encoder, decoder)
    return str(info.value)


def test_a_pair_that_meets_the_contract_passes_with_any_symbol_for_the_batch():
    check_signatures(make_manifest(), *sessions())
    check_signatures(make_manifest(), *sessions(image=Arg("image", shape=(None, *SHAPE))))
    check_signatures(make_manifest(), *sessions(logits=Arg("logits", shape=("batch", "c", "h", "w"))))


def test_a_graph_without_the_bound_name_is_refused_naming_its_names_and_the_flag():
    message = refusal(make_manifest(), *sessions(mean=Arg("mu", shape=("N", LATENT))))
    assert "the encoder graph has no output named 'mean'; its outputs are ['mu', 'logvar']" in message
    assert "name the right one (--encoder-outputs)" in message


def test_a_graph_whose_only_input_has_another_name_is_refused_naming_the_flag():
    message = refusal(make_manifest(), *sessions(z=Arg("latent", shape=("N", LATENT))))
    assert "the decoder graph has no input named 'z'; its inputs are ['latent']" in message
    assert "(--decoder-input)" in message and "one input" not in message


def test_a_graph_with_a_second_input_is_refused():
    extra = [Arg("image", shape=("N", *SHAPE)), Arg("temperature", shape=(1,))]
    message = refusal(make_manifest(), *sessions(image=extra))
    assert "inputs ['image', 'temperature']; the contract feeds only ['image']" in message
    assert "export it with one input" in message


def test_a_float64_graph_is_refused_with_how_to_export_float32():
    message = refusal(make_manifest(), *sessions(image=Arg("image", "tensor(double)", ("N", *SHAPE))))
    assert "the encoder input 'image' is tensor(double); the contract is float32 (tensor(float))" in message
    assert "model.float()" in message
    message = refusal(make_manifest(), *sessions(logits=Arg("logits", "tensor(double)", ("N", *SHAPE))))
    assert "the decoder output 'logits' is tensor(double)" in message


def test_an_encoder_taking_flat_rows_undeclared_is_refused_with_the_flatten_input_hint():
    message = refusal(make_manifest(), *sessions(image=Arg("image", shape=("N", 6))))
    assert "the encoder input 'image' has rank 2 ([N, 6]); the contract needs [N, 1, 2, 3]" in message
    assert "--flatten-input" in message


def test_a_declared_flat_layout_wants_rows_of_c_h_w():
    io = ContractSpec(encoder=EncoderIO(layout="flat"), decoder=DecoderIO(outputs=["logits"], flat=True))
    manifest = make_manifest(contract=io)
    check_signatures(manifest, *sessions(image=Arg("image", shape=("N", 6)), logits=Arg("logits", shape=("N", 6))))
    flat_image = Arg("image", shape=("N", 6))
    message = refusal(manifest, *sessions(image=flat_image, logits=Arg("logits", shape=("N", 7))))
    assert "the decoder output 'logits' is [N, 7]; the manifest needs [N, 6]" in message


def test_a_declared_flat_layout_with_an_nchw_encoder_does_not_suggest_flatten_input_again():
    io = ContractSpec(encoder=EncoderIO(layout="flat"), decoder=DecoderIO(outputs=["logits"]))
    message = refusal(make_manifest(contract=io), *sessions())
    assert "the encoder input 'image' has rank 4 ([N, 1, 2, 3]); the contract needs [N, 6]" in message
    assert "declare it (--flatten-input)" not in message


def test_a_fixed_batch_axis_is_refused_naming_dynamic_axes():
    message = refusal(make_manifest(), *sessions(image=Arg("image", shape=(1, *SHAPE))))
    assert "the encoder input 'image' has a fixed batch size 1 ([1, 1, 2, 3])" in message
    assert "dynamic batch axis" in message and "dynamic_axes={'image': {0: 'batch'}}" in message
    message = refusal(make_manifest(), *sessions(logits=Arg("logits", shape=(8, *SHAPE))))
    assert "the decoder output 'logits' has a fixed batch size 8" in message and "dynamic_axes" in message


def test_a_wrong_latent_size_is_refused_with_the_manifests_size():
    message = refusal(make_manifest(), *sessions(z=Arg("z", shape=("N", 4))))
    assert message == "the decoder input 'z' is [N, 4]; the manifest needs [N, 3]"
    message = refusal(make_manifest(), *sessions(logvar=Arg("logvar", shape=("N", 5))))
    assert message == "the encoder output 'logvar' is [N, 5]; the manifest needs [N, 3]"


def test_a_decoder_output_of_another_image_size_is_refused_with_the_output_shape_hint():
    message = refusal(make_manifest(), *sessions(logits=Arg("logits", shape=("N", 1, 3, 2))))
    assert "the decoder output 'logits' is [N, 1, 3, 2]; the manifest needs [N, 1, 2, 3]" in message
    assert "--output-shape C H W" in message
    message = refusal(make_manifest(), *sessions(logits=Arg("logits", shape=("N", 6))))
    assert "has rank 2 ([N, 6])" in message and "--output-shape C H W" in message


def test_the_contracts_own_names_are_read_from_the_manifest():
    io = ContractSpec(
        encoder=EncoderIO(image="pixels", mean="mu", spread="log_sigma", posterior="log_scale"),
        decoder=DecoderIO(z="latent", outputs=["recon_logits"]),
    )
    encoder = Session([Arg("pixels", shape=("n", *SHAPE))], [Arg(n, shape=("n", LATENT)) for n in ("log_sigma", "mu")])
    decoder = Session([Arg("latent", shape=("n", LATENT))], [Arg("recon_logits", shape=("n", *SHAPE))])
    check_signatures(make_manifest(contract=io), encoder, decoder)
    renamed = Session([Arg("pixels", shape=("n", *SHAPE))], [Arg(n, shape=("n", LATENT)) for n in ("mean", "logvar")])
    assert "the encoder graph has no output named 'mu'" in refusal(make_manifest(contract=io), renamed, decoder)


# check_behaviour: determinism, batch independence, shapes and finite values, on (fake) adapted graphs

W = np.random.default_rng(7).normal(size=(LATENT, int(np.prod(SHAPE)))).astype(np.float32)


def encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A row-wise, deterministic encoder: mean = W x, logvar = -x[0]."""
    flat = x.reshape(len(x), -1)
    return flat @ W.T, -flat[:, :LATENT]


def decode(z: np.ndarray) -> tuple[np.ndarray]:
    return ((z @ W).reshape(len(z), *SHAPE),)


def noisy(fn: Any) -> Any:
    """`fn` with fresh random noise added to its first output on every call."""
    rng = np.random.default_rng(0)

    def with_noise(data: np.ndarray) -> tuple[np.ndarray, ...]:
        first, *rest = fn(data)
        return (first + rng.normal(size=first.shape).astype(np.float32), *rest)

    return with_noise


def batch_centred(fn: Any) -> Any:
    """`fn` minus its batch's mean: each row depends on the others (as batch norm in training mode)."""

    def centred(data: np.ndarray) -> tuple[np.ndarray, ...]:
        first, *rest = fn(data)
        return (first - first.mean(axis=0, keepdims=True), *rest)

    return centred


def behaviour_refusal(encode_fn: Any, decode_fn: Any, manifest: Manifest | None = None) -> str:
    with pytest.raises(ContractError) as info:
        check_behaviour(encode_fn, decode_fn, manifest or make_manifest())
    return str(info.value)


def test_a_deterministic_row_wise_pair_passes_with_figures_near_zero():
    figures = check_behaviour(encode, decode, make_manifest())
    assert sorted(figures) == ["decoder.alone", "decoder.repeat", "encoder.alone", "encoder.repeat"]
    assert figures["encoder.repeat"] == figures["decoder.repeat"] == 0.0
    assert figures["encoder.alone"] <= 1e-6 and figures["decoder.alone"] <= 1e-6  # BLAS may differ in the last bits


@pytest.mark.parametrize("graph", ["encoder", "decoder"])
def test_a_graph_drawing_fresh_noise_each_call_is_not_deterministic(graph):
    pair = (noisy(encode), decode) if graph == "encoder" else (encode, noisy(decode))
    message = behaviour_refusal(*pair)
    assert message.startswith(f"the {graph} graph is not deterministic: the same input gave outputs ")
    assert "apart on a second run" in message and "A random node" in message
    assert "export the deterministic part only" in message and "eval() mode" in message


@pytest.mark.parametrize("graph", ["encoder", "decoder"])
def test_a_graph_whose_rows_use_batch_statistics_is_refused(graph):
    pair = (batch_centred(encode), decode) if graph == "encoder" else (encode, batch_centred(decode))
    message = behaviour_refusal(*pair)
    assert message.startswith(f"the {graph} graph's rows depend on their batch: a row alone and in a batch of 3")
    assert "batch norm in training mode" in message and "export with the model in eval() mode" in message


def test_batch_independence_is_not_asked_when_switched_off():
    figures = check_behaviour(batch_centred(encode), batch_centred(decode), make_manifest(), batch_independent=False)
    assert figures["encoder.repeat"] == figures["decoder.repeat"] == 0.0
    assert figures["encoder.alone"] > 1e-2 and figures["decoder.alone"] > 1e-2


def test_an_encoder_of_the_wrong_latent_size_is_refused_with_the_contracts_shape():
    def wide(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, logvar = encode(x)
        return np.concatenate([mean, mean], axis=1), logvar

    assert behaviour_refusal(wide, decode) == "the encoder's mean is [3, 6] for 3 rows; the contract needs [3, 3]"


def test_a_decoder_of_flat_rows_undeclared_is_refused_with_the_output_shape_hint():
    def flat(z: np.ndarray) -> tuple[np.ndarray]:
        return (decode(z)[0].reshape(len(z), -1),)

    message = behaviour_refusal(encode, flat)
    assert message.startswith("the decoder's logits is [3, 6] for 3 rows; the contract needs [3, 1, 2, 3]")
    assert "--output-shape C H W" in message


def test_non_finite_outputs_are_refused_naming_the_output_and_the_inputs_values():
    def log_of_zero(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, logvar = encode(x)
        return mean, np.full_like(logvar, -np.inf)

    message = behaviour_refusal(log_of_zero, decode, make_manifest(contract=contract(["logits"]), range=[-1.0, 1.0]))
    assert message.startswith("the encoder's logvar is not finite on random images")
    assert "[-1, 1]: -1 + 2 * pixel" in message

    def overflowing(z: np.ndarray) -> tuple[np.ndarray]:
        out = decode(z)[0].copy()
        out[0, 0, 0, 0] = np.nan
        return (out,)

    message = behaviour_refusal(encode, overflowing)
    assert message.startswith("the decoder's logits is not finite on random N(0, I) latents")


def test_the_checks_run_on_seeded_inputs_of_the_declared_shapes():
    seen: dict[str, list[tuple[int, ...]]] = {"encoder": [], "decoder": []}

    def spy(graph: str, fn: Any) -> Any:
        def run(data: np.ndarray) -> Any:
            seen[graph].append(data.shape)
            return fn(data)

        return run

    check_behaviour(spy("encoder", encode), spy("decoder", decode), make_manifest(), rows=4)
    assert seen["encoder"] == [(4, *SHAPE)] * 2 + [(1, *SHAPE)] * 4
    assert seen["decoder"] == [(4, LATENT)] * 2 + [(1, LATENT)] * 4
