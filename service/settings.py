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
    max_json_bytes: int = Field(262_144, gt=0, description="largest JSON body (/decode's latents: max_batch x "
                                "latent_dim numbers need tens of kB); parsing holds the event loop, ~2 ms per 256 kB")
    max_image_pixels: int = Field(16_777_216, gt=0, description="largest image (width x height) decoded")
    max_batch: int = Field(64, gt=0, le=4096, description="most images or latents in one request")
    max_k: int = Field(5000, gt=0, le=100_000, description="most importance samples for /elbo")
    intra_op_threads: int = Field(1, gt=0, le=256, description="onnxruntime threads per worker")
    inference_threads: int = Field(2, gt=0, le=256, description="model calls run at once per worker, off the "
                                   "event loop; more only adds memory (each call holds its activations) on few cores")
    workers: int = Field(1, gt=0, le=64, description="uvicorn worker processes")
    max_in_flight: int = Field(64, gt=0, description="concurrent requests per worker before 429")
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
