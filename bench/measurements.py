"""Measurements taken once, after the interleaved rounds: one function each, taking the running
benchmark and the results so far and returning a JSON-able dict stored under its name. A new
measurement is a function here, an entry in MEASUREMENTS and its name in a plan (bench/plan.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.plan import MODEL_DIR, Bench, encode_cell
from bench.rounds import summarise_ratios
from bench.servers import Server

def memory(bench: Bench, results: dict[str, Any]) -> dict[str, Any]:
    """Resident memory of each serving process after all rounds, per server."""
    return {name: server.rss_mb() for name, server in bench.servers.items()}


def in_process(bench: Bench, results: dict[str, Any]) -> dict[str, Any]:
    """The compute limit: onnxruntime alone, plus PNG decoding and response serialisation."""
    from model.core.artifact import load_model_dir
    from model.core.preprocess import PreprocessContract, bytes_to_array
    from service.responses import json_response

    pngs = bench.pngs
    model = load_model_dir(MODEL_DIR, threads=1)
    contract = PreprocessContract.from_dict(model.manifest.preprocessing)
    out: dict[str, Any] = {}
    images = np.stack([bytes_to_array(p, contract) for p in pngs])  # (256, C, H, W)
    latents = np.random.default_rng(0).standard_normal((256, model.latent_dim), dtype=np.float32)
    for batch in (1, 16, 256):
        for name, fn, data in (("encoder", model.encode, images), ("decoder", model.decode, latents)):
            out[f"{name}_images_per_s_batch{batch}"] = _rate(lambda f=fn, x=data[:batch]: f(x), batch)
    out["png_decode_us"] = 1e6 / _rate(lambda: bytes_to_array(pngs[0], contract), 1)
    mean, logvar = model.encode(images[:1])
    payload = {"model": {"name": "x", "version": "y"}, "latent_dim": model.latent_dim, "seed": None,
               "results": [{"index": 0, "mean": mean[0].tolist(), "logvar": logvar[0].tolist()}]}
    payload["results"][0].update(mean=mean[0], logvar=logvar[0])
    out["response_serialise_us"] = 1e6 / _rate(lambda: json_response(payload), 1)  # the product's own path
    out["encode_one_image_us"] = 1e6 / out["encoder_images_per_s_batch1"]
    out["work_per_encode_request_us"] = out["png_decode_us"] + out["encode_one_image_us"] + out["response_serialise_us"]
    return out


def _rate(fn: Callable[[], Any], items: int, seconds: float = 0.5) -> float:
    fn()
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        fn()
        count += 1
    return count * items / (time.perf_counter() - began)


def cold_start(bench: Bench, results: dict[str, Any]) -> dict[str, float]:
    """Process start to /readyz 200, and resident memory once ready, of a fresh product server."""
    server = Server("product", MODEL_DIR)
    try:
        seconds = server.wait_ready()
        return {"start_to_ready_s": seconds, "rss_ready_mb": max(server.rss_mb())}
    finally:
        server.stop()


def efficiency(bench: Bench, results: dict[str, Any]) -> dict[str, Any]:
    """Per round: /encode's requests/s at c=32 over the ideal 1 / (ceiling's time per request in
    that round + the in-process work per request)."""
    work_s = results["in_process"]["work_per_encode_request_us"] / 1e6
    product, ceiling = bench.windows[encode_cell("product", 32).key], bench.windows[encode_cell("ceiling", 32).key]
    ideal = [1.0 / (1.0 / c["rps"] + work_s) for c in ceiling]
    return summarise_ratios({"ideal_rps_c32": ideal,
                             "encode_efficiency_c32": [p["rps"] / i for p, i in zip(product, ideal, strict=True)]})


MEASUREMENTS: dict[str, Callable[[Bench, dict[str, Any]], dict[str, Any]]] = {
    "memory": memory, "in_process": in_process, "cold_start": cold_start, "efficiency": efficiency}
WHILE_SERVING = {"memory"}  # measurements that read the running servers; the rest run after they stop
