"""The benchmark's plans: every name they use exists, they cover the benchmarks page's table, and the load
fits the time budgets that the docstrings state."""

from __future__ import annotations

import numpy as np
import pytest

from bench.measurements import MEASUREMENTS
from bench.plan import CONCURRENCY, PLANS, PRODUCT_ROUTES, SERVERS, Plan
from bench.run import routes
from model.core.preprocess import array_to_png


@pytest.mark.parametrize("name", sorted(PLANS))
def test_every_plan_names_known_servers_routes_ratios_and_measurements(name):
    plan = PLANS[name]
    route_names = set(routes([array_to_png(np.zeros((1, 28, 28), np.float32))] * 16))
    assert len(set(plan.cells)) == len(plan.cells)
    assert {cell.server for cell in plan.cells} <= set(SERVERS)
    assert {cell.route for cell in plan.cells} <= route_names
    for ratio in plan.ratios.values():
        assert ratio.numerator in plan.cells and ratio.denominator in plan.cells
    assert set(plan.measurements) <= set(MEASUREMENTS)


def test_the_full_plan_covers_the_benchmarks_table():
    keys = {cell.key for cell in PLANS["full"].cells}
    for server in ("product", "minimal", "ceiling", "naive"):
        assert {f"{server}/encode_1_raw/c{c}" for c in CONCURRENCY} <= keys
    for route in PRODUCT_ROUTES:
        assert {f"product/{route}/c{c}" for c in CONCURRENCY} <= keys


def load_seconds(plan: Plan) -> int:
    return len(plan.cells) * plan.rounds * (plan.window_s + plan.warmup_s)


def test_the_load_fits_the_time_budgets_in_the_docstring():
    assert load_seconds(PLANS["full"]) <= 10 * 60  # `make bench` < 15 min with the rest
    assert load_seconds(PLANS["quick"]) <= 40  # `make bench-quick` < 60 s with the server starts


def test_efficiency_comes_after_what_it_reads():
    plan = PLANS["full"]
    assert plan.measurements.index("in_process") < plan.measurements.index("efficiency")
    assert {"product/encode_1_raw/c32", "ceiling/encode_1_raw/c32"} <= {cell.key for cell in plan.cells}


def test_the_v2_routes_sit_beside_encode_at_c32_with_their_ratio():
    plan = PLANS["full"]
    keys = {cell.key for cell in plan.cells}
    assert {"product/v2_encoder_binary/c32", "product/v2_encoder_json/c32", "product/encode_1_raw/c32"} <= keys
    ratio = plan.ratios["v2_binary_vs_encode_c32"]
    assert (ratio.numerator.key, ratio.denominator.key) == ("product/v2_encoder_binary/c32", "product/encode_1_raw/c32")
