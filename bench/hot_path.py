"""The hot path, step by step: /encode with one PNG and the v2 encoder over binary tensors at c=32, served
by one worker pinned to one core with wrk pinned to the other, on the code of each step (a git revision
checked out as a worktree, or the working tree), against the per-core compute limit measured in the
same run (bench/measurements.py: compute_limit): once in every round, on the servers' core while they
are idle, so that each round's ratios divide by that round's limit, and a drift of the machine's speed
during the run (this shared machine's varies by 20 percent and more) moves both sides alike.

    python -m bench.hot_path                      # STEPS below, then the working tree as "now"
    python -m bench.hot_path --step before=HEAD~3 --step now=.
        -> bench/results/hot_path.json; docs/benchmarks.md's table: python -m bench.report

Every step's server runs during the whole run; the rounds interleave all the cells in an order shuffled
per round with a fixed seed, so a change is judged by ratios taken within a round (bench/rounds.py), the
median of 7 rounds, not by numbers from runs minutes apart. Each step changes one thing; a step is kept
when these rounds support it (docs/benchmarks.md, "The hot path").
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.measurements import compute_limit
from bench.plan import ENCODE, MODEL_DIR, RESULTS
from bench.provenance import git_state, served_model
from bench.rounds import (
    Cell,
    WindowFailed,
    busy_cpus,
    check_window,
    quiet_report,
    round_order,
    spread,
    summarise_cell,
    summarise_ratios,
)
from bench.run import machine, routes, test_pngs, write_json, wrk
from bench.servers import REPO, Server
from model.core.artifact import load_model_dir

# The steps of issue 32, oldest first, each a commit that changed one thing (its message says what).
STEPS: tuple[tuple[str, str], ...] = ()
WORKING_TREE = "."
V2 = "v2_encoder_binary"
CONCURRENCY = 32
SERVER_CPUS, WRK_CPUS = "0", "1"
# uvicorn serving a bare ASGI app that answers /encode's size with no work (bench/apps/asgi_floor.py): what
# the HTTP server and the ASGI calls cost per request, measured in every round beside the steps
FLOOR = "asgi_floor"
# uvicorn serving the least ASGI app that does /encode's work with the product's functions (bench/apps/asgi_lean.py):
# what the hot path would reach if the service's own Python cost nothing beyond that app's
LEAN = "asgi_lean"
# Every product server's environment: gRPC off (the servers would all want 8001; only HTTP is measured here)
# and upload slots for every connection
PRODUCT_ENV = {"VAE_GRPC_PORT": "0", "VAE_MAX_UPLOADS": "1024"}


def parse_steps(values: list[str] | None) -> list[tuple[str, str]]:
    """NAME=REV[,VAR=VALUE...] in order; REV "." is the working tree, the VARs the server's environment."""
    if not values:
        return [*STEPS, ("now", WORKING_TREE)]
    steps = []
    for value in values:
        name, sep, revision = value.partition("=")
        if not sep or not name or not revision or any("=" not in pair for pair in revision.split(",")[1:]):
            raise SystemExit(f"bench.hot_path: --step takes NAME=REV[,VAR=VALUE...], not {value!r}")
        steps.append((name, revision))
    if len({name for name, _ in steps}) != len(steps):
        raise SystemExit("bench.hot_path: each step needs a name of its own")
    for reserved, server in ((FLOOR, "the ASGI floor's server"), (LEAN, "the lean app's server")):
        if any(name == reserved for name, _ in steps):
            raise SystemExit(f"bench.hot_path: {reserved} names {server}; give the step another name")
    return steps


def checkout(revision: str, into: Path) -> tuple[Path, str]:
    """A tree holding `revision`'s code (the working tree for "."), and the commit it is."""
    if revision == WORKING_TREE:
        state = git_state()
        return REPO, state["commit"] + ("+changes" if state["dirty"] else "")
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{revision}^{{commit}}"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    subprocess.run(["git", "worktree", "add", "--detach", str(into), commit], cwd=REPO, capture_output=True, check=True)
    return into, commit


def run(steps: list[tuple[str, str]], rounds: int, window_s: int, warmup_s: int, seed: int) -> dict[str, Any]:
    pngs = test_pngs(256)
    bodies = routes(pngs)
    cells = [Cell(name, route, CONCURRENCY) for name, _ in steps for route in (ENCODE, V2)]
    cells += [Cell(FLOOR, ENCODE, CONCURRENCY), Cell(LEAN, ENCODE, CONCURRENCY)]
    results: dict[str, Any] = {
        "machine": machine(),
        "git": git_state(),
        "command": " ".join(["python -m bench.hot_path", *sys.argv[1:]]),
        "plan": {"rounds": rounds, "window_s": window_s, "warmup_s": warmup_s, "seed": seed, "cells": len(cells)},
        "pinning": {"server_cpus": SERVER_CPUS, "wrk_cpus": WRK_CPUS},
    }
    worktrees = Path(tempfile.mkdtemp(prefix="vae-hot-path-"))
    servers: dict[str, Server] = {}
    windows: dict[str, list[dict[str, Any]]] = {}
    try:
        commits = {}
        for name, step in steps:
            revision, *variables = step.split(",")
            tree, commits[name] = checkout(revision, worktrees / name)
            env = {**PRODUCT_ENV, **dict(v.split("=", 1) for v in variables)}
            servers[name] = Server("product", MODEL_DIR, env=env, tree=tree, cpus=SERVER_CPUS)
        servers[FLOOR] = Server(FLOOR, None, cpus=SERVER_CPUS)
        servers[LEAN] = Server(LEAN, MODEL_DIR, cpus=SERVER_CPUS)
        for server in servers.values():
            server.wait_ready()
        results["steps"] = [{"name": name, "revision": revision, "commit": commits[name]} for name, revision in steps]
        results["model"] = served_model(next(iter(servers.values())).url)
        began = time.monotonic()
        limits: list[dict[str, Any]] = []
        others: list[float] = []  # CPUs busy with something else before each round, the servers idle
        model = load_model_dir(MODEL_DIR, threads=1)
        for round_index in range(rounds):
            others.append(busy_cpus())
            limits.append(limit_on_server_core(pngs, model))
            for cell in round_order(cells, round_index, seed):
                stats: dict[str, Any] = {}
                url = servers[cell.server].url
                for phase, seconds in (("warm-up", warmup_s), ("window", window_s)):
                    if seconds:
                        measured = phase == "window" and cell.server != FLOOR
                        calls = model_calls(url) if measured else None
                        stats = wrk(url, CONCURRENCY, seconds, bodies[cell.route], cpus=WRK_CPUS)
                        check_window(cell, round_index, phase, stats)
                        if calls is not None:
                            stats.update(model_call_share(calls, model_calls(url)))
                windows.setdefault(cell.key, []).append(stats)
                print(
                    f"round {round_index + 1}/{rounds} {cell.key}: {stats['rps']:.0f} requests/s, "
                    f"p99 {stats['p99_us'] / 1000:.1f} ms",
                    flush=True,
                )
        results["rounds_wall_s"] = time.monotonic() - began
        results["other_cpus_busy"] = quiet_report(others)
    finally:
        for server in servers.values():
            server.stop()
        for name, step in steps:
            if step.split(",")[0] != WORKING_TREE and (worktrees / name).exists():
                subprocess.run(["git", "worktree", "remove", "--force", str(worktrees / name)], cwd=REPO, check=False)
        shutil.rmtree(worktrees, ignore_errors=True)
    results["compute_limit"] = {
        key: statistics.median(limit[key] for limit in limits) for key in limits[0] if key != "threads"
    }
    results["compute_limit_rounds"] = limits
    results["cells"] = {key: {**summarise_cell(w), "windows": w} for key, w in windows.items()}
    first = steps[0][0]
    per_round: dict[str, list[float]] = {}
    for name, _ in steps:
        encode, v2 = windows[Cell(name, ENCODE, CONCURRENCY).key], windows[Cell(name, V2, CONCURRENCY).key]
        per_round[f"{name}_encode_vs_compute_limit"] = over_limit(encode, limits)
        per_round[f"{name}_encode_vs_compute_limit_with_pillow_decode"] = over_limit(
            encode, limits, "requests_per_s_with_pillow_decode"
        )
        per_round[f"{name}_v2_binary_vs_encode"] = [b["rps"] / a["rps"] for a, b in zip(encode, v2, strict=True)]
        if name != first:
            base = windows[Cell(first, ENCODE, CONCURRENCY).key]
            per_round[f"{name}_encode_vs_{first}"] = [a["rps"] / b["rps"] for a, b in zip(encode, base, strict=True)]
        for route, windows_of in (("encode", encode), ("v2", v2)):
            model_time = model_time_ratios(windows_of, limits)
            if model_time:
                per_round[f"{name}_{route}_model_time_vs_limit"] = model_time
    per_round.update(floor_ratios(windows[Cell(FLOOR, ENCODE, CONCURRENCY).key], limits))
    per_round.update(
        lean_ratios(
            windows[Cell(LEAN, ENCODE, CONCURRENCY).key],
            limits,
            {name: windows[Cell(name, ENCODE, CONCURRENCY).key] for name, _ in steps},
        )
    )
    results["ratios"] = summarise_ratios(per_round)
    results["p99_ms"] = {
        name: spread([w["p99_us"] / 1000 for w in windows[Cell(name, ENCODE, CONCURRENCY).key]]) for name, _ in steps
    }
    return results


MODEL_CALL_METRICS = (
    "vae_inference_duration_seconds_sum",
    "vae_inference_duration_seconds_count",
    "vae_images_processed_total",
)


def model_calls(url: str) -> dict[str, float]:
    """The product server's model-call totals so far, summed over models, versions and operations (its
    /metrics): seconds in model calls, the calls (batches), and the rows (images) they took."""
    return metric_totals(httpx.get(url + "/metrics", timeout=10).raise_for_status().text)


def metric_totals(text: str) -> dict[str, float]:
    totals = dict.fromkeys(MODEL_CALL_METRICS, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def model_call_share(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What a window's model calls cost inside the server: microseconds per image and the mean batch (nothing
    when no image went through a model call)."""
    seconds, calls, images = (after[key] - before[key] for key in MODEL_CALL_METRICS)
    if images <= 0 or calls <= 0:
        return {}
    return {"model_us_per_image": 1e6 * seconds / images, "mean_batch": images / calls}


def floor_ratios(floor: list[dict[str, Any]], limits: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per round, what uvicorn's own cost leaves of the compute limit: a server that added nothing to the
    ASGI floor's time per request but the limit's work would serve 1 / (floor's time + the limit's time)
    requests/s, this fraction of the limit; and the floor's time as a share of the limit's."""
    best, share = [], []
    for window, limit in zip(floor, limits, strict=True):
        floor_s, limit_s = 1.0 / window["rps"], 1.0 / limit["requests_per_s"]
        best.append(limit_s / (floor_s + limit_s))
        share.append(floor_s / limit_s)
    return {"floor_bound_vs_compute_limit": best, "floor_time_vs_compute_limit_time": share}


def lean_ratios(
    lean: list[dict[str, Any]], limits: list[dict[str, Any]], steps: dict[str, list[dict[str, Any]]]
) -> dict[str, list[float]]:
    """Per round, the lean app's /encode against the compute limit, its model calls' time per image against
    the limit's encoder time, and each step's /encode against the lean app's."""
    ratios = {"lean_encode_vs_compute_limit": over_limit(lean, limits)}
    model_time = model_time_ratios(lean, limits)
    if model_time:
        ratios["lean_model_time_vs_limit"] = model_time
    for name, encode in steps.items():
        ratios[f"{name}_encode_vs_lean"] = [a["rps"] / b["rps"] for a, b in zip(encode, lean, strict=True)]
    return ratios


def over_limit(windows: list[dict[str, Any]], limits: list[dict[str, Any]], key: str = "requests_per_s") -> list[float]:
    """Per round, a window's requests/s over that round's compute limit (`key`: which of its rates)."""
    return [w["rps"] / limit[key] for w, limit in zip(windows, limits, strict=True)]


def model_time_ratios(windows: list[dict[str, Any]], limits: list[dict[str, Any]]) -> list[float]:
    """Per round whose window saw a model call, the server's model time per image over the limit's encoder
    time per image at batch 32."""
    return [
        w["model_us_per_image"] / limit["encoder_us_per_image_batch32"]
        for w, limit in zip(windows, limits, strict=True)
        if "model_us_per_image" in w
    ]


def limit_on_server_core(pngs: list[bytes], model: Any) -> dict[str, Any]:
    """This round's compute limit, measured by this process on the servers' core (idle between windows)."""
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(cpu) for cpu in SERVER_CPUS.split(",")})
    try:
        return compute_limit(pngs, model=model, seconds=0.5)
    finally:
        os.sched_setaffinity(0, mask)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench.hot_path", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--step", action="append", help="NAME=REV (a git revision, or . for the working tree)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--window", type=int, default=3, help="seconds per measured window")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up before each window")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--allow-busy", action="store_true", help="write the results even when something else used the CPUs"
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        print("bench.hot_path: wrk and taskset are needed (apt-get install wrk util-linux)", file=sys.stderr)
        return 2
    try:
        results = run(parse_steps(args.step), args.rounds, args.window, args.warmup, args.seed)
    except WindowFailed as failure:
        print(f"bench.hot_path: a window failed; no results written.\nbench.hot_path: {failure}", file=sys.stderr)
        return 1
    busy = results["other_cpus_busy"]
    if not busy["quiet"] and not args.allow_busy:
        print(
            f"bench.hot_path: something else kept {busy['median']:.2f} CPUs busy while the servers were idle "
            f"(median of the rounds; at most {busy['threshold']} for a quiet machine); no results written. "
            "Stop it (a training run, a test suite) and run again, or pass --allow-busy.",
            file=sys.stderr,
        )
        return 3
    write_json(args.results / "hot_path.json", results)
    limit = results["compute_limit"]
    print(f"compute limit: {limit['requests_per_s']:.0f} requests/s ({limit['per_request_us']:.0f} us a request)")
    for name, ratio in results["ratios"].items():
        print(f"{name}: {ratio['median']:.3f} ({ratio['min']:.3f}-{ratio['max']:.3f})")
    for name, p99 in results["p99_ms"].items():
        print(f"{name} p99 at c=32: {p99['median']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def hot_path_section(recorded: dict[str, Any]) -> str:
    """docs/benchmarks.md's table: each step's /encode and v2 binary throughput, p99, and ratios."""
    ratios, cells, limit = recorded["ratios"], recorded["cells"], recorded["compute_limit"]
    first = recorded["steps"][0]["name"]
    lines = [
        f"`{' '.join(recorded['command'].split())}`, model {recorded['model']['name']} {recorded['model']['version']}, "
        f"{recorded['plan']['rounds']} interleaved rounds of {recorded['plan']['window_s']} s windows, the server on "
        f"CPU {recorded['pinning']['server_cpus']} and wrk on CPU {recorded['pinning']['wrk_cpus']}, recorded "
        f"{recorded['machine']['time']}. Medians of the rounds, their range in brackets.{_quiet(recorded)}",
        "",
        f"The per-core compute limit, measured in every round on the servers' core (the median of the rounds): "
        f"{limit['requests_per_s']:.0f} requests/s "
        f"({limit['png_decode_us']:.0f} us to decode the PNG, {limit['encoder_us_per_image_batch32']:.0f} us of "
        f"encoder per image at batch 32, {limit['response_serialise_us']:.0f} us to serialise the answer). With "
        f"Pillow's decode ({limit['png_decode_pillow_us']:.0f} us), as issue 32 first stated it: "
        f"{limit['requests_per_s_with_pillow_decode']:.0f} requests/s.",
        *_floor(recorded),
        *_lean(recorded),
        "",
        "| step | commit | /encode, one PNG, c=32 | p99 | x the compute limit | x with Pillow's decode | "
        f"x {first} | x the step before | v2 binary, c=32 | v2 x the step before | v2 binary / /encode |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    previous = None
    for step in recorded["steps"]:
        name = step["name"]
        encode, v2 = cells[f"{name}/{ENCODE}/c{CONCURRENCY}"], cells[f"{name}/{V2}/c{CONCURRENCY}"]
        versus = _shown(ratios[f"{name}_encode_vs_{first}"], ".2f", "x") if name != first else "-"
        step_encode, step_v2 = (
            (_shown(_versus(cells, name, previous, route), ".2f", "x") for route in (ENCODE, V2))
            if previous is not None
            else ("-", "-")
        )
        previous = name
        settings = " ".join(step["revision"].split(",")[1:])
        lines.append(
            f"| {name} | `{step['commit'][:7]}`{' ' + settings if settings else ''} "
            f"| {_shown(encode['rps'], '.0f')} | {_shown(recorded['p99_ms'][name], '.1f', ' ms')} "
            f"| {_shown(ratios[f'{name}_encode_vs_compute_limit'], '.2f', 'x')} "
            f"| {_shown(ratios[f'{name}_encode_vs_compute_limit_with_pillow_decode'], '.2f', 'x')} | {versus} "
            f"| {step_encode} | {_shown(v2['rps'], '.0f')} | {step_v2} "
            f"| {_shown(ratios[f'{name}_v2_binary_vs_encode'], '.2f', 'x')} |"
        )
    return "\n".join([*lines, *_model_calls(recorded)]) + "\n"


def _shown(summary: dict[str, Any], form: str, unit: str = "") -> str:
    """A spread as the tables show it: the median, then the range in brackets."""
    low, high = format(summary["min"], form), format(summary["max"], form)
    return f"{format(summary['median'], form)}{unit} ({low}-{high}{unit})"


def _model_calls(recorded: dict[str, Any]) -> list[str]:
    """The model calls inside each step's server over the windows (its /metrics), against the limit's
    encoder time per image (runs recorded before this was measured have none)."""
    cells, ratios = recorded["cells"], recorded["ratios"]
    names = [step["name"] for step in recorded["steps"]]
    if not all(f"{name}_encode_model_time_vs_limit" in ratios for name in names):
        return []
    lines = [
        "",
        "Inside each server, its model calls over the same windows (`vae_inference_duration_seconds_sum` and "
        "`_count`, `vae_images_processed_total` in its `/metrics`, read before and after each window): time "
        "per image, the mean batch, and that time over the limit's encoder time per image at batch 32 in the "
        "same round.",
        "",
        "| step | /encode: model time per image | mean batch | x the limit's | v2 binary: model time per image "
        "| mean batch | x the limit's |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in names:
        row = [name]
        for route, key in ((ENCODE, "encode"), (V2, "v2")):
            ratio = ratios.get(f"{name}_{key}_model_time_vs_limit")  # absent: no window had a model call
            if ratio is None:
                row += ["-", "-", "-"]
                continue
            row += _model_call_cells(cells[f"{name}/{route}/c{CONCURRENCY}"]["windows"], ratio)
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _model_call_cells(windows: list[dict[str, Any]], ratio: dict[str, Any]) -> list[str]:
    """A server's model calls as the tables show them: time per image, the mean batch, and `ratio` (the time
    over the limit's), from the windows that saw a model call."""
    called = [w for w in windows if "model_us_per_image" in w]
    return [
        _shown(spread([w["model_us_per_image"] for w in called]), ".0f", " us"),
        _shown(spread([w["mean_batch"] for w in called]), ".1f"),
        _shown(ratio, ".2f", "x"),
    ]


def _versus(cells: dict[str, Any], name: str, previous: str, route: str) -> dict[str, Any]:
    """The step's requests/s over the step before's on `route`, round by round (the windows' order)."""
    ours, theirs = (cells[f"{step}/{route}/c{CONCURRENCY}"]["windows"] for step in (name, previous))
    return spread([a["rps"] / b["rps"] for a, b in zip(ours, theirs, strict=True)])


def _floor(recorded: dict[str, Any]) -> list[str]:
    """The ASGI floor's line (runs recorded before it was measured have none)."""
    cell = recorded["cells"].get(f"{FLOOR}/{ENCODE}/c{CONCURRENCY}")
    if cell is None:
        return []
    ratios, rps = recorded["ratios"], cell["rps"]["median"]
    return [
        "",
        f"The ASGI floor, measured in every round: uvicorn serving a bare ASGI app that reads the body and "
        f"answers with a constant of `/encode`'s size (bench/apps/asgi_floor.py), {rps:.0f} requests/s "
        f"({1e6 / rps:.0f} us a request, {ratios['floor_time_vs_compute_limit_time']['median']:.2f}x the "
        "limit's time). A server that added nothing to it but the limit's work would reach "
        f"{ratios['floor_bound_vs_compute_limit']['median']:.2f}x the limit, if the work cost in a server what "
        "it costs alone.",
    ]


def _lean(recorded: dict[str, Any]) -> list[str]:
    """The lean app's line (runs recorded before it was measured have none)."""
    cell = recorded["cells"].get(f"{LEAN}/{ENCODE}/c{CONCURRENCY}")
    if cell is None:
        return []
    ratios = recorded["ratios"]
    inside = ""
    if "lean_model_time_vs_limit" in ratios:  # a window saw a model call
        per_image, batch, ratio = _model_call_cells(cell["windows"], ratios["lean_model_time_vs_limit"])
        inside = f" Its encoder took {per_image} per image at a mean batch of {batch}, {ratio} the limit's."
    names = [step["name"] for step in recorded["steps"]]
    steps = "; ".join(f"{name} {_shown(ratios[name + '_encode_vs_lean'], '.2f', 'x')}" for name in names)
    return [
        "",
        f"The lean app, measured in every round: uvicorn serving the least ASGI app that does `/encode`'s work "
        f"with the product's own functions (the PNG decoded by the preprocessing contract, a batch on the loop at "
        f"the end of each tick, the encoder, the product's JSON answer) and nothing else: no request ids, limits, "
        f"metrics of requests or error shapes (bench/apps/asgi_lean.py). "
        f"{_shown(cell['rps'], '.0f')} requests/s, {_shown(ratios['lean_encode_vs_compute_limit'], '.2f', 'x')} "
        f"the limit: what the hot path would reach if the service's own Python cost nothing.{inside} Each step's "
        f"`/encode` over the lean app's, round by round: {steps}.",
    ]


def _quiet(recorded: dict[str, Any]) -> str:
    """What else used the machine during the run (results recorded before the check have no reading)."""
    busy = recorded.get("other_cpus_busy")
    if busy is None:
        return ""
    return (
        f" Other work on the machine before each round, the servers idle: {busy['median']:.2f} CPUs busy "
        f"(at most {busy['max']:.2f}; a run is written only under {busy['threshold']})."
    )
