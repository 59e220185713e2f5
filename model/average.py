"""`vae-average`: one checkpoint whose weights are the mean of several epochs of one run (stochastic
weight averaging, Izmailov et al. 2018): late in training the weights wander around an optimum at the
scale of the learning rate's noise, and their mean sits nearer its centre than any one of them. The
result is a checkpoint like any other for vae-eval and vae-export; it records what it averaged."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from model import checkpoint
from model.config import ModelConfig, TrainConfig
from model.core import likelihoods
from model.core.preprocess import PreprocessContract
from model.data import DataChecksumError, DataMissingError, load_dataset, sha256_file
from model.train import evaluate_validation, validation_split
from model.vae import VAE

# Cleared in the average: there is no optimizer or noise state to resume it with. Its history
# (metrics, best_test_elbo) stays the newest input's: the run it was averaged from.
TRAINING_STATE = ("optimizer_state", "scheduler_state", "rng_state", "rank_rng_states")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="vae-average", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("checkpoints", nargs="+", help="checkpoints of one run (vae-train --keep-epochs writes them)")
    p.add_argument("--out", required=True, help="the averaged checkpoint")
    p.add_argument(
        "--no-validate",
        action="store_true",
        help="skip scoring the average and the newest input on the run's validation split",
    )
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def check_one_run(payloads: list[dict[str, Any]]) -> None:
    """Refuse anything but two or more distinct epochs of one run. One run is told by its history, not its
    flags: each epoch's recorded history is the start of every later one's (`--resume` carries it over,
    whatever --threads it is given), which a fresh run into the same folder does not continue."""
    if len(payloads) < 2:
        raise ValueError("give two or more checkpoints: the average of one is itself")
    ordered = sorted(payloads, key=lambda payload: payload["epoch"])
    epochs = [payload["epoch"] for payload in ordered]
    if len(set(epochs)) != len(epochs):
        raise ValueError(f"the same epoch is given twice: {epochs}")
    for earlier, later in zip(ordered, ordered[1:], strict=False):
        if (
            later["model_config"] != earlier["model_config"]
            or later["model_state"].keys() != earlier["model_state"].keys()
        ):
            raise ValueError("the checkpoints have different architectures")
        if later["metrics"][: earlier["epoch"]] != earlier["metrics"]:
            raise ValueError(
                f"epochs {earlier['epoch']} and {later['epoch']} are not of one training run: the "
                "later one's history does not continue the earlier one's"
            )


def average(payloads: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The mean of the payloads' weights, accumulated in float64 (`check_one_run` first). Tensors that are
    not floating point (none today) are counters or indices, not weights: the newest input's are kept."""
    states = [payload["model_state"] for payload in sorted(payloads, key=lambda payload: payload["epoch"])]
    return {
        name: (sum(state[name].double() for state in states) / len(states)).to(tensor.dtype)
        if tensor.is_floating_point()
        else states[-1][name]
        for name, tensor in states[0].items()
    }


def averaged_payload(paths: list[Path], payloads: list[dict[str, Any]], command: list[str]) -> dict[str, Any]:
    """The newest input's payload (its run's configuration, history and command) with the averaged weights
    and an `averaged` record of the inputs."""
    check_one_run(payloads)
    newest = max(payloads, key=lambda payload: payload["epoch"])
    inputs = sorted(zip(paths, payloads, strict=False), key=lambda pair: pair[1]["epoch"])
    return {
        **newest,
        **dict.fromkeys(TRAINING_STATE),
        "model_state": average(payloads),
        "averaged": {
            "epochs": [payload["epoch"] for _, payload in inputs],
            "checkpoints": [
                {"path": str(path), "epoch": payload["epoch"], "sha256": sha256_file(path)} for path, payload in inputs
            ],
            "command": command,
        },
    }


def validation_bounds(payloads: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each payload's bound on its run's validation split (the one vae-train selects best.pt by)."""
    some = next(iter(payloads.values()))
    config = TrainConfig.from_dict(some["train_config"])
    model_config = ModelConfig.from_dict(some["model_config"])
    likelihood = likelihoods.get(model_config.likelihood)
    data = load_dataset(config.dataset, config.data_dir, PreprocessContract(input_shape=model_config.input_shape))
    if data.checksums != some["data_checksums"]:
        raise ValueError(
            f"the {config.dataset} files found are not those the run trained on (checksums differ), "
            "so its validation split cannot be drawn again"
        )
    _, x_val = validation_split(data, config, likelihood)
    bounds = {}
    for name, payload in payloads.items():
        model = VAE(model_config)
        model.load_state_dict(payload["model_state"])
        result = evaluate_validation(model, x_val, config)
        bounds[name] = result.get("iwae", result["elbo"])
    return bounds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    paths, out = [Path(p) for p in args.checkpoints], Path(args.out)
    if out.name in ("last.pt", "best.pt") or any(out.resolve() == path.resolve() for path in paths):
        # last.pt without its optimizer state cannot be resumed; an input is what the record's hashes name
        print(
            f"vae-average: --out {out} would replace a run's own checkpoint or an input; choose another name",
            file=sys.stderr,
        )
        return 2
    try:
        payloads = [checkpoint.load(path) for path in paths]
        payload = averaged_payload(paths, payloads, ["vae-average", *(argv if argv is not None else sys.argv[1:])])
    except (checkpoint.CheckpointError, ValueError) as exc:
        print(f"vae-average: {exc}", file=sys.stderr)
        return 2
    epochs = payload["averaged"]["epochs"]
    has_split = TrainConfig.from_dict(payload["train_config"]).validation > 0
    if not has_split:
        print("vae-average: the run held out no validation split (vae-train --validation): the average is not scored")
    if has_split and not args.no_validate:
        newest = max(payloads, key=lambda p: p["epoch"])
        try:
            bounds = validation_bounds({"average": payload, "newest": newest})
        except (DataMissingError, DataChecksumError, ValueError) as exc:
            print(f"vae-average: cannot score on the validation split: {exc} (--no-validate skips it)", file=sys.stderr)
            return 2
        payload["averaged"]["validation_bound"] = bounds["average"]
        print(
            f"validation bound: average of epochs {epochs[0]}..{epochs[-1]} {bounds['average']:.4f}, "
            f"epoch {newest['epoch']} alone {bounds['newest']:.4f}"
        )
    checkpoint.write(out, payload)
    print(f"averaged {len(epochs)} checkpoints (epochs {', '.join(map(str, epochs))}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
