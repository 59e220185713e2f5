"""Measurements taken once, after the interleaved rounds: one function each, taking the running
benchmark and the results so far and returning a JSON-able dict stored under its name. A new
measurement is a function here, an entry in MEASUREMENTS and its name in a plan (bench/plan.py).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.plan import ENCODE, MODEL_DIR, Bench, encode_cell
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
    payload = {
        "model": {"name": "x", "version": "y"},
        "latent_dim": model.latent_dim,
        "seed": None,
        "results": [{"index": 0, "mean": mean[0].tolist(), "logvar": logvar[0].tolist()}],
    }
    payload["results"][0].update(mean=mean[0], logvar=logvar[0])
    out["response_serialise_us"] = 1e6 / _rate(lambda: json_response(payload), 1)  # the product's own path
    out["encode_one_image_us"] = 1e6 / out["encoder_images_per_s_batch1"]
    out["work_per_encode_request_us"] = out["png_decode_us"] + out["encode_one_image_us"] + out["response_serialise_us"]
    return out


def compute_limit(
    pngs: list[bytes], model_dir: Path = MODEL_DIR, batch: int = 32, model: Any = None, seconds: float = 1.0
) -> dict[str, Any]:
    """The per-core compute limit of /encode with one PNG: what one thread must do for each request,
    timed in this process with the product's own functions, and nothing else. Decoding the PNG through
    the model's preprocessing contract, the encoder's share of a batch of `batch` (what micro-batching
    gives at c=32), and the JSON answer's serialisation; the limit is one request per their sum.
    `model`: the loaded model (one intra-op thread), else loaded from `model_dir`; `seconds`: per timing."""
    from model.core.artifact import load_model_dir
    from model.core.preprocess import PreprocessContract, bytes_to_array, image_to_array, open_image
    from service.responses import json_response

    model = model or load_model_dir(model_dir, threads=1)
    contract = PreprocessContract.from_dict(model.manifest.preprocessing)
    images = np.stack([bytes_to_array(p, contract) for p in pngs[:batch]])
    decode_us = 1e6 / _rate(lambda: bytes_to_array(pngs[0], contract), 1, seconds=seconds)
    encode_us = 1e6 / _rate(lambda: model.encode(images), len(images), seconds=seconds)
    mean, logvar = model.encode(images[:1])
    payload = encode_answer(model, mean[0], logvar[0])
    serialise_us = 1e6 / _rate(lambda: json_response(payload), 1, seconds=seconds)
    per_request_us = decode_us + encode_us + serialise_us
    # Pillow's decode, which the product used for every PNG until libspng took the plain ones
    # (model/core/preprocess.py: plain_png): the limit as issue 32 first stated it, for comparison.
    pillow_us = 1e6 / _rate(lambda: image_to_array(open_image(pngs[0], 10**8), contract), 1, seconds=seconds)
    return {
        "png_decode_us": decode_us,
        "png_decode_pillow_us": pillow_us,
        "requests_per_s_with_pillow_decode": 1e6 / (pillow_us + encode_us + serialise_us),
        f"encoder_us_per_image_batch{batch}": encode_us,
        "response_serialise_us": serialise_us,
        "per_request_us": per_request_us,
        "requests_per_s": 1e6 / per_request_us,
        "threads": 1,
    }


def encode_answer(model: Any, mean: np.ndarray, logvar: np.ndarray) -> dict[str, Any]:
    """The product's /encode answer for one image without sampling (service/routes/images.py), from its
    posterior's mean and logvar: what the compute limit serialises and the lean app sends."""
    return {
        "model": {"name": model.manifest.name, "version": model.manifest.version},
        "latent_dim": model.latent_dim,
        "latent_shape": list(model.manifest.latent),
        "seed": None,
        "results": [{"index": 0, "mean": mean, "logvar": logvar}],
    }


def limit_ratios(bench: Bench, results: dict[str, Any]) -> dict[str, Any]:
    """Every server's /encode (one PNG) at c=32 over the per-core compute limit, per round."""
    limit = results["compute_limit"]["requests_per_s"]
    per_round = {
        f"{cell.server}_encode_c32_vs_compute_limit": [w["rps"] / limit for w in bench.windows[cell.key]]
        for cell in bench.plan.cells
        if cell.route == ENCODE and cell.concurrency == 32
    }
    return summarise_ratios(per_round)


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
    return summarise_ratios(
        {"ideal_rps_c32": ideal, "encode_efficiency_c32": [p["rps"] / i for p, i in zip(product, ideal, strict=True)]}
    )


def repository(bench: Bench, results: dict[str, Any], swaps: int = 5, extra_models: int = 3) -> dict[str, Any]:
    """A fresh product server on a temporary repository: the time of a live swap (POST load of a new
    version: loaded, hash-checked and warmed up before it takes traffic), and the resident memory
    each extra model adds. The versions are copies of the bundled model under other names, so they
    cost what a model of its size costs."""
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _copy_version(MODEL_DIR, root, "fashion-mnist-vae", "2.0.0")
        server = Server("product", None, env={"VAE_MODEL_REPOSITORY": str(root), "VAE_REPOSITORY_CONTROL": "open"})
        try:
            server.wait_ready()
            rss = [max(server.rss_mb())]
            swap_s = []
            for i in range(1, swaps + 1):
                _copy_version(MODEL_DIR, root, "fashion-mnist-vae", f"2.0.{i}")
                began = time.perf_counter()
                response = httpx.post(f"{server.url}/v2/repository/models/fashion-mnist-vae/load", timeout=60)
                swap_s.append(time.perf_counter() - began)
                served = httpx.get(f"{server.url}/v1/models/fashion-mnist-vae", timeout=10).json()["model"]
                if response.status_code != 200 or served["version"] != f"2.0.{i}":
                    raise RuntimeError(
                        f"swap to 2.0.{i} failed: {response.status_code} {response.text}; serving {served}"
                    )
            rss_after_swaps = max(server.rss_mb())
            for i in range(extra_models):
                _copy_version(MODEL_DIR, root, f"extra-{i}", "1.0.0")
                response = httpx.post(f"{server.url}/v2/repository/models/extra-{i}/load", timeout=60)
                if response.status_code != 200:
                    raise RuntimeError(f"loading extra-{i} failed: {response.status_code} {response.text}")
                rss.append(max(server.rss_mb()))
        finally:
            server.stop()
    per_model = [b - a for a, b in zip(rss, rss[1:], strict=False)]
    return {
        "swap_s": swap_s,
        "swap_median_s": float(np.median(swap_s)),
        "rss_one_model_mb": rss[0],
        "rss_after_swaps_mb": rss_after_swaps,
        "rss_with_extra_models_mb": rss[1:],
        "rss_per_extra_model_mb": per_model,
        "rss_per_extra_model_median_mb": float(np.median(per_model)),
    }


def _copy_version(source: Path, root: Path, name: str, version: str) -> None:
    """The serving files of `source` (what the image ships: no report, checkpoint or int8 graphs) as
    root/name/version, its manifest renamed to match."""
    target = root / name / version
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("report", "*.pt", "*.int8.onnx"))
    manifest = json.loads((source / "manifest.json").read_text())
    (target / "manifest.json").write_text(json.dumps({**manifest, "name": name, "version": version}))


MEASUREMENTS: dict[str, Callable[[Bench, dict[str, Any]], dict[str, Any]]] = {
    "memory": memory,
    "in_process": in_process,
    "cold_start": cold_start,
    "efficiency": efficiency,
    "repository": repository,
    "compute_limit": lambda bench, results: compute_limit(bench.pngs),
    "limit_ratios": limit_ratios,
}
WHILE_SERVING = {"memory"}  # measurements that read the running servers; the rest run after they stop
