"""Per-sample cost of decoder shapes in onnxruntime: what IWAE-5000 on the test set pays 50 million
times, and why the default decoder looks as it does (see ModelConfig).

    python -m bench.decoder_cost   -> bench/results/decoder_cost.json
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bench.provenance import git_state
from bench.run import RESULTS, machine
from export.exporter import export_graph
from model.config import ModelConfig
from model.core.artifact import session_options
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


def main() -> None:
    torch.manual_seed(0)
    results = {
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
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "decoder_cost.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
