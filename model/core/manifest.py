"""The model card written beside the graphs, as a pydantic model (torch-free: the service reads it).

`manifest.schema.json` is generated from `Manifest` (`python -m model.core.manifest`); docs/contract.md
says what each section means for the routes.

The schema is versioned "MAJOR.MINOR" (`schema_version`):
- a new MINOR adds optional fields whose absence keeps the old meaning. A reader serves every minor of its
  major up to its own, and refuses a newer one, naming the version it reads (upgrade vae-service);
- a new MAJOR changes what an existing field means. A reader refuses a major it does not know.
Version 1 (the integer 1, written before the contract was opened) reads as 2.0 with every new field at
its default: the graphs named as vae-export names them, inputs in [0, 1], the posterior's log-variance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from model.core.likelihoods import LIKELIHOODS

SCHEMA_VERSION: Final = "2.2"
_SCHEMA_MAJOR, _SCHEMA_MINOR = (int(part) for part in SCHEMA_VERSION.split("."))
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GraphInfo(_Strict):
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]
    opset: int


class FileHash(_Strict):
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class InputSpec(_Strict):
    """What the encoder graph is fed: an image of `shape`, its [0, 1] pixels p mapped to the graph's values
    as low + (high - low) * p for `range` [low, high], or (p - mean[c]) / std[c] when `mean` and `std` are
    given (per channel, as torchvision's Normalize)."""

    shape: list[int] = Field(min_length=3, max_length=3, description="(C, H, W)")
    channels: int
    dtype: Literal["float32"] = "float32"
    range: list[float] = Field([0.0, 1.0], min_length=2, max_length=2, description="[low, high]")
    mean: list[float] | None = Field(None, description="per channel: the graph sees (pixel - mean) / std")
    std: list[float] | None = Field(None, description="per channel, each > 0; given with mean")

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        channels = self.shape[0]
        if self.channels != channels or channels not in (1, 3):
            raise ValueError(f"channels {self.channels} and shape {self.shape}: images have 1 (grey) or 3 (RGB)")
        if min(self.shape) <= 0:
            raise ValueError(f"shape {self.shape} has a dimension that is not positive")
        low, high = self.range
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"range {self.range} must be finite, low < high")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std are given together (the graph sees (pixel - mean) / std)")
        if self.mean is not None and self.std is not None:
            if len(self.mean) != channels or len(self.std) != channels:
                raise ValueError(f"mean and std need one value per channel ({channels})")
            if not all(math.isfinite(s) and s > 0 for s in self.std) or not all(map(math.isfinite, self.mean)):
                raise ValueError(f"std {self.std} must be positive and mean {self.mean} finite")
        return self

    def affine(self) -> tuple[list[float], list[float]]:
        """Per channel (a, b): the graph sees a * pixel + b."""
        if self.mean is not None and self.std is not None:
            return [1.0 / s for s in self.std], [-m / s for m, s in zip(self.mean, self.std, strict=True)]
        low, high = self.range
        return [high - low] * self.channels, [low] * self.channels

    def describe_values(self) -> str:
        if self.mean is not None:
            return f"(pixel - mean) / std per channel, mean {self.mean}, std {self.std}, pixel in [0, 1]"
        low, high = self.range
        return f"[{low:g}, {high:g}]: {low:g} + {high - low:g} * pixel, pixel in [0, 1]"


LIKELIHOOD_NAMES = (*LIKELIHOODS, "none")


class LikelihoodSpec(_Strict):
    """p(x|z). `outputs` are the decoder's outputs in the contract's names, in order: bernoulli
    ["logits"] or ["probs"]; gaussian ["mean", "log_scale"] (the decoder gives a scale per pixel) or
    ["mean"] with `log_scale` (one scale for every pixel: learned, or fixed by the model's author); none
    ["mean"], a deterministic decoder. Means and scales are in the encoder's input values (InputSpec)."""

    name: Literal[LIKELIHOOD_NAMES]  # type: ignore[valid-type]  # the schema's enum is the registry's names
    outputs: list[str] = Field(description="decoder outputs, in order")
    parameters: dict[str, Any] = Field(default_factory=dict)
    data_space: str
    scale: Literal["decoder", "learned", "fixed"] | None = Field(
        None, description="gaussian: where sigma comes from; None for vae-export's decoders (they output it)"
    )
    log_scale: float | None = Field(None, description="gaussian with scale learned or fixed: ln sigma")

    @model_validator(mode="after")
    def _consistent(self) -> LikelihoodSpec:
        allowed = {
            "bernoulli": (["logits"], ["probs"]),
            "gaussian": (["mean", "log_scale"], ["mean"]),
            "none": (["mean"],),
        }[self.name]
        if self.outputs not in allowed:
            raise ValueError(f"a {self.name} decoder outputs {' or '.join(map(str, allowed))}, not {self.outputs}")
        constant = self.name == "gaussian" and self.outputs == ["mean"]
        if constant != (self.log_scale is not None) or (
            self.log_scale is not None and not math.isfinite(self.log_scale)
        ):
            raise ValueError(
                "a gaussian decoder that outputs only its mean needs log_scale (a finite ln sigma); "
                "other decoders give none"
            )
        return self


class EncoderIO(_Strict):
    """Which of the encoder graph's names play the contract's parts, and how. The defaults are the names
    vae-export writes; vae-import records a user's graph as it is, so its bytes and hash hold."""

    image: str = Field("image", description="the graph input fed the image")
    mean: str = Field("mean", description="the graph output holding the posterior's mean [N, D]")
    spread: str = Field("logvar", description="the graph output holding the posterior's spread [N, D]")
    posterior: Literal["logvar", "log_scale", "scale"] = Field(
        "logvar", description="what `spread` is: log sigma^2, log sigma, or sigma"
    )
    layout: Literal["nchw", "flat"] = Field("nchw", description="the image as [N, C, H, W] or [N, C*H*W]")


class DecoderIO(_Strict):
    z: str = Field("z", description="the graph input fed the latents [N, D]")
    outputs: list[str] = Field(description="the graph outputs holding the likelihood's outputs, in its order")
    scale_output: Literal["log_scale", "logvar", "scale"] = Field(
        "log_scale", description="gaussian with a per-pixel scale: what its second output is"
    )
    flat: bool = Field(False, description="the outputs are [N, C*H*W], reshaped to [N, C, H, W]")


class ContractSpec(_Strict):
    """How the graphs meet the model contract (docs/contract.md). Absent: vae-export's names and forms."""

    encoder: EncoderIO = EncoderIO()
    decoder: DecoderIO


class SizeSpec(_Strict):
    """The image sizes a fully convolutional model's graphs take (the remote VAE protocol's routes use them; the
    native routes resize uploads to `input.shape`)."""

    multiple: int = Field(gt=0, description="height and width are multiples of this (the latent's downsampling)")
    min: int = Field(gt=0, description="the smallest height and width")
    max: int = Field(gt=0, description="the largest height and width")


class DiffusionSpec(_Strict):
    """A latent-diffusion autoencoder's latent scaling: a diffusion model sees (z - shift_factor) * scaling_factor."""

    scaling_factor: float
    shift_factor: float | None = None
    downsample: int = Field(gt=0, description="the latent's height and width are the image's divided by this")
    source: str = Field(description="the class the weights were made for, as diffusers.AutoencoderKL")


class Source(_Strict):
    """Where the model came from, for the model card."""

    tool: Literal["vae-export", "vae-import torch", "vae-import onnx", "vae-import diffusers"]
    files: list[FileHash] = Field(default_factory=list)
    description: str = ""


class Int8Variant(_Strict):
    encoder: GraphInfo
    decoder: GraphInfo
    parity: dict[str, float]
    speed: dict[str, float]


class AnomalySpec(_Strict):
    """The anomaly calibration shipped beside the graphs (model/core/anomaly.py reads the file)."""

    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    method: str = Field(description="the score POST /anomaly returns: likelihood, complexity or typicality")
    statistics: list[str] = Field(description="the per-image statistics the score is built from")
    cost: str = Field(description="what the score costs per image, relative to POST /elbo?k=1")
    fpr_default: float = Field(0.01, gt=0, lt=1, description="false-positive rate of is_anomaly by default")
    calibration: dict[str, Any] = Field(description="the in-distribution images the score was fitted and referenced on")


class PriorSpec(_Strict):
    """A learned prior p(z), a fixed mixture of diagonal Gaussians (model/core/priors.py reads the graph).

    The graph maps `z` [batch, D] to `log_prob` [batch] = log sum_k w_k N(z | mu_k, diag exp(logvar_k)),
    and outputs the mixture's parameters as constants, `means` [K, D], `logvars` [K, D] and `log_weights`
    [K] (normalised), so that sampling uses exactly what log_prob uses."""

    name: Literal["mog", "vamp"] = Field(description="mog: a learned mixture of Gaussians; vamp: a VampPrior")
    components: int = Field(gt=0, description="K, the mixture's components")
    description: str
    graph: GraphInfo


LEVEL_GRAPHS: Final = ("features", "lower_posterior", "lower_prior", "decoder_levels")  # LevelsSpec's graphs


class LevelsSpec(_Strict):
    """A two-level VAE, z2 -> z1 -> x (docs/design/hierarchy.md): the graphs beyond the encoder and the
    decoder. The manifest's latent, prior and encoder are z2's; its decoder takes z2 through both levels
    (z1 the mean of p(z1 | z2)); these graphs give what a score needs of z1."""

    lower_latent_dim: int = Field(gt=0, description="D1, the numbers of z1 per image")
    features: GraphInfo = Field(
        description="image -> mean, logvar of q(z2 | x) and the features they are read from, q(z1 | x, z2)'s input"
    )
    lower_posterior: GraphInfo = Field(description="features, z2 -> mean, logvar of q(z1 | x, z2)")
    lower_prior: GraphInfo = Field(description="z2 -> mean, logvar of p(z1 | z2)")
    decoder_levels: GraphInfo = Field(description="z1, z2 -> the likelihood's outputs: p(x | z1, z2)")


class Manifest(_Strict):
    schema_version: str | Literal[1] = Field(SCHEMA_VERSION, description="MAJOR.MINOR (1: the first, integer form)")
    name: str
    version: str
    created: str
    source_checkpoint: FileHash | None = None  # vae-export's checkpoint; imports record `source`
    source: Source | None = None
    checkpoint: FileHash | None = None  # the slim copy shipped beside the graphs
    encoder: GraphInfo
    decoder: GraphInfo
    input: InputSpec
    latent_dim: int = Field(gt=0)
    latent_shape: list[int] | None = Field(
        None, description="the latent's shape per image, as [C, h, w] for a spatial latent; absent: [latent_dim]"
    )
    sizes: SizeSpec | None = None  # absent: the graphs take input.shape only
    diffusion: DiffusionSpec | None = None  # a latent-diffusion autoencoder's latent scaling
    likelihood: LikelihoodSpec
    preprocessing: dict[str, Any]
    training: dict[str, Any]
    metrics: dict[str, Any]
    parity: dict[str, Any]
    int8: Int8Variant | None = None
    anomaly: AnomalySpec | None = None  # absent in exports made before anomaly calibration
    prior: PriorSpec | None = None  # absent: p(z) = N(0, I)
    contract: ContractSpec | None = None  # absent: the graphs' names and forms are vae-export's
    levels: LevelsSpec | None = None  # since 2.2; absent: one stochastic level
    exporter: dict[str, str]

    @field_validator("schema_version", mode="before")
    @classmethod
    def _schema_version(cls, value: Any) -> str:
        text = "1.0" if value == 1 or value == "1" else value
        try:
            major, minor = (int(part) for part in str(text).split("."))
        except ValueError:
            raise ValueError(f"schema_version {value!r} is not MAJOR.MINOR") from None
        if (major, minor) == (1, 0) or (major == _SCHEMA_MAJOR and 0 <= minor <= _SCHEMA_MINOR):
            return f"{major}.{minor}"
        raise ValueError(
            f"schema_version {value} is not one this vae-service reads (1, and 2.0 up to {SCHEMA_VERSION}); "
            "a newer vae-service wrote it: upgrade vae-service, or re-import the model with this one"
        )

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.source_checkpoint is None and self.source is None:
            raise ValueError("a manifest records its source: source_checkpoint (vae-export) or source (vae-import)")
        if self.input.shape[0] != self.input.channels:
            raise ValueError(f"input.channels {self.input.channels} differs from input.shape {self.input.shape}")
        if self.latent_shape is not None and math.prod(self.latent_shape) != self.latent_dim:
            raise ValueError(
                f"latent_shape {self.latent_shape} holds {math.prod(self.latent_shape)} numbers, "
                f"not latent_dim {self.latent_dim}"
            )
        if self.levels is not None and (self.latent_shape is not None or self.contract is not None):
            raise ValueError("levels are vae-export's: a flat latent and its own graphs' names, no contract")
        io = self.io
        if len(io.decoder.outputs) != len(self.likelihood.outputs):
            raise ValueError(
                f"contract.decoder.outputs {io.decoder.outputs} names {len(io.decoder.outputs)} graph outputs; "
                f"the likelihood has {len(self.likelihood.outputs)}: {self.likelihood.outputs}"
            )
        return self

    @property
    def latent(self) -> tuple[int, ...]:
        """The latent's shape per image: (D,), or (C, h, w) for a spatial latent."""
        return tuple(self.latent_shape) if self.latent_shape is not None else (self.latent_dim,)

    @property
    def io(self) -> ContractSpec:
        """The contract's bindings; vae-export's own when the manifest records none."""
        if self.contract is not None:
            return self.contract
        return ContractSpec(decoder=DecoderIO(outputs=list(self.likelihood.outputs)))

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        return cls.model_validate_json(Path(path).read_text())

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")


def beyond_tolerance(figures: dict[str, float], tolerance: float) -> dict[str, float]:
    """The figures that are not within the tolerance. NaN counts as beyond: a graph that yields NaN
    has no parity."""
    return {name: value for name, value in figures.items() if not value <= tolerance}


def parity_problem(parity: dict[str, Any]) -> str | None:
    """Why a manifest's parity record forbids serving its graphs, or None when it allows it.

    vae-export writes a manifest only after its parity check passed, so a record that is missing or
    beyond its own tolerance means the directory was not written by a successful export."""
    try:
        tolerance = float(parity["tolerance"])
        figures = {
            **parity["max_abs_diff"],
            **{f"batch.{k}": v for k, v in parity.get("batch_max_abs_diff", {}).items()},
        }
        figures = {name: float(value) for name, value in figures.items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        return "it records no parity check (tolerance and max_abs_diff)"
    if not figures or not math.isfinite(tolerance) or tolerance < 0:
        return f"its parity record is incomplete (tolerance {tolerance}, {len(figures)} figures)"
    bad = beyond_tolerance(figures, tolerance)
    if bad:
        details = ", ".join(f"{name} {value:.2e}" for name, value in bad.items())
        return f"its recorded parity exceeds the tolerance {tolerance:g}: {details}"
    return None


def json_schema() -> dict[str, Any]:
    return Manifest.model_json_schema()


if __name__ == "__main__":
    SCHEMA_PATH.write_text(json.dumps(json_schema(), indent=2) + "\n")
    print(f"wrote {SCHEMA_PATH}")
