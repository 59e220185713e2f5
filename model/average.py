"""`vae-average`: one checkpoint whose weights are the mean of several epochs of one run (stochastic
weight averaging, Izmailov et al. 2018): late in training the weights wander around an optimum at the
scale of the learning rate's noise, and their mean sits nearer its centre than any one of them. The
result is a checkpoint like any other for vae-eval and vae-export; it records what it averaged."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from model import checkpoint
from model.checkpoint import Averaged, Checkpoint
from model.core import likelihoods
from model.core.preprocess import PreprocessContract
from model.data import DataChecksumError, DataMissingError, load_dataset, sha256_file
from model.trainer import evaluate_validation, validation_split
from model.vae import VAE


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


def check_one_run(records: list[Checkpoint]) -> None:
    """Refuse anything but two or more distinct epochs of one run. One run is told by its history, not its
    flags: each epoch's recorded history is the start of every later one's (`--resume` carries it over,
    whatever --threads it is given), which a fresh run into the same folder does not continue."""
    if len(records) < 2:
        raise ValueError("give two or more checkpoints: the average of one is itself")
    ordered = sorted(records, key=lambda record: record.epoch)
    epochs = [record.epoch for record in ordered]
    if len(set(epochs)) != len(epochs):
        raise ValueError(f"the same epoch is given twice: {epochs}")
    for earlier, later in zip(ordered, ordered[1:], strict=False):
        if later.model_config != earlier.model_config or later.model_state.keys() != earlier.model_state.keys():
            raise ValueError("the checkpoints have different architectures")
        if later.metrics[: earlier.epoch] != earlier.metrics:
            raise ValueError(
                f"epochs {earlier.epoch} and {later.epoch} are not of one training run: the "
                "later one's history does not continue the earlier one's"
            )


def average(records: list[Checkpoint]) -> dict[str, torch.Tensor]:
    """The mean of the records' weights, accumulated in float64 (`check_one_run` first). Tensors that are
    not floating point (none today) are counters or indices, not weights: the newest input's are kept."""
    states = [record.model_state for record in sorted(records, key=lambda record: record.epoch)]
    return {
        name: (sum(state[name].double() for state in states) / len(states)).to(tensor.dtype)
        if tensor.is_floating_point()
        else states[-1][name]
        for name, tensor in states[0].items()
    }


def averaged_checkpoint(paths: list[Path], records: list[Checkpoint], command: list[str]) -> Checkpoint:
    """The newest input (its run's configuration, history and command) with the averaged weights, an
    `Averaged` record of the inputs, and no optimizer or noise state: there is nothing to resume it with."""
    check_one_run(records)
    newest = max(records, key=lambda record: record.epoch)
    inputs = sorted(zip(paths, records, strict=False), key=lambda pair: pair[1].epoch)
    averaged = Averaged(
        epochs=[record.epoch for _, record in inputs],
        checkpoints=[
            {"path": str(path), "epoch": record.epoch, "sha256": sha256_file(path)} for path, record in inputs
        ],
        command=command,
    )
    return dataclasses.replace(newest.without_training_state(), model_state=average(records), averaged=averaged)


def validation_bounds(records: dict[str, Checkpoint]) -> dict[str, float]:
    """Each record's bound on its run's validation split (the one vae-train selects best.pt by)."""
    some = next(iter(records.values()))
    config, model_config = some.train_config, some.model_config
    likelihood = likelihoods.get(model_config.likelihood)
    data = load_dataset(config.dataset, config.data_dir, PreprocessContract(input_shape=model_config.input_shape))
    if data.checksums != some.data_checksums:
        raise ValueError(
            f"the {config.dataset} files found are not those the run trained on (checksums differ), "
            "so its validation split cannot be drawn again"
        )
    _, x_val = validation_split(data, config, likelihood)
    bounds = {}
    for name, record in records.items():
        model = VAE(model_config)
        model.load_state_dict(record.model_state)
        result = evaluate_validation(model, x_val, config)
        bounds[name] = result.get("iwae", result["elbo"])
    return bounds


def refuse_out(out: Path, paths: list[Path]) -> str | None:
    """Why --out may not be written, or None: last.pt without its optimizer state cannot be resumed, and an
    input is what the record's hashes name."""
    if out.name in ("last.pt", "best.pt") or any(out.resolve() == path.resolve() for path in paths):
        return f"--out {out} would replace a run's own checkpoint or an input; choose another name"
    return None


def with_validation_bound(record: Checkpoint, newest: Checkpoint) -> Checkpoint:
    """The average with its bound on the validation split recorded, and both bounds printed."""
    assert record.averaged is not None
    bounds = validation_bounds({"average": record, "newest": newest})
    epochs = record.averaged.epochs
    print(
        f"validation bound: average of epochs {epochs[0]}..{epochs[-1]} {bounds['average']:.4f}, "
        f"epoch {newest.epoch} alone {bounds['newest']:.4f}"
    )
    return dataclasses.replace(
        record, averaged=dataclasses.replace(record.averaged, validation_bound=bounds["average"])
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    paths, out = [Path(p) for p in args.checkpoints], Path(args.out)
    refused = refuse_out(out, paths)
    if refused:
        print(f"vae-average: {refused}", file=sys.stderr)
        return 2
    try:
        records = [checkpoint.load(path) for path in paths]
        record = averaged_checkpoint(paths, records, ["vae-average", *(argv if argv is not None else sys.argv[1:])])
    except (checkpoint.CheckpointError, ValueError) as exc:
        print(f"vae-average: {exc}", file=sys.stderr)
        return 2
    assert record.averaged is not None
    epochs = record.averaged.epochs
    has_split = record.train_config.validation > 0
    if not has_split:
        print("vae-average: the run held out no validation split (vae-train --validation): the average is not scored")
    if has_split and not args.no_validate:
        try:
            record = with_validation_bound(record, max(records, key=lambda r: r.epoch))
        except (DataMissingError, DataChecksumError, ValueError) as exc:
            print(f"vae-average: cannot score on the validation split: {exc} (--no-validate skips it)", file=sys.stderr)
            return 2
    record.save(out)
    print(f"averaged {len(epochs)} checkpoints (epochs {', '.join(map(str, epochs))}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
