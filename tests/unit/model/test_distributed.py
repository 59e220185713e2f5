"""DistributedDataParallel training: real `torchrun --standalone --nproc_per_node=2` runs of vae-train on
the CPU (gloo) over a tiny folder of images, and the pure parts (data sharding, batch split, the
sharded test evaluation) without a process group."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from model import checkpoint
from model import distributed as distributed_module
from model.config import ModelConfig
from model.core.likelihoods import LIKELIHOODS
from model.core.preprocess import PreprocessContract
from model.data import fixed_test_set, load_dataset
from model.distributed import Ranks, ShardedOrder, from_environment, per_rank_batch_size
from model.train import main as train_main
from model.trainer import evaluate_elbo
from model.vae import VAE
from tests.conftest import REPO, write_png_folder

EPOCHS, STEPS = 2, 8  # 230 training images (26 of the 256 are the test split), 2 x 16 per step
FLAGS = [
    "--dataset",
    "folder",
    "--image-size",
    "8",
    # the folder defaults would hold images out for the anomaly calibration and pick a likelihood from them
    "--calibration-split",
    "0",
    "--likelihood",
    "bernoulli",
    "--epochs",
    str(EPOCHS),
    "--batch-size",
    "32",
    "--lr",
    "3e-3",
    "--kl-warmup-epochs",
    "1",
    "--threads",
    "1",
    "--conv-channels",
    "8",
    "--decoder-channels",
    "8",
    "--hidden",
    "32",
    "--latent-dim",
    "4",
    "--no-progress",
]


def torchrun(images, out, *extra: str, hooks: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """vae-train under torchrun; with `hooks` (tests/unit/model/train_with_hooks.py's flags), run with them."""
    program = ["tests.unit.model.train_with_hooks", *hooks, "--"] if hooks else ["model.train"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            *program,
            *FLAGS,
            "--data-dir",
            str(images),
            "--out",
            str(out),
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_png_folder(tmp_path_factory.mktemp("ddp") / "images", count=256, size=8)


@pytest.fixture(scope="module")
def straight(images, tmp_path_factory):
    """An uninterrupted two-process run, each rank tracing a hash of its weights after every step."""
    out, trace = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("trace")
    result = torchrun(images, out, hooks=("--trace-weights", str(trace)))
    assert "on 2 processes (gloo), global batch 32 = 2 x 16" in result.stdout
    assert result.stdout.count(f"epoch 1/{EPOCHS}:") == 1  # rank 0 alone reports
    return out, trace


@pytest.fixture(scope="module")
def stopped(images, tmp_path_factory):
    """A two-process run ended after its first epoch, to be resumed."""
    out = tmp_path_factory.mktemp("stopped")
    torchrun(images, out, "--stop-after", "1")
    return out


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_ranks_hold_identical_weights_after_every_step(straight):
    _, trace = straight
    rank0, rank1 = ((trace / f"rank{r}.txt").read_text().splitlines() for r in (0, 1))
    assert [line.split()[0] for line in rank0] == [f"{e}:{s}" for e in range(1, EPOCHS + 1) for s in range(STEPS)]
    assert rank0 == rank1  # each rank draws its own noise: only the all-reduced gradients keep them equal
    assert len({line.split()[1] for line in rank0}) == EPOCHS * STEPS  # and every step changed the weights


def test_the_loss_goes_down(straight):
    history = metrics(straight[0])
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["test_elbo"] > history[0]["test_elbo"] + 1.0
    assert history[-1]["train_elbo"] > history[0]["train_elbo"] + 1.0


def test_the_checkpoint_loads_into_a_plain_single_process_model(straight, images):
    out, _ = straight
    model, state = checkpoint.load_model(out / "last.pt")
    assert isinstance(model, VAE) and model.config.latent_dim == 4 and state.epoch == EPOCHS
    assert state.world_size == 2
    first, second = state.rank_rng_states
    assert torch.equal(state.rng_state, first) and not torch.equal(first, second)
    # The recorded test metrics were all-reduced over the ranks' halves of the test set: one process
    # scoring the whole set with the checkpoint's weights gets the same numbers.
    data = load_dataset("folder", str(images), PreprocessContract(input_shape=(1, 8, 8)))
    x_test = torch.from_numpy(fixed_test_set(data.test, LIKELIHOODS["bernoulli"], 0))
    alone = evaluate_elbo(model, x_test, seed=0)
    record = metrics(out)[-1]
    for key in ("elbo", "reconstruction", "kl"):
        assert record[f"test_{key}"] == pytest.approx(alone[key], rel=1e-5, abs=1e-6), key
    # and the train metrics count both ranks' images
    assert record["images_per_second"] * record["seconds"] == pytest.approx(len(data.train))


def test_resume_under_torchrun_gives_the_weights_of_an_uninterrupted_run(straight, stopped, images, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(stopped, out)
    assert checkpoint.load(out / "last.pt").epoch == 1
    torchrun(images, out, "--resume")
    resumed, reference = checkpoint.load(out / "last.pt"), checkpoint.load(straight[0] / "last.pt")
    assert resumed.epoch == reference.epoch == EPOCHS
    for name, weights in reference.model_state.items():
        assert torch.equal(resumed.model_state[name], weights), name  # bitwise, not approximately
    for mine, theirs in zip(resumed.rank_rng_states, reference.rank_rng_states, strict=True):
        assert torch.equal(mine, theirs)
    assert [m["test_elbo"] for m in metrics(out)] == [m["test_elbo"] for m in metrics(straight[0])]


def test_a_plain_resume_of_a_two_process_run_goes_on_with_fresh_noise(stopped, images, tmp_path, capsys):
    out = tmp_path / "alone"
    shutil.copytree(stopped, out)
    assert train_main([*FLAGS, "--data-dir", str(images), "--out", str(out), "--resume"]) == 0
    assert "last.pt was written by 2 process(es), this run has 1" in capsys.readouterr().err
    state = checkpoint.load(out / "last.pt")
    assert state.epoch == EPOCHS and state.world_size == 1 and state.rank_rng_states is None
    assert [m["epoch"] for m in metrics(out)] == [1, 2]
    assert metrics(out)[0] == metrics(stopped)[0]  # the first epoch is the two-process run's


@pytest.mark.parametrize("count", [230, 231])
def test_the_ranks_steps_together_take_each_global_batch_of_one_permutation(count):
    orders = [ShardedOrder(count, 32, Ranks(rank=r, world_size=2), seed=5) for r in (0, 1)]
    assert orders[0].steps_per_epoch == orders[1].steps_per_epoch == -(-count // 32)
    for epoch in (0, 1):
        shards = [order.epoch(epoch) for order in orders]
        assert len(shards[0]) == len(shards[1])  # padded: every rank steps alike
        permutation = torch.stack(shards, dim=1).flatten()  # rank r holds positions r, r + 2, ...
        assert sorted(set(permutation.tolist())) == list(range(count))
        for step in range(orders[0].steps_per_epoch):
            together = torch.cat([s[step * 16 : (step + 1) * 16] for s in shards])
            assert sorted(together.tolist()) == sorted(permutation[step * 32 : (step + 1) * 32].tolist())
    assert torch.equal(orders[0].epoch(0), orders[0].epoch(0))
    assert not torch.equal(orders[0].epoch(0), orders[0].epoch(1))  # set_epoch reshuffles


def test_the_global_batch_must_split_evenly_over_the_processes():
    assert per_rank_batch_size(128, 4) == 32
    with pytest.raises(
        ValueError, match="global batch and must split evenly over the 3 processes: pass a multiple of 3, e.g. 126"
    ):
        per_rank_batch_size(128, 3)


def test_without_torchrun_there_is_one_process_and_no_process_group():
    for environ in ({}, {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}):
        ranks = from_environment("cpu", environ)
        assert ranks == Ranks() and not ranks.distributed and ranks.is_main
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        from_environment("tpu", {})


def test_the_sharded_test_evaluation_adds_up_to_one_process(monkeypatch):
    torch.manual_seed(0)
    model = VAE(ModelConfig(arch="conv", input_shape=(1, 8, 8), latent_dim=4, hidden=(32,), conv_channels=(8,)))
    x_test = torch.bernoulli(torch.rand(23, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    alone = evaluate_elbo(model, x_test, seed=3, batch_size=10)
    monkeypatch.setattr(distributed_module, "sum_over_ranks", lambda values, ranks: values)  # each rank's part
    parts = [evaluate_elbo(model, x_test, seed=3, batch_size=10, ranks=Ranks(rank=r, world_size=3)) for r in range(3)]
    for key in alone:
        assert sum(part[key] for part in parts) == pytest.approx(alone[key], rel=1e-6)
    assert len({part["elbo"] for part in parts}) == 3  # each rank scored different images
