"""`vae-train`: train a VAE on a dataset, with metrics, best/last checkpoints and resume."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from model import checkpoint, losses
from model.config import ModelConfig, TrainConfig
from model.core import likelihoods
from model.core.preprocess import PreprocessContract
from model.data import DataChecksumError, DataMissingError, Dataset, fixed_test_set, load_dataset
from model.vae import VAE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults_m, defaults_t = ModelConfig(), TrainConfig()
    p = argparse.ArgumentParser(prog="vae-train", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default=defaults_t.dataset, help="fashion-mnist, mnist, or folder")
    p.add_argument("--data-dir", default=None, help="data directory (default: $VAE_DATA_DIR or the dataset's)")
    p.add_argument("--epochs", type=int, default=defaults_t.epochs)
    p.add_argument("--batch-size", type=int, default=defaults_t.batch_size)
    p.add_argument("--lr", type=float, default=defaults_t.lr)
    p.add_argument("--lr-schedule", choices=["cosine", "constant"], default=defaults_t.lr_schedule)
    p.add_argument("--beta", type=float, default=defaults_t.beta, help="weight of the KL term")
    p.add_argument("--kl-warmup-epochs", type=int, default=defaults_t.kl_warmup_epochs)
    p.add_argument("--seed", type=int, default=defaults_t.seed)
    p.add_argument("--threads", type=int, default=defaults_t.threads, help="torch intra-op threads")
    p.add_argument("--arch", choices=["conv", "mlp"], default=defaults_m.arch, help="encoder family")
    p.add_argument("--decoder", choices=["conv", "mlp"], default=defaults_m.decoder, help="decoder family")
    p.add_argument("--latent-dim", type=int, default=defaults_m.latent_dim)
    p.add_argument("--hidden", type=int, nargs="+", default=list(defaults_m.hidden))
    p.add_argument("--conv-channels", type=int, nargs="+", default=list(defaults_m.conv_channels))
    p.add_argument("--decoder-channels", type=int, nargs="*", default=list(defaults_m.decoder_channels),
                   help="conv decoder: channels into each transposed conv, lowest resolution first "
                   "(default: mirror --conv-channels)")
    p.add_argument("--likelihood", choices=sorted(likelihoods.LIKELIHOODS), default=defaults_m.likelihood)
    p.add_argument("--gaussian-scale", choices=["shared", "per_pixel"], default=defaults_m.gaussian_scale)
    p.add_argument("--image-size", type=int, nargs="+", metavar=("H", "W"), default=None,
                   help="folder: resize images to H x W (one number: square; default "
                   f"{defaults_m.input_shape[1]}x{defaults_m.input_shape[2]})")
    p.add_argument("--channels", type=int, choices=[1, 3], default=None,
                   help=f"folder: 1 = grey, 3 = RGB (default {defaults_m.input_shape[0]})")
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--limit-test", type=int, default=None, help="use only the first N test images")
    p.add_argument("--out", default="runs/default", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--stop-after", type=int, default=None, help="end this run after N epochs (resume later)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def requested_shape(args: argparse.Namespace, default: tuple[int, int, int]) -> tuple[int, int, int]:
    """(C, H, W) from --channels and --image-size, each falling back to `default`'s."""
    size = args.image_size or list(default[1:])
    if len(size) > 2 or min(size) <= 0:
        raise ValueError(f"--image-size takes H or H W, positive; got {size}")
    height, width = size[0], size[-1]
    return (args.channels or default[0], height, width)


def load_training_data(args: argparse.Namespace) -> Dataset:
    """A folder is converted to the requested shape (1x28x28 by default, with a log line when
    that converts images); an IDX data set keeps its own shape and refuses other flags."""
    if args.dataset == "folder":
        shape = requested_shape(args, ModelConfig().input_shape)
        configs_from_args(args, shape)  # a shape the model cannot take fails before the folder is read
        return load_dataset(args.dataset, args.data_dir, PreprocessContract(input_shape=shape))
    data = load_dataset(args.dataset, args.data_dir)
    own = tuple(int(s) for s in data.train.shape[1:])
    if requested_shape(args, own) != own:
        raise ValueError(f"{data.name} images are {own[0]}x{own[1]}x{own[2]} and are not converted; "
                         "--image-size and --channels apply to --dataset folder")
    return data


def configs_from_args(args: argparse.Namespace, input_shape: tuple[int, int, int]) -> tuple[ModelConfig, TrainConfig]:
    model_config = ModelConfig(arch=args.arch, decoder=args.decoder, input_shape=input_shape,
                               latent_dim=args.latent_dim, hidden=tuple(args.hidden),
                               conv_channels=tuple(args.conv_channels),
                               decoder_channels=tuple(args.decoder_channels), likelihood=args.likelihood,
                               gaussian_scale=args.gaussian_scale)
    train_config = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs,
                               batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule,
                               beta=args.beta, kl_warmup_epochs=args.kl_warmup_epochs, seed=args.seed,
                               threads=args.threads, limit_train=args.limit_train, limit_test=args.limit_test)
    return model_config, train_config


def kl_weight(config: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Linear KL warm-up (Bowman et al. 2016; Sonderby et al. 2016) from 0 to beta."""
    if config.kl_warmup_epochs == 0:
        return config.beta
    progress = (epoch + step / steps_per_epoch) / config.kl_warmup_epochs
    return config.beta * min(1.0, progress)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    if config.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=config.lr_min)


@torch.no_grad()
def evaluate_elbo(model: VAE, x_test: torch.Tensor, seed: int, batch_size: int = 1000) -> dict[str, float]:
    """Test-set ELBO with one reparameterised sample per image from a fixed generator."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    totals = {"elbo": 0.0, "reconstruction": 0.0, "kl": 0.0}
    for start in range(0, len(x_test), batch_size):
        x = x_test[start:start + batch_size]
        terms = _terms(model, x, generator, beta=1.0)
        for key in totals:
            totals[key] += float(terms[key].sum())
    model.train()
    return {key: value / len(x_test) for key, value in totals.items()}


def _terms(model: VAE, x: torch.Tensor, generator: torch.Generator, beta: float) -> dict[str, torch.Tensor]:
    mean, logvar = model.encode(x)  # (B, D), (B, D)
    eps = torch.randn(mean.shape, generator=generator)
    params = model.decode(losses.reparameterize(mean, logvar, eps))
    log_px_z = likelihoods.get(model.config.likelihood).torch_log_prob(x, params)
    return losses.elbo_terms(log_px_z, losses.kl_standard_normal(mean, logvar), beta)


class _Interrupt:
    """Turns the first Ctrl-C into a flag checked between steps, so we can save and exit cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self.event = threading.Event()  # set with `requested`, for code that waits for it

    def __enter__(self) -> _Interrupt:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C aborts at once
            raise KeyboardInterrupt
        self.requested = True
        self.event.set()

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)


PAUSE_ENV = "VAE_TRAIN_PAUSE_AT_STEP"


def _test_pause_point() -> tuple[int, int] | None:
    """For tests only: $VAE_TRAIN_PAUSE_AT_STEP="EPOCH:STEP" (epoch from 1, step from 0) makes
    training stop before that step, write OUT/paused and wait for Ctrl-C, so a test can interrupt a
    real run at a known point without guessing from timing."""
    value = os.environ.get(PAUSE_ENV)
    if not value:
        return None
    epoch, step = value.split(":")
    return int(epoch), int(step)


def _pause_until_interrupted(out: Path, interrupt: _Interrupt, at: tuple[int, int], timeout: float = 120.0) -> None:
    (out / "paused").write_text(f"{at[0]}:{at[1]}\n")
    interrupt.event.wait(timeout)  # Python runs the SIGINT handler, which sets it, in this thread


def train(model_config: ModelConfig, config: TrainConfig, data: Dataset, out: Path, resume: bool = False,
          progress: bool = True, command: list[str] | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Train and write OUT/{last,best}.pt and OUT/metrics.jsonl. Returns the last epoch's metrics.

    `stop_after` ends this run after that many epochs (the schedule still spans `config.epochs`);
    `resume=True` continues from OUT/last.pt with the same numbers as an uninterrupted run."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    out.mkdir(parents=True, exist_ok=True)
    x_train = torch.from_numpy(data.train[: config.limit_train])
    likelihood = likelihoods.get(model_config.likelihood)
    x_test = torch.from_numpy(fixed_test_set(data.test[: config.limit_test], likelihood, config.test_binarize_seed))
    steps_per_epoch = math.ceil(len(x_train) / config.batch_size)

    model = VAE(model_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, Any]] = []
    start_epoch, best = 0, -math.inf
    if resume:
        state = checkpoint.load(out / "last.pt")
        if ModelConfig.from_dict(state["model_config"]) != model_config:
            raise SystemExit(f"--resume: the model config in {out / 'last.pt'} differs from the flags given")
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        scheduler.load_state_dict(state["scheduler_state"])
        generator.set_state(state["rng_state"])
        history, start_epoch = state["metrics"], state["epoch"]
        best = state["best_test_elbo"] if state["best_test_elbo"] is not None else -math.inf
    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("".join(json.dumps(m) + "\n" for m in history))

    def save(name: str, epoch: int) -> None:
        """Called only between epochs, where the generator's state is that of the next epoch's start."""
        checkpoint.save(out / name, model, config, epoch=epoch, metrics=history, data_checksums=data.checksums,
                        optimizer=optimizer, scheduler=scheduler, rng_state=generator.get_state(),
                        best_test_elbo=best, command=command)

    # Ctrl-C drops the unfinished epoch: OUT/last.pt always holds the end of the last completed one
    # (or the start), so --resume replays exactly what an uninterrupted run does next. Saving the
    # position inside an epoch would also need the data order, the step, the running train sums and
    # the epoch's timing; an epoch boundary is one consistent point, the one `stop_after` already
    # resumes from, at the cost of redoing at most one epoch.
    if not resume:
        save("last.pt", start_epoch)
    pause_at = _test_pause_point()
    model.train()
    with _Interrupt() as interrupt:
        last_epoch = config.epochs if stop_after is None else min(config.epochs, start_epoch + stop_after)
        for epoch in range(start_epoch, last_epoch):
            began = time.perf_counter()
            order = torch.randperm(len(x_train), generator=generator)
            sums = {"objective": 0.0, "elbo": 0.0, "reconstruction": 0.0, "kl": 0.0}
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress,
                       leave=False, dynamic_ncols=True)
            for step in bar:
                if pause_at == (epoch + 1, step):
                    _pause_until_interrupted(out, interrupt, pause_at)
                if interrupt.requested:
                    kept = f"the end of epoch {epoch}" if epoch else "the start of training"
                    print(f"\ninterrupted in epoch {epoch + 1}; its unfinished steps are dropped: {out / 'last.pt'} "
                          f"holds {kept}. Continue with --resume", file=sys.stderr)
                    raise SystemExit(130)
                batch = x_train[order[step * config.batch_size:(step + 1) * config.batch_size]]
                x = likelihood.torch_to_data_space(batch, generator)  # a fresh draw each time an image is seen
                terms = _terms(model, x, generator, kl_weight(config, epoch, step, steps_per_epoch))
                loss = -terms["objective"].mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                for key in sums:
                    sums[key] += float(terms[key].detach().sum())
                bar.set_postfix(loss=f"{loss.item():.2f}")
            seconds = time.perf_counter() - began
            test = evaluate_elbo(model, x_test, seed=config.seed)
            record = {
                "epoch": epoch + 1,
                **{f"train_{k}": v / len(x_train) for k, v in sums.items()},
                **{f"test_{k}": v for k, v in test.items()},
                "beta": kl_weight(config, epoch + 1, 0, steps_per_epoch),
                "lr": scheduler.get_last_lr()[0],
                "seconds": seconds,
                "images_per_second": len(x_train) / seconds,
            }
            history.append(record)
            with metrics_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            print(f"epoch {epoch + 1}/{config.epochs}: train ELBO {record['train_elbo']:.2f}  "
                  f"test ELBO {test['elbo']:.2f} (rec {test['reconstruction']:.2f}, KL {test['kl']:.2f})  "
                  f"{seconds:.1f}s", flush=True)
            if test["elbo"] > best:
                best = test["elbo"]
                save("best.pt", epoch + 1)
            save("last.pt", epoch + 1)
    return history[-1] if history else {}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="vae-train: %(message)s")  # shows model.data's note on converted images
    try:
        data = load_training_data(args)
        input_shape = tuple(int(s) for s in data.train.shape[1:])
        model_config, train_config = configs_from_args(args, input_shape)
    except (DataMissingError, DataChecksumError, ValueError) as exc:
        print(f"vae-train: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    print(f"training {model_config.arch}/{model_config.decoder} VAE, latent {model_config.latent_dim}, "
          f"{model_config.likelihood}, on {len(data.train)} {data.name} images of "
          f"{'x'.join(map(str, input_shape))} -> {out}", flush=True)
    try:
        train(model_config, train_config, data, out, resume=args.resume, progress=not args.no_progress,
              command=["vae-train", *(argv if argv is not None else sys.argv[1:])], stop_after=args.stop_after)
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once; last.pt is only ever replaced whole
        print(f"\ninterrupted: {out / 'last.pt'} holds the last completed epoch. Continue with --resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
