"""The training loop as parts a test can call one at a time: `set_up` builds a `Trainer` (seeds, data,
model, data order, optimizer and schedule, restored from OUT/last.pt on resume), which runs an epoch,
ends it (checkpoint, validation, early stopping), stops cleanly on Ctrl-C and logs; `train` is the
loop over epochs. `vae-train` (model/train.py) only parses its flags into the configs and calls `train`.

Under `torchrun --nproc_per_node=N` it trains with DistributedDataParallel (model/distributed.py):
the batch size stays the global batch, rank 0 writes the metrics and checkpoints."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from model import checkpoint, distributed, losses
from model.checkpoint import Checkpoint
from model.config import ModelConfig, TrainConfig
from model.core import likelihoods
from model.data import Dataset, fixed_test_set
from model.distributed import SINGLE_PROCESS, Ranks, ShardedOrder, SharedStreamOrder
from model.hierarchy_loss import two_level_terms
from model.vae import VAE


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
def evaluate_elbo(
    model: VAE, x_test: torch.Tensor, seed: int, batch_size: int = 1000, ranks: Ranks = SINGLE_PROCESS, samples: int = 1
) -> dict[str, float]:
    """Test-set ELBO with one reparameterised sample per image from a fixed generator, and with
    `samples` > 1 the IWAE bound over that many (the ELBO uses the first). With N ranks,
    each draws every batch's noise and scores every N-th image of it; the sums are all-reduced, so
    the numbers are one process's whatever N is (up to float rounding)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    totals = {"elbo": 0.0, "reconstruction": 0.0, "kl": 0.0, **({"iwae": 0.0} if samples > 1 else {})}
    mine = slice(ranks.rank, None, ranks.world_size)
    for start in range(0, len(x_test), batch_size):
        x = x_test[start : start + batch_size]
        eps = _noise(samples, len(x), model.config.noise_dim, generator)  # (B, D) or (S, B, D)
        if not len(x[mine]):
            continue
        mine_eps = eps[mine] if samples == 1 else eps[:, mine]
        terms = _terms(model, x[mine].to(ranks.device), mine_eps.to(ranks.device), beta=1.0)
        if samples > 1:  # the ELBO of the first sample, as with samples == 1
            first = _terms(model, x[mine].to(ranks.device), mine_eps[0].to(ranks.device), beta=1.0)
            terms = {**first, "iwae": terms["iwae"]}
        for key in totals:
            totals[key] += float(terms[key].sum())
    model.train()
    totals = distributed.sum_over_ranks(totals, ranks)
    return {key: value / len(x_test) for key, value in totals.items()}


def epoch_file(epoch: int) -> str:
    """The name under which `--keep-epochs` keeps the end of an epoch."""
    return f"epoch-{epoch:03d}.pt"


def validation_split(
    data: Dataset, config: TrainConfig, likelihood: likelihoods.Likelihood
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the training images, the validation split in the data space or None): the last `config.validation`
    of the (limited) training images, drawn into the data space once, like the test set, so the selection
    metric is not noisier than it must be."""
    x_train = torch.from_numpy(data.train[: config.limit_train])
    if not config.validation:
        return x_train, None
    if config.validation >= len(x_train):
        raise ValueError(f"--validation {config.validation} leaves no training images of {len(x_train)}")
    x_val = torch.from_numpy(
        fixed_test_set(x_train[-config.validation :].numpy(), likelihood, config.test_binarize_seed + 1)
    )
    return x_train[: -config.validation], x_val


def evaluate_validation(
    model: VAE, x_val: torch.Tensor, config: TrainConfig, ranks: Ranks = SINGLE_PROCESS
) -> dict[str, float]:
    """The run's bound on its validation split, by which best.pt is chosen (and `vae-average` reports)."""
    return evaluate_elbo(model, x_val, seed=config.seed + 1, ranks=ranks, samples=config.samples, batch_size=500)


def _noise(samples: int, batch: int, latent_dim: int, generator: torch.Generator) -> torch.Tensor:
    """The reparameterisation noise of a step: (B, D) for the ELBO, (S, B, D) for S importance samples."""
    shape = (batch, latent_dim) if samples == 1 else (samples, batch, latent_dim)
    return torch.randn(shape, generator=generator)


def _terms(model: VAE, x: torch.Tensor, eps: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """Per-image terms of x (B, C, H, W): with eps (B, D) the ELBO, with eps (S, B, D) the IWAE bound
    over S samples with DReG gradients for the encoder (model/losses.py). A two-level VAE's: eps holds
    every level's noise (model/hierarchy_loss.py)."""
    if model.lower is not None:
        return two_level_terms(model, x, eps, beta)
    mean, logvar = model.encode(x)  # (B, D), (B, D)
    likelihood = likelihoods.get(model.config.likelihood)
    if eps.dim() == 3:
        samples, batch, dims = eps.shape
        z = losses.reparameterize(mean, logvar, eps)  # (S, B, D)
        flat = z.reshape(samples * batch, dims)
        repeated = x.expand(samples, *x.shape).reshape(samples * batch, *x.shape[1:])
        log_px_z = likelihood.torch_log_prob(repeated, model.decode(flat)).view(samples, batch)
        log_pz = model.prior.log_prob(flat).view(samples, batch)
        log_qz = losses.log_normal_diag(z, mean.detach(), logvar.detach())  # (S, B)
        return losses.iwae_dreg_terms(log_px_z, log_pz, log_qz, z)
    z = losses.reparameterize(mean, logvar, eps)
    log_px_z = likelihood.torch_log_prob(x, model.decode(z))
    kl = model.prior.kl(z, mean, logvar)  # closed form or the one-sample estimate, as the prior has
    return losses.elbo_terms(log_px_z, kl, beta)


class _Objective(nn.Module):
    """`_terms` as a module's forward(), the one call DistributedDataParallel wraps: its gradient
    all-reduce is armed by forward(), not by calls to encode() and decode()."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, eps: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
        return _terms(self.model, x, eps, beta)


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


@dataclass(frozen=True)
class TrainHooks:
    """Points where a test can watch or stop a real run; a production run passes none (`NO_HOOKS`).

    `pause_at` (epoch from 1, step from 0): training stops before that step, writes OUT/paused and waits for
    Ctrl-C, so a test can interrupt a real run at a known point without guessing from timing.
    `trace_weights` (a directory): each rank appends "EPOCH:STEP SHA256" of its weights after every step to
    DIR/rank<R>.txt, so a test can see that the ranks never differ."""

    pause_at: tuple[int, int] | None = None
    trace_weights: Path | None = None


NO_HOOKS = TrainHooks()


def pause_until_interrupted(
    out: Path, interrupt: _Interrupt, at: tuple[int, int], ranks: Ranks, timeout: float = 120.0
) -> None:
    if ranks.is_main:
        (out / "paused").write_text(f"{at[0]}:{at[1]}\n")
    interrupt.event.wait(timeout)  # Python runs the SIGINT handler, which sets it, in this thread


class WeightTracer:
    """`TrainHooks.trace_weights`: this rank's weights hashed after every step, one line each."""

    def __init__(self, directory: Path, ranks: Ranks) -> None:
        self.path = Path(directory) / f"rank{ranks.rank}.txt"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")

    def __call__(self, epoch: int, step: int, model: VAE) -> None:
        digest = hashlib.sha256()
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().numpy().tobytes())
        with self.path.open("a") as handle:
            handle.write(f"{epoch + 1}:{step} {digest.hexdigest()}\n")


def _noise_generator_state(state: Checkpoint, ranks: Ranks, seed: int) -> torch.Tensor:
    """The state this rank's data-space and reparameterisation generator resumes from. With the
    world size of the checkpoint, the state it saved for this rank, so the run goes on bit for bit
    as an uninterrupted one. With another world size, a fresh stream seeded by (seed, rank, epoch)
    that no earlier epoch drew from: weights, optimizer, schedule and data order carry over, the
    noise does not (a rank has no counterpart in the old run)."""
    saved = state.world_size
    if saved == ranks.world_size:
        rank_states = state.rank_rng_states
        chosen = state.rng_state if saved == 1 or rank_states is None else rank_states[ranks.rank]
        if chosen is None:
            raise ValueError("--resume: last.pt holds no generator state (it is not a checkpoint to resume)")
        return chosen
    entropy = np.random.SeedSequence([seed, ranks.rank, state.epoch]).generate_state(2, np.uint64)[0]
    if ranks.is_main:
        print(
            f"vae-train: --resume: last.pt was written by {saved} process(es), this run has {ranks.world_size}; "
            "the weights, optimizer, schedule and data order carry over, the per-process noise streams are "
            "re-seeded, so the run will not match one that kept the old process count",
            file=sys.stderr,
        )
    return torch.Generator().manual_seed(int(entropy) >> 1).get_state()


@dataclass(frozen=True)
class RunOptions:
    """How a run is driven, beside what it trains (the configs): see `train`."""

    resume: bool = False
    progress: bool = True
    command: list[str] | None = None
    stop_after: int | None = None
    ranks: Ranks = SINGLE_PROCESS
    keep_epochs: bool = False
    hooks: TrainHooks = NO_HOOKS


@dataclass
class Trainer:
    """One run's state between steps, and its parts: a step, an epoch, the end of an epoch (validation,
    the epoch's record, checkpoints, early stopping) and the checkpoint record of where it stands."""

    model_config: ModelConfig
    config: TrainConfig
    data: Dataset
    out: Path
    options: RunOptions
    model: VAE
    likelihood: likelihoods.Likelihood
    x_train: torch.Tensor  # (N, C, H, W) in [0, 1]
    x_val: torch.Tensor | None  # the validation split, in the data space
    x_test: torch.Tensor  # the test set, in the data space
    generator: torch.Generator  # this rank's data-space and reparameterisation draws
    order: ShardedOrder | SharedStreamOrder
    optimizer: torch.optim.Optimizer
    scheduler: Any
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float = -math.inf  # the best selection bound so far
    start_epoch: int = 0
    objective: nn.Module | None = None  # `_Objective`, wrapped for DDP once the weights are final

    @property
    def ranks(self) -> Ranks:
        return self.options.ranks

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def restore(self, state: Checkpoint) -> None:
        """Continue from `state` (OUT/last.pt) with the same numbers as an uninterrupted run."""
        if state.model_config != self.model_config:
            raise SystemExit(f"--resume: the model config in {self.out / 'last.pt'} differs from the flags given")
        if state.optimizer_state is None or state.scheduler_state is None:
            raise ValueError(f"--resume: {self.out / 'last.pt'} holds no optimizer state to resume from")
        self.model.load_state_dict(state.model_state)
        self.optimizer.load_state_dict(state.optimizer_state)
        self.scheduler.load_state_dict(state.scheduler_state)
        self.generator.set_state(_noise_generator_state(state, self.ranks, self.config.seed))
        self.history, self.start_epoch = state.metrics, state.epoch
        self.best = state.best_selection if state.best_selection is not None else -math.inf

    def record(self, epoch: int, rng_states: list[torch.Tensor]) -> Checkpoint:
        """The checkpoint of the run as it stands at the end of `epoch` (each rank's generator state given)."""
        return Checkpoint(
            model_config=self.model_config,
            train_config=self.config,
            model_state=self.model.state_dict(),
            epoch=epoch,
            metrics=list(self.history),
            data_checksums=self.data.checksums,
            best_selection=self.best,
            optimizer_state=self.optimizer.state_dict(),
            scheduler_state=self.scheduler.state_dict(),
            rng_state=rng_states[0],
            world_size=self.ranks.world_size,
            rank_rng_states=rng_states if self.ranks.distributed else None,
            command=self.options.command if self.options.command is not None else list(sys.argv),
        )

    def save(self, epoch: int, improved: bool) -> None:
        """Called by every rank only between epochs, where each generator's state is that of the next
        epoch's start: rank 0 gathers the ranks' states and writes, the others wait at the barrier."""
        states = distributed.gather(self.generator.get_state(), self.ranks)
        if self.ranks.is_main:
            record = self.record(epoch, states)
            for name in ("best.pt", "last.pt") if improved else ("last.pt",):
                record.save(self.out / name)
            if self.options.keep_epochs and epoch:  # weights and history only: a third of the size
                record.without_training_state().save(self.out / epoch_file(epoch))
        distributed.barrier(self.ranks)

    def step(self, batch: torch.Tensor, epoch: int, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One optimizer step on a batch (B, C, H, W) of [0, 1] images: its per-image terms and the loss."""
        assert self.objective is not None, "set_up() wraps the objective"
        x = self.likelihood.torch_to_data_space(batch, self.generator)  # a fresh draw each time an image is seen
        eps = _noise(self.config.samples, len(x), self.model_config.noise_dim, self.generator)  # (B, D) or (S, B, D)
        device = self.ranks.device
        terms = self.objective(
            x.to(device), eps.to(device), kl_weight(self.config, epoch, step, self.order.steps_per_epoch)
        )
        loss = -terms["objective"].mean()  # equal shards: DDP's mean of the ranks' means is the batch's
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return terms, loss

    def run_epoch(self, epoch: int, interrupt: _Interrupt, tracer: WeightTracer | None) -> dict[str, float]:
        """The steps of one epoch; the train sums over every rank, with the count of images seen."""
        indices = self.order.epoch(epoch)  # this rank's images of the epoch, in order
        sums = {"objective": 0.0, "elbo": 0.0, "reconstruction": 0.0, "kl": 0.0}
        seen, size = 0, self.order.batch_size
        bar = tqdm(
            range(self.order.steps_per_epoch),
            desc=f"epoch {epoch + 1}/{self.config.epochs}",
            disable=not (self.options.progress and self.ranks.is_main),
            leave=False,
            dynamic_ncols=True,
        )
        for step in bar:
            pause_at = self.options.hooks.pause_at
            if pause_at == (epoch + 1, step):
                pause_until_interrupted(self.out, interrupt, pause_at, self.ranks)
            self.stop_if_interrupted(interrupt, epoch)
            terms, loss = self.step(self.x_train[indices[step * size : (step + 1) * size]], epoch, step)
            for key in sums:
                sums[key] += float(terms[key].detach().sum())
            seen += len(terms["objective"])  # this rank's images of the step
            if tracer:
                tracer(epoch, step, self.model)
            bar.set_postfix(loss=f"{loss.item():.2f}")
        return distributed.sum_over_ranks({**sums, "images": seen}, self.ranks)

    def stop_if_interrupted(self, interrupt: _Interrupt, epoch: int) -> None:
        """After a Ctrl-C on any rank, every rank stops here, between two steps, with exit status 130."""
        if not distributed.any_rank(interrupt.requested, self.ranks):
            return
        kept = f"the end of epoch {epoch}" if epoch else "the start of training"
        if self.ranks.is_main:
            print(
                f"\ninterrupted in epoch {epoch + 1}; its unfinished steps are dropped: "
                f"{self.out / 'last.pt'} holds {kept}. Continue with --resume",
                file=sys.stderr,
            )
        raise SystemExit(130)

    def epoch_record(self, epoch: int, totals: dict[str, float], seconds: float) -> dict[str, Any]:
        """The epoch's line of metrics.jsonl: train means, the test ELBO, the validation bound, and the
        `selection` bound best.pt is chosen by (the objective's bound on the validation split when there is one)."""
        test = evaluate_elbo(self.model, self.x_test, seed=self.config.seed, ranks=self.ranks)
        val = {} if self.x_val is None else evaluate_validation(self.model, self.x_val, self.config, self.ranks)
        record = {
            "epoch": epoch + 1,
            **{f"train_{k}": totals[k] / totals["images"] for k in ("objective", "elbo", "reconstruction", "kl")},
            **{f"test_{k}": v for k, v in test.items()},
            **{f"val_{k}": v for k, v in val.items()},
            "beta": kl_weight(self.config, epoch + 1, 0, self.order.steps_per_epoch),
            "lr": self.scheduler.get_last_lr()[0],
            "seconds": seconds,
            "images_per_second": totals["images"] / seconds,
        }
        record["selection"] = val.get("iwae", val.get("elbo", test["elbo"]))
        return record

    def end_epoch(self, epoch: int, totals: dict[str, float], seconds: float) -> bool:
        """Validation, the epoch's record, the checkpoints; True when early stopping ends the run here."""
        record = self.epoch_record(epoch, totals, seconds)
        self.history.append(record)
        improved = record["selection"] > self.best
        self.best = max(self.best, record["selection"])
        if self.ranks.is_main:
            self.log_epoch(record)
        self.save(epoch + 1, improved)
        return self.stops_early(epoch)

    def log_epoch(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(
            f"epoch {record['epoch']}/{self.config.epochs}: train ELBO {record['train_elbo']:.2f}  "
            f"test ELBO {record['test_elbo']:.2f} (rec {record['test_reconstruction']:.2f}, "
            f"KL {record['test_kl']:.2f})  {record['seconds']:.1f}s",
            flush=True,
        )

    def stops_early(self, epoch: int) -> bool:
        """Whether the validation bound has not improved for `patience` epochs."""
        stale = epochs_without_improvement(self.history)
        if not (self.config.patience and stale >= self.config.patience):
            return False
        if self.ranks.is_main:
            print(
                f"early stop: the validation bound has not improved for {stale} epochs; best.pt holds "
                f"epoch {epoch + 1 - stale}",
                flush=True,
            )
        return True

    def last_epoch(self) -> int:
        """The epoch this run ends after: the schedule's last, or `stop_after` epochs from the start."""
        stop_after = self.options.stop_after
        return self.config.epochs if stop_after is None else min(self.config.epochs, self.start_epoch + stop_after)


def set_up(model_config: ModelConfig, config: TrainConfig, data: Dataset, out: Path, options: RunOptions) -> Trainer:
    """The run before its first step: seeds, data, the model (from --init-from or fresh), the data order,
    the optimizer and schedule, restored from OUT/last.pt with `resume`, and the objective DDP wraps."""
    ranks = options.ranks
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
    if ranks.is_main:
        out.mkdir(parents=True, exist_ok=True)
    likelihood = likelihoods.get(model_config.likelihood)
    x_test = torch.from_numpy(fixed_test_set(data.test[: config.limit_test], likelihood, config.test_binarize_seed))
    x_train, x_val = validation_split(data, config, likelihood)
    model = VAE(model_config).to(ranks.device)
    if config.init_from and not options.resume:
        initialize_from(model, config, x_train, likelihood)
    # The data-space and reparameterisation draws: one stream per rank, seed + rank.
    generator = torch.Generator().manual_seed(config.seed + ranks.rank)
    order = (
        ShardedOrder(len(x_train), config.batch_size, ranks, config.seed)
        if ranks.distributed
        else SharedStreamOrder(len(x_train), config.batch_size, generator)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    trainer = Trainer(
        model_config=model_config,
        config=config,
        data=data,
        out=out,
        options=options,
        model=model,
        likelihood=likelihood,
        x_train=x_train,
        x_val=x_val,
        x_test=x_test,
        generator=generator,
        order=order,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, config, order.steps_per_epoch),
    )
    if options.resume:
        # Rank 0 reads the file and hands it to the others: no file system shared between machines needed.
        trainer.restore(distributed.from_main(checkpoint.load(out / "last.pt") if ranks.is_main else None, ranks))
    trainer.objective = distributed.wrap(_Objective(model), ranks)
    return trainer


def train(
    model_config: ModelConfig,
    config: TrainConfig,
    data: Dataset,
    out: Path,
    resume: bool = False,
    progress: bool = True,
    command: list[str] | None = None,
    stop_after: int | None = None,
    ranks: Ranks = SINGLE_PROCESS,
    keep_epochs: bool = False,
    hooks: TrainHooks = NO_HOOKS,
) -> dict[str, Any]:
    """Train and write OUT/{last,best}.pt and OUT/metrics.jsonl. Returns the last epoch's metrics.

    `stop_after` ends this run after that many epochs (the schedule still spans `config.epochs`);
    `resume=True` continues from OUT/last.pt with the same numbers as an uninterrupted run.
    `keep_epochs` also keeps each epoch's end as OUT/epoch-NNN.pt (what `vae-average` averages).
    `ranks` other than the default single process: this is one of N DDP processes (see main).
    `hooks`: for tests only (`TrainHooks`)."""
    options = RunOptions(resume, progress, command, stop_after, ranks, keep_epochs, hooks)
    trainer = set_up(model_config, config, data, out, options)
    if ranks.is_main:
        trainer.metrics_path.write_text("".join(json.dumps(m) + "\n" for m in trainer.history))
    # Ctrl-C drops the unfinished epoch: OUT/last.pt always holds the end of the last completed one
    # (or the start), so --resume replays exactly what an uninterrupted run does next. Saving the
    # position inside an epoch would also need the data order, the step, the running train sums and
    # the epoch's timing; an epoch boundary is one consistent point, the one `stop_after` already
    # resumes from, at the cost of redoing at most one epoch.
    if not resume:
        trainer.save(trainer.start_epoch, improved=False)
    tracer = WeightTracer(hooks.trace_weights, ranks) if hooks.trace_weights else None
    trainer.model.train()
    with _Interrupt() as interrupt:
        for epoch in range(trainer.start_epoch, trainer.last_epoch()):
            began = time.perf_counter()
            totals = trainer.run_epoch(epoch, interrupt, tracer)
            if trainer.end_epoch(epoch, totals, time.perf_counter() - began):
                break
    return trainer.history[-1] if trainer.history else {}


def epochs_without_improvement(history: list[dict[str, Any]]) -> int:
    """Epochs since the best `selection` in the history (0 when the last epoch is the best)."""
    scores = [record.get("selection", -math.inf) for record in history]
    return len(scores) - 1 - max(range(len(scores)), key=lambda i: (scores[i], -i))


def initialize_from(model: VAE, config: TrainConfig, x_train: torch.Tensor, likelihood: likelihoods.Likelihood) -> None:
    """Start from another run's model (`config.init_from`, its SHA-256 checked). A source with the same
    prior (kind and components) is taken whole, the prior included, so a run can continue another with a
    new objective or schedule; otherwise only the encoder and decoder are taken, and a mixture prior starts
    at the posteriors of K training images drawn with the run's seed, then `prior_fit_steps` fit it."""
    path = Path(config.init_from)
    if config.init_sha256 and hashlib.sha256(path.read_bytes()).hexdigest() != config.init_sha256:
        raise ValueError(f"--init-from {path}: its SHA-256 differs from the one recorded for this run")
    state = checkpoint.load(path)
    source = state.model_config
    if (
        dataclasses.replace(source, prior=model.config.prior, prior_components=model.config.prior_components)
        != model.config
    ):
        raise ValueError(f"--init-from {path}: its architecture differs from the flags given (only the prior may)")
    same_prior = source == model.config
    if same_prior and config.prior_fit_steps:
        raise ValueError(
            f"--init-from {path}: it has this prior already; --prior-fit-steps fits only a newly placed one"
        )
    own = {k: v for k, v in state.model_state.items() if same_prior or not k.startswith("prior.")}
    missing, unexpected = model.load_state_dict(own, strict=False)
    if unexpected or any(same_prior or not name.startswith("prior.") for name in missing):
        raise ValueError(f"--init-from {path}: weights do not fit ({missing}, {unexpected})")
    if not same_prior and model.prior.kind.learned:
        generator = torch.Generator().manual_seed(config.seed)
        chosen = torch.randperm(len(x_train), generator=generator)[: model.config.prior_components]
        images = likelihood.torch_to_data_space(x_train[chosen], generator)
        model.eval()
        model.prior.initialize(images, model.encoder)
        fit_prior(model, x_train, likelihood, config.prior_fit_steps, generator)
        model.train()


def fit_prior(
    model: VAE,
    x_train: torch.Tensor,
    likelihood: likelihoods.Likelihood,
    steps: int,
    generator: torch.Generator,
    batch: int = 1000,
    lr: float = 3e-3,
) -> None:
    """Fit the prior alone, encoder and decoder fixed: maximise E[log p(z)] over z ~ q(z|x) of training images,
    i.e. move p(z) towards the aggregate posterior, the prior that maximises the ELBO for this encoder. The
    joint training that follows then starts from a prior already better than N(0, I)."""
    if not steps:
        return
    with torch.no_grad():
        data = likelihood.torch_to_data_space(x_train, generator)
        mean, logvar = (
            torch.cat(part)
            for part in zip(*(model.encode(data[i : i + 2000]) for i in range(0, len(data), 2000)), strict=False)
        )
    optimizer = torch.optim.Adam(model.prior.parameters(), lr=lr)
    for _ in range(steps):
        chosen = torch.randint(len(mean), (batch,), generator=generator)
        z = losses.reparameterize(
            mean[chosen], logvar[chosen], torch.randn((batch, mean.shape[1]), generator=generator)
        )
        loss = -model.prior.log_prob(z).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    print(f"prior fitted to the aggregate posterior in {steps} steps: E[log p(z)] {-loss.item():.2f}", flush=True)
