"""What tracing costs a request, in-process as bench/inprocess.py measures: POST /encode on the product
with tracing off (the default), and on the product built with tracing on, for requests whose trace
the client sampled and for requests whose trace it did not. Many short windows in interleaved rounds,
the order rotating per round; each cost is the median of the rounds' differences from "off", so that
drift on a shared machine falls on every variant alike. The spans go to an exporter that drops them:
the cost of making them, not of a collector's network. Also the off path's own cost, timed in a loop.

    python -m bench.tracing_cost [--rounds 100] [--requests 50]   -> bench/results/tracing_cost.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

from bench.inprocess import per_request_us, product_app
from bench.provenance import git_state, model_on_disk
from bench.run import MODEL_DIR, RESULTS, machine, test_pngs

TRACE = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
SAMPLED = (b"traceparent", TRACE + b"-01")
NOT_SAMPLED = (b"traceparent", TRACE + b"-00")  # what a client sampling 1 trace in 10 sends 9 times


def dropping_exporter():
    """A SpanExporter that takes every span and keeps none."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    return Drop()


def off_path_us(app, n: int = 100_000) -> float:
    """What tracing adds to an /encode request when off: the decoder's check (ImageDecoder.decode) and
    the model call's span, the shared no-op (ServedModel.encode), timed in a loop."""
    from service import tracing

    tracing.configure(None)
    served = app.state.vae.resolve()
    began = time.perf_counter()
    for _ in range(n):
        tracing.enabled()
        with served._model_span("encode", 1, batch_size=None):
            pass
    return (time.perf_counter() - began) / n * 1e6


async def rounds(off, on, body: bytes, count: int, requests: int) -> dict[str, list[float]]:
    """Microseconds per request of each variant, one window of `requests` per round. Tracing is per
    process: it is switched on or off before each window, as the variant needs."""
    from service import tracing

    variants = {"off": (off, False, SAMPLED), "on": (on, True, SAMPLED), "on_not_sampled": (on, True, NOT_SAMPLED)}
    names = list(variants)
    windows: dict[str, list[float]] = {name: [] for name in names}
    for index in range(count):
        for name in names[index % 3 :] + names[: index % 3]:
            app, traced, traceparent = variants[name]
            tracing.configure(None, dropping_exporter() if traced else None)
            windows[name].append(await per_request_us(app, body, requests, warm_up=10, extra_headers=(traceparent,)))
    tracing.configure(None)
    return windows


def summary(windows: dict[str, list[float]]) -> dict[str, float]:
    def cost(name: str) -> list[float]:
        return sorted(b - a for a, b in zip(windows["off"], windows[name], strict=True))

    on, not_sampled = cost("on"), cost("on_not_sampled")
    return {
        "off_us": statistics.median(windows["off"]),
        "on_us": statistics.median(windows["on"]),
        "on_not_sampled_us": statistics.median(windows["on_not_sampled"]),
        "on_cost_us": statistics.median(on),
        "on_cost_quartiles_us": statistics.quantiles(on, n=4),
        "not_sampled_cost_us": statistics.median(not_sampled),
        "not_sampled_cost_quartiles_us": statistics.quantiles(not_sampled, n=4),
    }


async def main(count: int, requests: int) -> dict:
    from service import tracing

    body = test_pngs(1)[0]
    on = await product_app(False, dropping_exporter())  # built with tracing on: the tracing middleware is in
    off = await product_app(False)  # built with it off (the default), which turns tracing off again
    assert not tracing.enabled()
    windows = await rounds(off, on, body, count, requests)
    return {
        "machine": machine(),
        "git": git_state(),
        "model": model_on_disk(MODEL_DIR),
        "command": f"python -m bench.tracing_cost --rounds {count} --requests {requests}",
        "rounds": count,
        "requests_per_window": requests,
        **summary(windows),
        "off_path_us": off_path_us(off),
        "windows_us": windows,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench.tracing_cost", description=__doc__)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--requests", type=int, default=50, help="requests per window")
    args = parser.parse_args()
    os.environ.setdefault("VAE_MODEL_DIR", str(MODEL_DIR))
    out = asyncio.run(main(args.rounds, args.requests))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tracing_cost.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k.endswith("_us") and k != "windows_us"}, indent=2))
