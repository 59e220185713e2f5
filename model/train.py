"""`vae-train`: train a VAE on a dataset, with metrics, best/last checkpoints and resume.

Under `torchrun --nproc_per_node=N` it trains with DistributedDataParallel (model/distributed.py):
--batch-size stays the global batch, rank 0 writes the metrics and checkpoints."""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from pathlib import Path

from model import checkpoint, distributed, folder_defaults
from model.config import OBJECTIVES, PRIORS, ModelConfig, TrainConfig, arch_preset
from model.core import likelihoods
from model.core.preprocess import PreprocessContract
from model.core.priors import PRIOR_KINDS, prior_kind
from model.data import (
    CALIBRATION_SPLIT,
    DataChecksumError,
    DataMissingError,
    Dataset,
    load_dataset,
    resolve_data_dir,
)
from model.distributed import SINGLE_PROCESS, Ranks
from model.trainer import NO_HOOKS, TrainHooks, train


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, once: a help line that already says its default
    (the ones whose default is not a plain value, such as "the dataset's directory") is left as it is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: {'on' if action.default else 'off'})"
        shown = " ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
        return f"{text} (default: {shown})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vae-train", description=__doc__, formatter_class=HelpFormatter)
    defaults = TrainConfig()
    p.add_argument("--dataset", default=defaults.dataset, help="fashion-mnist, mnist, or folder (a folder of images)")
    p.add_argument(
        "--data-dir",
        default=None,
        help="data directory (default: $VAE_DATA_DIR, else the dataset's, /usr/share/datasets/<dataset>)",
    )
    _add_optimisation_options(p, defaults)
    _add_model_options(p, ModelConfig())
    _add_folder_options(p)
    _add_prior_options(p, ModelConfig())
    _add_objective_options(p, defaults)
    _add_run_options(p)
    return p.parse_args(argv)


def _add_optimisation_options(p: argparse.ArgumentParser, defaults_t: TrainConfig) -> None:
    p.add_argument(
        "--epochs", type=int, default=defaults_t.epochs, help="epochs to train; also the length of the cosine schedule"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=defaults_t.batch_size,
        help="images per step, over all processes together under torchrun",
    )
    p.add_argument("--lr", type=float, default=defaults_t.lr, help="Adam's learning rate at the start of the schedule")
    p.add_argument(
        "--lr-schedule",
        choices=["cosine", "constant"],
        default=defaults_t.lr_schedule,
        help=f"cosine: from --lr down to {defaults_t.lr_min:g} at the last epoch, per step",
    )
    p.add_argument("--beta", type=float, default=defaults_t.beta, help="weight of the KL term")
    p.add_argument(
        "--kl-warmup-epochs",
        type=int,
        default=defaults_t.kl_warmup_epochs,
        help="epochs over which the KL weight rises linearly from 0 to --beta",
    )
    p.add_argument(
        "--seed", type=int, default=defaults_t.seed, help="seeds the initial weights, the data order and the noise"
    )
    p.add_argument("--threads", type=int, default=defaults_t.threads, help="torch intra-op threads (per process)")
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cuda: one GPU per process (under torchrun: LOCAL_RANK's), gradients all-reduced with NCCL",
    )


def _add_model_options(p: argparse.ArgumentParser, defaults_m: ModelConfig) -> None:
    p.add_argument("--arch", choices=["conv", "mlp"], default=defaults_m.arch, help="encoder family")
    p.add_argument("--decoder", choices=["conv", "mlp"], default=defaults_m.decoder, help="decoder family")
    preset = "(default: the image size's preset in model/config.py ARCH_PRESETS; up to 32 px: {})"
    p.add_argument(
        "--latent-dim",
        type=int,
        default=None,
        help="dimensions of the latent z (with --lower-latent-dim, of the top level z2) "
        + preset.format(defaults_m.latent_dim),
    )
    p.add_argument(
        "--lower-latent-dim",
        type=int,
        default=defaults_m.lower_latent_dim,
        help="a second stochastic level z1 of this many dimensions between the top latent and the image, "
        "as the HVAE of Tomczak & Welling (docs/design/hierarchy.md); 0: one level (default: %(default)s)",
    )
    p.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=None,
        help="widths of the dense layers (the encoder's head and the decoder) "
        + preset.format(" ".join(map(str, defaults_m.hidden))),
    )
    p.add_argument(
        "--conv-channels",
        type=int,
        nargs="+",
        default=None,
        help="conv encoder: channels of each stride-2 convolution "
        + preset.format(" ".join(map(str, defaults_m.conv_channels))),
    )
    p.add_argument(
        "--decoder-channels",
        type=int,
        nargs="*",
        default=None,
        help="conv decoder: channels into each transposed conv, lowest resolution first; given with no value: "
        "mirror --conv-channels " + preset.format(" ".join(map(str, defaults_m.decoder_channels))),
    )
    p.add_argument(
        "--likelihood",
        choices=["auto", *sorted(likelihoods.LIKELIHOODS)],
        default="auto",
        help="p(x|z): bernoulli on binarised pixels, or gaussian on dequantised 8-bit pixels; auto: bernoulli for "
        "Fashion-MNIST and MNIST, and for a folder chosen from its images (bernoulli when nearly binary, else "
        "gaussian)",
    )
    p.add_argument(
        "--gaussian-scale",
        choices=["shared", "per_pixel", "decoder"],
        default=None,
        help="gaussian likelihood: one learned sigma, one per pixel, or one per pixel output by the decoder for "
        "each z (default: decoder for a folder, shared for Fashion-MNIST and MNIST)",
    )


def _add_folder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--image-size",
        type=int,
        nargs="+",
        metavar=("H", "W"),
        default=None,
        help="folder: resize images to H x W, one number for a square (default: the folder's most common size, "
        "a longer side above 128 brought down to 128, rounded to what the architecture halves)",
    )
    p.add_argument(
        "--channels",
        type=int,
        choices=[1, 3],
        default=None,
        help="folder: 1 = grey, 3 = RGB (default: the folder's most common)",
    )
    p.add_argument(
        "--calibration-split",
        type=float,
        default=CALIBRATION_SPLIT,
        help="folder: the share of the images held out of training for the anomaly calibration (at least 20 "
        "images while that leaves half to train on, at most 4000; 0: calibrate on training images)",
    )


def _add_prior_options(p: argparse.ArgumentParser, defaults_m: ModelConfig) -> None:
    p.add_argument(
        "--prior",
        choices=list(PRIORS),
        default=defaults_m.prior,
        help="p(z): " + "; ".join(f"{kind.name}, {kind.description}" for kind in PRIOR_KINDS.values()),
    )
    p.add_argument(
        "--prior-components",
        type=int,
        default=None,
        help="K components of a mixture prior (default: "
        + ", ".join(f"{k.default_components} for {k.name}" for k in PRIOR_KINDS.values() if k.learned)
        + ")",
    )


def _add_objective_options(p: argparse.ArgumentParser, defaults_t: TrainConfig) -> None:
    p.add_argument(
        "--objective",
        choices=list(OBJECTIVES),
        default=defaults_t.objective,
        help="elbo, or the IWAE bound with DReG encoder gradients over --samples samples",
    )
    p.add_argument("--samples", type=int, default=defaults_t.samples, help="importance samples per image")
    p.add_argument(
        "--validation",
        type=int,
        default=defaults_t.validation,
        help="hold out the last N training images; best.pt is the epoch with the best bound on them "
        "(0: none held out, best.pt is the epoch with the best test ELBO)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=defaults_t.patience,
        help="stop after N epochs without a better validation bound (0: never)",
    )
    p.add_argument(
        "--init-from",
        default=None,
        help="start from this checkpoint's model (same architecture): all of it when the prior is the same "
        "kind and size, else its encoder and decoder under a newly placed prior (default: none, a fresh "
        "model)",
    )
    p.add_argument(
        "--prior-fit-steps",
        type=int,
        default=0,
        help="with --init-from a checkpoint of another prior: first fit the newly placed mixture alone to "
        "the initial encoder's aggregate posterior for N steps",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training images (default: all)")
    p.add_argument("--limit-test", type=int, default=None, help="use only the first N test images (default: all)")
    p.add_argument("--out", default="runs/default", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument(
        "--keep-epochs",
        action="store_true",
        help="also keep the end of every epoch as OUT/epoch-NNN.pt, for vae-average",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="end this run after N epochs, to --resume later (default: run to --epochs)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def requested_shape(args: argparse.Namespace, default: tuple[int, int, int]) -> tuple[int, int, int]:
    """(C, H, W) from --channels and --image-size, each falling back to `default`'s."""
    size = args.image_size or list(default[1:])
    if len(size) > 2 or min(size) <= 0:
        raise ValueError(f"--image-size takes H or H W, positive; got {size}")
    height, width = size[0], size[-1]
    return (args.channels or default[0], height, width)


def load_training_data(args: argparse.Namespace, chosen: dict[str, str]) -> Dataset:
    """A folder is converted to the requested shape (by default its most common one, fitted to the
    architecture: `folder_defaults.default_shape`, with a log line when that converts images); an IDX
    data set keeps its own shape and refuses other flags. What was chosen for the user goes in `chosen`."""
    if args.dataset == "folder":
        shape = requested_shape(args, ModelConfig().input_shape)
        if args.image_size is None or args.channels is None:
            common = folder_defaults.default_shape(
                folder_defaults.survey(resolve_data_dir(args.dataset, args.data_dir))
            )
            shape = requested_shape(args, common.value)
            chosen["image"] = common.reason if shape == common.value else f"{shape}: asked for in part; {common.reason}"
        configs_from_args(args, shape)  # a shape the model cannot take fails before the folder is read
        return load_dataset(
            args.dataset, args.data_dir, PreprocessContract(input_shape=shape), calibration_split=args.calibration_split
        )
    data = load_dataset(args.dataset, args.data_dir)
    own = tuple(int(s) for s in data.train.shape[1:])
    if requested_shape(args, own) != own:
        raise ValueError(
            f"{data.name} images are {own[0]}x{own[1]}x{own[2]} and are not converted; "
            "--image-size and --channels apply to --dataset folder"
        )
    return data


def likelihood_from_args(args: argparse.Namespace, data: Dataset | None, chosen: dict[str, str]) -> tuple[str, str]:
    """(likelihood, gaussian_scale): the flags', else bernoulli for an IDX data set and, for a folder, what
    its images call for (`folder_defaults.default_likelihood`; bernoulli before they are read)."""
    folder = args.dataset == "folder"
    name, scale = args.likelihood, args.gaussian_scale or ("decoder" if folder else "shared")
    if name != "auto":
        return name, scale
    if not folder or data is None:
        return "bernoulli", scale
    choice = folder_defaults.default_likelihood(data.train)
    chosen["likelihood"] = choice.reason
    picked, picked_scale = choice.value
    return picked, args.gaussian_scale or picked_scale or scale


def configs_from_args(
    args: argparse.Namespace,
    input_shape: tuple[int, int, int],
    data: Dataset | None = None,
    chosen: dict[str, str] | None = None,
) -> tuple[ModelConfig, TrainConfig]:
    chosen = {} if chosen is None else chosen
    preset = arch_preset(input_shape[1], input_shape[2])
    if None in (args.latent_dim, args.hidden, args.conv_channels, args.decoder_channels):
        chosen["architecture"] = (
            folder_defaults.describe_preset(input_shape)
            + " (--conv-channels, --decoder-channels, --hidden and --latent-dim override it)"
        )
    likelihood, gaussian_scale = likelihood_from_args(args, data, chosen)
    model_config = ModelConfig(
        arch=args.arch,
        decoder=args.decoder,
        input_shape=input_shape,
        latent_dim=preset.latent_dim if args.latent_dim is None else args.latent_dim,
        hidden=tuple(preset.hidden if args.hidden is None else args.hidden),
        conv_channels=tuple(preset.conv_channels if args.conv_channels is None else args.conv_channels),
        decoder_channels=tuple(preset.decoder_channels if args.decoder_channels is None else args.decoder_channels),
        likelihood=likelihood,
        gaussian_scale=gaussian_scale,
        prior=args.prior,
        prior_components=_prior_components(args),
        lower_latent_dim=args.lower_latent_dim,
    )
    if args.init_from and not Path(args.init_from).is_file():
        raise ValueError(f"--init-from {args.init_from}: no such checkpoint")
    init_sha256 = hashlib.sha256(Path(args.init_from).read_bytes()).hexdigest() if args.init_from else None
    train_config = TrainConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        beta=args.beta,
        kl_warmup_epochs=args.kl_warmup_epochs,
        seed=args.seed,
        threads=args.threads,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        objective=args.objective,
        samples=args.samples,
        validation=args.validation,
        patience=args.patience,
        init_from=args.init_from,
        init_sha256=init_sha256,
        prior_fit_steps=args.prior_fit_steps,
        calibration_split=args.calibration_split if args.dataset == "folder" else 0.0,
        extra={"defaults": dict(chosen)} if chosen and args.dataset == "folder" else {},
    )
    return model_config, train_config


def _prior_components(args: argparse.Namespace) -> int:
    return prior_kind(args.prior).default_components if args.prior_components is None else args.prior_components


def describe_run(args: argparse.Namespace, model_config: ModelConfig, data: Dataset, ranks: Ranks) -> str:
    """The line vae-train starts with: the model, the data, the processes and where it writes."""
    processes = (
        f" on {ranks.world_size} processes ({ranks.backend}), global batch {args.batch_size} = "
        f"{ranks.world_size} x {args.batch_size // ranks.world_size}"
        if ranks.distributed
        else ""
    )
    return (
        f"training {model_config.arch}/{model_config.decoder} VAE, latent {model_config.latent_dim}"
        + (f" over a lower level of {model_config.lower_latent_dim}" if model_config.levels == 2 else "")
        + ", "
        f"{model_config.likelihood}, on {len(data.train)} {data.name} images of "
        f"{'x'.join(map(str, model_config.input_shape))}{processes}"
        + (f", the last {args.validation} held out for validation" if args.validation else "")
        + (f", {len(data.calibration)} held out for the anomaly calibration" if data.calibration is not None else "")
        + f" -> {Path(args.out)}"
    )


def main(argv: list[str] | None = None, hooks: TrainHooks = NO_HOOKS) -> int:
    """`vae-train`; under torchrun (RANK, WORLD_SIZE... set) one of the DDP processes. `hooks`: for tests
    (`TrainHooks`; tests/unit/model/train_with_hooks.py runs a real vae-train with them)."""
    args = parse_args(argv)
    logging.basicConfig(format="vae-train: %(message)s")  # shows model.data's note on converted images
    ranks = SINGLE_PROCESS
    try:
        ranks = distributed.from_environment(args.device)
        distributed.per_rank_batch_size(args.batch_size, ranks.world_size)
        chosen: dict[str, str] = {}
        data = load_training_data(args, chosen)
        channels, height, width = (int(s) for s in data.train.shape[1:])
        model_config, train_config = configs_from_args(args, (channels, height, width), data, chosen)
    except (DataMissingError, DataChecksumError, ValueError) as exc:
        where = f" (rank {ranks.rank})" if ranks.distributed else ""
        print(f"vae-train{where}: {exc}", file=sys.stderr)
        distributed.shutdown(ranks)
        return 2
    out = Path(args.out)
    if ranks.is_main:
        print(describe_run(args, model_config, data, ranks), flush=True)
        for what, reason in train_config.extra.get("defaults", {}).items():
            print(f"  {what}: {reason}", flush=True)
    try:
        train(
            model_config,
            train_config,
            data,
            out,
            resume=args.resume,
            progress=not args.no_progress,
            command=["vae-train", *(argv if argv is not None else sys.argv[1:])],
            stop_after=args.stop_after,
            ranks=ranks,
            keep_epochs=args.keep_epochs,
            hooks=hooks,
        )
    except (ValueError, checkpoint.CheckpointError) as exc:  # e.g. an --init-from that does not fit
        if ranks.is_main:
            print(f"vae-train: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once; last.pt is only ever replaced whole
        if ranks.is_main:
            print(
                f"\ninterrupted: {out / 'last.pt'} holds the last completed epoch. Continue with --resume",
                file=sys.stderr,
            )
        return 130
    finally:
        distributed.shutdown(ranks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
