"""`python -m tests.unit.model.train_with_hooks [--pause-at EPOCH:STEP] [--trace-weights DIR] -- FLAGS`: a real
vae-train process (FLAGS are vae-train's; torchrun can start it too) run with test hooks (`model.trainer.TrainHooks`)
passed in, so production code reads no test-only settings from the environment."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.train import main as train_main
from model.trainer import TrainHooks


def parse_hooks(argv: list[str]) -> tuple[TrainHooks, list[str]]:
    """The hooks before `--`, and vae-train's flags after it."""
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(prog="train_with_hooks")
    p.add_argument("--pause-at", default=None, help="EPOCH:STEP (epoch from 1, step from 0)")
    p.add_argument("--trace-weights", type=Path, default=None, help="directory for each rank's weight hashes")
    args = p.parse_args(argv[:split])
    pause_at = tuple(int(part) for part in args.pause_at.split(":")) if args.pause_at else None
    return TrainHooks(pause_at=pause_at, trace_weights=args.trace_weights), argv[split + 1 :]  # type: ignore[arg-type]


if __name__ == "__main__":
    hooks, flags = parse_hooks(sys.argv[1:])
    sys.exit(train_main(flags, hooks=hooks))
