"""Cost at size of the bundled latent-diffusion autoencoder (`fashion-mnist-autoencoderkl`): its ONNX graphs are
fully convolutional, so the remote VAE protocol may send any multiple of the downsampling, and the work grows with
the pixels. Encode and decode time per image, and the first call's peak memory, at 28 to 512 px, in onnxruntime
on CPU.

    python -m bench.autoencoder_cost   -> bench/results/autoencoder_cost.json

Time: every (graph, size, batch) cell gets one window per round, in an order shuffled per round with a fixed
seed, so drift on a shared machine falls on every cell alike; a window repeats its call until it has run for
at least WINDOW_SECONDS, and each cell reports the median (and range) of its rounds' milliseconds per image.
Memory: each cell in a fresh process (onnxruntime keeps its arena between calls, so a process that has run
512 px would hide the cost of 256): the growth of the process's peak resident set over one call, from just before
it (the session loaded and the input made) to just after: VmHWM in /proc/self/status, reset to the current
resident set just before the call (`5` written to /proc/self/clear_refs). Not tracemalloc, which cannot see
onnxruntime's own allocations, nor `ru_maxrss`, which a child process starts with from its parent.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench.provenance import REPO, default_model_dir, git_state, model_on_disk
from bench.run import RESULTS, machine
from model.core.artifact import load_model_dir, session_options
from model.core.manifest import Manifest

MODEL_ROOT = REPO / "artifacts" / "fashion-mnist-autoencoderkl"
SIZES = (28, 64, 128, 256, 512)
BATCHES = (1, 4)
# The mid blocks' self-attention runs over every latent position: at 512 px (a 128 x 128 latent) its score matrix
# alone is 1 GiB per image, and a batch of 4 at 512 px took more than this 24 GB machine has (killed by the kernel).
MAX_BATCHED_SIZE = 256
GRAPHS = ("encode", "decode")
ROUNDS = 5
WINDOW_SECONDS = 0.25
THREADS = 1  # the service's default onnxruntime threads per worker (VAE_INTRA_OP_THREADS)
SEED = 0


@dataclass(frozen=True)
class Cell:
    graph: str  # "encode": image -> mean, logvar; "decode": latent -> image
    size: int  # square image side in pixels (the latent is size / downsample)
    batch: int

    @property
    def key(self) -> str:
        return f"{self.graph}/{self.size}px/b{self.batch}"


def cells() -> list[Cell]:
    return [Cell(g, s, b) for g in GRAPHS for s in SIZES for b in BATCHES if b == 1 or s <= MAX_BATCHED_SIZE]


def attention_scores_mib(manifest: Manifest, cell: Cell) -> float:
    """The size of one attention score matrix (batch x positions^2 float32) at the cell's latent size."""
    assert manifest.diffusion is not None
    positions = (cell.size // manifest.diffusion.downsample) ** 2
    return cell.batch * positions**2 * 4 / 2**20


def feed(manifest: Manifest, cell: Cell) -> dict[str, np.ndarray]:
    """A seeded input for the cell's graph, under the graph's own input name: an image in [-1, 1], or a latent."""
    rng = np.random.default_rng([SEED, cell.size, cell.batch])
    channels = manifest.input.shape[0]
    if cell.graph == "encode":
        image = rng.uniform(-1, 1, (cell.batch, channels, cell.size, cell.size)).astype(np.float32)
        return {manifest.io.encoder.image: image}
    assert manifest.diffusion is not None and manifest.latent_shape is not None, "not a spatial autoencoder"
    side = cell.size // manifest.diffusion.downsample
    latent = rng.standard_normal((cell.batch, manifest.latent_shape[0], side, side)).astype(np.float32)
    return {manifest.io.decoder.z: latent}


def calls_per_window(session: ort.InferenceSession, inputs: dict[str, np.ndarray]) -> int:
    """How many calls make a window of at least WINDOW_SECONDS, from one warm call's time."""
    session.run(None, inputs)
    began = time.perf_counter()
    session.run(None, inputs)
    return max(1, int(np.ceil(WINDOW_SECONDS / max(time.perf_counter() - began, 1e-6))))


def window_ms_per_image(session: ort.InferenceSession, inputs: dict[str, np.ndarray], calls: int, batch: int) -> float:
    began = time.perf_counter()
    for _ in range(calls):
        session.run(None, inputs)
    return (time.perf_counter() - began) / (calls * batch) * 1e3


def timings(model_dir: Path, rounds: int, threads: int) -> dict[str, Any]:
    model = load_model_dir(model_dir, threads=threads)  # hash-checked, as the service loads it
    sessions = {"encode": model.encoder, "decode": model.decoder}
    inputs = {c: feed(model.manifest, c) for c in cells()}
    calls = {c: calls_per_window(sessions[c.graph], inputs[c]) for c in cells()}
    windows: dict[Cell, list[float]] = {c: [] for c in cells()}
    for round_index in range(rounds):
        order = cells()
        random.Random(f"autoencoder-cost:{SEED}:{round_index}").shuffle(order)
        for c in order:
            windows[c].append(window_ms_per_image(sessions[c.graph], inputs[c], calls[c], c.batch))
        print(f"round {round_index + 1}/{rounds} done", flush=True)
    return {
        c.key: {
            "graph": c.graph,
            "size": c.size,
            "batch": c.batch,
            "calls_per_window": calls[c],
            "ms_per_image_median": statistics.median(windows[c]),
            "ms_per_image_min": min(windows[c]),
            "ms_per_image_max": max(windows[c]),
            "ms_per_image_rounds": windows[c],
        }
        for c in cells()
    }


def status_kib(*fields: str) -> dict[str, int]:
    """Fields of /proc/self/status in KiB, read at one instant: VmRSS (the resident set now), VmHWM (its peak,
    never below VmRSS in the same read; two reads apart would let the other threads' allocations in between)."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            found[name] = int(value.split()[0])
    missing = [field for field in fields if field not in found]
    if missing:
        raise RuntimeError(f"/proc/self/status has no {', '.join(missing)}")
    return found


def reset_peak() -> None:
    """Set the peak resident set (VmHWM) to the current one (Linux 4.0 and later)."""
    Path("/proc/self/clear_refs").write_text("5")


def one_cell_memory(model_dir: Path, cell: Cell, threads: int) -> dict[str, Any]:
    """In this (fresh) process: the cell's graph alone, loaded, its input made, then one call."""
    manifest = Manifest.read(model_dir / "manifest.json")
    graph = manifest.encoder if cell.graph == "encode" else manifest.decoder
    session = ort.InferenceSession(
        str(model_dir / graph.file), session_options(threads), providers=["CPUExecutionProvider"]
    )
    inputs = feed(manifest, cell)
    reset_peak()
    before = status_kib("VmRSS")["VmRSS"]
    outputs = session.run(None, inputs)
    now = status_kib("VmHWM", "VmRSS")
    peak, after = now["VmHWM"], now["VmRSS"]
    return {
        "attention_scores_mib": attention_scores_mib(manifest, cell),
        "rss_before_mib": before / 1024,
        "peak_growth_mib": (peak - before) / 1024,
        "rss_kept_mib": (after - before) / 1024,
        "input_mib": sum(a.nbytes for a in inputs.values()) / 2**20,
        "output_mib": sum(np.asarray(a).nbytes for a in outputs) / 2**20,
    }


def memory(model_dir: Path, threads: int) -> dict[str, Any]:
    """Each batch-1 and batch-4 cell's first call, each in its own `python -m bench.autoencoder_cost --one-cell`."""
    results = {}
    for c in cells():
        command = [sys.executable, "-m", "bench.autoencoder_cost", "--model-dir", str(model_dir)]
        command += ["--threads", str(threads), "--one-cell", c.graph, str(c.size), str(c.batch)]
        out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout
        measured = json.loads(out.splitlines()[-1])
        results[c.key] = {"graph": c.graph, "size": c.size, "batch": c.batch, **measured}
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.autoencoder_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=None, help=f"default: the newest version in {MODEL_ROOT}")
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--threads", type=int, default=THREADS, help="onnxruntime intra-op threads")
    p.add_argument("--out", type=Path, default=RESULTS / "autoencoder_cost.json")
    p.add_argument("--one-cell", nargs=3, metavar=("GRAPH", "SIZE", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    model_dir = args.model_dir or default_model_dir(MODEL_ROOT)
    if args.one_cell:
        graph, size, batch = args.one_cell
        print(json.dumps(one_cell_memory(model_dir, Cell(graph, int(size), int(batch)), args.threads)))
        return
    began = time.perf_counter()
    manifest = Manifest.read(model_dir / "manifest.json")
    command = "python -m bench.autoencoder_cost" + (f" --model-dir {args.model_dir}" if args.model_dir else "")
    results: dict[str, Any] = {
        "command": command + (f" --rounds {args.rounds}" if args.rounds != ROUNDS else ""),
        "machine": machine(),
        "git": git_state(),
        "model": {**model_on_disk(model_dir), "latent_shape": manifest.latent_shape},
        "provider": "CPUExecutionProvider",
        "threads": args.threads,
        "rounds": args.rounds,
        "window_seconds": WINDOW_SECONDS,
        "time_measure": "median over rounds of a window's wall time / (calls x batch), in ms per image",
        "memory_measure": "peak resident set (VmHWM, /proc/self/status, reset by /proc/self/clear_refs) during one "
        "call in a fresh process, minus the resident set just before it (graph loaded, input made); rss_kept: the "
        "resident set after the call minus before (what onnxruntime's arena keeps)",
        "cells_left_out": f"batch 4 above {MAX_BATCHED_SIZE} px: its memory (see attention_scores_mib)",
        "memory": memory(model_dir, args.threads),
        "timing": timings(model_dir, args.rounds, args.threads),
    }
    results["seconds"] = time.perf_counter() - began
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for key, t in results["timing"].items():
        growth = results["memory"][key]["peak_growth_mib"]
        print(f"{key:20s} {t['ms_per_image_median']:9.3f} ms/image   peak +{growth:.1f} MiB")


if __name__ == "__main__":
    main()
