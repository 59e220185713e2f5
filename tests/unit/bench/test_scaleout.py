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
            f"_c{ratio.numerator.concurrency}")
    two_vs_one = PLAN.ratios["two_vs_one_replica_c32"]
    assert (two_vs_one.numerator.server, two_vs_one.denominator.server) == ("two_replicas_proxied",
                                                                             "one_replica_proxied")


def test_the_load_fits_two_minutes():
    assert load_seconds(PLAN) <= 2 * 60  # with bench.run's 10 min, `make bench` stays under 15
