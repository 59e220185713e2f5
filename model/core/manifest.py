"""The model card written beside the graphs, as a pydantic model (torch-free: the service reads it).

`manifest.schema.json` is generated from `Manifest` (`python -m model.core.manifest`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from model.core.likelihoods import LIKELIHOODS

SCHEMA_VERSION: Final = 1
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
    shape: list[int] = Field(min_length=3, max_length=3, description="(C, H, W)")
    channels: int
    dtype: Literal["float32"] = "float32"
    range: list[float] = [0.0, 1.0]


class LikelihoodSpec(_Strict):
    name: Literal[tuple(LIKELIHOODS)]  # type: ignore[valid-type]  # the schema's enum is the registry's names
    outputs: list[str] = Field(description="decoder outputs, in order")
    parameters: dict[str, Any] = Field(default_factory=dict)
    data_space: str


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


class Manifest(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str
    version: str
    created: str
    source_checkpoint: FileHash
    checkpoint: FileHash | None = None  # the slim copy shipped beside the graphs
    encoder: GraphInfo
    decoder: GraphInfo
    input: InputSpec
    latent_dim: int = Field(gt=0)
    likelihood: LikelihoodSpec
    preprocessing: dict[str, Any]
    training: dict[str, Any]
    metrics: dict[str, Any]
    parity: dict[str, Any]
    int8: Int8Variant | None = None
    anomaly: AnomalySpec | None = None  # absent in exports made before anomaly calibration
    prior: PriorSpec | None = None  # absent: p(z) = N(0, I)
    exporter: dict[str, str]

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
