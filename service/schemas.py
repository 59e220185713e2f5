"""Request and response bodies, as they appear in the OpenAPI document."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from model.core.scoring import ESTIMATORS
from service.params import QueryModel

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
if TYPE_CHECKING:  # a Literal built at run time is opaque to the type checker
    Estimator = str
else:
    Estimator = Literal[tuple(ESTIMATORS)]  # the names of model.core.scoring's estimators


class ModelRef(BaseModel):
    name: str
    version: str


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable error code, e.g. invalid_image")
    message: str = Field(description="what was wrong, for a person")


class ErrorBody(BaseModel):
    error: ErrorDetail


class V2ErrorBody(BaseModel):
    """The open inference protocol's error shape, used by the /v2 routes (Triton's clients parse it)."""

    error: str = Field(description="what was wrong, for a person")


class DecodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # The served document fits the rows and the example to the model's latent_dim (service/docs.py).
    z: list[list[FiniteFloat]] = Field(
        description="1..max_batch rows of exactly latent_dim finite numbers (GET /v1/model)"
    )


# Request bodies that routes parse themselves (one pass of pydantic's JSON parser, under their own
# size limit) and reference from `openapi_extra`; service/docs.py adds them to the document.
REQUEST_MODELS: tuple[type[BaseModel], ...] = (DecodeRequest,)


class LowerLevel(BaseModel):
    mean: list[float] = Field(description="mean of q(z1 | x, z2)")
    logvar: list[float] = Field(description="log-variance of q(z1 | x, z2)")
    z: list[float] | None = Field(None, description="z1 drawn from it, when sample=true")


class EncodedImage(BaseModel):
    index: int
    mean: list[float] = Field(description="mean of q(z|x); for a two-level VAE, of its top level q(z2|x)")
    logvar: list[float] = Field(description="log-variance of q(z|x)")
    z: list[float] | None = Field(None, description="mean + exp(logvar/2) * eps, when sample=true")
    lower: LowerLevel | None = Field(
        None,
        description="a two-level VAE's lower level q(z1 | x, z2), at z2 = the mean above, or at the sampled z "
        "with sample=true (absent for one level)",
    )


class EncodeResponse(BaseModel):
    model: ModelRef
    latent_dim: int
    latent_shape: list[int] = Field(
        description="[latent_dim], or [C, h, w]: mean, logvar and z are flattened in C order"
    )
    seed: int | None = Field(None, description="seed of the reparameterisation noise, when sample=true")
    results: list[EncodedImage]


class DecodedImage(BaseModel):
    index: int
    png_base64: str
    pixels: list[list[list[float]]] | None = Field(None, description="E[x|z] as (C, H, W), when pixels=true")


class DecodeResponse(BaseModel):
    model: ModelRef
    images: list[DecodedImage]


class Sample(BaseModel):
    index: int
    png_base64: str
    z: list[float]


class SampleResponse(BaseModel):
    model: ModelRef
    seed: int
    temperature: float
    samples: list[Sample]


class ImageScore(BaseModel):
    index: int
    elbo: float = Field(description="evidence lower bound, nats")
    reconstruction: float = Field(description="E_q[log p(x|z)], one reparameterised sample, nats")
    kl: float = Field(
        description="KL(q(z|x) || p(z)), nats: analytic for the N(0, I) prior, the one-sample "
        "estimate log q(z|x) - log p(z) at the ELBO's z for a mixture prior (GET /v1/model: prior)"
    )
    bits_per_dim: float = Field(description="-elbo in bits per dimension")
    log_likelihood: float | None = Field(None, description="the estimator's log p(x) with k samples, when k > 1")
    log_likelihood_bits_per_dim: float | None = None
    log_likelihood_standard_error: float | None = Field(
        None, description="Monte Carlo standard error of log_likelihood (delta method), nats, when k > 1"
    )
    effective_sample_size: float | None = Field(
        None, description="(sum w)^2 / sum w^2 of the k weights, 1..k, when k > 1"
    )


class ElboResponse(BaseModel):
    model: ModelRef
    k: int
    seed: int
    binarize_seed: int
    data_space: str = Field(description="the binarisation or dequantisation applied to the images")
    results: list[ImageScore]
    estimator: Estimator = Field(description="where the k latents of log_likelihood were drawn from")


class AnomalyResult(BaseModel):
    index: int
    score: float = Field(description="higher = more anomalous; the method is named in the response")
    percentile: float = Field(description="share of the in-distribution reference images scoring lower, 0..1")
    is_anomaly: bool = Field(description="score above the threshold for the response's false-positive rate")
    statistics: dict[str, float] = Field(
        description="the per-image statistics the score is built from (ELBO and KL in nats, compressed lengths in bits)"
    )
    map: list[list[float]] | None = Field(
        None,
        description="with map=true: H x W at the model's input size, each pixel's percentile among in-distribution "
        "pixels (0..1, higher = more anomalous)",
    )
    map_png: str | None = Field(None, description="with map=true: the map as a heatmap over the image, base64 PNG")


class AnomalyResponse(BaseModel):
    model: ModelRef
    method: str = Field(description="likelihood, complexity or typicality (docs/anomaly.md)")
    fpr: float = Field(description="the false-positive rate is_anomaly is set for")
    threshold: float = Field(description="the score above which is_anomaly is true")
    reference_images: int = Field(description="in-distribution images the percentiles are read from")
    seed: int
    binarize_seed: int
    data_space: str
    fpr_note: str | None = Field(
        None, description="set when the default fpr is coarser than 0.01 because the reference images are few"
    )
    map: dict[str, Any] | None = Field(None, description="with map=true: how the maps were computed")
    results: list[AnomalyResult]


class ReconstructionImage(BaseModel):
    index: int
    png_base64: str


class ReconstructResponse(BaseModel):
    model: ModelRef
    images: list[ReconstructionImage]


class Health(BaseModel):
    status: str


class ModelVersions(BaseModel):
    name: str
    versions: list[str] = Field(description="the versions being served, lowest first")
    default_version: str = Field(description="the version a request gets when it names none: the highest")
    default: bool = Field(description="whether the plain routes (/encode, ...) serve this model")


class ModelList(BaseModel):
    models: list[ModelVersions]


class Ready(BaseModel):
    status: str
    model: ModelRef


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: ModelRef
    input: dict[str, Any]
    latent_dim: int
    latent_shape: list[int] = Field(
        description="the latent's shape per image: [latent_dim], or [C, h, w] for a spatial latent; latents are "
        "sent and returned flattened in C order (latent_dim numbers)"
    )
    sizes: dict[str, int] | None = Field(
        None, description="a fully convolutional model's image sizes (multiple, min, max): the remote VAE protocol's"
    )
    diffusion: dict[str, Any] | None = Field(
        None, description="a latent-diffusion autoencoder's scaling_factor, shift_factor and downsampling"
    )
    likelihood: dict[str, Any]
    preprocessing: dict[str, Any]
    metrics: dict[str, Any]
    prior: dict[str, Any] = Field(
        description="p(z): name (standard_normal, mog or vamp), components (K; 1 for N(0, I)) and description"
    )
    source: dict[str, Any] = Field(
        description="where the model came from: vae-export's checkpoint, or what vae-import was given (files, hashes)"
    )
    contract: dict[str, Any] = Field(
        description="which of the graphs' names play the contract's parts, and in what form (docs/contract.md)"
    )
    limits: dict[str, int]


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer."""
    meaning = {
        400: "undecodable or truncated image bytes",
        404: "no such model or version is being served",
        409: "the model cannot answer this route: it has no anomaly calibration, or no likelihood (a deterministic "
        "decoder); the error's code and message say which",
        408: "the request body did not arrive within VAE_BODY_TIMEOUT_S",
        413: "body over VAE_MAX_UPLOAD_BYTES (VAE_MAX_JSON_BYTES for JSON), an image over VAE_MAX_IMAGE_PIXELS, "
        "or a request over VAE_MAX_REQUEST_PIXELS",
        415: "unsupported media type",
        422: "bad parameters or latents, or an image too costly to decode",
        429: "too many model calls or uploads in flight, or the decoders' queue is full; retry later",
        503: "the model is not loaded yet, or failed to load",
    }
    return {status: {"model": ErrorBody, "description": meaning[status]} for status in statuses}


# ---- query parameters, parsed by service/params.py ----

SeedField = Field(0, ge=0, le=2**63 - 1, description="seed of the noise; the same seed gives the same numbers")


class EncodeQuery(QueryModel):
    sample: bool = Field(False, description="also return z = mean + exp(logvar / 2) * eps")
    seed: int = SeedField


class ElboQuery(QueryModel):
    k: int = Field(1, ge=1, description="importance samples (1..VAE_MAX_K); k > 1 adds the IWAE estimate of log p(x)")
    seed: int = SeedField
    binarize_seed: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="seed of the binarisation (default: the model's test-set seed, as vae-eval uses)",
    )
    estimator: Estimator = Field(
        "importance",
        description="importance: z ~ q(z|x), the IWAE bound; prior: "
        "z ~ p(z), the model's prior, the naive Monte Carlo estimate (docs/design/sampling.md)",
    )


class AnomalyQuery(QueryModel):
    fpr: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="false-positive rate of is_anomaly, at least one "
        "over the reference images (default: the manifest's fpr_default, 0.01 where 100 or more reference images "
        "resolve it)",
    )
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="seed of the noise (default: the calibration's)")
    binarize_seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="seed of the binarisation (default: the calibration's)"
    )
    map: bool = Field(False, description="add each image's anomaly map (per-pixel percentiles) and its heatmap PNG")


class ReconstructQuery(QueryModel):
    format: Literal["png", "json"] = Field(
        "png", description="png: one PNG (a grid when several images were sent); json: one base64 PNG per image"
    )


class DecodeQuery(QueryModel):
    format: Literal["json", "png", "grid"] = Field(
        "json", description="json: base64 PNG per row; png: one PNG (exactly one row); grid: one PNG grid"
    )
    pixels: bool = Field(False, description="json only: include E[x|z] as numbers")


class SampleQuery(QueryModel):
    n: int = Field(16, ge=1, description="number of samples, 1..VAE_MAX_BATCH")
    seed: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="the same seed gives byte-identical output; omitted: a random seed, returned in X-Seed",
    )
    temperature: float = Field(
        1.0,
        gt=0,
        le=10,
        allow_inf_nan=False,
        description="scale of the prior's standard deviation (of each component's, for a mixture prior), 0 < t <= 10",
    )
    format: Literal["png", "json"] = Field(
        "png", description="png: one grid to look at; json: base64 PNG and latents per sample"
    )
