"""`make bench`: serving and training benchmarks into bench/results/*.json; `--quick`: the CI guard.

Every server is started once and kept running. The load then comes in rounds: in each round every
cell (server, route, concurrency) gets one short wrk window after a short warm-up, in an order
shuffled per round with a fixed seed (bench/rounds.py). Each cell reports the median and the
spread of its rounds, and every ratio is taken within a round and then summarised the same way,
because absolute numbers drift on a shared machine. wrk (Debian's package) is the load
generator, in its own process. A window with any response of status >= 400 or any socket error
stops the run with exit status 1 and names the cell; no window is designed to get a 429 (the
servers' in-flight limit is raised above the highest concurrency, see bench/servers.py).

`make bench` takes about 12 minutes on 2 cores and `--quick` about 35 s; the rounds and window
lengths, and why, are in bench/plan.py.

A new measurement is one function in bench/measurements.py; a new server, cell or ratio is a line
in bench/plan.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.measurements import MEASUREMENTS, WHILE_SERVING
from bench.plan import ENCODE, MODEL_DIR, PLANS, QUICK_GUARD, RESULTS, SERVERS, Bench, Plan
from bench.provenance import git_state, served_model
from bench.rounds import (
    Cell,
    WindowFailed,
    busy_cpus,
    check_window,
    quiet_report,
    round_order,
    round_ratios,
    summarise_cell,
    summarise_ratios,
)
from bench.servers import REPO, Server

__all__ = ["MODEL_DIR", "RESULTS", "machine", "test_pngs"]  # what bench.inprocess and bench.decoder_cost use


def machine() -> dict[str, Any]:
    import fastapi
    import onnxruntime
    import uvicorn

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "fastapi": fastapi.__version__,
        "uvicorn": uvicorn.__version__,
        "numpy": np.__version__,
        "wrk": _wrk_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _wrk_version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return (out.stdout + out.stderr).split("\n")[0].strip()


def test_pngs(count: int) -> list[bytes]:
    """Real Fashion-MNIST test images when the data is installed, else seeded noise."""
    from model.core.preprocess import array_to_png

    try:
        from model.data import load_dataset

        images = load_dataset("fashion-mnist").test[:count]
    except Exception:
        images = np.random.default_rng(0).random((count, 1, 28, 28)).astype(np.float32)
    return [array_to_png(x) for x in images]


def multipart(files: list[bytes]) -> tuple[bytes, str]:
    boundary = "vaebenchboundary7MA4YWxkTrZu0gW"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{i}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for i, data in enumerate(files)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def v2_encoder_routes(pixels: np.ndarray, model: str) -> dict[str, dict[str, Any]]:
    """The encoder graph over the open inference protocol, as tritonclient.http sends it with no outputs
    named (binary tensor data, every output asked for as binary, no Content-Type: the same bytes as its
    `generate_request_body`) and as JSON tensors; `pixels` (1, C, H, W) is the image /encode gets."""
    path = f"/v2/models/{model}.encoder/infer"
    tensor = {"name": "image", "shape": list(pixels.shape), "datatype": "FP32"}
    binary_input = {**tensor, "parameters": {"binary_data_size": pixels.nbytes}}
    header = json.dumps(
        {"inputs": [binary_input], "parameters": {"binary_data_output": True}}, separators=(",", ":")
    ).encode()
    as_json = json.dumps({"inputs": [{**tensor, "data": pixels.ravel().tolist()}]}).encode()
    return {
        "v2_encoder_binary": {
            "path": path,
            "method": "POST",
            "body": header + pixels.astype("<f4").tobytes(),
            "content_type": "",
            "headers": {"Inference-Header-Content-Length": str(len(header))},
        },
        "v2_encoder_json": {"path": path, "method": "POST", "body": as_json, "content_type": "application/json"},
    }


def first_image(pngs: list[bytes], model_dir: Path) -> tuple[np.ndarray, str]:
    """The first PNG as the model sees it, (1, C, H, W), and the model's name."""
    from model.core.manifest import Manifest
    from model.core.preprocess import PreprocessContract, bytes_to_array

    manifest = Manifest.read(model_dir / "manifest.json")
    return bytes_to_array(pngs[0], PreprocessContract.from_dict(manifest.preprocessing))[None], manifest.name


def routes(pngs: list[bytes], model_dir: Path = MODEL_DIR) -> dict[str, dict[str, Any]]:
    body16, type16 = multipart(pngs[:16])
    return {
        **v2_encoder_routes(*first_image(pngs, model_dir)),
        ENCODE: {"path": "/encode", "method": "POST", "body": pngs[0], "content_type": "image/png"},
        "encode_16_multipart": {"path": "/encode", "method": "POST", "body": body16, "content_type": type16},
        "sample_16_png": {"path": "/sample?n=16&seed=1", "method": "GET", "body": None, "content_type": ""},
        "elbo_k1": {"path": "/elbo?k=1", "method": "POST", "body": pngs[0], "content_type": "image/png"},
        "elbo_k100": {"path": "/elbo?k=100", "method": "POST", "body": pngs[0], "content_type": "image/png"},
    }


def wrk(url: str, concurrency: int, seconds: int, route: dict[str, Any], cpus: str | None = None) -> dict[str, Any]:
    """One wrk run; its summary line (bench/wrk_report.lua) plus requests/s. `cpus`: wrk pinned to those."""
    with tempfile.NamedTemporaryFile(suffix=".body") as handle:
        if route["body"] is not None:
            handle.write(route["body"])
            handle.flush()
        env = {
            **os.environ,
            "WRK_BODY": handle.name if route["body"] is not None else "",
            "WRK_METHOD": route["method"],
            "WRK_CONTENT_TYPE": route["content_type"],
            "WRK_HEADERS": "".join(f"{k}: {v}\n" for k, v in route.get("headers", {}).items()),
        }
        command = [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{seconds}s",
            "--timeout",
            "30s",
            "-s",
            str(REPO / "bench" / "wrk_report.lua"),
            url + route["path"],
        ]
        if cpus is not None:
            command = ["taskset", "-c", cpus, *command]
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return parse_report(out.stdout)


def parse_report(stdout: str) -> dict[str, Any]:
    """wrk's output -> the WRK_JSON summary, with the socket errors summed and requests/s."""
    line = next((line for line in stdout.splitlines() if line.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no WRK_JSON summary line:\n{stdout[-2000:]}")
    stats = json.loads(line[len("WRK_JSON ") :])
    stats["socket_errors"] = sum(stats[f"{kind}_errors"] for kind in ("connect", "read", "write", "timeout"))
    stats["rps"] = stats["requests"] / (stats["duration_us"] / 1e6)
    return stats


def window(bench: Bench, cell: Cell, round_index: int) -> dict[str, Any]:
    """The cell's window in one round, after a warm-up; raises WindowFailed on any failed request."""
    url, route, plan = bench.servers[cell.server].url, bench.routes[cell.route], bench.plan
    stats: dict[str, Any] = {}
    for phase, seconds in (("warm-up", plan.warmup_s), ("window", plan.window_s)):
        if seconds:
            try:
                stats = wrk(url, cell.concurrency, seconds, route)
            except subprocess.CalledProcessError as failed:  # e.g. the server died: no connection at all
                raise WindowFailed(
                    f"{cell.key}, round {round_index + 1}, {phase}: wrk exited with "
                    f"{failed.returncode}: {(failed.stdout + failed.stderr).strip()[-500:]}"
                ) from None
            check_window(cell, round_index, phase, stats)
    return stats


def preflight(bench: Bench) -> None:
    """One request per (server, route) before the rounds: it must be exactly 2xx with a body, which
    also covers the 1xx and 3xx answers that wrk does not count as errors."""
    for server, route_name in sorted({(cell.server, cell.route) for cell in bench.plan.cells}):
        route = bench.routes[route_name]
        headers = {
            **({"Content-Type": route["content_type"]} if route["content_type"] else {}),
            **route.get("headers", {}),
        }
        response = httpx.request(
            route["method"],
            bench.servers[server].url + route["path"],
            content=route["body"],
            headers=headers,
            timeout=30,
        )
        if not 200 <= response.status_code < 300 or not response.content:
            raise WindowFailed(
                f"{server}/{route_name}: the preflight request got {response.status_code} {response.text[:200]!r}"
            )


def run_rounds(bench: Bench) -> list[list[str]]:
    """Every round's windows into bench.windows; returns each round's order of cell keys."""
    plan, orders = bench.plan, []
    for round_index in range(plan.rounds):
        bench.others.append(busy_cpus())  # the servers idle: what else uses the machine
        order = round_order(plan.cells, round_index, plan.seed)
        orders.append([cell.key for cell in order])
        for position, cell in enumerate(order, 1):
            stats = window(bench, cell, round_index)
            bench.windows.setdefault(cell.key, []).append(stats)
            print(
                f"round {round_index + 1}/{plan.rounds} [{position}/{len(order)}] {cell.key}: "
                f"{stats['rps']:.0f} requests/s, p99 {stats['p99_us'] / 1000:.1f} ms",
                flush=True,
            )
    return orders


def targets(results: dict[str, Any]) -> dict[str, bool]:
    """The full run's targets, judged on the medians of the rounds."""
    ratio = lambda name: results["ratios"][name]["median"]  # noqa: E731
    rss = results["memory"]["product"] + results["memory"]["product_2_workers"]
    return {
        "encode >= 0.9x minimal (c32)": ratio("encode_vs_minimal_c32") >= 0.9,
        "v2 binary encoder >= 0.9x /encode (c32)": ratio("v2_binary_vs_encode_c32") >= 0.9,
        "encode >= 2x naive (c32)": ratio("encode_vs_naive_c32") >= 2.0,
        "p99 at c1 <= naive": ratio("p99_c1_product_vs_naive") <= 1.0,
        "start to ready <= 1.5 s": results["cold_start"]["start_to_ready_s"] <= 1.5,
        "RSS per worker <= 200 MB": max(rss) <= 200,
    }


def serving(plan: Plan, command: str) -> dict[str, Any]:
    pngs = test_pngs(256)
    results: dict[str, Any] = {
        "machine": machine(),
        "git": git_state(),
        "command": command,
        "plan": {
            "rounds": plan.rounds,
            "window_s": plan.window_s,
            "warmup_s": plan.warmup_s,
            "seed": plan.seed,
            "cells": len(plan.cells),
        },
    }
    names = sorted({cell.server for cell in plan.cells})
    servers: dict[str, Server] = {}
    bench = Bench(plan, servers, pngs, routes(pngs))
    try:
        for name in names:  # all start together; each is waited on below
            servers[name] = Server.from_spec(SERVERS[name], MODEL_DIR)
        for server in servers.values():
            server.wait_ready()
        results["model"] = served_model(servers["product"].url)
        preflight(bench)
        began = time.monotonic()
        results["order"] = run_rounds(bench)
        results["rounds_wall_s"] = time.monotonic() - began  # against the time budget in bench/plan.py
        results["other_cpus_busy"] = busy = quiet_report(bench.others)
        if not busy["quiet"]:
            print(
                f"bench: WARNING: something else kept {busy['median']:.2f} CPUs busy while the servers were idle "
                "(median of the rounds): these figures share the machine with it",
                file=sys.stderr,
            )
        for name in (m for m in plan.measurements if m in WHILE_SERVING):
            results[name] = MEASUREMENTS[name](bench, results)
    finally:
        for server in servers.values():
            server.stop()
    for name in (m for m in plan.measurements if m not in WHILE_SERVING):
        results[name] = MEASUREMENTS[name](bench, results)
    cells = {cell.key: cell for cell in plan.cells}
    results["cells"] = {
        key: {
            "server": cells[key].server,
            "route": cells[key].route,
            "concurrency": cells[key].concurrency,
            **summarise_cell(windows),
            "windows": windows,
        }
        for key, windows in bench.windows.items()
    }
    results["ratios"] = summarise_ratios(round_ratios(bench.windows, plan.ratios))
    return results


def training_speed() -> dict[str, Any]:
    """One epoch of the default model on Fashion-MNIST with 2 threads."""
    out = Path(tempfile.mkdtemp())
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "model.train",
                "--epochs",
                "1",
                "--threads",
                "2",
                "--no-progress",
                "--out",
                str(out),
            ],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        return {
            "threads": 2,
            "seconds_per_epoch": record["seconds"],
            "images_per_second": record["images_per_second"],
            "command": "vae-train --epochs 1 --threads 2",
        }
    finally:
        shutil.rmtree(out, ignore_errors=True)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Whole or not at all: a failed run never leaves half a results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)


def parse_plan(argv: list[str] | None) -> tuple[Plan, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"CI guard: /encode vs minimal only, fails below {QUICK_GUARD}x"
    )
    parser.add_argument("--rounds", type=int, help="rounds of windows (default: the plan's)")
    parser.add_argument("--window", type=int, help="seconds per measured window (whole seconds)")
    parser.add_argument("--warmup", type=int, help="seconds of warm-up before each window (0: none)")
    parser.add_argument("--seed", type=int, help="seed of the per-round order")
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="directory for the JSON (the docs are regenerated only for bench/results)",
    )
    parser.add_argument("--no-training", action="store_true")
    args = parser.parse_args(argv)
    plan = PLANS["quick" if args.quick else "full"]
    overrides = {
        field: value
        for field, value in (
            ("rounds", args.rounds),
            ("window_s", args.window),
            ("warmup_s", args.warmup),
            ("seed", args.seed),
        )
        if value is not None
    }
    if overrides.get("rounds", 1) < 1 or overrides.get("window_s", 1) < 1 or overrides.get("warmup_s", 0) < 0:
        parser.error("--rounds and --window must be >= 1 and --warmup >= 0")
    return dataclasses.replace(plan, **overrides), args


def main(argv: list[str] | None = None) -> int:
    plan, args = parse_plan(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk is needed (sudo apt-get install wrk)", file=sys.stderr)
        return 2
    command = " ".join(["python -m bench.run", *(sys.argv[1:] if argv is None else argv)])
    try:
        results = serving(plan, command)
    except WindowFailed as failure:
        print(
            f"bench: a window failed, so its numbers would be wrong; no results written.\nbench: {failure}",
            file=sys.stderr,
        )
        return 1
    if not args.quick:
        results["targets_met"] = targets(results)
    write_json(args.results / f"{plan.name}.json", results)
    print(json.dumps({name: round(r["median"], 3) for name, r in results["ratios"].items()}, indent=2))
    if not args.quick and not args.no_training:
        training = {"machine": machine(), "git": git_state(), **training_speed()}
        write_json(args.results / "training.json", training)
        print(json.dumps(training, indent=2))
    if args.quick:
        ratio = results["ratios"]["encode_vs_minimal_c32"]
        if ratio["median"] < QUICK_GUARD:
            print(
                f"bench --quick: /encode fell below {QUICK_GUARD}x the minimal app (median {ratio['median']:.2f}x, "
                f"rounds {ratio['min']:.2f}-{ratio['max']:.2f}x): a hot-path regression",
                file=sys.stderr,
            )
            return 1
    elif args.results.resolve() == RESULTS.resolve():
        from bench.report import update_docs

        update_docs()
    return 0


if __name__ == "__main__":
    sys.exit(main())
