"""Frozen configs for the model and for training. Everything downstream is built from these."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from model.core.likelihoods import LIKELIHOODS
from model.core.priors import PRIOR_KINDS, PriorKind, prior_kind

Arch = Literal["conv", "mlp"]
GaussianScale = Literal["shared", "per_pixel", "decoder"]
PRIORS = tuple(PRIOR_KINDS)  # the names configs store; each kind is a `model.core.priors.PriorKind`
OBJECTIVES = ("elbo", "iwae-dreg")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the VAE.

    `arch` picks the encoder family, `decoder` the decoder's. The default conv decoder is dense layers
    up to a 32 x 7 x 7 feature map, then two stride-2 transposed convs (32 -> 16 -> the image). It is
    chosen for cost and quality together: the IWAE estimate with k=5000 runs the decoder 50 million
    times on the Fashion-MNIST test set, and of the decoders measured this one costs about half of a
    mirrored 64 -> 32 decoder per sample at the same test ELBO, while the cheaper ones (one transposed
    conv, or dense only) score worse. The measurements and their history are in
    docs/design/decoder-cost.md (`python -m bench.decoder_cost`, bench/results/decoder_cost.json).
    """

    arch: Arch = "conv"
    decoder: Arch = "conv"
    input_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    latent_dim: int = 32
    conv_channels: tuple[int, ...] = (32, 64)  # encoder: each stride-2 conv halves H and W
    # conv decoder: channels entering each stride-2 transposed conv, lowest resolution first
    # (each doubles H and W); empty = mirror the encoder's conv_channels
    decoder_channels: tuple[int, ...] = (32, 16)
    hidden: tuple[int, ...] = (512, 512)  # dense layers (encoder head and decoder)
    likelihood: str = "bernoulli"  # a name in model.core.likelihoods.LIKELIHOODS
    # one learned sigma, one per pixel, or one per pixel that the decoder outputs for each z
    gaussian_scale: GaussianScale = "shared"
    logvar_min: float = -12.0  # encoder log-variance is clamped to a numerically safe range
    logvar_max: float = 8.0
    prior: str = "standard_normal"  # a name in PRIORS: checkpoints and manifests store the name
    prior_components: int = 0  # K, for a prior with components (mog, vamp); 0 for one without
    # A second stochastic level z1 between the top latent and the image (model/vae.py, docs/design/hierarchy.md):
    # its dimensions, 0 for one level. latent_dim is then the top level's, where the prior is.
    lower_latent_dim: int = 0

    def __post_init__(self) -> None:
        prior_kind(self.prior).check_components(self.prior_components)
        _check(self.arch in ("conv", "mlp"), f"arch must be 'conv' or 'mlp', not {self.arch!r}")
        _check(self.decoder in ("conv", "mlp"), f"decoder must be 'conv' or 'mlp', not {self.decoder!r}")
        _check(
            self.likelihood in LIKELIHOODS,
            f"likelihood must be one of {', '.join(sorted(LIKELIHOODS))}, not {self.likelihood!r}",
        )
        _check(
            self.gaussian_scale in ("shared", "per_pixel", "decoder"),
            f"gaussian_scale must be 'shared', 'per_pixel' or 'decoder', not {self.gaussian_scale!r}",
        )
        _check(
            len(self.input_shape) == 3 and all(int(s) > 0 for s in self.input_shape),
            f"input_shape must be (C, H, W) of positive ints, not {self.input_shape!r}",
        )
        _check(self.latent_dim > 0, "latent_dim must be positive")
        _check(len(self.hidden) > 0 and all(h > 0 for h in self.hidden), "hidden needs at least one positive width")
        _check(self.logvar_min < self.logvar_max, "logvar_min must be below logvar_max")
        _check(self.lower_latent_dim >= 0, "lower_latent_dim must be >= 0 (0: one stochastic level)")
        _check(
            self.lower_latent_dim == 0 or self.prior != "vamp",
            "a two-level VAE takes the standard_normal or mog prior at its top: the VampPrior's pseudo-inputs "
            "would need the whole inference path",
        )
        for name, channels, used, dense in (
            ("conv_channels", self.conv_channels, self.arch == "conv", "--arch mlp"),
            ("decoder_channels", self.decoder_up_channels, self.decoder == "conv", "--decoder mlp"),
        ):
            if not used:
                continue
            _check(len(channels) > 0 and all(c > 0 for c in channels), f"{name} needs at least one positive width")
            factor = 2 ** len(channels)
            _, height, width = self.input_shape
            _check(
                height % factor == 0 and width % factor == 0,
                f"input H and W ({height}x{width}) must be divisible by 2**len({name}) = {factor}, as each conv "
                f"layer halves them: pick an --image-size divisible by {factor}, fewer --{name.replace('_', '-')}, "
                f"or {dense}",
            )

    @property
    def prior_kind(self) -> PriorKind:
        return prior_kind(self.prior)

    @property
    def decoder_up_channels(self) -> tuple[int, ...]:
        return self.decoder_channels or tuple(reversed(self.conv_channels))

    @property
    def levels(self) -> int:
        """Stochastic levels: 1, or 2 with a lower latent z1 between the top latent and the image."""
        return 2 if self.lower_latent_dim else 1

    @property
    def noise_dim(self) -> int:
        """Standard normal numbers a sample of q(z|x) takes: every level's dimensions, the top's first."""
        return self.latent_dim + self.lower_latent_dim

    @property
    def input_dim(self) -> int:
        channels, height, width = self.input_shape
        return channels * height * width

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**_tuples(data, cls))


@dataclass(frozen=True)
class ArchPreset:
    """The architecture a conv VAE gets by default for images up to `max_side` pixels on their longer side."""

    max_side: int
    conv_channels: tuple[int, ...]
    decoder_channels: tuple[int, ...]
    hidden: tuple[int, ...]
    latent_dim: int

    @property
    def factor(self) -> int:
        """H and W must be multiples of this: each stage halves them."""
        return 2 ** len(self.conv_channels)


# By the longer side of the images: one more stride-2 stage and wider channels each time the side doubles, so
# the last feature map stays 7 to 8 pixels across. Up to 32 px it is the Fashion-MNIST model's architecture (the
# ModelConfig defaults), so the published models and comparisons hold.
ARCH_PRESETS = (
    ArchPreset(32, (32, 64), (32, 16), (512, 512), 32),
    ArchPreset(64, (32, 64, 128), (64, 32, 16), (512,), 64),
    ArchPreset(128, (32, 64, 128, 256), (128, 64, 32, 16), (512,), 128),
    ArchPreset(256, (32, 64, 128, 256, 256), (256, 128, 64, 32, 16), (512,), 256),
)
# A folder's images larger than this on their longer side are resized down to it by default (training on a CPU
# at 256 px is slow; --image-size asks for any size).
DEFAULT_MAX_SIDE = 128


def arch_preset(height: int, width: int) -> ArchPreset:
    """The preset for images of H x W: the first whose `max_side` holds the longer side."""
    side = max(height, width)
    return next((preset for preset in ARCH_PRESETS if side <= preset.max_side), ARCH_PRESETS[-1])


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None  # None: $VAE_DATA_DIR or the dataset's default directory
    epochs: int = 170
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    lr_min: float = 1e-5
    beta: float = 1.0
    kl_warmup_epochs: int = 10  # beta ramps linearly from 0 to `beta` over these epochs
    seed: int = 0
    threads: int = 2
    test_binarize_seed: int = 0  # the test set is binarised once, with this seed
    limit_train: int | None = None  # use only the first N training images (smoke tests)
    limit_test: int | None = None
    objective: str = "elbo"  # a name in OBJECTIVES
    samples: int = 1  # importance samples per image in the objective (iwae-dreg)
    validation: int = 0  # the last N training images are held out to pick the best epoch (0: the test ELBO)
    patience: int = 0  # stop when the validation bound has not improved for this many epochs (0: never)
    init_from: str | None = None  # start from this checkpoint's model (its prior too, when of the same kind)
    init_sha256: str | None = None
    prior_fit_steps: int = 0  # with init_from: first fit a mixture prior alone to the aggregate posterior
    # folder: the share of the images held out of training for the anomaly calibration (model/data.py)
    calibration_split: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # `defaults`: what vae-train chose, and why

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "epochs must be positive")
        _check(self.batch_size > 0, "batch_size must be positive")
        _check(self.lr > 0, "lr must be positive")
        _check(self.lr_schedule in ("cosine", "constant"), "lr_schedule must be 'cosine' or 'constant'")
        _check(self.beta >= 0, "beta must be >= 0")
        _check(self.kl_warmup_epochs >= 0, "kl_warmup_epochs must be >= 0")
        _check(self.threads > 0, "threads must be positive")
        _check(
            self.objective in OBJECTIVES, f"objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}"
        )
        _check(self.samples >= 1, "samples must be >= 1")
        _check(self.objective == "iwae-dreg" or self.samples == 1, "samples > 1 needs --objective iwae-dreg")
        _check(
            self.objective == "elbo" or (self.beta == 1.0 and self.kl_warmup_epochs == 0),
            "--objective iwae-dreg bounds log p(x) itself: it takes --beta 1 and --kl-warmup-epochs 0",
        )
        _check(self.validation >= 0 and self.patience >= 0, "validation and patience must be >= 0")
        _check(self.patience == 0 or self.validation > 0, "--patience needs a --validation split")
        _check(0.0 <= self.calibration_split < 0.5, "--calibration-split must be in [0, 0.5)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return cls(**_tuples(data, cls))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _tuples(data: dict[str, Any], cls: type) -> dict[str, Any]:
    """JSON turns tuples into lists; turn them back for the tuple-typed fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
