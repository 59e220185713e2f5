"""Service configuration: one `Settings`, read from VAE_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent.parent / "artifacts" / "fashion-mnist"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VAE_", extra="ignore", frozen=True)

    model_dir: Path = Field(BUNDLED_MODEL_DIR, description="directory written by vae-export")
    max_upload_bytes: int = Field(10 * 1024 * 1024, gt=0, description="largest request body accepted")
    max_image_pixels: int = Field(16_777_216, gt=0, description="largest image (width x height) decoded")
    max_batch: int = Field(64, gt=0, le=4096, description="most images or latents in one request")
    max_k: int = Field(5000, gt=0, le=100_000, description="most importance samples for /elbo")
    intra_op_threads: int = Field(1, gt=0, le=256, description="onnxruntime threads per worker")
    inference_threads: int = Field(2, gt=0, le=256, description="model calls run at once per worker, off the "
                                   "event loop; more only adds memory (each call holds its activations) on few cores")
    workers: int = Field(1, gt=0, le=64, description="uvicorn worker processes")
    max_in_flight: int = Field(64, gt=0, description="model calls running or queued per worker before "
                               "429 (counted around the model work, not the upload)")
    max_uploads: int = Field(128, gt=0, description="request bodies being received at once per worker before "
                             "429; separate from max_in_flight so slow uploads cannot starve the model. "
                             "Bounds the bodies in transit to max_uploads x max_upload_bytes")
    body_timeout_s: float = Field(30.0, gt=0, description="a request body must arrive within this many "
                                  "seconds of its headers, else 408: a 10 MiB body then needs 350 kB/s, and a "
                                  "slow sender holds an upload slot at most this long")
    header_timeout_s: float = Field(10.0, gt=0, description="a connection's request line and headers must "
                                    "arrive within this many seconds, else it is closed")
    max_header_bytes: int = Field(16384, gt=0, description="request line and headers, in bytes, before 431")
    max_headers: int = Field(100, gt=0, description="request headers before 431")
    inline_cost: int = Field(64, ge=0, description="decoder/encoder rows below which inference runs on "
                             "the event loop instead of a worker thread (the thread hop costs more)")
    micro_batch: bool = Field(False, description="coalesce concurrent /encode requests into one onnxruntime "
                              "call; a request alone in flight skips it. Off: two runs disagreed on its effect "
                              "(README, Benchmarks)")
    micro_batch_wait_ms: float = Field(0.0, ge=0, le=100, description="how long a batch waits for more "
                                       "requests; 0 = only what arrived in the same event-loop tick")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = False
    access_log: bool = Field(False, description="one log line per request; off by default because it cost "
                             "24-36 us a request on /encode, `python -m bench.inprocess`; metrics count every request anyway")
    cors_origins: list[str] = Field(default_factory=list)
    host: str = "0.0.0.0"
    port: int = Field(8000, gt=0, lt=65536)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class SettingsError(ValueError):
    """Invalid settings: the message names each bad variable and what it must be."""


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [f"  VAE_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()]
        raise SettingsError("invalid vae-service settings:\n" + "\n".join(lines)) from None
