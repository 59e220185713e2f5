"""What a user declares about their own VAE (vae-import's flags), checked, and as manifest sections.

Torch-free: `vae-import onnx` runs without torch. docs/contract.md is the contract these map onto.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.core.manifest import ContractSpec, DecoderIO, EncoderIO, InputSpec, LikelihoodSpec
from model.core.preprocess import PreprocessContract

# What `decode` returns, for each likelihood; the first is the default.
DECODER_OUTPUTS = {
    "bernoulli": ("logits", "probs"),
    "gaussian": ("mean", "mean,log_scale", "mean,logvar", "mean,scale"),
    "none": ("mean",),
}
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # a directory and a URL segment as it is


class DeclarationError(ValueError):
    """The declarations contradict each other or the contract; the message says which flag to change."""


@dataclass(frozen=True)
class Declarations:
    """The model's contract as its author declares it: vae-import's flags, before any graph is read."""

    name: str
    likelihood: str
    decoder_output: str
    version: str = "1.0.0"
    input_shape: tuple[int, int, int] | None = None  # (C, H, W); vae-import onnx reads a static one from the graph
    input_range: tuple[float, float] = (0.0, 1.0)
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None
    posterior: str = "logvar"  # what encode's second output is: logvar, log_scale or scale
    flatten_input: bool = False  # encode takes [N, C*H*W]
    output_shape: tuple[int, int, int] | None = None  # decode returns [N, C*H*W]: reshaped to this
    sigma: float | None = None  # gaussian decoding to its mean only: the fixed sigma
    log_sigma_param: str | None = None  # ... or the module's parameter holding a learned ln sigma (torch)
    resize_filter: str = "bilinear"
    score_dir: Path | None = None
    calibrate_dir: Path | None = None
    seed: int = 0
    threads: int = 2
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for what in ("name", "version"):
            if not _SAFE.match(getattr(self, what)):
                raise DeclarationError(
                    f"--{what} {getattr(self, what)!r}: use letters, digits, '.', '_' and '-' (it names a "
                    "directory and a URL path segment)"
                )
        choices = DECODER_OUTPUTS.get(self.likelihood)
        if choices is None:
            raise DeclarationError(f"--likelihood {self.likelihood!r}: choose one of {', '.join(DECODER_OUTPUTS)}")
        if self.decoder_output not in choices:
            raise DeclarationError(
                f"--decoder-output {self.decoder_output} does not go with --likelihood {self.likelihood}: "
                f"a {self.likelihood} decoder returns {' or '.join(choices)}"
            )
        self._check_scale()
        self._check_input()
        if self.posterior not in ("logvar", "log_scale", "scale"):
            raise DeclarationError(f"--posterior {self.posterior!r}: choose logvar, log_scale or scale")
        if self.threads <= 0:
            raise DeclarationError(f"--threads must be positive, not {self.threads}")

    def _check_scale(self) -> None:
        constant = self.likelihood == "gaussian" and self.decoder_output == "mean"
        given = [
            flag
            for flag, value in (("--sigma", self.sigma), ("--log-sigma-param", self.log_sigma_param))
            if value is not None
        ]
        if constant and len(given) != 1:
            raise DeclarationError(
                "a gaussian decoder that returns only its mean needs its sigma: --sigma S (fixed, in the "
                "model's input values) or --log-sigma-param NAME (a learned ln sigma in the module); or declare "
                "--decoder-output mean,log_scale when decode returns a scale too"
            )
        if not constant and given:
            raise DeclarationError(
                f"{given[0]} is for a gaussian decoder that returns only its mean (--decoder-output mean)"
            )
        if self.sigma is not None and not (math.isfinite(self.sigma) and self.sigma > 0):
            raise DeclarationError(f"--sigma must be positive and finite, not {self.sigma}")

    def _check_input(self) -> None:
        low, high = self.input_range
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise DeclarationError(f"--input-range {low:g} {high:g}: needs finite LOW < HIGH, as 0 1 or -1 1")
        if (self.input_mean is None) != (self.input_std is None):
            raise DeclarationError("--input-mean and --input-std go together: the graph sees (pixel - mean) / std")
        if self.input_shape is not None:
            channels, height, width = self.input_shape
            if channels not in (1, 3) or height <= 0 or width <= 0:
                raise DeclarationError(
                    f"--input-shape {channels} {height} {width}: C is 1 (grey) or 3 (RGB), H and W positive"
                )
            if self.input_mean is not None and self.input_std is not None:
                if len(self.input_mean) not in (1, channels) or len(self.input_std) not in (1, channels):
                    raise DeclarationError(f"--input-mean and --input-std take 1 or {channels} values")
                if not all(math.isfinite(s) and s > 0 for s in self.input_std):
                    raise DeclarationError(f"--input-std {self.input_std}: each must be positive")
        if self.output_shape is not None and self.input_shape is not None and self.output_shape != self.input_shape:
            raise DeclarationError(
                f"--output-shape {' '.join(map(str, self.output_shape))} differs from --input-shape "
                f"{' '.join(map(str, self.input_shape))}: the decoder reconstructs the image the encoder reads"
            )

    def shaped(self, input_shape: tuple[int, int, int]) -> Declarations:
        """The same declarations with the input shape read from a graph."""
        from dataclasses import replace

        return replace(self, input_shape=input_shape)

    @property
    def shape(self) -> tuple[int, int, int]:
        if self.input_shape is None:
            raise DeclarationError("the input shape is not known: pass --input-shape C H W")
        return self.input_shape

    def input_spec(self) -> InputSpec:
        channels = self.shape[0]
        per_channel = (
            (None, None)
            if self.input_mean is None or self.input_std is None
            else (_per_channel(self.input_mean, channels), _per_channel(self.input_std, channels))
        )
        try:
            return InputSpec(
                shape=list(self.shape),
                channels=channels,
                range=list(self.input_range),
                mean=per_channel[0],
                std=per_channel[1],
            )
        except ValueError as exc:
            raise DeclarationError(f"the input declarations are not consistent: {exc}") from exc

    def preprocessing(self) -> PreprocessContract:
        try:
            return PreprocessContract(input_shape=self.shape, resize_filter=self.resize_filter)
        except ValueError as exc:
            raise DeclarationError(f"--resize-filter: {exc}") from exc

    def likelihood_spec(self, log_scale: float | None) -> LikelihoodSpec:
        """`log_scale`: a gaussian's constant ln sigma (from --sigma, or read from --log-sigma-param)."""
        outputs = {
            "logits": ["logits"],
            "probs": ["probs"],
            "mean": ["mean"],
        }.get(self.decoder_output, ["mean", "log_scale"])
        scale = None
        if self.likelihood == "gaussian":
            scale = "decoder" if len(outputs) == 2 else "fixed" if self.sigma is not None else "learned"
        return LikelihoodSpec(
            name=self.likelihood,
            outputs=outputs,
            parameters={
                "decoder_output": self.decoder_output,
                **({"sigma": math.exp(log_scale)} if log_scale is not None else {}),
            },
            data_space=_DATA_SPACE[self.likelihood],
            scale=scale,
            log_scale=log_scale,
        )

    def contract(self, encoder: tuple[str, str, str], decoder: tuple[str, list[str]]) -> ContractSpec:
        """The bindings: the encoder graph's (input, mean output, spread output), the decoder's (input, outputs)."""
        scale_output = self.decoder_output.split(",")[1] if "," in self.decoder_output else "log_scale"
        return ContractSpec(
            encoder=EncoderIO(
                image=encoder[0],
                mean=encoder[1],
                spread=encoder[2],
                posterior=self.posterior,
                layout="flat" if self.flatten_input else "nchw",
            ),
            decoder=DecoderIO(
                z=decoder[0],
                outputs=decoder[1],
                scale_output=scale_output,
                flat=self.output_shape is not None,
            ),
        )


_DATA_SPACE = {
    "bernoulli": "binary pixels: x ~ Bernoulli(pixel), seeded per image",
    "gaussian": (
        "dequantised 8-bit pixels: (round(255 * pixel) + u) / 256, u ~ U(0, 1); the decoder's density in its own "
        "input values is mapped to [0, 1] pixels, and reported as probabilities of the 8-bit image (bin 1/256)"
    ),
    "none": "none: the decoder is deterministic, so images are not scored",
}


def _per_channel(values: tuple[float, ...], channels: int) -> list[float]:
    return list(values) * channels if len(values) == 1 else list(values)
