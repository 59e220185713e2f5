"""bench/scaleout.py's plan: each ratio compares cells of the same round and concurrency, every
cell has a server the measurement starts, and the load fits `make bench`'s budget."""

from __future__ import annotations

from bench.plan import ENCODE
from bench.scaleout import PLAN
from tests.unit.bench.test_plan import load_seconds

STARTED = {"one_replica", "one_replica_proxied", "two_replicas_proxied"}  # what measure() builds


def test_the_ratios_compare_cells_of_the_plan_at_the_same_concurrency():
    assert {cell.server for cell in PLAN.cells} == STARTED and {cell.route for cell in PLAN.cells} == {ENCODE}
    for name, ratio in PLAN.ratios.items():
        assert ratio.numerator in PLAN.cells and ratio.denominator in PLAN.cells
        assert ratio.numerator.concurrency == ratio.denominator.concurrency and name.endswith(
            f"_c{ratio.numerator.concurrency}"
        )
    two_vs_one = PLAN.ratios["two_vs_one_replica_c32"]
    assert (two_vs_one.numerator.server, two_vs_one.denominator.server) == (
        "two_replicas_proxied",
        "one_replica_proxied",
    )


def test_the_load_fits_two_minutes():
    assert load_seconds(PLAN) <= 2 * 60  # with bench.run's 10 min, `make bench` stays under 15


def test_the_docs_block_shows_each_cells_median_and_range_and_the_ratios():
    from bench.rounds import round_ratios, summarise_cell, summarise_ratios
    from bench.scaleout import scaleout_section

    rates = {"one_replica": 900.0, "one_replica_proxied": 800.0, "two_replicas_proxied": 1200.0}
    windows = {
        cell.key: [
            {"rps": rates[cell.server] * f, "p50_us": 1.0, "p90_us": 1.0, "p99_us": 1.0, "mean_us": 1.0}
            for f in (0.9, 1.0, 1.1)
        ]
        for cell in PLAN.cells
    }
    results = {
        "cells": {key: summarise_cell(w) for key, w in windows.items()},
        "ratios": summarise_ratios(round_ratios(windows, PLAN.ratios)),
        "machine": {"cores": 2, "cpu": "test cpu", "time": "T"},
        "git": {"commit": "a" * 40, "dirty": False},
        "plan": {"rounds": 3, "window_s": 2},
        "command": "python -m bench.scaleout",
        "model": {"name": "fashion-mnist-vae", "version": "9.9.9"},
        "balance": {"answered_per_replica": [510.0, 490.0]},
    }
    text = scaleout_section(results)
    assert "| two replicas behind the proxy | 1200 (1080-1320) | 1200 (1080-1320) |" in text
    assert "| two replicas / one (both behind the proxy) | 1.50x (1.50-1.50x) | 1.50x (1.50-1.50x) |" in text
    assert "| one replica: behind the proxy / direct | 0.89x (0.89-0.89x) |" in text
    assert "answered 510 and 490 requests" in text and "`aaaaaaaaaaaa`" in text
    assert "model `fashion-mnist-vae` 9.9.9" in text
