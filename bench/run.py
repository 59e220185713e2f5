"""`make bench`: serving and training benchmarks into bench/results/*.json; `--quick`: the CI guard.

Every target is a ratio between figures measured in this one run, because absolute numbers drift
on a shared machine. The load generator is wrk (Debian's package), a separate process.
"""

from __future__ import annotations

import argparse
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

import numpy as np

from bench.servers import REPO, Server

RESULTS = REPO / "bench" / "results"
MODEL_DIR = Path(os.environ.get("VAE_MODEL_DIR", REPO / "artifacts" / "fashion-mnist"))
CONCURRENCY = (1, 8, 32, 64)


def machine() -> dict[str, Any]:
    import fastapi
    import onnxruntime
    import uvicorn

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__,
            "numpy": np.__version__, "wrk": _wrk_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _wrk_version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return (out.stdout + out.stderr).split("\n")[0].strip()


def test_pngs(count: int) -> list[bytes]:
    """Real Fashion-MNIST test images when the data is installed, else seeded noise."""
    from model.preprocess import array_to_png

    try:
        from model.data import load_dataset

        images = load_dataset("fashion-mnist").test[:count]
    except Exception:
        images = np.random.default_rng(0).random((count, 1, 28, 28)).astype(np.float32)
    return [array_to_png(x) for x in images]


def multipart(files: list[bytes]) -> tuple[bytes, str]:
    boundary = "vaebenchboundary7MA4YWxkTrZu0gW"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{i}.png"\r\n'
             f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n" for i, data in enumerate(files)]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def wrk(url: str, concurrency: int, seconds: float, method: str = "GET", body: bytes | None = None,
        content_type: str = "", warmup: float = 1.0) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".body") as handle:
        if body is not None:
            handle.write(body)
            handle.flush()
        env = {**os.environ, "WRK_BODY": handle.name if body is not None else "", "WRK_METHOD": method,
               "WRK_CONTENT_TYPE": content_type}
        script = str(REPO / "bench" / "wrk_report.lua")
        base = ["wrk", "-t1", f"-c{concurrency}", "--timeout", "30s", "-s", script]
        if warmup:
            subprocess.run([*base, f"-d{int(warmup)}s", url], env=env, capture_output=True, check=True)
        out = subprocess.run([*base, f"-d{int(seconds)}s", url], env=env, capture_output=True, text=True, check=True)
    line = next(l for l in out.stdout.splitlines() if l.startswith("WRK_JSON "))
    stats = json.loads(line[len("WRK_JSON "):])
    stats["rps"] = stats["requests"] / (stats["duration_us"] / 1e6)
    stats.update(concurrency=concurrency, seconds=seconds)
    return stats


def routes(pngs: list[bytes]) -> dict[str, dict[str, Any]]:
    body16, type16 = multipart(pngs[:16])
    return {
        "encode_1_raw": {"path": "/encode", "method": "POST", "body": pngs[0], "content_type": "image/png"},
        "encode_16_multipart": {"path": "/encode", "method": "POST", "body": body16, "content_type": type16},
        "sample_16_png": {"path": "/sample?n=16&seed=1", "method": "GET", "body": None, "content_type": ""},
        "elbo_k1": {"path": "/elbo?k=1", "method": "POST", "body": pngs[0], "content_type": "image/png"},
        "elbo_k100": {"path": "/elbo?k=100", "method": "POST", "body": pngs[0], "content_type": "image/png"},
    }


def load(server: Server, route: dict[str, Any], concurrency: int, seconds: float) -> dict[str, Any]:
    return wrk(server.url + route["path"], concurrency, seconds, route["method"], route["body"],
               route["content_type"])


def in_process(pngs: list[bytes]) -> dict[str, Any]:
    """The compute limit: onnxruntime alone, plus PNG decoding and response serialisation."""
    from model.preprocess import PreprocessContract, bytes_to_array
    from service.responses import json_response
    from service.runtime import load_model_dir

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


def _rate(fn, items: int, seconds: float = 0.5) -> float:
    fn()
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        fn()
        count += 1
    return count * items / (time.perf_counter() - began)


def cold_start() -> dict[str, float]:
    """Process start to /readyz 200, and resident memory once ready and after load."""
    server = Server("product", MODEL_DIR)
    try:
        seconds = server.wait_ready()
        return {"start_to_ready_s": seconds, "rss_ready_mb": max(server.rss_mb())}
    finally:
        server.stop()


def training_speed() -> dict[str, Any]:
    """One epoch of the default model on Fashion-MNIST with 2 threads."""
    out = Path(tempfile.mkdtemp())
    try:
        subprocess.run([sys.executable, "-m", "model.train", "--epochs", "1", "--threads", "2", "--no-progress",
                        "--out", str(out)], cwd=REPO, check=True, capture_output=True)
        record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        return {"threads": 2, "seconds_per_epoch": record["seconds"], "images_per_second": record["images_per_second"],
                "command": "vae-train --epochs 1 --threads 2"}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def serving(quick: bool) -> dict[str, Any]:
    pngs = test_pngs(256)
    table = routes(pngs)
    seconds = 4.0 if quick else 6.0
    results: dict[str, Any] = {"machine": machine(), "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
                               "window_s": seconds, "warmup_s": 1.0}
    encode = table["encode_1_raw"]
    comparison = ("product", "minimal") if quick else ("product", "minimal", "ceiling", "naive")
    levels = (32,) if quick else CONCURRENCY
    runs: dict[str, dict[str, Any]] = {}
    for kind in comparison:
        server = Server(kind, MODEL_DIR)
        try:
            server.wait_ready()
            for c in levels:
                runs.setdefault(kind, {})[f"encode_1_raw_c{c}"] = load(server, encode, c, seconds)
            if kind == "product" and not quick:
                for name, route in table.items():
                    for c in CONCURRENCY:
                        if name != "encode_1_raw":
                            runs[kind][f"{name}_c{c}"] = load(server, route, c, seconds)
                runs[kind]["rss_after_load_mb"] = server.rss_mb()
        finally:
            server.stop()
    if not quick:
        server = Server("product", MODEL_DIR, workers=2)
        try:
            server.wait_ready()
            time.sleep(1.0)  # both workers up
            runs["product_2_workers"] = {f"encode_1_raw_c{c}": load(server, encode, c, seconds) for c in (32, 64)}
            runs["product_2_workers"]["rss_per_worker_mb"] = server.rss_mb()
        finally:
            server.stop()
        server = Server("product", MODEL_DIR, env={"VAE_MICRO_BATCH": "true"})
        try:
            server.wait_ready()
            runs["product_micro_batch"] = {f"encode_1_raw_c{c}": load(server, encode, c, seconds) for c in (1, 32, 64)}
        finally:
            server.stop()
        results["in_process"] = in_process(pngs)
        results["cold_start"] = cold_start()
    results["runs"] = runs
    results["ratios"] = ratios(results, quick)
    return results


def ratios(results: dict[str, Any], quick: bool) -> dict[str, Any]:
    runs = results["runs"]
    rps = lambda kind, c=32: runs[kind][f"encode_1_raw_c{c}"]["rps"]  # noqa: E731
    out: dict[str, Any] = {"encode_vs_minimal_c32": rps("product") / rps("minimal")}
    if quick:
        return out
    ceiling_time = 1.0 / rps("ceiling")
    work = results["in_process"]["work_per_encode_request_us"] / 1e6
    ideal = 1.0 / (ceiling_time + work)
    out.update({
        "encode_vs_naive_c32": rps("product") / rps("naive"),
        "encode_vs_ceiling_c32": rps("product") / rps("ceiling"),
        "encode_efficiency_c32": rps("product") / ideal,
        "ideal_rps_c32": ideal,
        "p99_c1_product_vs_naive": runs["product"]["encode_1_raw_c1"]["p99_us"] / runs["naive"]["encode_1_raw_c1"]["p99_us"],
        "two_workers_vs_one_c32": runs["product_2_workers"]["encode_1_raw_c32"]["rps"] / rps("product"),
        "two_workers_vs_one_c64": runs["product_2_workers"]["encode_1_raw_c64"]["rps"] / rps("product", 64),
        "micro_batch_vs_off_c32": runs["product_micro_batch"]["encode_1_raw_c32"]["rps"] / rps("product"),
        "micro_batch_vs_off_c64": runs["product_micro_batch"]["encode_1_raw_c64"]["rps"] / rps("product", 64),
        "micro_batch_p99_vs_off_c1": runs["product_micro_batch"]["encode_1_raw_c1"]["p99_us"]
        / runs["product"]["encode_1_raw_c1"]["p99_us"],
        "micro_batch_p99_vs_off_c64": runs["product_micro_batch"]["encode_1_raw_c64"]["p99_us"]
        / runs["product"]["encode_1_raw_c64"]["p99_us"],
    })
    targets = {
        "encode >= 0.9x minimal (c32)": out["encode_vs_minimal_c32"] >= 0.9,
        "encode >= 2x naive (c32)": out["encode_vs_naive_c32"] >= 2.0,
        "p99 at c1 <= naive": out["p99_c1_product_vs_naive"] <= 1.0,
        "start to ready <= 1.5 s": results["cold_start"]["start_to_ready_s"] <= 1.5,
        "RSS per worker <= 200 MB": max(runs["product"]["rss_after_load_mb"] + runs["product_2_workers"]
                                        ["rss_per_worker_mb"]) <= 200,
    }
    out["targets_met"] = targets
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI guard: /encode vs minimal only, fails below 0.7x")
    parser.add_argument("--no-training", action="store_true")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk is needed (sudo apt-get install wrk)", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = serving(args.quick)
    name = "quick" if args.quick else "serving"
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["ratios"], indent=2))
    if not args.quick and not args.no_training:
        training = {"machine": machine(), **training_speed()}
        (RESULTS / "training.json").write_text(json.dumps(training, indent=2) + "\n")
        print(json.dumps(training, indent=2))
    if args.quick and results["ratios"]["encode_vs_minimal_c32"] < 0.7:
        print("bench --quick: /encode fell below 0.7x the minimal app: a hot-path regression", file=sys.stderr)
        return 1
    if not args.quick:
        from bench.report import update_readme

        update_readme()
    return 0


if __name__ == "__main__":
    sys.exit(main())
