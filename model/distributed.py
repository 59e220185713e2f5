"""torchrun support for `vae-train`: which rank this process is, how an epoch's data is split between
the ranks, and the few collective steps training needs.

`torchrun` starts one process per rank with RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous
address) in the environment. Without them, or with WORLD_SIZE=1, nothing here starts a process
group and `vae-train` is the plain single-process program, with its results bit for bit.

`--batch-size` is the global batch: each of N ranks takes `batch_size / N` images per step, and
DDP averages the gradients, so a step sees the images and the gradient a single process would.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes; the default is a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the rank among this machine's processes: which GPU it drives
    backend: str | None = None  # "gloo" or "nccl" once a process group is up; None in a single process
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, and writes metrics and checkpoints."""
        return self.rank == 0


SINGLE_PROCESS = Ranks()  # plain `vae-train`: no process group, no collective steps


def from_environment(device: str = "cpu", environ: Mapping[str, str] = os.environ) -> Ranks:
    """Ranks from torchrun's variables, starting the process group when there is more than one:
    gloo for CPU training, NCCL for CUDA (one GPU per process, picked by LOCAL_RANK)."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', not {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device: train with --device cpu")
    world_size = int(environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(environ.get("RANK", "0")), int(environ.get("LOCAL_RANK", "0"))
    if world_size <= 1:
        return SINGLE_PROCESS if device == "cpu" else Ranks(device=torch.device("cuda", 0))
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    # env:// rendezvous: the MASTER_ADDR and MASTER_PORT that torchrun set
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    return Ranks(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        backend=backend,
        device=torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu"),
    )


def shutdown(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch_size(batch_size: int, world_size: int) -> int:
    if batch_size % world_size:
        raise ValueError(
            f"--batch-size {batch_size} is the global batch and must split evenly over the "
            f"{world_size} processes: pass a multiple of {world_size}, e.g. "
            f"{max(world_size, batch_size - batch_size % world_size)}"
        )
    return batch_size // world_size


def wrap(model: torch.nn.Module, ranks: Ranks) -> torch.nn.Module:
    """The model that training steps call: DDP over the process group, or the model itself.
    DDP broadcasts rank 0's initial weights and averages the gradients in backward()."""
    if not ranks.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[ranks.local_rank] if ranks.device.type == "cuda" else None)


class EpochOrder:
    """Which training images this rank sees in each step of an epoch."""

    steps_per_epoch: int
    batch_size: int  # images per step on this rank

    def epoch(self, epoch: int) -> torch.Tensor:
        """This rank's indices for the epoch, in order: step s takes [s * batch_size, (s + 1) * batch_size)."""
        raise NotImplementedError


class SharedStreamOrder(EpochOrder):
    """A single process: a permutation drawn from the training generator, the stream the data-space
    and reparameterisation draws also come from, as `vae-train` always did."""

    def __init__(self, count: int, batch_size: int, generator: torch.Generator) -> None:
        self.count, self.batch_size, self.generator = count, batch_size, generator
        self.steps_per_epoch = -(-count // batch_size)

    def epoch(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.count, generator=self.generator)


class ShardedOrder(EpochOrder):
    """torch's DistributedSampler: one permutation per epoch seeded by (seed + epoch), the same on every
    rank, padded with its first images to a multiple of the world size, rank r taking positions
    r, r + N, r + 2N... So step s of the N ranks together takes positions [s * B, (s + 1) * B) of
    the permutation (B the global batch), and every rank steps the same number of times with the
    same number of images: DDP's average of the ranks' mean losses is the global batch's mean."""

    def __init__(self, count: int, global_batch_size: int, ranks: Ranks, seed: int) -> None:
        self.batch_size = per_rank_batch_size(global_batch_size, ranks.world_size)
        self.sampler = DistributedSampler(
            range(count), num_replicas=ranks.world_size, rank=ranks.rank, shuffle=True, seed=seed, drop_last=False
        )
        self.steps_per_epoch = -(-len(self.sampler) // self.batch_size)

    def epoch(self, epoch: int) -> torch.Tensor:
        self.sampler.set_epoch(epoch)
        return torch.tensor(list(self.sampler), dtype=torch.long)


def sum_over_ranks(values: Mapping[str, float], ranks: Ranks) -> dict[str, float]:
    """Each value summed over the ranks (float64, so sums of many per-image terms keep their digits)."""
    if not ranks.distributed:
        return dict(values)
    names = list(values)
    total = torch.tensor([float(values[name]) for name in names], dtype=torch.float64, device=ranks.device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return dict(zip(names, total.tolist(), strict=True))


def any_rank(flag: bool, ranks: Ranks) -> bool:
    """True on every rank when it is true on one: ranks that stop must stop at the same step, or the
    others would wait for them in the next gradient all-reduce."""
    if not ranks.distributed:
        return flag
    value = torch.tensor([int(flag)], device=ranks.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather(value: Any, ranks: Ranks) -> list[Any]:
    """Every rank's `value` (picklable), in rank order, on every rank."""
    if not ranks.distributed:
        return [value]
    values: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(values, value)
    return values


def from_main(value: Any, ranks: Ranks) -> Any:
    """Rank 0's `value` on every rank (the others pass None): rank 0 reads a checkpoint, so resuming
    needs no file system shared between machines."""
    if not ranks.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()
