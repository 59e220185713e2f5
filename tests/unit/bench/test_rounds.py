"""The interleaving's order, the failed-window rule and the per-round aggregation."""

from __future__ import annotations

import os

import pytest

from bench import rounds
from bench.rounds import (
    Cell,
    Ratio,
    WindowFailed,
    check_window,
    round_order,
    round_ratios,
    spread,
    summarise_cell,
    summarise_ratios,
)

CELLS = [Cell(server, "encode_1_raw", c) for server in ("product", "minimal", "naive") for c in (1, 8, 32, 64)]
PRODUCT, MINIMAL = Cell("product", "encode_1_raw", 32), Cell("minimal", "encode_1_raw", 32)


def clean_window(**changes: float) -> dict:
    window = {
        "requests": 1000,
        "status_errors": 0,
        "socket_errors": 0,
        "connect_errors": 0,
        "read_errors": 0,
        "write_errors": 0,
        "timeout_errors": 0,
        "rps": 500.0,
        "p50_us": 1000,
        "p90_us": 2000,
        "p99_us": 3000,
        "mean_us": 1200.0,
    }
    return {**window, **changes}


def test_every_round_runs_every_cell_exactly_once():
    for round_index in range(5):
        order = round_order(CELLS, round_index, seed=0)
        assert sorted(cell.key for cell in order) == sorted(cell.key for cell in CELLS)


def test_the_order_is_fixed_by_seed_and_round():
    assert round_order(CELLS, 3, seed=7) == round_order(CELLS, 3, seed=7)
    assert round_order(CELLS, 3, seed=7) != round_order(CELLS, 3, seed=8)


def test_rounds_run_in_different_orders():
    orders = {tuple(cell.key for cell in round_order(CELLS, r, seed=0)) for r in range(5)}
    assert len(orders) == 5


def test_a_two_cell_plan_alternates_which_server_goes_first():
    firsts = {round_order([PRODUCT, MINIMAL], r, seed=0)[0] for r in range(5)}
    assert firsts == {PRODUCT, MINIMAL}


def test_a_clean_window_passes():
    check_window(PRODUCT, 0, "window", clean_window())


def test_a_window_with_error_statuses_fails_naming_the_cell_round_and_phase():
    with pytest.raises(WindowFailed) as failure:
        check_window(PRODUCT, 2, "warm-up", clean_window(status_errors=3))
    message = str(failure.value)
    assert message.startswith("product/encode_1_raw/c32, round 3, warm-up: 3 responses with status >= 400")
    assert "in 1000 requests" in message


def test_a_window_with_socket_errors_fails_and_says_which():
    with pytest.raises(
        WindowFailed,
        match=r"0 responses with status >= 400 and 2 socket errors \(connect 0, read 0, "
        r"write 0, timeout 2\)",
    ):
        check_window(MINIMAL, 0, "window", clean_window(socket_errors=2, timeout_errors=2))


def test_a_window_in_which_no_request_completed_fails():
    with pytest.raises(WindowFailed, match=r"^product/encode_1_raw/c32, round 1, window: no request completed"):
        check_window(PRODUCT, 0, "window", clean_window(requests=0, rps=0.0))


def test_spread_of_an_odd_number_of_rounds():
    assert spread([5.0, 1.0, 4.0, 2.0, 3.0]) == {"median": 3.0, "min": 1.0, "max": 5.0, "q1": 2.0, "q3": 4.0, "n": 5}


def test_spread_of_an_even_number_of_rounds_averages_the_middle_two():
    summary = spread([10.0, 40.0, 20.0, 30.0])
    assert (summary["median"], summary["min"], summary["max"]) == (25.0, 10.0, 40.0)
    assert summary["q1"] == pytest.approx(17.5) and summary["q3"] == pytest.approx(32.5)


def test_spread_of_one_round_is_that_round():
    assert spread([7.0]) == {"median": 7.0, "min": 7.0, "max": 7.0, "q1": 7.0, "q3": 7.0, "n": 1}


def test_spread_of_no_rounds_is_an_error():
    with pytest.raises(ValueError, match="no round"):
        spread([])


def test_a_cell_summary_covers_rate_and_latency():
    windows = [clean_window(rps=r, p99_us=p) for r, p in ((100.0, 9000), (300.0, 7000), (200.0, 8000))]
    summary = summarise_cell(windows)
    assert summary["rps"]["median"] == 200.0 and summary["p99_us"]["median"] == 8000
    assert (summary["rps"]["min"], summary["rps"]["max"]) == (100.0, 300.0)
    assert set(summary) == {"rps", "p50_us", "p90_us", "p99_us", "mean_us"}


def test_ratios_pair_windows_of_the_same_round_not_medians():
    # Round by round the product serves 0.5x, 2x, 0.5x the minimal app: the median ratio is 0.5x,
    # although the ratio of the two medians (200 / 200) would say 1x.
    windows = {
        PRODUCT.key: [clean_window(rps=r) for r in (100.0, 300.0, 200.0)],
        MINIMAL.key: [clean_window(rps=r) for r in (200.0, 150.0, 400.0)],
    }
    per_round = round_ratios(windows, {"vs_minimal": Ratio(PRODUCT, MINIMAL)})
    assert per_round == {"vs_minimal": [0.5, 2.0, 0.5]}
    summary = summarise_ratios(per_round)["vs_minimal"]
    assert (summary["median"], summary["min"], summary["max"], summary["rounds"]) == (0.5, 0.5, 2.0, [0.5, 2.0, 0.5])


def test_a_ratio_of_latencies_uses_the_named_metric():
    windows = {PRODUCT.key: [clean_window(p99_us=600)], MINIMAL.key: [clean_window(p99_us=1200)]}
    assert round_ratios(windows, {"p99": Ratio(PRODUCT, MINIMAL, "p99_us")}) == {"p99": [0.5]}


def test_a_ratio_between_cells_with_different_round_counts_is_refused():
    windows = {PRODUCT.key: [clean_window()] * 3, MINIMAL.key: [clean_window()] * 2}
    with pytest.raises(ValueError, match="3 rounds of product/encode_1_raw/c32 but 2 of minimal/encode_1_raw/c32"):
        round_ratios(windows, {"r": Ratio(PRODUCT, MINIMAL)})


def test_cpus_busy_counts_every_state_but_idle_and_iowait():
    # user nice system idle iowait irq softirq steal guest guest_nice, in ticks of 100 a second
    first = [100, 0, 50, 1000, 10, 0, 0, 0, 40, 0]
    second = [200, 10, 90, 1100, 60, 5, 5, 0, 90, 0]  # 160 ticks busy, 150 idle or waiting; guest not twice
    assert rounds.cpus_busy_between(first, second, 1.0, 100) == pytest.approx(1.6)
    assert rounds.cpus_busy_between(first, second, 2.0, 100) == pytest.approx(0.8)
    assert rounds.cpus_busy_between(second, second, 1.0, 100) == 0.0


def test_busy_cpus_reads_the_aggregate_line_of_proc_stat(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    readings = iter(["cpu  100 0 50 1000 10 0 0 0 0 0\n", "cpu  150 0 50 1050 10 0 0 0 0 0\n"])
    monkeypatch.setattr(rounds.time, "sleep", lambda s: stat.write_text(next(readings) + "cpu0 1 1 1 1 1 1 1 1\n"))
    stat.write_text(next(readings) + "cpu0 1 1 1 1 1 1 1 1\n")
    clock = iter([10.0, 11.0])
    monkeypatch.setattr(rounds.time, "monotonic", lambda: next(clock))
    assert rounds.busy_cpus(1.0, str(stat)) == pytest.approx(50 / os.sysconf("SC_CLK_TCK"))
    (tmp_path / "none").write_text("intr 1 2 3\n")
    with pytest.raises(ValueError, match="no aggregate cpu line"):
        rounds.busy_cpus(0.0, str(tmp_path / "none"))


def test_a_machine_is_quiet_when_the_rounds_median_is_under_the_threshold():
    assert rounds.quiet_report([0.01, 0.02, 0.9])["quiet"] is True  # one busy round: the median holds
    report = rounds.quiet_report([0.5, 1.0, 0.02])
    assert report["quiet"] is False and report["median"] == 0.5 and report["threshold"] == rounds.QUIET_CPUS
