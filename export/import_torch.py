"""`vae-import torch MODULE:ATTR OUT_DIR`: a user's own PyTorch VAE, exported and checked against itself.

MODULE is a Python file or an importable module; ATTR an `nn.Module`, or a class or function that returns one
when called with no arguments. Its `encode(x) -> (mean, logvar)` and `decode(z) -> parameters` (or the methods
named by --encode and --decode) are exported as they are, each to its own graph with a dynamic batch axis; the
value mapping (--input-range, --input-mean/--input-std), a flat input (--flatten-input), a flat output
(--output-shape) and the posterior's form (--posterior) are the manifest's, applied by the loader, exactly as for
a graph imported with `vae-import onnx`. Before writing, the forms are probed in torch with messages that say
what to change, the loader's checks run on the graphs, and the graphs are compared with the module in torch on
batches of 1, 7 and 256 (`TOLERANCE`).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import sys
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.declare import Declarations
from export.import_onnx import random_nodes
from export.importing import Graphs, ImportFailed, build_manifest, open_checked, source_files, write_import
from model.core.artifact import OnnxVAE
from model.core.contract import worst
from model.core.manifest import Manifest, Source

TOLERANCE = 1e-5  # ONNX against torch, relative to each output's largest value (at least 1)
PARITY_BATCHES = (1, 7, 256)
OPSET = 20


@dataclass(frozen=True)
class Methods:
    encode: str = "encode"
    decode: str = "decode"


def load_module(target: str, weights: Path | None) -> torch.nn.Module:
    """MODULE:ATTR -> the user's module in eval() mode, with --weights loaded when given."""
    module_name, _, attr = target.rpartition(":")
    if not module_name or not attr:
        raise ImportFailed(f"{target!r}: give MODULE:ATTR, as my_vae.py:VAE or my_package.models:build_vae")
    namespace = _import(module_name)
    obj: Any = namespace
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ImportFailed(f"{module_name} has no {attr!r}; it defines {_public(namespace)}")
        obj = getattr(obj, part)
    if not isinstance(obj, torch.nn.Module):
        if not callable(obj):
            raise ImportFailed(
                f"{target} is a {type(obj).__name__}: name an nn.Module, or a class or function returning one"
            )
        try:
            obj = obj()
        except TypeError as exc:
            raise ImportFailed(
                f"{target}() failed: {exc}. ATTR is called with no arguments: name a function that builds the "
                "model with its arguments, as def build(): return VAE(latent_dim=20)"
            ) from exc
        if not isinstance(obj, torch.nn.Module):
            raise ImportFailed(f"{target}() returned a {type(obj).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_weights(obj, weights)
    return obj.float().eval()


def _import(name: str) -> Any:
    path = Path(name)
    if name.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ImportFailed(f"{name}: no such Python file")
        spec = importlib.util.spec_from_file_location(f"vae_import_user.{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ImportFailed(f"{name}: not a Python file Python can import")
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.resolve().parent))  # its own sibling imports work
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # the user's code: anything
            raise ImportFailed(f"importing {name} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            sys.path.remove(str(path.resolve().parent))
        return module
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportFailed(
            f"cannot import {name!r} ({exc}): give a path to a .py file, or a module on PYTHONPATH"
        ) from exc


def _public(namespace: Any) -> str:
    names = [n for n in dir(namespace) if not n.startswith("_")]
    return ", ".join(names[:20]) or "nothing public"


def load_weights(module: torch.nn.Module, path: Path) -> None:
    """A state dict (torch.save, or .safetensors), or a checkpoint holding one under a usual key."""
    if not path.is_file():
        raise ImportFailed(f"--weights {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            state: Any = importlib.import_module("safetensors.torch").load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refusals and corrupt files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImportFailed(
            f"--weights {path} is not a state dict torch can load safely ({first[:200]}): vae-import loads tensors "
            "only, never pickled code. Save the weights with torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise ImportFailed(f"--weights {path} holds a {type(state).__name__}, not a state dict (name -> tensor)")
    state = strip_prefix(module, state)
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another size
        mismatches = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        raise ImportFailed(
            f"--weights {path} does not fit the module: {'; '.join(mismatches[:3]) or str(exc)[:300]}. Save it "
            "with torch.save(model.state_dict(), path) from the same class, built with the same arguments"
        ) from exc
    if result.missing_keys or result.unexpected_keys:
        raise ImportFailed(
            f"--weights {path} does not fit the module: missing {result.missing_keys[:5]}, unexpected "
            f"{result.unexpected_keys[:5]}. Save it with torch.save(model.state_dict(), path) from the same class"
        )


def strip_prefix(module: torch.nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """A state dict saved from a wrapper (DataParallel's `module.`, a Lightning module's `model.`): the prefix
    removed when that makes the keys the module's own."""
    own = set(module.state_dict())
    if set(state) <= own:
        return state
    for prefix in sorted({key.split(".", 1)[0] + "." for key in state if "." in key}):
        stripped = {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}
        if own == set(stripped):
            print(f"vae-import: the weights' keys carry the prefix {prefix!r}; loading them without it")
            return stripped
    return state


class Half(torch.nn.Module):
    """One method of the user's module as a module of its own, returning a tuple of tensors."""

    def __init__(self, module: torch.nn.Module, method: str) -> None:
        super().__init__()
        self.inner = module
        self.method = method

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return as_tensors(resolve(self.inner, self.method)(x))[0]


def resolve(module: torch.nn.Module, path: str) -> Any:
    """`encode`, or a dotted path such as `encoder` or `encoder.forward`: the callable it names, or None."""
    target: Any = module
    for part in path.split("."):
        target = getattr(target, part, None)
        if target is None:
            return None
    return target if callable(target) else None


def as_tensors(out: Any) -> tuple[tuple[Any, ...], str | None]:
    """A method's result as a tuple, and the distribution it was when it returned one: a Normal gives
    (loc, scale), a Bernoulli (logits,), an Independent its base distribution's."""
    distributions = torch.distributions
    kind = None
    while isinstance(out, distributions.Independent):
        out = out.base_dist
    if isinstance(out, distributions.Normal):
        kind, out = "Normal", (out.loc, out.scale)
    elif isinstance(out, distributions.Bernoulli):
        kind, out = "Bernoulli", (out.logits,)
    return (tuple(out) if isinstance(out, (tuple, list)) else (out,)), kind


def example_images(decl: Declarations, count: int, seed: int) -> np.ndarray:
    """Seeded [0, 1] pixels (count, C, H, W) mapped to the model's input values and layout."""
    pixels = np.random.default_rng(seed).random((count, *decl.shape), dtype=np.float32)
    scale, shift = (np.array(v, np.float32).reshape(1, -1, 1, 1) for v in decl.input_spec().affine())
    values = pixels * scale + shift
    return values.reshape(count, -1) if decl.flatten_input else values


def probe(module: torch.nn.Module, decl: Declarations, methods: Methods) -> tuple[int, list[str], Declarations]:
    """Run the methods once in torch and check their forms: (D, the decoder output names, the declarations with
    what a returned distribution fixes)."""
    for method in (methods.encode, methods.decode):
        if resolve(module, method) is None:
            flag = "--encode" if method == methods.encode else "--decode"
            raise ImportFailed(
                f"{type(module).__name__} has no method {method!r}: name the method (or submodule, as encoder) "
                f"that does this with {flag}"
            )
    x = torch.from_numpy(example_images(decl, 2, decl.seed))
    encoded, kind = _call(module, methods.encode, x, decl)
    if kind == "Normal" and decl.posterior != "scale":
        print(f"vae-import: {methods.encode} returns a Normal distribution: its loc and scale are the posterior's")
        decl = replace(decl, posterior="scale")
    if len(encoded) != 2:
        raise ImportFailed(
            f"{methods.encode}(x) returned {_describe(encoded)}; the contract needs (mean, {decl.posterior}), each "
            "[N, D]: return those two, or name a method that does with --encode"
        )
    mean, spread = encoded
    if mean.ndim != 2 or spread.shape != mean.shape:
        raise ImportFailed(
            f"{methods.encode}(x) returned mean {list(mean.shape)} and {decl.posterior} {list(spread.shape)}; the "
            "contract needs both [N, D]: flatten the latents inside encode"
        )
    latent_dim = int(mean.shape[1])
    decoded, kind = _call(
        module, methods.decode, torch.randn(2, latent_dim, generator=torch.Generator().manual_seed(0)), None
    )
    wanted = {"Normal": ("gaussian", "mean,scale"), "Bernoulli": ("bernoulli", "logits")}.get(kind or "")
    if wanted is not None and (decl.likelihood, decl.decoder_output) != wanted:
        raise ImportFailed(
            f"{methods.decode} returns a torch.distributions.{kind}: declare --likelihood {wanted[0]} "
            f"--decoder-output {wanted[1]}"
        )
    _check_decoded(decoded, decl, methods)
    names = ["mean", decl.decoder_output.split(",")[1]] if "," in decl.decoder_output else [decl.decoder_output]
    return latent_dim, names, decl


def _call(
    module: torch.nn.Module, method: str, x: torch.Tensor, decl: Declarations | None
) -> tuple[tuple[torch.Tensor, ...], str | None]:
    try:
        with torch.no_grad():
            out = resolve(module, method)(x)
    except Exception as exc:  # the user's code: anything
        hint = ""
        if decl is not None and not decl.flatten_input and _runs_flat(module, method, x):
            hint = f"; it runs on [N, {int(np.prod(decl.shape))}]: pass --flatten-input"
        elif decl is not None:
            hint = f". Check --input-shape (the image is {list(x.shape)}) and --flatten-input"
        raise ImportFailed(f"{method}({_shape(x)}) failed: {type(exc).__name__}: {exc}{hint}") from exc
    outputs, kind = as_tensors(out)
    for value in outputs:
        if not isinstance(value, torch.Tensor):
            raise ImportFailed(f"{method} returned {_describe(outputs)}: the contract needs tensors")
        if value.dtype != torch.float32:
            raise ImportFailed(
                f"{method} returned a {value.dtype} tensor from the module in float32 (vae-import calls "
                "model.float()); the contract is float32: remove the cast inside the method"
            )
    return outputs, kind


def _runs_flat(module: torch.nn.Module, method: str, x: torch.Tensor) -> bool:
    try:
        with torch.no_grad():
            resolve(module, method)(x.reshape(len(x), -1))
    except Exception:  # the user's code: anything
        return False
    return True


def _check_decoded(decoded: tuple[torch.Tensor, ...], decl: Declarations, methods: Methods) -> None:
    wanted = 2 if "," in decl.decoder_output else 1
    if len(decoded) != wanted:
        raise ImportFailed(
            f"{methods.decode}(z) returned {_describe(decoded)}; --decoder-output {decl.decoder_output} means "
            f"{wanted} tensor{'s' if wanted > 1 else ''}"
        )
    channels, height, width = decl.shape
    rows = [channels * height * width] if decl.output_shape is not None else [channels, height, width]
    for value in decoded:
        if list(value.shape[1:]) != rows:
            flat = value.ndim == 2 and value.shape[1] == channels * height * width
            fix = (
                f"reshape inside {methods.decode} or pass --output-shape {channels} {height} {width}"
                if flat
                else ("its output must be the image the encoder reads: check --input-shape")
            )
            raise ImportFailed(
                f"{methods.decode} returned [N, {', '.join(map(str, value.shape[1:]))}]; a {decl.likelihood} "
                f"likelihood needs [N, {', '.join(map(str, rows))}]: {fix}"
            )
    if decl.decoder_output == "probs":
        low, high = float(decoded[0].min()), float(decoded[0].max())
        if low < 0 or high > 1:
            raise ImportFailed(
                f"{methods.decode} returned values in [{low:.3g}, {high:.3g}]; --decoder-output probs means "
                "probabilities in [0, 1]: for a decoder without a final sigmoid pass --decoder-output logits"
            )


def _shape(x: torch.Tensor) -> str:
    return "[" + ", ".join(map(str, x.shape)) + "]"


def _describe(values: tuple[Any, ...]) -> str:
    parts = [f"[{', '.join(map(str, v.shape))}]" if isinstance(v, torch.Tensor) else type(v).__name__ for v in values]
    return parts[0] if len(parts) == 1 else f"{len(parts)} values ({', '.join(parts)})"


def export_half(half: Half, example: torch.Tensor, input_name: str, outputs: list[str]) -> tuple[bytes, str]:
    """The method as ONNX bytes with a dynamic batch axis: torch.export first, the TorchScript exporter if
    the method does not trace there. (bytes, which exporter)"""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)
    errors = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            batch = torch.export.Dim("batch", min=1, max=1_000_000)
            program = torch.onnx.export(
                half, (example,), input_names=[input_name], output_names=outputs, dynamic_shapes=({0: batch},),
                opset_version=OPSET, dynamo=True, optimize=True, verbose=False,
            )  # fmt: skip
            if program is not None:
                return program.model_proto.SerializeToString(), "torch.export (dynamo)"
        except Exception as exc:  # the exporter's many error types
            errors.append(f"torch.export: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        try:
            axes = {name: {0: "batch"} for name in (input_name, *outputs)}
            with tempfile.TemporaryDirectory() as scratch:
                path = Path(scratch) / "graph.onnx"
                torch.onnx.export(
                    half, (example,), path, input_names=[input_name], output_names=outputs, dynamic_axes=axes,
                    opset_version=17, dynamo=False,
                )  # fmt: skip
                return path.read_bytes(), "TorchScript"
        except Exception as exc:  # the exporter's many error types
            errors.append(f"TorchScript: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    raise ImportFailed(
        f"torch.onnx.export cannot export {half.method}: {'; '.join(errors)}. Keep the method free of Python "
        "control flow that depends on tensor values"
    )


def torch_parity(
    half: Half, session: Any, data: np.ndarray, input_name: str, names: list[str]
) -> tuple[dict[str, float], dict[str, float]]:
    """The graph against the method in torch: per output, the worst over batches of 1, 7 and 256 (torch runs
    the whole batch); and each batch size against the graph's own 256-row run."""
    with torch.no_grad():
        reference = [t.numpy() for t in half(torch.from_numpy(data))]
    runs = {
        size: [
            np.concatenate(parts)
            for parts in zip(
                *(session.run(names, {input_name: data[i : i + size]}) for i in range(0, len(data), size)), strict=True
            )
        ]
        for size in PARITY_BATCHES
    }
    versus_torch = {
        f"{half.method}.{name}": max(worst(runs[s][i], reference[i]) for s in PARITY_BATCHES)
        for i, name in enumerate(names)
    }
    batches = {
        f"{half.method}.{name}": max(worst(runs[s][i], runs[PARITY_BATCHES[-1]][i]) for s in PARITY_BATCHES)
        for i, name in enumerate(names)
    }
    return versus_torch, batches


def checked_parity(target: str, *halves: tuple[Half, Any, np.ndarray, str, list[str]]) -> dict[str, Any]:
    """The manifest's parity record of both graphs against the module (`torch_parity`); refused beyond
    `TOLERANCE`."""
    versus, batches = {}, {}
    for half in halves:
        one, other = torch_parity(*half)
        versus.update(one)
        batches.update(other)
    bad = {k: v for k, v in {**versus, **batches}.items() if not v <= TOLERANCE}
    if bad:
        raise ImportFailed(
            f"the exported graphs differ from the module in torch beyond {TOLERANCE:g}: "
            f"{', '.join(f'{k} {v:.2e}' for k, v in bad.items())}. An op the exporter translates differently, "
            "or a method whose result depends on the batch"
        )
    return {
        "reference": f"{target} in torch {torch.__version__}, on {PARITY_BATCHES[-1]} seeded images and latents; "
        "the graph run in batches of " + ", ".join(map(str, PARITY_BATCHES)),
        "tolerance": TOLERANCE,
        "measure": "max |onnx - torch| / max(1, max |torch|), per output",
        "max_abs_diff": versus,
        "batch_max_abs_diff": batches,
    }


def learned_log_sigma(module: torch.nn.Module, name: str) -> float:
    value: Any
    try:
        value = module.get_parameter(name)
    except AttributeError:
        try:
            value = module.get_buffer(name)
        except AttributeError:
            value = getattr(module, name, None)
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise ImportFailed(
            f"--log-sigma-param {name}: the module has no one-element parameter of that name (ln sigma shared by "
            "every pixel); for a per-pixel scale return it from decode and pass --decoder-output mean,log_scale"
        )
    result = float(value.detach().reshape(()))
    if not math.isfinite(result):
        raise ImportFailed(f"--log-sigma-param {name} is {result}")
    return result


def refuse_random(method: str, graph: bytes) -> None:
    random = random_nodes(graph)
    if random:
        raise ImportFailed(
            f"{method} draws random numbers ({', '.join(sorted(set(random)))} in its graph): the contract's "
            "graphs are deterministic. Return the posterior's mean and log-variance from encode (not a sample "
            "z) and the likelihood's parameters from decode; the service draws the noise itself, seeded"
        )


def import_torch(target: str, out_dir: Path, decl: Declarations, weights: Path | None, methods: Methods) -> Manifest:
    if decl.input_shape is None:
        raise ImportFailed("pass --input-shape C H W: the shape of the images the model reads")
    torch.manual_seed(decl.seed)
    # A distribution built inside encode or decode checks its arguments with data-dependent branches, which
    # torch.export cannot trace; the values are checked by the loader (finite, shapes) instead.
    torch.distributions.Distribution.set_default_validate_args(False)
    module = load_module(target, weights)
    latent_dim, output_names, decl = probe(module, decl, methods)
    log_scale = None
    if decl.sigma is not None:
        log_scale = math.log(decl.sigma)
    elif decl.log_sigma_param is not None:
        log_scale = learned_log_sigma(module, decl.log_sigma_param)
    encode, decode = Half(module, methods.encode), Half(module, methods.decode)
    spread = decl.posterior
    images = example_images(decl, PARITY_BATCHES[-1], decl.seed)
    latents = np.random.default_rng(decl.seed + 1).standard_normal((PARITY_BATCHES[-1], latent_dim), dtype=np.float32)
    encoder_bytes, exporter = export_half(encode, torch.from_numpy(images[:2]), "image", ["mean", spread])
    decoder_bytes, _ = export_half(decode, torch.from_numpy(latents[:2]), "z", output_names)
    refuse_random(methods.encode, encoder_bytes)
    refuse_random(methods.decode, decoder_bytes)
    files = [Path(target.rpartition(":")[0])] if Path(target.rpartition(":")[0]).is_file() else []
    source = Source(
        tool="vae-import torch",
        files=source_files([*files, *([weights] if weights is not None else [])]),
        description=f"{target}: {type(module).__name__}.{methods.encode} and .{methods.decode}, exported by {exporter}",
    )
    graphs = Graphs(encoder_bytes, decoder_bytes, ("image", "mean", spread), ("z", output_names))
    decl = replace(decl, notes={**decl.notes, "module": target, "class": type(module).__name__, "exporter": exporter})

    def build(staging: Path) -> tuple[Manifest, OnnxVAE]:
        placeholder = {"tolerance": TOLERANCE, "max_abs_diff": {"pending": 0.0}}
        manifest = build_manifest(staging, decl, graphs, latent_dim, source, placeholder, log_scale)
        model = open_checked(staging, manifest, decl.threads)  # the loader's checks first: they name the fault
        parity = checked_parity(
            target,
            (encode, model.encoder, images, "image", ["mean", spread]),
            (decode, model.decoder, latents, "z", output_names),
        )
        return manifest.model_copy(update={"parity": parity}), model

    return write_import(out_dir, decl, build)
