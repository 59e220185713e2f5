"""The lean app: the least an ASGI app on uvicorn can do to answer /encode with one raw PNG, with the
product's own functions and nothing else. It reads the body, decodes the PNG through the model's
preprocessing contract (model/core/preprocess.py), queues the image for a batch that runs on the event loop
at the end of the tick its first image arrived in (as the product's MicroBatcher does on a worker with one
CPU), runs the encoder, and answers with the product's /encode body (service/responses.py: json_response).

No request ids, limits, metrics of requests, errors in the service's shape or query parameters: what the
hot path of bench/hot_path.py would reach if the service's own Python cost nothing beyond this file's.
It counts its model calls in the product's /metrics names (time in the encoder, calls, images), so that
bench.hot_path reads them as it reads the product's. VAE_MODEL_DIR names the model directory."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import numpy as np

from bench.apps.asgi_floor import lifespan
from bench.measurements import encode_answer
from model.core.artifact import load_model_dir
from model.core.preprocess import PreprocessContract, bytes_to_array
from service.responses import json_response
from service.settings import Settings

MODEL = load_model_dir(os.environ["VAE_MODEL_DIR"], threads=1)
CONTRACT = PreprocessContract.from_dict(MODEL.manifest.preprocessing)
MAX_ROWS = Settings.model_fields["max_batch"].default  # the product's default batch limit


class Batcher:
    """Images queued in one tick of the loop go to the encoder as one batch, on the loop."""

    def __init__(self) -> None:
        self.pending: list[tuple[np.ndarray, asyncio.Future[tuple[np.ndarray, np.ndarray]]]] = []
        self.scheduled = False
        self.seconds, self.calls, self.images = 0.0, 0, 0

    def submit(self, pixels: np.ndarray) -> asyncio.Future[tuple[np.ndarray, np.ndarray]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[np.ndarray, np.ndarray]] = loop.create_future()
        self.pending.append((pixels, future))
        if len(self.pending) >= MAX_ROWS:
            self.flush()
        elif not self.scheduled:
            self.scheduled = True
            loop.call_soon(self.flush)
        return future

    def flush(self) -> None:
        items, self.pending, self.scheduled = self.pending, [], False
        if not items:
            return
        started = time.perf_counter()
        try:
            mean, logvar = MODEL.encode(np.stack([pixels for pixels, _ in items]))
        except Exception as exc:  # every waiting request sees the failure
            for _, future in items:
                future.set_exception(exc)
            return
        self.seconds += time.perf_counter() - started
        self.calls += 1
        self.images += len(items)
        for row, (_, future) in enumerate(items):
            future.set_result((mean[row], logvar[row]))

    def metrics(self) -> bytes:
        """The model-call totals in the names the product's /metrics gives them (bench/hot_path.py reads them)."""
        labels = f'{{model="{MODEL.manifest.name}",operation="encode",version="{MODEL.manifest.version}"}}'
        return (
            f"vae_inference_duration_seconds_sum{labels} {self.seconds!r}\n"
            f"vae_inference_duration_seconds_count{labels} {float(self.calls)!r}\n"
            f"vae_images_processed_total{labels} {float(self.images)!r}\n"
        ).encode()


BATCHER = Batcher()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":  # the model loaded at import
        await lifespan(receive, send)
        return
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    route = (scope["method"], scope["path"])
    if route == ("POST", "/encode"):
        status, kind, body = await encode(chunks[0] if len(chunks) == 1 else b"".join(chunks))
    elif route == ("GET", "/metrics"):
        status, kind, body = 200, b"text/plain; version=0.0.4", BATCHER.metrics()
    elif route == ("GET", "/docs"):  # bench/servers.py's readiness path for an app of bench/apps
        status, kind, body = 200, b"text/plain", b"ready\n"
    else:
        status, kind, body = 404, b"text/plain", b"POST /encode, GET /metrics\n"
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def encode(data: bytes) -> tuple[int, bytes, bytes]:
    try:
        pixels = bytes_to_array(data, CONTRACT)
    except ValueError as exc:
        return 400, b"text/plain", f"{exc}\n".encode()
    mean, logvar = await BATCHER.submit(pixels)
    return 200, b"application/json", json_response(encode_answer(MODEL, mean, logvar)).body
