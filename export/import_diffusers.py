"""`vae-import diffusers DIR OUT_DIR`: a latent-diffusion autoencoder (diffusers' `AutoencoderKL`, as
`save_pretrained` writes it: config.json and the safetensors weights), exported to two graphs.

- encoder.onnx: an image in [-1, 1], [N, C, H, W], to the latent distribution's mean and log-variance, each
  [N, c, H/f, W/f] (diffusers' `DiagonalGaussianDistribution`, its log-variance clamped to [-30, 20] as there);
- decoder.onnx: an unscaled latent [N, c, h, w] to the image in [-1, 1], [N, C, f*h, f*w].

Both graphs have dynamic batch, height and width (fully convolutional), so the remote VAE protocol's routes
take any size the manifest's `sizes` allow; the native routes resize uploads to `--image-size`. The scaling and
shift factors go into the manifest's `diffusion` section. These decoders are trained with perceptual and
adversarial losses, not a likelihood: the model is imported with likelihood none (the routes that score answer
409) unless a Gaussian is declared with --sigma. The graphs are compared with diffusers in torch at two sizes.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.declare import Declarations
from export.importing import Graphs, ImportFailed, build_manifest, open_checked, source_files, write_import
from model.core.artifact import OnnxVAE
from model.core.contract import worst
from model.core.manifest import DiffusionSpec, Manifest, SizeSpec, Source

OPSET = 20
TOLERANCE = 1e-4  # graph against diffusers, relative to each output's largest value (at least 1): measured ~1e-5
MAX_SIZE = 2048  # the exported graphs' largest height and width
# The default `sizes.max`: the middle blocks' self-attention holds a (h*w)^2 score matrix, 1 GiB per image for a
# 512 x 512 image at downsampling 4 (bench/results/autoencoder_cost.json); --max-size sets what a model may take.
DEFAULT_MAX_SIZE = 1024


class Encoder(torch.nn.Module):
    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        moments = self.vae.encoder(image)
        if self.vae.quant_conv is not None:
            moments = self.vae.quant_conv(moments)
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return mean, torch.clamp(logvar, -30.0, 20.0)


class Decoder(torch.nn.Module):
    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        image: torch.Tensor = self.vae.decode(z).sample
        return image


def load_autoencoder(directory: Path) -> Any:
    """The AutoencoderKL saved in `directory`, from local files only (no download), in float32 and eval mode."""
    config = directory / "config.json"
    if not config.is_file():
        raise ImportFailed(f"{directory} holds no config.json: give the directory AutoencoderKL.save_pretrained wrote")
    kind = json.loads(config.read_text()).get("_class_name")
    if kind not in (None, "AutoencoderKL"):
        raise ImportFailed(f"{config} describes a {kind}; vae-import diffusers reads AutoencoderKL")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import AutoencoderKL

    try:
        return AutoencoderKL.from_pretrained(str(directory), local_files_only=True).float().eval()
    except Exception as exc:  # diffusers' and safetensors' own errors
        raise ImportFailed(f"diffusers cannot load {directory} as an AutoencoderKL: {exc}") from exc


def downsample_factor(vae: Any) -> int:
    return int(2 ** (len(vae.config.block_out_channels) - 1))


def export(module: torch.nn.Module, example: torch.Tensor, inputs: str, outputs: list[str], factor: int) -> bytes:
    """The module as ONNX with dynamic batch, height and width (multiples of `factor` for the encoder)."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)
    batch = torch.export.Dim("batch", min=1, max=4096)
    height = torch.export.Dim("height", min=1, max=MAX_SIZE // max(factor, 1))
    width = torch.export.Dim("width", min=1, max=MAX_SIZE // max(factor, 1))
    shapes = ({0: batch, 2: factor * height, 3: factor * width},)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module, (example,), input_names=[inputs], output_names=outputs, dynamic_shapes=shapes,
                opset_version=OPSET, dynamo=True, optimize=True, verbose=False,
            )  # fmt: skip
        except Exception as exc:  # the exporter's many error types
            raise ImportFailed(f"torch.onnx.export cannot export the autoencoder's {inputs} graph: {exc}") from exc
    if program is None:
        raise ImportFailed("torch.onnx.export returned no program")
    return bytes(program.model_proto.SerializeToString())


def diffusers_parity(vae: Any, model: Any, channels: int, sizes: list[tuple[int, int]], seed: int) -> dict[str, float]:
    """Max |graph - diffusers| / max(1, max |diffusers|) per output, on seeded images of each size, batch 2."""
    rng = np.random.default_rng(seed)
    figures: dict[str, float] = {}
    for height, width in sizes:
        images = (rng.random((2, channels, height, width), dtype=np.float32) * 2 - 1).astype(np.float32)
        with torch.no_grad():
            posterior = vae.encode(torch.from_numpy(images)).latent_dist
            decoded = vae.decode(posterior.mean).sample.numpy()
        mean, logvar = model.encoder.run(["mean", "logvar"], {"image": images})
        (image,) = model.decoder.run(["image"], {"z": posterior.mean.numpy()})
        for name, ours, theirs in (
            ("encoder.mean", mean, posterior.mean.numpy()),
            ("encoder.logvar", logvar, posterior.logvar.numpy()),
            ("decoder.image", image, decoded),
        ):
            key = f"{name}@{height}x{width}"
            figures[key] = worst(ours, theirs)
    return figures


def geometry(vae: Any, image_size: tuple[int, int] | None, max_size: int) -> tuple[int, int, int, int]:
    """(channels, height, width, downsampling), checked: what the native routes resize to, and what
    --max-size allows."""
    config = vae.config
    factor = downsample_factor(vae)
    channels = int(config.in_channels)
    if channels not in (1, 3) or int(config.out_channels) != channels:
        raise ImportFailed(f"in_channels {config.in_channels}, out_channels {config.out_channels}: images are 1 or 3")
    height, width = image_size or (int(config.sample_size), int(config.sample_size))
    if height % factor or width % factor:
        raise ImportFailed(f"--image-size {height} {width}: the autoencoder takes multiples of {factor}")
    if not max(height, width) <= max_size <= MAX_SIZE or max_size % factor:
        raise ImportFailed(
            f"--max-size {max_size}: a multiple of {factor} from the image size ({max(height, width)}) to {MAX_SIZE}"
        )
    return channels, height, width, factor


def diffusion_spec(config: Any, factor: int) -> DiffusionSpec:
    return DiffusionSpec(
        scaling_factor=float(config.scaling_factor),
        shift_factor=None if config.shift_factor is None else float(config.shift_factor),
        downsample=factor,
        source="diffusers.AutoencoderKL",
    )


def training_report(path: Path) -> dict[str, Any]:
    """--report: a JSON object describing how the weights were trained, for the manifest's training section."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ImportFailed(f"--report {path}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict):
        raise ImportFailed(f"--report {path}: a JSON object is needed, not a {type(data).__name__}")
    return {"trained_by": "see report", "report": data}


def import_diffusers(
    directory: Path,
    out_dir: Path,
    decl: Declarations,
    image_size: tuple[int, int] | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    report: Path | None = None,
) -> Manifest:
    vae = load_autoencoder(directory)
    config = vae.config
    channels, height, width, factor = geometry(vae, image_size, max_size)
    if report is not None:
        decl = replace(decl, notes={**decl.notes, **training_report(report)})
    torch.manual_seed(decl.seed)
    example = torch.rand(2, channels, height, width) * 2 - 1
    encoder = export(Encoder(vae).eval(), example, "image", ["mean", "logvar"], factor)
    latent_example = torch.randn(2, int(config.latent_channels), height // factor, width // factor)
    decoder = export(Decoder(vae).eval(), latent_example, "z", ["image"], 1)
    latent_shape = [int(config.latent_channels), height // factor, width // factor]
    decl = decl.shaped((channels, height, width))
    extra = {
        "latent_shape": latent_shape,
        "sizes": SizeSpec(multiple=factor, min=factor, max=max_size),
        "diffusion": diffusion_spec(config, factor),
    }
    weights = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin"))
    source = Source(
        tool="vae-import diffusers",
        files=source_files([directory / "config.json", *weights]),
        description=f"diffusers AutoencoderKL from {directory}: encoder to the latent distribution, decoder to image",
    )
    graphs = Graphs(encoder, decoder, ("image", "mean", "logvar"), ("z", ["image"]))
    log_scale = None if decl.sigma is None else float(np.log(decl.sigma))
    latent_dim = int(np.prod(latent_shape))

    def build(staging: Path) -> tuple[Manifest, OnnxVAE]:
        placeholder = {"tolerance": TOLERANCE, "max_abs_diff": {"pending": 0.0}}
        manifest = build_manifest(staging, decl, graphs, latent_dim, source, placeholder, log_scale, extra)
        model = open_checked(staging, manifest, decl.threads)  # the loader's checks first: they name the fault
        figures = diffusers_parity(vae, model, channels, [(height, width), (2 * height, 2 * width)], decl.seed)
        bad = {k: v for k, v in figures.items() if not v <= TOLERANCE}
        if bad:
            raise ImportFailed(f"the graphs differ from diffusers beyond {TOLERANCE:g}: {bad}")
        parity = {
            "reference": f"diffusers AutoencoderKL in torch {torch.__version__}, batch 2 of seeded images in [-1, 1]",
            "tolerance": TOLERANCE,
            "measure": "max |onnx - torch| / max(1, max |torch|), per output and size",
            "max_abs_diff": figures,
        }
        return manifest.model_copy(update={"parity": parity}), model

    return write_import(out_dir, decl, build)
