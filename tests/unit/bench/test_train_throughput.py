"""The training-throughput benchmark's command lines and its summary; no training runs here."""

from pathlib import Path

import pytest

from bench import train_throughput as bench


def test_one_process_runs_plain_vae_train_and_more_run_under_torchrun():
    single = bench.command(bench.SINGLE, Path("out"), limit_train=256, epochs=2)
    ddp = bench.command(bench.DDP, Path("out"), limit_train=256, epochs=2)
    assert single[1:3] == ["-m", "model.train"] and "torch.distributed.run" not in single
    assert ddp[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert single[single.index("--threads") + 1] == "2" and ddp[ddp.index("--threads") + 1] == "1"
    assert "--batch-size" not in single + ddp  # the default global batch in both
    assert (bench.SINGLE.name, bench.DDP.name) == ("1 process x 2 threads", "2 processes x 1 thread")


def test_the_ratio_is_taken_within_each_round():
    rounds = [
        {bench.SINGLE.name: 100.0, bench.DDP.name: 150.0},
        {bench.SINGLE.name: 50.0, bench.DDP.name: 100.0},
        {bench.SINGLE.name: 200.0, bench.DDP.name: 100.0},
    ]
    summary = bench.summarise(rounds)
    assert summary["ratios"][bench.RATIO]["rounds"] == [1.5, 2.0, 0.5]
    assert summary["ratios"][bench.RATIO]["median"] == 1.5  # not median(DDP) / median(single) = 1.0
    assert summary["images_per_second"][bench.SINGLE.name]["median"] == 100.0
    assert summary["images_per_second"][bench.DDP.name]["min"] == pytest.approx(100.0)


def test_the_docs_block_shows_each_setups_median_and_the_ratio():
    rounds = [{bench.SINGLE.name: 100.0, bench.DDP.name: 150.0}, {bench.SINGLE.name: 120.0, bench.DDP.name: 150.0}]
    results = {
        "machine": {"cores": 2, "cpu": "x", "load_average_1_5_15_min": {"before": [0.4, 0.3, 0.2]}},
        "git": {"commit": "abcdef1234567890"},
        "command": "python -m bench.train_throughput",
        "epochs": 2,
        "limit_train": 12800,
        "rounds": 2,
        "model": "the default",
        **bench.summarise(rounds),
    }
    text = bench.throughput_section(results)
    assert "| 1 process x 2 threads | 110 (100-120) |" in text
    assert "| 1.38x (1.25-1.50x) |" in text and "abcdef123456" in text and "load average before the run 0.4" in text
