"""The pure part of the interleaved benchmark: which cell runs when, what makes a window invalid,
and how the windows of many rounds become a median and a spread.

A cell is one (server, route, concurrency) combination. Every round gives every cell one short
window, in an order shuffled with a seed derived from the round, so that slow drift on a shared
machine (other processes, thermal state, page cache) falls on every server alike instead of on
whichever ran last. Ratios are taken per round, between windows of the same round, and then
summarised: a ratio of two medians would mix windows measured minutes apart.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# What each window reports and what is summarised per cell.
# CPUs busy with something else, measured while the servers are idle, above which a round is not quiet:
# a training run or a test suite on these 2 cores takes one or both (the benchmark itself idles at ~0.01).
QUIET_CPUS = 0.15
WINDOW_METRICS = ("rps", "p50_us", "p90_us", "p99_us", "mean_us")


@dataclass(frozen=True)
class Cell:
    server: str  # a key of the runner's server table, e.g. "product" or "product_2_workers"
    route: str  # a key of the runner's route table, e.g. "encode_1_raw"
    concurrency: int

    @property
    def key(self) -> str:
        return f"{self.server}/{self.route}/c{self.concurrency}"


@dataclass(frozen=True)
class Ratio:
    """numerator / denominator of one metric, each round's value from that round's two windows."""

    numerator: Cell
    denominator: Cell
    metric: str = "rps"


class WindowFailed(RuntimeError):
    """A window had a response with status >= 400 or a socket error: its rate would be a lie."""


def round_order(cells: Sequence[Cell], round_index: int, seed: int) -> list[Cell]:
    """The cells in round `round_index`'s order: a shuffle seeded by (seed, round), so a rerun with
    the same seed runs the same sequence and different rounds run different ones."""
    order = list(cells)
    random.Random(f"bench-order:{seed}:{round_index}").shuffle(order)
    return order


def check_window(cell: Cell, round_index: int, phase: str, stats: Mapping[str, Any]) -> None:
    """Raise WindowFailed, naming the cell, the round and the counts, for any failed request, or
    for a window in which no request completed (its rate and latency would be zeros)."""
    status, socket = stats["status_errors"], stats["socket_errors"]
    if not stats["requests"]:
        raise WindowFailed(
            f"{cell.key}, round {round_index + 1}, {phase}: no request completed in the window "
            f"(a longer window, or a server that answers)"
        )
    if status or socket:
        raise WindowFailed(
            f"{cell.key}, round {round_index + 1}, {phase}: {status} responses with status >= 400 and {socket} "
            f"socket errors (connect {stats['connect_errors']}, read {stats['read_errors']}, write "
            f"{stats['write_errors']}, timeout {stats['timeout_errors']}) in {stats['requests']} requests"
        )


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, range and interquartile range (statistics' 'inclusive' quartiles) of the rounds."""
    if not values:
        raise ValueError("spread of no values: the benchmark ran no round")
    ordered = sorted(values)
    q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else ordered * 3
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "q1": q1,
        "q3": q3,
        "n": len(ordered),
    }


def summarise_cell(windows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {metric: spread([w[metric] for w in windows]) for metric in WINDOW_METRICS}


def round_ratios(
    windows: Mapping[str, Sequence[Mapping[str, Any]]], ratios: Mapping[str, Ratio]
) -> dict[str, list[float]]:
    """Each ratio's value in every round; windows[cell.key][r] is cell's window in round r."""
    out: dict[str, list[float]] = {}
    for name, ratio in ratios.items():
        top, bottom = windows[ratio.numerator.key], windows[ratio.denominator.key]
        if len(top) != len(bottom):
            raise ValueError(
                f"ratio {name}: {len(top)} rounds of {ratio.numerator.key} but {len(bottom)} of {ratio.denominator.key}"
            )
        out[name] = [a[ratio.metric] / b[ratio.metric] for a, b in zip(top, bottom, strict=True)]
    return out


def summarise_ratios(per_round: Mapping[str, Sequence[float]]) -> dict[str, dict[str, Any]]:
    return {name: {**spread(values), "rounds": list(values)} for name, values in per_round.items()}


def busy_cpus(seconds: float = 0.5, stat: str = "/proc/stat") -> float:
    """How many CPUs' worth of time the whole machine spent busy (not idle, not waiting on I/O) over
    `seconds`. Taken before a round while the servers wait and no load runs, it is what else uses the
    machine: a benchmark shares its cores with nothing, so it should be near 0."""
    first, began = _cpu_times(stat), time.monotonic()
    time.sleep(seconds)  # the measurement's own window, not a wait for anything
    return cpus_busy_between(first, _cpu_times(stat), time.monotonic() - began, os.sysconf("SC_CLK_TCK"))


def _cpu_times(stat: str) -> list[int]:
    """The aggregate "cpu" line of /proc/stat: user nice system idle iowait irq softirq steal ..."""
    with open(stat) as lines:
        for line in lines:
            if line.startswith("cpu "):
                return [int(v) for v in line.split()[1:]]
    raise ValueError(f"{stat} has no aggregate cpu line")


def cpus_busy_between(first: list[int], second: list[int], elapsed_s: float, ticks_per_s: int) -> float:
    """CPUs busy between two readings of /proc/stat's cpu line `elapsed_s` apart, in clock ticks of
    `ticks_per_s` (guest time is already in user time: only the first eight fields count)."""
    delta = [b - a for a, b in zip(first[:8], second[:8], strict=True)]
    idle = delta[3] + delta[4]  # idle, iowait
    return max(0.0, (sum(delta) - idle) / ticks_per_s / elapsed_s)


def quiet_report(readings: Sequence[float]) -> dict[str, Any]:
    """Whether the machine was quiet: the spread of the rounds' readings, and `quiet` when their median is
    under QUIET_CPUS."""
    summary = spread(list(readings))
    return {**summary, "quiet": summary["median"] < QUIET_CPUS, "threshold": QUIET_CPUS}
