"""Per-sample cost of decoder shapes in onnxruntime: what IWAE-5000 on the test set pays 50 million
times, and why the default decoder looks as it does (see ModelConfig). And the shipped graphs of every
bundled version side by side (`shipped`): what one importance sample costs each in its own graphs (the
decoder; for a two-level VAE p(x | z1, z2), p(z1 | z2) and q(z1 | x, z2)), in interleaved rounds, each
round's ratio to fashion-mnist-vae 3.1.0's (issue 33's budget: at most 3x).

    python -m bench.decoder_cost   -> bench/results/decoder_cost.json
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from bench.provenance import git_state
from bench.rounds import spread
from bench.run import RESULTS, machine
from bench.servers import REPO
from export.exporter import export_graph
from model.config import ModelConfig
from model.core.artifact import OnnxVAE, load_model_dir, session_options
from model.vae import Decoder

SHAPES = {
    "dense 512-512": ModelConfig(decoder="mlp"),
    "dense -> 8x14x14 -> convT": ModelConfig(decoder="conv", decoder_channels=(8,)),
    "dense -> 16x14x14 -> convT": ModelConfig(decoder="conv", decoder_channels=(16,)),
    "dense -> 32x7x7 -> convT 32->16 -> convT (default)": ModelConfig(decoder="conv", decoder_channels=(32, 16)),
    "dense -> 64x7x7 -> convT 64->32 -> convT": ModelConfig(decoder="conv", decoder_channels=(64, 32)),
}


def us_per_sample(path: Path, latent_dim: int, threads: int, batch: int = 1000, repeats: int = 5) -> float:
    session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    z = np.random.default_rng(0).standard_normal((batch, latent_dim), dtype=np.float32)
    session.run(None, {"z": z})
    began = time.perf_counter()
    for _ in range(repeats):
        session.run(None, {"z": z})
    return (time.perf_counter() - began) / (repeats * batch) * 1e6


REFERENCE = "fashion-mnist-vae 3.1.0"  # the version issue 33's decoder budget is relative to


def shipped_versions(root: Path = REPO / "artifacts") -> dict[str, Path]:
    """Every bundled version directory, by "name version"."""
    return {
        f"{path.parent.parent.name} {path.parent.name}": path.parent for path in sorted(root.glob("*/*/manifest.json"))
    }


def sample_work(model: OnnxVAE, batch: int, seed: int = 0) -> Callable[[], object]:
    """`batch` importance samples' worth of a model's graphs, as scoring runs them: its decoder; for a
    two-level VAE (model/core/hierarchy.py) the decoder of both levels, the lower prior and the lower
    posterior (the image's features are computed once per image, not per sample)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((batch, model.latent_dim), dtype=np.float32)
    levels = model.levels
    if levels is None:
        return lambda: model.decode(z)
    z1 = rng.standard_normal((batch, levels.lower_latent_dim), dtype=np.float32)
    image = np.zeros((1, *model.manifest.input.shape), dtype=np.float32)
    features = np.repeat(levels.encode(image)[2], batch, axis=0)
    return lambda: (levels.decode(z1, z), levels.lower_prior(z), levels.encode_lower(features, z))


def shipped(
    versions: dict[str, Path], rounds: int = 7, batch: int = 1000, threads: int = 1, seed: int = 0
) -> dict[str, Any]:
    """Microseconds per importance sample of each version's graphs: the median of `rounds` interleaved
    rounds (a shuffled order per round), and each round's ratio to REFERENCE's when it is among them."""
    works = {name: sample_work(load_model_dir(path, threads=threads), batch) for name, path in versions.items()}
    for work in works.values():
        work()  # the first run of a session sets its buffers up
    per_round: dict[str, list[float]] = {name: [] for name in works}
    for round_index in range(rounds):
        order = list(works)
        random.Random(seed * 1000 + round_index).shuffle(order)
        for name in order:
            began = time.perf_counter()
            works[name]()
            per_round[name].append((time.perf_counter() - began) / batch * 1e6)
    out: dict[str, Any] = {}
    for name, times in per_round.items():
        out[name] = {"us_per_sample": statistics.median(times), "rounds": times}
        if REFERENCE in per_round:
            out[name][f"vs_{REFERENCE}"] = spread([a / b for a, b in zip(times, per_round[REFERENCE], strict=True)])
    return out


def main() -> None:
    torch.manual_seed(0)
    results: dict[str, Any] = {
        "machine": machine(),
        "git": git_state(),
        "command": "python -m bench.decoder_cost",
        "batch": 1000,
        "shapes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in SHAPES.items():
            path = Path(tmp) / "decoder.onnx"
            export_graph(Decoder(config), torch.randn(2, config.latent_dim), "z", ("logits",), path, {})
            one, two = (us_per_sample(path, config.latent_dim, t) for t in (1, 2))
            results["shapes"][name] = {
                "us_per_sample_1_thread": one,
                "us_per_sample_2_threads": two,
                "iwae_5000_test_set_minutes_2_threads": two * 5000 * 10000 / 1e6 / 60,
            }
            print(f"{name:45s} {one:6.1f} us (1 thread)  {two:6.1f} us (2 threads)")
    results["shipped"] = costs = shipped(shipped_versions())
    for name, figures in costs.items():
        ratio = figures.get(f"vs_{REFERENCE}", {}).get("median", float("nan"))
        print(f"{name:45s} {figures['us_per_sample']:6.1f} us a sample (1 thread), {ratio:.2f}x {REFERENCE}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "decoder_cost.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
