"""What `make bench` measures, as data: the servers, the cells, the ratios, the rounds.

Rounds x windows, chosen to fit `make bench` in about 12 minutes on 2 cores: the full plan has 39
cells x 5 rounds x (1 s warm-up + 2 s window) = about 9.75 minutes of load, and the rest of
`make bench` (decoder shapes, in-process costs, cold start, one training epoch) about 2 minutes.
Five rounds give a median that one slow round cannot move, and a range. The quick plan (the CI
guard) measures 2 cells x 5 rounds x (1 s + 2 s), about 35 s with the server starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.provenance import default_model_dir
from bench.rounds import Cell, Ratio
from bench.servers import REPO, Server, ServerSpec

RESULTS = REPO / "bench" / "results"
MODEL_DIR = Path(os.environ.get("VAE_MODEL_DIR") or default_model_dir())
CONCURRENCY = (1, 8, 32, 64)
ENCODE = "encode_1_raw"

SERVERS = {
    "product": ServerSpec("product"),
    "minimal": ServerSpec("minimal"),
    "ceiling": ServerSpec("ceiling"),
    "naive": ServerSpec("naive"),
    "product_2_workers": ServerSpec("product", workers=2),
    "product_no_batch": ServerSpec("product", env={"VAE_MICRO_BATCH": "false"}),
}
PRODUCT_ROUTES = ("encode_16_multipart", "sample_16_png", "elbo_k1", "elbo_k100")
V2_ROUTES = ("v2_encoder_binary", "v2_encoder_json")  # /encode's image over the open inference protocol


def encode_cell(server: str, concurrency: int) -> Cell:
    return Cell(server, ENCODE, concurrency)


FULL_CELLS = (
    *(encode_cell(server, c) for server in ("product", "minimal", "ceiling", "naive") for c in CONCURRENCY),
    *(Cell("product", route, c) for route in PRODUCT_ROUTES for c in CONCURRENCY),
    *(encode_cell("product_2_workers", c) for c in (32, 64)),
    *(encode_cell("product_no_batch", c) for c in (1, 32, 64)),
    *(Cell("product", route, 32) for route in V2_ROUTES),
)
QUICK_RATIOS = {"encode_vs_minimal_c32": Ratio(encode_cell("product", 32), encode_cell("minimal", 32))}
FULL_RATIOS = {
    **QUICK_RATIOS,
    "encode_vs_naive_c32": Ratio(encode_cell("product", 32), encode_cell("naive", 32)),
    "encode_vs_ceiling_c32": Ratio(encode_cell("product", 32), encode_cell("ceiling", 32)),
    "p99_c1_product_vs_naive": Ratio(encode_cell("product", 1), encode_cell("naive", 1), "p99_us"),
    "two_workers_vs_one_c32": Ratio(encode_cell("product_2_workers", 32), encode_cell("product", 32)),
    "two_workers_vs_one_c64": Ratio(encode_cell("product_2_workers", 64), encode_cell("product", 64)),
    "micro_batch_vs_off_c32": Ratio(encode_cell("product", 32), encode_cell("product_no_batch", 32)),
    "micro_batch_vs_off_c64": Ratio(encode_cell("product", 64), encode_cell("product_no_batch", 64)),
    "micro_batch_p99_vs_off_c1": Ratio(encode_cell("product", 1), encode_cell("product_no_batch", 1), "p99_us"),
    "micro_batch_p99_vs_off_c64": Ratio(encode_cell("product", 64), encode_cell("product_no_batch", 64), "p99_us"),
    "v2_binary_vs_encode_c32": Ratio(Cell("product", "v2_encoder_binary", 32), encode_cell("product", 32)),
    "v2_json_vs_encode_c32": Ratio(Cell("product", "v2_encoder_json", 32), encode_cell("product", 32)),
}
QUICK_GUARD = 0.7  # `--quick` fails when the median encode_vs_minimal_c32 falls below this


@dataclass(frozen=True)
class Plan:
    name: str  # the results file: bench/results/<name>.json
    cells: tuple[Cell, ...]
    ratios: dict[str, Ratio]
    measurements: tuple[str, ...]  # keys of bench.measurements.MEASUREMENTS, run after the rounds in order
    rounds: int = 5
    window_s: int = 2  # wrk takes whole seconds
    warmup_s: int = 1
    seed: int = 0


PLANS = {
    "full": Plan(
        "serving",
        FULL_CELLS,
        FULL_RATIOS,
        ("memory", "in_process", "compute_limit", "limit_ratios", "cold_start", "efficiency", "repository"),
    ),
    "quick": Plan("quick", (encode_cell("product", 32), encode_cell("minimal", 32)), QUICK_RATIOS, ()),
}


@dataclass
class Bench:
    """What a measurement may use: the plan, the running servers, the request bodies."""

    plan: Plan
    servers: dict[str, Server]
    pngs: list[bytes]
    routes: dict[str, dict[str, Any]]
    windows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # cell key -> one per round
    others: list[float] = field(default_factory=list)  # CPUs busy with other work before each round
