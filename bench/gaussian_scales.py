"""Shared against per-pixel learned sigma for the Gaussian decoder, epoch by epoch, from the training runs'
own test-set records (OUT/metrics.jsonl): bench/results/gaussian_scales.json and the table in
docs/design/gaussian-sigma.md.

    python -m bench.gaussian_scales shared=runs/fashion-mnist-gaussian-shared \
        per_pixel=runs/fashion-mnist-gaussian-per_pixel

Both runs share the schedule (same epochs, learning rates and KL warm-up), so at an equal epoch they are
compared under equal conditions, also when one of them was stopped early. The test ELBO is turned into
the probability of the 8-bit image (the likelihood's dequantisation offset) and bits per dimension.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from model.core.likelihoods import LIKELIHOODS

RESULTS = Path(__file__).resolve().parent / "results"
DIMS = 784  # 1 x 28 x 28 Fashion-MNIST


def eight_bit_curve(records: list[dict], dims: int = DIMS) -> list[dict]:
    """Per epoch: the test ELBO of the 8-bit image in nats, and in bits per dimension."""
    offset = LIKELIHOODS["gaussian"].discrete_offset(dims)
    curve = []
    for record in records:
        elbo = record["test_elbo"] + offset
        curve.append(
            {
                "epoch": record["epoch"],
                "test_elbo_nats": elbo,
                "test_bits_per_dim": -elbo / (dims * math.log(2)),
                "lr": record["lr"],
            }
        )
    return curve


def compare(runs: dict[str, Path]) -> dict:
    curves = {
        name: eight_bit_curve([json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()])
        for name, path in runs.items()
    }
    common = min(len(c) for c in curves.values())
    at = {name: c[common - 1]["test_bits_per_dim"] for name, c in curves.items()}
    return {
        "runs": {name: str(path) for name, path in runs.items()},
        "curves": curves,
        "compared_at_epoch": common,
        "test_bits_per_dim_at_that_epoch": at,
        "better": min(at, key=at.get),
    }


def section(result: dict) -> str:
    names = list(result["curves"])
    rows = [
        "| epoch | " + " | ".join(f"{n.replace('_', '-')} sigma: test -ELBO, bits/dim" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    epochs = max(len(c) for c in result["curves"].values())
    for i in range(epochs):
        cells = [f"{c[i]['test_bits_per_dim']:.3f}" if i < len(c) else "" for c in result["curves"].values()]
        rows.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    at = result["test_bits_per_dim_at_that_epoch"]
    rows += [
        "",
        f"At epoch {result['compared_at_epoch']}, the last both runs reached: "
        + ", ".join(f"{n.replace('_', '-')} {v:.3f}" for n, v in at.items())
        + f" bits/dim; the {result['better'].replace('_', '-')} sigma is shipped. "
        "(`python -m bench.gaussian_scales`, bench/results/gaussian_scales.json)",
        "",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR")
    p.add_argument("--out", type=Path, default=RESULTS / "gaussian_scales.json")
    args = p.parse_args(argv)
    runs = dict(item.split("=", 1) for item in args.runs)
    result = compare({name: Path(path) for name, path in runs.items()})
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(section(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
