"""Soak: many mixed requests, good and hostile, against one server; its memory must not grow.

The mix (config as data, `MIX`) covers every model route, multipart batches, and the error paths
(undecodable bytes, a wrong media type, bad parameters, wrong latents). The server's resident
memory is sampled every `sample_every` requests; the result is the least-squares slope of RSS
against requests over the second half of the run (the first half includes allocator warm-up), in
MB per 1,000 requests. A /healthz poller runs throughout and records its worst wait.

    python -m bench.soak [--requests 20000] [--concurrency 16]   # -> bench/results/soak.json

`tests/integration/test_soak.py` runs the same function against a fresh server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.provenance import default_model_dir
from model.core.preprocess import array_to_png

RESULTS = Path(__file__).resolve().parent / "results"
SHIPPED = default_model_dir()


@dataclass(frozen=True)
class Call:
    name: str
    method: str
    path: str
    body: str  # "png", "multipart4", "garbage", "text", "latents", "bad_latents", "none"
    expect: int  # the status class expected: 2 or 4


MIX: tuple[Call, ...] = (
    Call("encode", "POST", "/encode", "png", 2),
    Call("encode_sample", "POST", "/encode?sample=true&seed=3", "png", 2),
    Call("encode_batch", "POST", "/encode", "multipart4", 2),
    Call("elbo_k10", "POST", "/elbo?k=10", "png", 2),
    Call("reconstruct", "POST", "/reconstruct", "png", 2),
    Call("decode", "POST", "/decode", "latents", 2),
    Call("sample", "GET", "/sample?n=4&seed=1", "none", 2),
    Call("model_card", "GET", "/v1/model", "none", 2),
    Call("garbage_image", "POST", "/encode", "garbage", 4),
    Call("wrong_media_type", "POST", "/encode", "text", 4),
    Call("bad_k", "POST", "/elbo?k=0", "png", 4),
    Call("bad_latents", "POST", "/decode", "bad_latents", 4),
    Call("unknown_route", "GET", "/no-such-route", "none", 4),
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def slope_per_1000(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of RSS (MB) against requests, per 1,000 requests."""
    x = np.array([p[0] for p in points], dtype=np.float64)
    y = np.array([p[1] for p in points], dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0:
        return 0.0
    return float(np.polyfit(x, y, 1)[0] * 1000)


def _bodies(latent_dim: int, seed: int = 0) -> dict[str, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    images = [array_to_png(rng.random((1, 28, 28), dtype=np.float32)) for _ in range(4)]
    return {
        "png": {"content": images[0], "headers": {"content-type": "image/png"}},
        "multipart4": {"files": [("file", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]},
        "garbage": {"content": b"\x89PNG\r\n\x1a\n" + bytes(200), "headers": {"content-type": "image/png"}},
        "text": {"content": b"hello", "headers": {"content-type": "text/plain"}},
        "latents": {"json": {"z": rng.standard_normal((2, latent_dim)).round(4).tolist()}},
        "bad_latents": {"json": {"z": [[0.0] * (latent_dim + 1)]}},
        "none": {},
    }


async def _run(base_url: str, pid: int | None, requests: int, concurrency: int, sample_every: int) -> dict[str, Any]:
    # The server closes a connection idle for 5 s (uvicorn's timeout_keep_alive); a client that keeps one as
    # long (httpx's default expiry is also 5 s) races that close and can send a request into a socket being
    # closed, which it sees as a ReadError (RFC 9112 9.6: a client must be ready to retry, or expire first).
    # The soak's client expires idle connections first, so a transport error here is the server's.
    limits = httpx.Limits(
        max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2, keepalive_expiry=2.0
    )
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        latent_dim = (await client.get("/v1/model")).json()["latent_dim"]
        bodies = _bodies(latent_dim)
        statuses: Counter[str] = Counter()
        unexpected: list[str] = []
        transport_errors: list[str] = []
        rss: list[tuple[int, float]] = []
        done = 0
        next_index = 0
        finished = asyncio.Event()
        health_waits: list[float] = []

        async def worker() -> None:
            nonlocal done, next_index
            while next_index < requests:
                call = MIX[next_index % len(MIX)]
                next_index += 1
                try:
                    response = await client.request(call.method, call.path, **bodies[call.body])
                except httpx.TransportError as exc:
                    transport_errors.append(f"{call.name}: {type(exc).__name__}")
                else:
                    statuses[f"{call.name} {response.status_code}"] += 1
                    if response.status_code // 100 != call.expect:
                        unexpected.append(f"{call.name}: {response.status_code} {response.text[:200]}")
                done += 1
                if pid is not None and done % sample_every == 0:
                    rss.append((done, rss_mb(pid)))

        async def health() -> None:
            async with httpx.AsyncClient(base_url=base_url, timeout=10) as probe:
                while not finished.is_set():
                    began = time.perf_counter()
                    await probe.get("/healthz")
                    health_waits.append(time.perf_counter() - began)
                    try:
                        await asyncio.wait_for(finished.wait(), timeout=0.05)
                    except TimeoutError:
                        pass

        began = time.perf_counter()
        if pid is not None:
            rss.append((0, rss_mb(pid)))
        poller = asyncio.create_task(health())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        finished.set()
        await poller
        seconds = time.perf_counter() - began
    second_half = [p for p in rss if p[0] >= requests // 2]
    return {
        "requests": requests,
        "concurrency": concurrency,
        "seconds": round(seconds, 2),
        "requests_per_s": round(requests / seconds, 1),
        "statuses": dict(sorted(statuses.items())),
        "server_errors": sum(n for key, n in statuses.items() if key.split()[-1].startswith("5")),
        "unexpected": unexpected[:20],
        "unexpected_count": len(unexpected),
        "transport_errors": transport_errors[:20],
        "transport_error_count": len(transport_errors),
        "rss_mb": [(n, round(mb, 2)) for n, mb in rss],
        "rss_first_mb": rss[0][1] if rss else None,
        "rss_last_mb": rss[-1][1] if rss else None,
        "rss_slope_mb_per_1000_second_half": round(slope_per_1000(second_half), 4) if rss else None,
        "healthz_max_wait_s": round(max(health_waits), 4) if health_waits else None,
        "healthz_polls": len(health_waits),
    }


def soak(
    base_url: str, pid: int | None, requests: int = 20_000, concurrency: int = 16, sample_every: int = 500
) -> dict[str, Any]:
    return asyncio.run(_run(base_url, pid, requests, concurrency, sample_every))


def main(argv: list[str] | None = None) -> int:
    from bench.provenance import git_state
    from bench.run import machine
    from bench.servers import Server

    p = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--model-dir", default=str(SHIPPED))
    args = p.parse_args(argv)
    server = Server("product", Path(args.model_dir))
    try:
        server.wait_ready()
        result = soak(server.url, server.process.pid, args.requests, args.concurrency)
    finally:
        server.stop()
    result = {"machine": machine(), "git": git_state(), **result}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"soak: {result['requests']} requests in {result['seconds']} s, {result['server_errors']} 5xx, "
        f"{result['transport_error_count']} transport errors, {result['unexpected_count']} unexpected statuses; "
        f"RSS {result['rss_first_mb']:.1f} -> {result['rss_last_mb']:.1f} MB, slope "
        f"{result['rss_slope_mb_per_1000_second_half']} MB per 1000 requests (second half); "
        f"/healthz worst {result['healthz_max_wait_s']} s"
    )
    failed = result["server_errors"] or result["transport_error_count"] or result["unexpected_count"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
