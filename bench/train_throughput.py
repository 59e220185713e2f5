"""Training throughput of the default model on Fashion-MNIST: one process with 2 threads against two
DDP processes (`torchrun --standalone --nproc_per_node=2`, gloo) with 1 thread each, and one GPU
where torch sees one. The global batch is the default 128 in every setup.

    python -m bench.train_throughput [--rounds R] [--limit-train N] [--epochs E]
        -> bench/results/train_throughput.json

Every round runs each setup once as a real `vae-train`, in an order shuffled per round with a fixed
seed (as bench/rounds.py does for the servers), so drift on a shared machine falls on every setup
alike. A setup's figure is its last epoch's images/s from OUT/metrics.jsonl: the training steps
only, so process start-up, data loading, the first (warm-up) epoch and the test evaluation are
not in it. Ratios are taken within each round, then summarised as median and range.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.plan import RESULTS
from bench.provenance import git_state
from bench.rounds import spread
from bench.run import machine, write_json
from bench.servers import REPO


@dataclass(frozen=True)
class Setup:
    processes: int
    threads: int  # per process
    device: str = "cpu"

    @property
    def name(self) -> str:
        if self.device == "cuda":
            return f"{self.processes} process x 1 GPU"
        return (
            f"{self.processes} process{'es' * (self.processes > 1)} x {self.threads} thread{'s' * (self.threads > 1)}"
        )


SINGLE, DDP = Setup(processes=1, threads=2), Setup(processes=2, threads=1)
GPU = Setup(processes=1, threads=2, device="cuda")
RATIO = f"{DDP.name} / {SINGLE.name}"


def command(setup: Setup, out: Path, limit_train: int, epochs: int) -> list[str]:
    """The vae-train command line of one setup: plain for one process, under torchrun for more."""
    launcher = (
        [sys.executable, "-m", "model.train"]
        if setup.processes == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={setup.processes}",
            "-m",
            "model.train",
        ]
    )
    return [
        *launcher,
        "--epochs",
        str(epochs),
        "--limit-train",
        str(limit_train),
        "--limit-test",
        "1000",
        "--threads",
        str(setup.threads),
        "--device",
        setup.device,
        "--no-progress",
        "--out",
        str(out),
    ]


def images_per_second(setup: Setup, limit_train: int, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        argv = command(setup, Path(tmp), limit_train, epochs)
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(setup.threads)}
        result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"{setup.name}: `{' '.join(argv)}` exited {result.returncode}:\n{result.stderr[-2000:]}")
        return json.loads((Path(tmp) / "metrics.jsonl").read_text().splitlines()[-1])["images_per_second"]


def summarise(rounds: list[dict[str, float]]) -> dict[str, Any]:
    """Per setup the median and range of its rounds, and the DDP / single ratio taken within each round."""
    setups = {name: {**spread([r[name] for r in rounds]), "rounds": [r[name] for r in rounds]} for name in rounds[0]}
    ratios = [r[DDP.name] / r[SINGLE.name] for r in rounds]
    return {"images_per_second": setups, "ratios": {RATIO: {**spread(ratios), "rounds": ratios}}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="bench.train_throughput", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit-train", type=int, default=12800, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="the last one is measured")
    parser.add_argument("--seed", type=int, default=0, help="of the per-round order")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.epochs < 2 or args.limit_train < 128:
        parser.error("--rounds >= 1, --epochs >= 2 (the first warms up) and --limit-train >= 128 (one global batch)")
    setups = [SINGLE, DDP] + ([GPU] if torch.cuda.is_available() else [])
    load_before = os.getloadavg()  # intra-op threads suffer most from other processes' load: record it
    rounds: list[dict[str, float]] = []
    for index in range(args.rounds):
        order = list(setups)
        random.Random(f"train-throughput:{args.seed}:{index}").shuffle(order)
        measured = {setup.name: images_per_second(setup, args.limit_train, args.epochs) for setup in order}
        rounds.append({setup.name: measured[setup.name] for setup in setups})
        print(
            f"round {index + 1}/{args.rounds}: " + ", ".join(f"{k} {v:.0f} images/s" for k, v in rounds[-1].items()),
            flush=True,
        )
    results = {
        "machine": {
            **machine(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_1_5_15_min": {"before": load_before, "after": os.getloadavg()},
        },
        "git": git_state(),
        "command": "python -m bench.train_throughput " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": "the default (vae-train's defaults), global batch 128",
        "limit_train": args.limit_train,
        "epochs": args.epochs,
        "rounds": args.rounds,
        "setups": {
            s.name: {
                "processes": s.processes,
                "threads_per_process": s.threads,
                "device": s.device,
                "command": " ".join(command(s, Path("OUT"), args.limit_train, args.epochs)[1:]),
            }
            for s in setups
        },
        **summarise(rounds),
    }
    if not torch.cuda.is_available():
        results["gpu_note"] = "no GPU: torch.cuda.is_available() is False, so no GPU figure"
    write_json(RESULTS / "train_throughput.json", results)
    ratio = results["ratios"][RATIO]
    print(f"{RATIO}: {ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f}x)")


if __name__ == "__main__":
    main()


def throughput_section(results: dict[str, Any]) -> str:
    """The docs block (bench/report.py writes it into docs/benchmarks.md): images/s per setup and the ratio,
    medians of the rounds."""
    from bench.report import _spread

    m, git = results["machine"], results["git"]
    load = m.get("load_average_1_5_15_min", {}).get("before")
    lines = [
        f"Measured by `{results['command'].strip()}` on {m['cores']} cores ({m['cpu']}) at commit "
        f"`{(git.get('commit') or 'unknown')[:12]}`: training images/s in the last of {results['epochs']} epochs "
        f"of {results['limit_train']:,} images, {results['model']}; the median of {results['rounds']} interleaved "
        "rounds, (min-max) in brackets"
        + (f"; 1-minute load average before the run {load[0]:.1f}" if load else "")
        + ".",
        "",
        "| setup | images/s |",
        "|---|---|",
    ]
    for name, summary in results["images_per_second"].items():
        lines.append(f"| {name} | {_spread(summary, '.0f')} |")
    for name, summary in results["ratios"].items():
        lines.append(f"| {name} | {_spread(summary, '.2f', 'x')} |")
    if results.get("gpu_note"):
        lines += ["", results["gpu_note"] + "."]
    return "\n".join(lines) + "\n"
