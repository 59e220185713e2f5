"""Train a small latent-diffusion autoencoder (diffusers' `AutoencoderKL`) on Fashion-MNIST, for the bundled
repository's `fashion-mnist-autoencoderkl` (imported with `vae-import diffusers`).

    python -m model.train_autoencoder_kl --out runs/akl [--epochs 3 ...] [--resume]

The loss is the reconstruction and KL part of the one latent diffusion trains its autoencoders with (taming's
`LPIPSWithDiscriminator`, which diffusers' autoencoder training script follows): per image, the L1 distance summed
over pixels plus `kl_weight` times the KL summed over latent elements, averaged over the batch. Its perceptual
(LPIPS) and adversarial terms are left out: LPIPS needs a pretrained VGG that is not available offline, and a
discriminator would not fit the CPU budget. Images are mapped from [0, 1] to [-1, 1], as diffusers expects.

Resuming (`--resume`, the same command again) continues after the last finished epoch: each epoch's order and
posterior noise come from generators seeded by (seed, epoch), so a resumed run sees what an unbroken one would.
The finished run writes OUT/autoencoder (`save_pretrained`, with `scaling_factor` = 1 / the std of the test
latents, diffusers' convention) and OUT/report/report.json (test reconstruction error, latent statistics,
the commands and their wall time).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.checkpoint import git_commit
from model.data import Dataset, load_dataset

CHECKPOINT = "last.pt"
FIRST_IMAGES = 500  # the report's figures on the first test images: what tests/unit/export/ recomputes in ONNX


@dataclass(frozen=True)
class AutoencoderShape:
    """The AutoencoderKL's architecture: every down block halves the image, so 3 blocks take 28 px to 7."""

    block_out_channels: tuple[int, ...] = (16, 32, 32)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 8
    channels: int = 1
    image_size: int = 28

    def __post_init__(self) -> None:
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"--block-out-channels {self.block_out_channels}: each must be a multiple of --norm-num-groups "
                f"{self.norm_num_groups}"
            )
        factor = 2 ** (len(self.block_out_channels) - 1)
        if self.image_size % factor:
            raise ValueError(f"--image-size {self.image_size} is not a multiple of the downsampling, {factor}")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.image_size // 2 ** (len(self.block_out_channels) - 1)
        return (self.latent_channels, size, size)


@dataclass(frozen=True)
class TrainSettings:
    """What the run is: a resumed run must be given the same settings."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    lr_final: float = 1e-4  # cosine decay per step, from lr to lr_final
    kl_weight: float = 1e-6  # Stable Diffusion's autoencoder configs (kl_weight: 0.000001)
    seed: int = 0
    dataset: str = "fashion-mnist"
    train_images: int = 0  # the first N training images only (a smoke test); 0: all of them

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0 or self.train_images < 0:
            raise ValueError("--epochs and --batch-size must be positive, --train-images at least 0")
        if not 0 < self.lr_final <= self.lr:
            raise ValueError(f"--lr-final {self.lr_final} must be in (0, --lr {self.lr}]")
        if self.kl_weight < 0:
            raise ValueError(f"--kl-weight must be at least 0, not {self.kl_weight}")


def build_autoencoder(shape: AutoencoderShape) -> Any:
    """A freshly initialised AutoencoderKL of this shape (seed torch before calling)."""
    from diffusers import AutoencoderKL

    blocks = len(shape.block_out_channels)
    return AutoencoderKL(
        in_channels=shape.channels,
        out_channels=shape.channels,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=shape.block_out_channels,
        layers_per_block=shape.layers_per_block,
        latent_channels=shape.latent_channels,
        norm_num_groups=shape.norm_num_groups,
        sample_size=shape.image_size,
    )


def to_model_range(pixels: np.ndarray) -> torch.Tensor:
    """Images in [0, 1] (N, C, H, W) to the autoencoder's [-1, 1], in the channels-last layout (faster on CPU)."""
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)) * 2 - 1  # (N, C, H, W)
    return x.contiguous(memory_format=torch.channels_last)


def autoencoder_loss(
    reconstruction: torch.Tensor, x: torch.Tensor, kl: torch.Tensor, kl_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch mean of  sum_pixels |x - x_hat| + kl_weight * KL(q(z|x) || N(0, I)), and of the L1 sum alone.
    `kl`: (N,) summed over latent elements, as diffusers' DiagonalGaussianDistribution.kl() gives it."""
    l1 = (reconstruction - x).abs().flatten(1).sum(1)  # (N,)
    return (l1 + kl_weight * kl).mean(), l1.mean()


def learning_rate(step: int, total_steps: int, settings: TrainSettings) -> float:
    """Cosine from lr at step 0 to lr_final at the last step; a function of the step, so resuming keeps it."""
    progress = step / max(1, total_steps - 1)
    return settings.lr_final + 0.5 * (settings.lr - settings.lr_final) * (1 + math.cos(math.pi * progress))


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def train_epoch(
    vae: Any, optimizer: torch.optim.Optimizer, train: np.ndarray, epoch: int, settings: TrainSettings
) -> dict[str, float]:
    """One pass over the training images in the epoch's seeded order; returns the mean loss and L1 sum."""
    vae.train()
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    noise = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch)
    order = epoch_order(len(train), settings.seed, epoch)
    loss_sum = l1_sum = 0.0
    for i in range(steps_per_epoch):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate((epoch - 1) * steps_per_epoch + i, total_steps, settings)
        x = to_model_range(train[order[i * settings.batch_size : (i + 1) * settings.batch_size]])  # (B, C, H, W)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=noise)  # (B, c, h, w)
        loss, l1 = autoencoder_loss(vae.decode(z).sample, x, posterior.kl(), settings.kl_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(x)
        l1_sum += float(l1.detach()) * len(x)
    return {"loss": loss_sum / len(train), "l1_sum": l1_sum / len(train)}


@torch.no_grad()
def encode_decode(vae: Any, pixels: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Each image's posterior mean (N, c, h, w) and the decoding of that mean, clamped to [-1, 1] (N, C, H, W)."""
    vae.eval()
    means, images = [], []
    for start in range(0, len(pixels), batch_size):
        mean = vae.encode(to_model_range(pixels[start : start + batch_size])).latent_dist.mean
        means.append(mean.contiguous().numpy())
        images.append(vae.decode(mean).sample.clamp(-1, 1).contiguous().numpy())
    return np.concatenate(means), np.concatenate(images)


def reconstruction_error(pixels: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
    """Errors of decoded images (in [-1, 1]) against the originals (in [0, 1]), measured on [0, 1] pixels:
    MSE, L1, PSNR of the set's MSE (10 log10(1 / MSE)) and the mean of each image's PSNR."""
    error = (decoded.astype(np.float64) + 1) / 2 - pixels  # (N, C, H, W)
    per_image = np.mean(error**2, axis=(1, 2, 3))  # (N,)
    mse = float(per_image.mean())
    return {
        "images": len(pixels),
        "mse": mse,
        "l1": float(np.abs(error).mean()),
        "psnr_db": 10 * math.log10(1 / mse),
        "mean_image_psnr_db": float(np.mean(10 * np.log10(1 / np.maximum(per_image, 1e-12)))),
    }


@torch.no_grad()
def latent_statistics(vae: Any, pixels: np.ndarray, seed: int, batch_size: int = 500) -> dict[str, Any]:
    """The test latents' per-channel mean and std, of the posterior means and of posterior samples (drawn with a
    seeded generator), and diffusers' scaling factor: 1 / the std of the sampled latents over all elements."""
    vae.eval()
    noise = torch.Generator().manual_seed(seed)
    means, samples = [], []
    for start in range(0, len(pixels), batch_size):
        posterior = vae.encode(to_model_range(pixels[start : start + batch_size])).latent_dist
        means.append(posterior.mean.contiguous().numpy())
        samples.append(posterior.sample(generator=noise).contiguous().numpy())
    mean, sample = np.concatenate(means).astype(np.float64), np.concatenate(samples).astype(np.float64)
    per_channel = (0, 2, 3)  # (N, c, h, w) -> (c,)
    return {
        "images": len(pixels),
        "posterior_mean": {
            "channel_mean": mean.mean(per_channel).tolist(),
            "channel_std": mean.std(per_channel).tolist(),
        },
        "posterior_sample": {
            "channel_mean": sample.mean(per_channel).tolist(),
            "channel_std": sample.std(per_channel).tolist(),
            "mean": float(sample.mean()),
            "std": float(sample.std()),
            "sample_seed": seed,
        },
        "scaling_factor": float(1 / sample.std()),
    }


def save_figure(pixels: np.ndarray, decoded: np.ndarray, path: Path, count: int = 16, zoom: int = 3) -> None:
    """Test images (top row) over their reconstructions (bottom row), as one grey PNG."""
    from PIL import Image

    top = np.concatenate(list(pixels[:count, 0]), axis=1)  # (H, count*W)
    bottom = np.concatenate(list((decoded[:count, 0] + 1) / 2), axis=1)
    grid = np.clip(np.concatenate([top, bottom], axis=0) * 255 + 0.5, 0, 255).astype(np.uint8)
    image = Image.fromarray(grid, mode="L")
    image.resize((image.width * zoom, image.height * zoom), Image.Resampling.NEAREST).save(path)


@dataclass
class RunState:
    """What last.pt holds: the weights and optimizer, the epochs done, and every invocation with its time."""

    model: dict[str, Any]
    optimizer: dict[str, Any]
    epoch: int
    history: list[dict[str, Any]]
    invocations: list[dict[str, Any]]
    shape: AutoencoderShape
    settings: TrainSettings

    def save(self, path: Path) -> None:
        payload = dataclasses.asdict(self)
        tmp = path.with_suffix(".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> RunState:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        shape = payload.pop("shape")
        shape["block_out_channels"] = tuple(shape["block_out_channels"])
        return cls(shape=AutoencoderShape(**shape), settings=TrainSettings(**payload.pop("settings")), **payload)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    shape, settings = AutoencoderShape(), TrainSettings()
    p = argparse.ArgumentParser(prog="python -m model.train_autoencoder_kl", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the run directory")
    p.add_argument("--resume", action="store_true", help="continue OUT/last.pt (give the same settings)")
    p.add_argument(
        "--finish",
        action="store_true",
        help="with --resume: write the autoencoder and report from OUT/last.pt as it stands, training no further "
        "(a run cut short; the report records the epochs done and planned)",
    )
    p.add_argument("--data-dir", default=None, help="default: the dataset's directory, or $VAE_DATA_DIR")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--block-out-channels", type=int, nargs="+", default=list(shape.block_out_channels))
    p.add_argument("--layers-per-block", type=int, default=shape.layers_per_block)
    p.add_argument("--latent-channels", type=int, default=shape.latent_channels)
    p.add_argument("--norm-num-groups", type=int, default=shape.norm_num_groups)
    for field in dataclasses.fields(TrainSettings):
        default = getattr(settings, field.name)
        p.add_argument(f"--{field.name.replace('_', '-')}", type=type(default), default=default)
    return p.parse_args(argv)


def configs(args: argparse.Namespace) -> tuple[AutoencoderShape, TrainSettings]:
    shape = AutoencoderShape(
        block_out_channels=tuple(args.block_out_channels),
        layers_per_block=args.layers_per_block,
        latent_channels=args.latent_channels,
        norm_num_groups=args.norm_num_groups,
    )
    settings = TrainSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings)})
    return shape, settings


def start_or_resume(
    args: argparse.Namespace, shape: AutoencoderShape, settings: TrainSettings
) -> tuple[Any, torch.optim.Optimizer, RunState]:
    checkpoint = args.out / CHECKPOINT
    if checkpoint.exists() and not args.resume:
        raise SystemExit(f"{checkpoint} exists: add --resume to continue it, or choose another --out")
    if args.resume and not checkpoint.exists():
        raise SystemExit(f"--resume: {checkpoint} does not exist; drop --resume to start the run")
    torch.manual_seed(settings.seed)
    vae = build_autoencoder(shape).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(vae.parameters(), lr=settings.lr)
    if not args.resume:
        return vae, optimizer, RunState({}, {}, 0, [], [], shape, settings)
    state = RunState.load(checkpoint)
    if (state.shape, state.settings) != (shape, settings):
        raise SystemExit(
            f"--resume: {checkpoint} was trained with {state.shape} and {state.settings}; give the same flags"
        )
    vae.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    return vae, optimizer, state


def weights_sha256(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def finish(vae: Any, state: RunState, data: Dataset, out: Path) -> dict[str, Any]:
    """The saved autoencoder (scaling factor set) and the report: test errors, latent statistics, commands, time."""
    began = time.perf_counter()
    means, decoded = encode_decode(vae, data.test)
    latents = latent_statistics(vae, data.test, state.settings.seed)
    vae.register_to_config(scaling_factor=latents["scaling_factor"])
    vae.to(memory_format=torch.contiguous_format).save_pretrained(str(out / "autoencoder"))
    report_dir = out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    save_figure(data.test, decoded, report_dir / "reconstructions.png")
    import diffusers

    report = {
        "model": "diffusers AutoencoderKL",
        "shape": dataclasses.asdict(state.shape),
        "latent_shape": list(state.shape.latent_shape),
        "settings": dataclasses.asdict(state.settings),
        "loss": "per image: L1 summed over pixels + kl_weight * KL summed over latent elements (batch mean); "
        "no perceptual or adversarial term",
        "data": {
            "dataset": data.name,
            "source": data.source,
            "checksums": data.checksums,
            "range": "[0, 1] -> [-1, 1]",
        },
        "test": reconstruction_error(data.test, decoded),
        "test_first_images": reconstruction_error(data.test[:FIRST_IMAGES], decoded[:FIRST_IMAGES]),
        "reconstruction": "decode(posterior mean), clamped to [-1, 1], errors on [0, 1] pixels",
        "latents": latents,
        "latent_mean_abs_max": float(np.abs(means).max()),
        "epochs_done": state.epoch,
        "epochs_planned": state.settings.epochs,
        "history": state.history,
        "invocations": state.invocations,
        "training_seconds": sum(h["train_seconds"] for h in state.history),
        "wall_seconds": sum(i["wall_seconds"] for i in state.invocations) + time.perf_counter() - began,
        "autoencoder_files": weights_sha256(out / "autoencoder"),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "numpy": np.__version__,
        },
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads()},
    }
    (report_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.finish and not args.resume:
        raise SystemExit("--finish writes the autoencoder of an existing run: give it with --resume")
    try:
        shape, settings = configs(args)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    command = ["python", "-m", "model.train_autoencoder_kl", *(sys.argv[1:] if argv is None else argv)]
    data = load_dataset(settings.dataset, args.data_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    vae, optimizer, state = start_or_resume(args, shape, settings)
    invocation = {"command": shlex.join(command), "git_commit": git_commit(), "from_epoch": state.epoch + 1}
    state.invocations.append(invocation)
    for epoch in range(state.epoch + 1, state.epoch + 1 if args.finish else settings.epochs + 1):
        started = time.perf_counter()
        train = train_epoch(vae, optimizer, data.train[: settings.train_images or None], epoch, settings)
        trained = time.perf_counter() - started
        test = reconstruction_error(data.test, encode_decode(vae, data.test)[1])
        state.history.append({"epoch": epoch, **train, "test": test, "train_seconds": trained})
        print(
            f"epoch {epoch}/{settings.epochs}: loss {train['loss']:.2f}, test MSE {test['mse']:.5f} "
            f"PSNR {test['psnr_db']:.2f} dB L1 {test['l1']:.4f} ({trained:.0f} s training)",
            flush=True,
        )
        state.model, state.optimizer, state.epoch = vae.state_dict(), optimizer.state_dict(), epoch
        invocation["wall_seconds"] = time.perf_counter() - began
        state.save(args.out / CHECKPOINT)
    invocation["wall_seconds"] = time.perf_counter() - began
    report = finish(vae, state, data, args.out)
    state.save(args.out / CHECKPOINT)
    test = report["test"]
    print(
        f"wrote {args.out / 'autoencoder'} (scaling_factor {report['latents']['scaling_factor']:.4f}) and "
        f"{args.out / 'report' / 'report.json'}: test MSE {test['mse']:.5f}, PSNR {test['psnr_db']:.2f} dB",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
