"""Service configuration: one `Settings`, read from VAE_* environment variables."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BUNDLED_REPOSITORY = Path(__file__).resolve().parent.parent / "artifacts"
BUNDLED_DEFAULT_MODEL = "fashion-mnist-vae"  # the plain routes' model when the bundled repository is served
PREFIX = "VAE_"
# In-flight requests, HTTP and gRPC, get this long after SIGTERM; docker/kubernetes/ allows for it.
GRACEFUL_SHUTDOWN_S = 30
# VAE_* variables that other parts of the project read; the server ignores them without a warning.
# tests/unit/service/test_settings.py checks that every VAE_* name in the repository is here or a setting.
OTHER_VARIABLES = {
    "VAE_DATA_DIR": "vae-train and vae-eval: the dataset directory",
    "VAE_BASE_URL": "the integration tests: run against this server",
    "VAE_GRPC_TARGET": "the integration tests: the gRPC host:port of the server VAE_BASE_URL names",
    "VAE_TEST_MODEL_DIR": "the integration tests: the model directory they serve",
    "VAE_CONTAINER_ENGINE": "the container tests (set by docker/test-image.sh)",
    "VAE_CONTAINER_IMAGE": "the container tests (set by docker/test-image.sh)",
    "VAE_IMAGE": "docker/test-image.sh: the image tag it builds",
    "VAE_BASE_IMAGE": "docker/test-image.sh: the base image",
    "VAE_SOAK_REQUESTS": "tests/integration/test_soak.py: how many requests the soak sends",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    model_repository: Path | None = Field(
        None,
        description="serve every model in DIR/<name>/<version>/ (each "
        "version directory as vae-export writes it); default: the bundled "
        "repository artifacts/",
    )
    model_dir: Path | None = Field(
        None,
        description="serve one directory written by vae-export instead: a "
        "repository of one model, named by its manifest; wins over "
        "VAE_MODEL_REPOSITORY, so an image's repository can be replaced by a mount",
    )
    default_model: str | None = Field(
        None,
        description="the model the plain routes (/encode, /sample, ...) "
        "serve; default: the repository's only model, else fashion-mnist-vae (the "
        "bundled default) when the repository holds it",
    )
    admin_token: SecretStr | None = Field(
        None,
        description="bearer token of the repository control routes (/v2/repository/...); without it they answer 403",
    )
    repository_control: Literal["token", "open"] = Field(
        "token", description="open: the repository control routes work without a token (only for a trusted network)"
    )
    repository_poll_s: float | None = Field(
        None,
        gt=0,
        description="re-scan the repository every this many "
        "seconds and apply what changed; default: only on load requests",
    )
    max_upload_bytes: int = Field(10 * 1024 * 1024, gt=0, description="largest request body accepted")
    max_json_bytes: int = Field(
        262_144,
        gt=0,
        description="largest JSON body (/decode's latents: max_batch x "
        "latent_dim numbers need tens of kB); parsing holds the event loop, so this bounds the stall",
    )
    max_response_bytes: int = Field(
        64 * 1024 * 1024,
        gt=0,
        description="largest response to an inference "
        "request of the open inference protocol or the remote VAE protocol's decode, reckoned before it is "
        "built; over it the request is refused with the sizes to ask for instead",
    )
    max_image_pixels: int = Field(
        4_194_304,
        gt=0,
        description="largest image (width x height) decoded, "
        "checked on the header; 2048x2048 is ample for a model that sees 28x28",
    )
    max_request_pixels: int = Field(
        16_777_216,
        gt=0,
        description="most declared pixels over all of a request's "
        "images, checked on the headers before any is decoded: four full-size images; "
        "64 images at the per-image limit would be a quarter of a billion pixels",
    )
    max_jpeg_scans: int = Field(
        64,
        gt=0,
        le=4096,
        description="most scans in one JPEG; each progressive scan "
        "costs a pass over the image and libjpeg's standard scripts use 6 to 10",
    )
    decode_workers: int = Field(
        2,
        gt=0,
        le=64,
        description="decoder processes for images over the inline size; "
        "processes, not threads, so a decode past its deadline can be killed",
    )
    decode_queue: int = Field(
        32,
        ge=0,
        le=4096,
        description="requests that may wait for a decoder process before more are answered 429 at once",
    )
    decode_timeout_s: float = Field(
        3.0,
        gt=0,
        le=600,
        description="deadline for decoding one request's "
        "images; past it the decoder process is killed and the request gets 422. "
        "The default leaves a wide margin over an image at VAE_MAX_IMAGE_PIXELS",
    )
    decode_inline_bytes: int = Field(
        8192,
        ge=0,
        description="images up to this size in bytes (and "
        "VAE_DECODE_INLINE_PIXELS) decode on the event loop: for a small image, a "
        "round trip to a decoder process costs more CPU and latency than the decode",
    )
    decode_inline_pixels: int = Field(
        16_384,
        ge=0,
        description="images declaring up to this many pixels (and "
        "VAE_DECODE_INLINE_BYTES) decode on the event loop; 128x128 bounds the stall",
    )
    max_batch: int = Field(64, gt=0, le=4096, description="most images or latents in one request")
    max_k: int = Field(5000, gt=0, le=100_000, description="most importance samples for /elbo")
    intra_op_threads: int = Field(1, gt=0, le=256, description="onnxruntime threads per worker")
    execution_provider: Literal["cpu", "cuda"] = Field(
        "cpu",
        description="onnxruntime's execution provider: cuda needs onnxruntime-gpu (a model fails to load without)",
    )
    inference_threads: int = Field(
        2,
        gt=0,
        le=256,
        description="model calls run at once per worker, off the "
        "event loop; more only adds memory (each call holds its activations) on few cores",
    )
    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="uvicorn worker processes; 0: one per CPU the server may use (its CPU affinity, "
        "bounded by a container's CPU quota), at most 64, or one when the repository control routes are on "
        "(VAE_ADMIN_TOKEN, VAE_REPOSITORY_CONTROL=open): each worker holds its own models. The Kubernetes "
        "manifests set 1: one per pod",
    )
    gc_freeze: bool = Field(
        True,
        description="after every model load or unload, collect and freeze what lives on, so that "
        "Python's garbage collector never walks the models again (a shorter tail under load)",
    )
    max_in_flight: int = Field(
        64,
        gt=0,
        description="model calls running or queued per worker before "
        "429 (counted around the model work, not the upload)",
    )
    max_uploads: int = Field(
        128,
        gt=0,
        description="request bodies being received at once per worker before "
        "429; separate from max_in_flight so slow uploads cannot starve the model. "
        "Bounds the bodies in transit to max_uploads x max_upload_bytes",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a request body must arrive within this many "
        "seconds of its headers, else 408: a 10 MiB body then needs 350 kB/s, and a "
        "slow sender holds an upload slot at most this long",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a connection's request line and headers must arrive within this many seconds, else it is closed",
    )
    max_header_bytes: int = Field(16384, gt=0, description="request line and headers, in bytes, before 431")
    max_headers: int = Field(100, gt=0, description="request headers before 431")
    inline_cost: int = Field(
        64,
        ge=0,
        description="model work of at most this many rows (images or latents; "
        "/elbo counts images x (k + 1)) runs on the event loop instead of a worker thread, "
        "where the thread hop would cost more than the work",
    )
    micro_batch: bool = Field(
        True,
        description="coalesce concurrent /encode requests into one onnxruntime "
        "call; on because the interleaved benchmark measured more requests/s with it at "
        "c=32 and c=64 and no worse p99 at c=1 (docs/benchmarks.md)",
    )
    micro_batch_wait_ms: float = Field(
        0.0,
        ge=0,
        le=100,
        description="how long a batch waits for more requests; 0 = only what arrived in the same event-loop tick",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="the least severe level logged; any case"
    )
    log_json: bool = Field(
        False, description="one JSON object per log line (time, level, logger, request_id, message) instead of text"
    )
    access_log: bool = Field(
        False,
        description="one log line per request; off because of its cost per request "
        "(`access_log_cost_us` in bench/results/inprocess.json, from `python -m bench.inprocess`); "
        "metrics count every request anyway",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="JSON list of origins allowed to call the "
        'API from a browser, e.g. ["https://a.example"]; empty: no CORS headers',
    )
    host: str = Field("0.0.0.0", description="bind address")
    port: int = Field(8000, gt=0, lt=65536, description="port; the container's HEALTHCHECK reads it too")
    grpc_port: int = Field(
        8001,
        ge=0,
        lt=65536,
        description="port of the open inference protocol over gRPC (Triton's GRPCInferenceService, as "
        "tritonclient.grpc and KServe's grpc-v2 speak it), on the same address; 0 turns gRPC off. With several "
        "workers each one listens on it (SO_REUSEPORT)",
    )
    grpc_max_concurrent_rpcs: int = Field(
        128,
        gt=0,
        description="gRPC calls being handled at once per worker: past it a call is answered RESOURCE_EXHAUSTED, "
        "and one connection's further calls wait in their client (HTTP/2's stream limit); the model calls among "
        "them are held to VAE_MAX_IN_FLIGHT as over HTTP. Each call being handled holds one of as many threads",
    )
    otlp_endpoint: str | None = Field(
        None,
        description="export OpenTelemetry traces over OTLP/HTTP to this URL (a collector's "
        "http://collector:4318/v1/traces): a span for each request, its image decoding, its model calls and its "
        "response, continuing a W3C traceparent the client sends. Unset: no tracing, at no cost",
    )

    @property
    def control_routes_on(self) -> bool:
        """Whether /v2/repository/... loads and unloads models on request (a token, or open)."""
        return self.admin_token is not None or self.repository_control == "open"

    @property
    def worker_processes(self) -> int:
        """The worker processes to run: VAE_WORKERS; with 0, one per CPU available (at most 64), or one
        when the repository control routes are on: a load or unload must be the whole server's, and
        each worker holds its own models."""
        if self.workers:
            return self.workers
        return 1 if self.control_routes_on else min(64, available_cpus())

    @property
    def cpus_per_worker(self) -> float:
        """The CPUs each worker process has to itself: the CPUs available over the worker processes."""
        return available_cpus() / self.worker_processes

    @field_validator("admin_token", mode="before")
    @classmethod
    def _no_empty_token(cls, value: object) -> object:
        """An empty token (an unset ${VAR} in a compose file, say) would match an empty bearer: treat it
        as no token, so the control routes stay off."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("otlp_endpoint", mode="before")
    @classmethod
    def _no_empty_endpoint(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may run on: its affinity, bounded by a CPU quota (`docker run --cpus`, a
    Kubernetes CPU limit) read from cgroup v2's cpu.max or v1's CFS quota, rounded down, at least 1."""
    count = len(os.sched_getaffinity(0))
    quota = _cpu_quota(cgroup)
    return max(1, min(count, int(quota))) if quota is not None else count


def _cpu_quota(cgroup: Path) -> float | None:
    try:
        limit, period = (cgroup / "cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000" or "150000 100000"
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


class SettingsError(ValueError):
    """Invalid settings: the message names each bad variable and what it must be."""


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [
            f"  VAE_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            if err["loc"]
            else f"  {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        ]
        raise SettingsError("invalid vae-service settings:\n" + "\n".join(lines)) from None


def variable_names() -> list[str]:
    """Every setting's environment variable, in the order of the fields."""
    return [PREFIX + name.upper() for name in Settings.model_fields]


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One warning per VAE_* variable that is neither a setting nor read elsewhere in the project, with
    the closest setting's name: a misspelt variable would otherwise be ignored without a word."""
    known = variable_names()
    warnings = []
    for name in sorted(environ):
        upper = name.upper()  # pydantic-settings matches names in any case
        if not upper.startswith(PREFIX) or upper in known or upper in OTHER_VARIABLES:
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else f"; the settings are {', '.join(known)}"
        warnings.append(f"{name} is not a vae-service setting and is ignored{hint}")
    return warnings
