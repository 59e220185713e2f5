"""Per-request cost of the apps in-process: each app driven through a bare ASGI loop, with no
network and no load generator, so framework overhead shows without HTTP noise. Also the
access log's cost. `--profile` prints a cProfile of the product's requests.

    python -m bench.inprocess [--profile]   -> bench/results/inprocess.json
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import pstats
import time

from bench.provenance import git_state, model_on_disk
from bench.run import MODEL_DIR, RESULTS, machine, test_pngs


async def per_request_us(app, body: bytes, n: int, warm_up: int = 200, extra_headers: tuple = ()) -> float:
    """Mean microseconds per POST /encode of `body` with `extra_headers`, after `warm_up` requests."""
    headers = [(b"host", b"bench"), (b"content-type", b"image/png"), (b"content-length", str(len(body)).encode())]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/encode",
        "raw_path": b"/encode",
        "query_string": b"",
        "root_path": "",
        "headers": [*headers, *extra_headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        pass

    for _ in range(warm_up):
        await app(dict(scope), receive, send)
    began = time.perf_counter()
    for _ in range(n):
        await app(dict(scope), receive, send)
    return (time.perf_counter() - began) / n * 1e6


async def product_app(access_log: bool, span_exporter=None):
    """The product on the model; traced into `span_exporter` when one is given (bench/tracing_cost.py)."""
    from service.app import create_app, start
    from service.observability import configure_logging
    from service.settings import Settings

    configure_logging("info", False)
    logging.getLogger("vae").handlers[0].stream = open(os.devnull, "w")  # noqa: SIM115 - the cost, not the terminal
    app = create_app(Settings(model_dir=MODEL_DIR, access_log=access_log), span_exporter=span_exporter)
    await start(app.state.vae)
    return app


async def main(profile: bool, n: int) -> dict:
    os.environ.setdefault("VAE_MODEL_DIR", str(MODEL_DIR))
    from bench.apps.minimal import app as minimal

    body = test_pngs(1)[0]
    product, logged = await product_app(False), await product_app(True)
    results = {
        "machine": machine(),
        "git": git_state(),
        "model": model_on_disk(MODEL_DIR),
        "command": "python -m bench.inprocess",
        "requests": n,
        "minimal_us": await per_request_us(minimal, body, n),
        "product_us": await per_request_us(product, body, n),
        "product_access_log_us": await per_request_us(logged, body, n),
    }
    results["product_over_minimal_us"] = results["product_us"] - results["minimal_us"]
    results["access_log_cost_us"] = results["product_access_log_us"] - results["product_us"]
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        await per_request_us(product, body, n)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench.inprocess", description=__doc__)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    out = asyncio.run(main(args.profile, args.requests))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "inprocess.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: round(v, 1) for k, v in out.items() if k.endswith("_us")}, indent=2))
