"""vae-import refuses a model that breaks the contract (docs/contract.md) with exit code 2 and one message on
stderr that says what is wrong and how to fix it, and writes nothing: OUT_DIR is not created. A model that
meets the contract is written with a manifest that records its source, its bindings and its parity, and loads.

The user's modules live in a .py file written into a temporary folder, as a user's own file would be; the ONNX
graphs are exported here with the TorchScript exporter (dynamo=False), which is fast and writes one file."""

from __future__ import annotations

import hashlib
import json
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from export.import_cli import main
from model.core.artifact import load_model_dir
from model.core.manifest import SCHEMA_VERSION
from tests.byo import onnx_pair
from tests.conftest import REPO

EXAMPLES_VAE = REPO / "tests" / "byo" / "examples_vae.py"
SHAPE = ("--input-shape", "1", "4", "4")
BERNOULLI_LOGITS = ("--likelihood", "bernoulli", "--decoder-output", "logits")

# The user's file: 1x4x4 images, a latent of 2, and one module per way of breaking the contract.
USER_VAES = """
import torch
from torch import nn
from torch.nn import functional as F


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(16, 4)
        self.dec = nn.Linear(2, 16)

    def encode(self, x):
        return self.enc(x.flatten(1)).chunk(2, dim=1)

    def decode(self, z):
        return self.dec(z).reshape(-1, 1, 4, 4)


class Double(Tiny):
    def encode(self, x):
        return tuple(t.double() for t in super().encode(x))


class Noisy(Tiny):
    def encode(self, x):
        mean, logvar = super().encode(x)
        return mean + torch.randn_like(mean), logvar


class BatchStats(Tiny):
    def encode(self, x):
        return F.batch_norm(self.enc(x.flatten(1)), None, None, training=True).chunk(2, dim=1)


class Three(Tiny):
    def encode(self, x):
        mean, logvar = super().encode(x)
        return mean, logvar, mean + logvar


class Unbounded(Tiny):
    def decode(self, z):
        return 10.0 * super().decode(z)


class Renamed(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Tiny()

    def embed(self, x):
        return self.inner.encode(x)

    def decode(self, z):
        return self.inner.decode(z)
"""


@pytest.fixture(scope="module")
def user_vaes(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user") / "user_vaes.py"
    path.write_text(textwrap.dedent(USER_VAES))
    return path


def vae_import(capsys, *argv: Any) -> tuple[int, str]:
    """`vae-import ARGV` in this process: its return code and the message after "vae-import: " on stderr."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert err.count("vae-import: ") == (1 if code else 0), err
    return code, err.split("vae-import: ", 1)[-1].strip()


def assert_refused(code: int, message: str, out_dir: Path, *fragments: str) -> None:
    """Exit code 2, a message holding each fragment, and nothing written: no OUT_DIR, no staging left beside it."""
    assert code == 2, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert not out_dir.exists()
    if out_dir.parent.exists():
        assert [p.name for p in out_dir.parent.iterdir()] == []


def torch_import(capsys, target: str, out_dir: Path, *flags: Any) -> tuple[int, str]:
    return vae_import(capsys, "torch", target, out_dir, "--name", "m", *flags)


# a. a decoder returning flat rows


def test_a_flat_decoder_without_output_shape_is_refused_with_the_flag_to_pass(capsys, tmp_path):
    out = tmp_path / "repo" / "m" / "1"
    flags = ("--input-shape", 1, 28, 28, "--likelihood", "bernoulli", "--decoder-output", "probs", "--flatten-input")
    code, message = torch_import(capsys, f"{EXAMPLES_VAE}:VAE", out, *flags)
    assert_refused(code, message, out, "decode returned [N, 784]", "needs [N, 1, 28, 28]", "--output-shape 1 28 28")


def test_an_encoder_that_takes_flat_rows_is_refused_with_the_flatten_hint(capsys, tmp_path):
    out = tmp_path / "repo" / "m" / "1"
    flags = ("--input-shape", 1, 28, 28, "--likelihood", "bernoulli", "--decoder-output", "probs")
    code, message = torch_import(capsys, f"{EXAMPLES_VAE}:VAE", out, *flags, "--output-shape", 1, 28, 28)
    assert_refused(code, message, out, "encode([2, 1, 28, 28]) failed", "it runs on [N, 784]: pass --flatten-input")


# b. float64


def test_a_method_returning_float64_is_refused_naming_float32(capsys, tmp_path, user_vaes):
    out = tmp_path / "repo" / "m" / "1"
    code, message = torch_import(capsys, f"{user_vaes}:Double", out, *SHAPE, *BERNOULLI_LOGITS)
    assert_refused(code, message, out, "encode returned a torch.float64 tensor", "the contract is float32")


# ONNX graphs as users export them: 1x4x4 images, a latent of 2


class TwoHeads(nn.Module):
    """An encoder whose latent size is static in the graph (two Linear heads)."""

    def __init__(self) -> None:
        super().__init__()
        self.mu, self.log_var = nn.Linear(16, 2), nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mu(x.flatten(1)), self.log_var(x.flatten(1))


class Chunked(nn.Module):
    """An encoder whose latent size the exporter leaves symbolic (a chunk of one Linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.lin(x.flatten(1)).chunk(2, dim=1)


class NoisyHeads(TwoHeads):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = super().forward(x)
        return mean + torch.randn_like(mean), log_var


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 16)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.lin(z).reshape(-1, 1, 4, 4)


def export_onnx(module: nn.Module, path: Path, example: torch.Tensor, names: tuple[list[str], list[str]], dynamic=True):
    """torch.onnx.export with the TorchScript exporter (one file, no external data); `dynamic`: a batch axis."""
    axes = {name: {0: "n"} for name in [*names[0], *names[1]]} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (example,), path, input_names=names[0], output_names=names[1], dynamic_axes=axes,
            dynamo=False,
        )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, Path]:
    """Each graph a test needs, by what it is."""
    root = tmp_path_factory.mktemp("graphs")
    torch.manual_seed(0)
    x, z = torch.rand(2, 1, 4, 4), torch.randn(2, 2)
    encoder, decoder = (["pixels"], ["mu", "log_var"]), (["latent"], ["logits"])
    paths = {
        "encoder": export_onnx(TwoHeads(), root / "encoder.onnx", x, encoder),
        "decoder": export_onnx(Decoder(), root / "decoder.onnx", z, decoder),
        "double": export_onnx(TwoHeads().double(), root / "double.onnx", x.double(), encoder),
        "double_chunked": export_onnx(Chunked().double(), root / "double_chunked.onnx", x.double(), encoder),
        "noisy": export_onnx(NoisyHeads(), root / "noisy.onnx", x, encoder),
        "fixed_encoder": export_onnx(TwoHeads(), root / "fixed_encoder.onnx", x, encoder, dynamic=False),
        "fixed_decoder": export_onnx(Decoder(), root / "fixed_decoder.onnx", z, decoder, dynamic=False),
    }
    # the encoder with its weights in a file beside it (onnx's external data); and again, that file then lost
    for kind in ("external", "lost"):
        paths[kind] = root / kind / "encoder.onnx"
        paths[kind].parent.mkdir()
        onnx.save_model(
            onnx.load(str(paths["encoder"])), str(paths[kind]), save_as_external_data=True,
            location="encoder.onnx.data", size_threshold=0,
        )  # fmt: skip
    (paths["lost"].parent / "encoder.onnx.data").unlink()
    return paths


def onnx_import(capsys, out_dir: Path, encoder: Path, decoder: Path, *flags: Any) -> tuple[int, str]:
    return vae_import(
        capsys, "onnx", out_dir, "--encoder", encoder, "--decoder", decoder, "--name", "m", *BERNOULLI_LOGITS, *flags
    )


def test_a_float64_onnx_graph_is_refused_with_how_to_export_float32(capsys, tmp_path, graphs):
    out = tmp_path / "repo" / "m" / "1"
    code, message = onnx_import(capsys, out, graphs["double"], graphs["decoder"])
    assert_refused(
        code, message, out, "the encoder input 'pixels' is tensor(double)", "the contract is float32", "model.float()"
    )


def test_a_float64_onnx_graph_with_a_symbolic_latent_size_is_refused_naming_float32(capsys, tmp_path, graphs):
    out = tmp_path / "repo" / "m" / "1"
    code, message = onnx_import(capsys, out, graphs["double_chunked"], graphs["decoder"])
    assert_refused(code, message, out, "tensor(double)", "float32")
    assert "Check --input-shape" not in message


# c. random numbers in a graph


def test_a_method_drawing_noise_is_refused_as_random_after_export(capsys, tmp_path, user_vaes):
    out = tmp_path / "repo" / "m" / "1"
    code, message = torch_import(capsys, f"{user_vaes}:Noisy", out, *SHAPE, *BERNOULLI_LOGITS)
    assert_refused(
        code,
        message,
        out,
        "encode draws random numbers (RandomNormal",
        "the contract's graphs are deterministic",
        "Return the posterior's mean and log-variance from encode (not a sample z)",
    )


def test_an_onnx_graph_with_a_random_node_is_refused(capsys, tmp_path, graphs):
    out = tmp_path / "repo" / "m" / "1"
    code, message = onnx_import(capsys, out, graphs["noisy"], graphs["decoder"])
    assert_refused(
        code,
        message,
        out,
        f"--encoder {graphs['noisy']} holds random nodes (RandomNormalLike)",
        "Export the deterministic part only",
        "eval() mode",
    )


# d. rows that depend on their batch


def test_rows_that_depend_on_their_batch_are_refused_by_the_loaders_check(capsys, tmp_path, user_vaes):
    out = tmp_path / "repo" / "m" / "1"
    code, message = torch_import(capsys, f"{user_vaes}:BatchStats", out, *SHAPE, *BERNOULLI_LOGITS)
    assert_refused(
        code,
        message,
        out,
        "the encoder graph's rows depend on their batch: a row alone and in a batch of 3 differ",
        "export with the model in eval() mode",
    )


# e. a fixed batch size


@pytest.mark.parametrize("fixed, name", [("encoder", "pixels"), ("decoder", "latent")])
def test_an_onnx_graph_exported_without_dynamic_axes_is_refused(capsys, tmp_path, graphs, fixed, name):
    out = tmp_path / "repo" / "m" / "1"
    pair = {"encoder": graphs["encoder"], "decoder": graphs["decoder"], fixed: graphs[f"fixed_{fixed}"]}
    code, message = onnx_import(capsys, out, pair["encoder"], pair["decoder"])
    assert_refused(
        code,
        message,
        out,
        f"the {fixed} input '{name}' has a fixed batch size 2",
        "the contract needs a dynamic batch axis",
        f"dynamic_axes={{'{name}': {{0: 'batch'}}}}",
    )


# f. other forms, flags and files


def test_an_encode_returning_three_values_is_refused_with_what_it_must_return(capsys, tmp_path, user_vaes):
    out = tmp_path / "repo" / "m" / "1"
    code, message = torch_import(capsys, f"{user_vaes}:Three", out, *SHAPE, *BERNOULLI_LOGITS)
    assert_refused(
        code,
        message,
        out,
        "encode(x) returned 3 values ([2, 2], [2, 2], [2, 2])",
        "the contract needs (mean, logvar), each [N, D]",
        "return those two, or name a method that does with --encode",
    )


def test_probabilities_outside_0_1_are_refused_suggesting_logits(capsys, tmp_path, user_vaes):
    out = tmp_path / "repo" / "m" / "1"
    flags = (*SHAPE, "--likelihood", "bernoulli", "--decoder-output", "probs")
    code, message = torch_import(capsys, f"{user_vaes}:Unbounded", out, *flags)
    assert_refused(
        code,
        message,
        out,
        "decode returned values in [",
        "--decoder-output probs means probabilities in [0, 1]",
        "pass --decoder-output logits",
    )


def test_a_module_without_the_method_is_refused_naming_the_flag(capsys, tmp_path, user_vaes):
    out = tmp_path / "repo" / "m" / "1"
    code, message = torch_import(capsys, f"{user_vaes}:Renamed", out, *SHAPE, *BERNOULLI_LOGITS)
    assert_refused(code, message, out, "Renamed has no method 'encode'", "that does this with --encode")


def test_weights_that_do_not_fit_are_refused_naming_the_keys(capsys, tmp_path, user_vaes):
    out, weights = tmp_path / "repo" / "m" / "1", tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(4, 16)}, weights)
    code, message = torch_import(capsys, f"{user_vaes}:Tiny", out, *SHAPE, *BERNOULLI_LOGITS, "--weights", weights)
    assert_refused(
        code,
        message,
        out,
        f"--weights {weights} does not fit the module",
        "missing ['enc.weight', 'enc.bias', 'dec.weight', 'dec.bias'], unexpected ['encoder.weight']",
        "Save it with torch.save(model.state_dict(), path) from the same class",
    )


def test_weights_of_other_shapes_are_refused_naming_the_parameter(capsys, tmp_path, user_vaes):
    out, weights = tmp_path / "repo" / "m" / "1", tmp_path / "wide.pt"
    state = {"enc.weight": torch.zeros(4, 32), "enc.bias": torch.zeros(4), "dec.weight": torch.zeros(16, 2)}
    torch.save({**state, "dec.bias": torch.zeros(16)}, weights)
    code, message = torch_import(capsys, f"{user_vaes}:Tiny", out, *SHAPE, *BERNOULLI_LOGITS, "--weights", weights)
    assert_refused(code, message, out, f"--weights {weights} does not fit the module", "enc.weight")


def test_a_pickled_module_as_weights_is_refused_saying_to_save_its_state_dict(capsys, tmp_path, user_vaes):
    out, weights = tmp_path / "repo" / "m" / "1", tmp_path / "whole.pt"
    torch.save(nn.Linear(2, 2), weights)
    code, message = torch_import(capsys, f"{user_vaes}:Tiny", out, *SHAPE, *BERNOULLI_LOGITS, "--weights", weights)
    assert_refused(code, message, out, f"--weights {weights}", "model.state_dict()")
    assert "\n" not in message


def test_a_gaussian_decoding_only_its_mean_without_a_sigma_is_refused(capsys, tmp_path, user_vaes):
    out = tmp_path / "repo" / "m" / "1"
    code, message = torch_import(
        capsys, f"{user_vaes}:Tiny", out, *SHAPE, "--likelihood", "gaussian", "--decoder-output", "mean"
    )
    assert_refused(
        code,
        message,
        out,
        "a gaussian decoder that returns only its mean needs its sigma",
        "--sigma S",
        "--log-sigma-param NAME",
        "--decoder-output mean,log_scale",
    )


def test_a_torch_import_without_an_input_shape_or_module_attr_says_what_to_give(capsys, tmp_path, user_vaes):
    out = tmp_path / "repo" / "m" / "1"
    code, message = torch_import(capsys, f"{user_vaes}:Tiny", out, *BERNOULLI_LOGITS)
    assert_refused(code, message, out, "pass --input-shape C H W")
    code, message = torch_import(capsys, str(user_vaes), out, *SHAPE, *BERNOULLI_LOGITS)
    assert_refused(code, message, out, "give MODULE:ATTR, as my_vae.py:VAE")


def test_an_out_dir_that_is_not_a_model_directory_is_left_as_it_is(capsys, tmp_path, graphs):
    out = tmp_path / "repo" / "m" / "1"
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    code, message = onnx_import(capsys, out, graphs["encoder"], graphs["decoder"])
    assert code == 2
    assert f"{out} exists and is not a model directory" in message and "(no manifest.json" in message
    assert "choose a new directory or empty this one" in message
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    assert [p.name for p in out.parent.iterdir()] == ["1"]


def test_an_onnx_graph_whose_external_data_is_missing_is_refused(capsys, tmp_path, graphs):
    out = tmp_path / "repo" / "m" / "1"
    code, message = onnx_import(capsys, out, graphs["lost"], graphs["decoder"])
    assert_refused(
        code,
        message,
        out,
        f"--encoder {graphs['lost']} keeps its weights in encoder.onnx.data, not found beside it",
        "copy them next to the graph",
        "export with external_data=False",
    )


# a model that meets the contract is written, recorded and loads


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_parity_within_tolerance(parity: dict[str, Any], figures: set[str]) -> None:
    recorded = {**parity["max_abs_diff"], **{f"batch.{k}": v for k, v in parity["batch_max_abs_diff"].items()}}
    assert set(recorded) == figures
    assert all(0.0 <= value <= parity["tolerance"] for value in recorded.values()), recorded


def test_a_torch_module_with_its_weights_is_imported_recorded_and_served(capsys, tmp_path, user_vaes):
    out, weights = tmp_path / "repo" / "m" / "1", tmp_path / "tiny.pt"
    gen = torch.Generator().manual_seed(5)
    shapes = {"enc.weight": (4, 16), "enc.bias": (4,), "dec.weight": (16, 2), "dec.bias": (16,)}
    state = {name: torch.randn(shape, generator=gen) for name, shape in shapes.items()}
    torch.save(state, weights)
    code, _ = torch_import(capsys, f"{user_vaes}:Tiny", out, *SHAPE, *BERNOULLI_LOGITS, "--weights", weights)
    assert code == 0
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["schema_version"] == SCHEMA_VERSION == "2.2"
    assert raw["contract"]["encoder"] == {
        "image": "image", "mean": "mean", "spread": "logvar", "posterior": "logvar", "layout": "nchw",
    }  # fmt: skip
    assert raw["contract"]["decoder"] == {"z": "z", "outputs": ["logits"], "scale_output": "log_scale", "flat": False}
    assert raw["source"]["tool"] == "vae-import torch"
    assert raw["source"]["files"] == [
        {"file": "user_vaes.py", "sha256": sha256(user_vaes)},
        {"file": "tiny.pt", "sha256": sha256(weights)},
    ]
    names = {"encode.mean", "encode.logvar", "decode.logits"}
    assert_parity_within_tolerance(raw["parity"], names | {f"batch.{n}" for n in names})
    assert raw["parity"]["tolerance"] == 1e-5
    model = load_model_dir(out)
    assert model.manifest.latent_dim == 2 and model.manifest.input.shape == [1, 4, 4]
    x = np.random.default_rng(0).random((3, 1, 4, 4), dtype=np.float32)
    mean, logvar = model.encode(x)
    expected = x.reshape(3, 16) @ state["enc.weight"].numpy().T + state["enc.bias"].numpy()  # the given weights
    np.testing.assert_allclose(np.concatenate([mean, logvar], axis=1), expected, rtol=1e-5, atol=1e-5)
    (logits,) = model.decode(mean)
    expected = (mean @ state["dec.weight"].numpy().T + state["dec.bias"].numpy()).reshape(3, 1, 4, 4)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def user_pair(tmp_path_factory) -> tuple[Path, Path]:
    """tests/byo/onnx_pair.py's graphs (own names, (pixel - 0.5) / 0.25 inputs, a log-sigma posterior), exported
    as one file each."""
    root = tmp_path_factory.mktemp("pair")
    torch.manual_seed(2)
    encoder, decoder = onnx_pair.Encoder().eval(), onnx_pair.Decoder().eval()
    x, z = torch.rand(2, 1, 16, 16), torch.randn(2, 8)
    return (
        export_onnx(encoder, root / "my_encoder.onnx", x, (["pixels"], ["mu", "log_sigma"])),
        export_onnx(decoder, root / "my_decoder.onnx", z, (["latent"], ["recon_logits"])),
    )


def test_an_onnx_pair_is_copied_byte_for_byte_recorded_and_served(capsys, tmp_path, user_pair):
    out, (encoder, decoder) = tmp_path / "repo" / "m" / "1", user_pair
    flags = ("--input-mean", 0.5, "--input-std", 0.25, "--posterior", "log_scale")
    code, _ = onnx_import(capsys, out, encoder, decoder, *flags)
    assert code == 0
    assert (out / "encoder.onnx").read_bytes() == encoder.read_bytes()
    assert (out / "decoder.onnx").read_bytes() == decoder.read_bytes()
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["schema_version"] == "2.2" and raw["latent_dim"] == 8 and raw["input"]["shape"] == [1, 16, 16]
    assert raw["contract"]["encoder"] == {
        "image": "pixels", "mean": "mu", "spread": "log_sigma", "posterior": "log_scale", "layout": "nchw",
    }  # fmt: skip
    assert raw["contract"]["decoder"]["z"] == "latent" and raw["contract"]["decoder"]["outputs"] == ["recon_logits"]
    assert raw["input"]["mean"] == [0.5] and raw["input"]["std"] == [0.25]
    assert raw["source"]["tool"] == "vae-import onnx"
    assert raw["source"]["files"] == [
        {"file": "my_encoder.onnx", "sha256": sha256(encoder)},
        {"file": "my_decoder.onnx", "sha256": sha256(decoder)},
    ]
    assert raw["encoder"]["sha256"] == sha256(encoder) and raw["decoder"]["sha256"] == sha256(decoder)
    names = {"encoder.repeat", "decoder.repeat"}
    assert_parity_within_tolerance(raw["parity"], names | {"batch.encoder.alone", "batch.decoder.alone"})
    model = load_model_dir(out)
    x = np.random.default_rng(1).random((3, 1, 16, 16), dtype=np.float32)
    mean, logvar = model.encode(x)
    mu, log_sigma = ort.InferenceSession(str(encoder)).run(["mu", "log_sigma"], {"pixels": (x - 0.5) / 0.25})
    np.testing.assert_allclose(mean, mu, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(logvar, 2.0 * log_sigma, rtol=1e-6, atol=1e-6)


def test_an_onnx_graph_with_its_external_data_is_inlined_and_both_files_are_hashed(capsys, tmp_path, graphs):
    out, external = tmp_path / "repo" / "m" / "1", graphs["external"]
    code, _ = onnx_import(capsys, out, external, graphs["decoder"])
    assert code == 0
    data = external.parent / "encoder.onnx.data"
    files = json.loads((out / "manifest.json").read_text())["source"]["files"]
    assert {"file": "encoder.onnx.data", "sha256": sha256(data)} in files
    assert {"file": "encoder.onnx", "sha256": sha256(external)} in files
    assert sorted(p.name for p in out.iterdir()) == ["decoder.onnx", "encoder.onnx", "manifest.json"]
    inlined = onnx.load_from_string((out / "encoder.onnx").read_bytes())
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in inlined.graph.initializer)
    x = np.random.default_rng(2).random((2, 1, 4, 4), dtype=np.float32)
    given = ort.InferenceSession(str(graphs["encoder"])).run(["mu"], {"pixels": x})[0]
    np.testing.assert_allclose(load_model_dir(out).encode(x)[0], given, rtol=1e-6, atol=1e-6)
