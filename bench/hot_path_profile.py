"""Where the servers' core spends its time under /encode at c=32: the product (the working tree) and the lean
app (bench/apps/asgi_lean.py), each pinned to one core with wrk on the other, as bench.hot_path runs them,
sampled by Linux perf on the servers' core (every process on it, the kernel and the idle task included) and
grouped by the shared object each sample was in: the Python interpreter, onnxruntime, the kernel, the C library, the PNG
decode (libspng and zlib), numpy, the event loop (uvloop), the HTTP parser (httptools), the rest, and idle. A
share times the window's time per request is the microseconds per request spent there.

    python -m bench.hot_path_profile                 -> bench/results/hot_path_profile.json
    python -m bench.hot_path_profile --rounds 3 --results DIR

Needs perf (apt-get install linux-perf) with permission to sample a CPU (root, or
kernel.perf_event_paranoid <= 0). The rounds alternate the servers; the medians of the rounds are reported.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.hot_path import CONCURRENCY, LEAN, PRODUCT_ENV, SERVER_CPUS, WRK_CPUS
from bench.plan import ENCODE, MODEL_DIR, RESULTS
from bench.provenance import git_state, served_model
from bench.rounds import busy_cpus, quiet_report, spread
from bench.run import machine, routes, test_pngs, write_json, wrk
from bench.servers import Server

PRODUCT = "product"
# Shared objects by what they do, in the order the report lists them; a name matches when it contains the key
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("python", ("libpython",)),
    ("onnxruntime", ("onnxruntime",)),
    ("kernel", ("[kernel",)),
    ("libc", ("libc.so", "libm.so", "ld-linux")),
    ("png decode", ("_pyspng", "libz.so", "zlib.cpython")),
    ("numpy", ("_multiarray",)),
    ("event loop", ("uvloop", "loop.cpython", "_asyncio.cpython")),
    ("http parser", ("httptools", "parser.cpython", "url_parser.cpython")),
    ("json", ("orjson",)),
)
OTHER = "other"
IDLE = "idle"  # the core's idle task: time no process on it had work


def group_of(dso: str) -> str:
    return next((name for name, keys in GROUPS if any(key in dso for key in keys)), OTHER)


def shares(report: str) -> dict[str, float]:
    """`perf report --stdio --sort comm,dso` -> each group's share of the samples (0..1): the idle task's
    samples are `idle`, objects of no group `other`."""
    found: dict[str, float] = {}
    for line in report.splitlines():
        fields = line.split(None, 2)
        if len(fields) != 3 or not fields[0].endswith("%"):
            continue
        try:
            percent = float(fields[0][:-1])
        except ValueError:
            continue
        group = IDLE if fields[1].startswith("swapper") else group_of(fields[2].strip())
        found[group] = found.get(group, 0.0) + percent / 100
    return found


def profile_window(url: str, body: dict[str, Any], seconds: int, data: Path) -> dict[str, Any]:
    """One window of wrk on `url`, perf sampling the servers' core over its first `seconds` - 2 (the two start
    together)."""
    perf = subprocess.Popen(
        ["perf", "record", "-q", "-o", str(data), "-F", "999", "-C", SERVER_CPUS, "--", "sleep", str(seconds - 2)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stats = wrk(url, CONCURRENCY, seconds, body, cpus=WRK_CPUS)
    _, error = perf.communicate(timeout=60)
    if perf.returncode != 0:
        raise RuntimeError(f"perf record failed: {error.strip()[-500:]}")
    report = subprocess.run(
        ["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "comm,dso", "-g", "none"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    per_request_us = 1e6 / stats["rps"]
    found = shares(report)
    return {
        "rps": stats["rps"],
        "per_request_us": per_request_us,
        "shares": found,
        "us_per_request": {group: share * per_request_us for group, share in found.items()},
    }


def run(rounds: int, window_s: int) -> dict[str, Any]:
    body = routes(test_pngs(256))[ENCODE]
    servers = {
        PRODUCT: Server("product", MODEL_DIR, env=PRODUCT_ENV, cpus=SERVER_CPUS),
        LEAN: Server(LEAN, MODEL_DIR, cpus=SERVER_CPUS),
    }
    windows: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    others: list[float] = []
    results: dict[str, Any] = {
        "machine": machine(),
        "git": git_state(),
        "command": " ".join(["python -m bench.hot_path_profile", *sys.argv[1:]]),
        "plan": {"rounds": rounds, "window_s": window_s, "concurrency": CONCURRENCY},
        "pinning": {"server_cpus": SERVER_CPUS, "wrk_cpus": WRK_CPUS},
        "groups": [name for name, _ in GROUPS] + [OTHER, IDLE],
    }
    with tempfile.TemporaryDirectory(prefix="vae-profile-") as scratch:
        try:
            for server in servers.values():
                server.wait_ready()
            results["model"] = served_model(servers[PRODUCT].url)
            for round_index in range(rounds):
                others.append(busy_cpus())
                order = list(servers) if round_index % 2 == 0 else list(servers)[::-1]
                for name in order:
                    wrk(servers[name].url, CONCURRENCY, 1, body, cpus=WRK_CPUS)  # warm-up
                    window = profile_window(servers[name].url, body, window_s, Path(scratch) / f"{name}.data")
                    windows[name].append(window)
                    print(f"round {round_index + 1}/{rounds} {name}: {window['rps']:.0f} requests/s", flush=True)
        finally:
            for server in servers.values():
                server.stop()
    results["other_cpus_busy"] = quiet_report(others)
    results["servers"] = {name: summarise(found) for name, found in windows.items()}
    return results


def summarise(windows: list[dict[str, Any]]) -> dict[str, Any]:
    groups = sorted({group for window in windows for group in window["shares"]})
    return {
        "rps": spread([w["rps"] for w in windows]),
        "per_request_us": spread([w["per_request_us"] for w in windows]),
        "us_per_request": {g: spread([w["us_per_request"].get(g, 0.0) for w in windows]) for g in groups},
        "shares": {g: spread([w["shares"].get(g, 0.0) for w in windows]) for g in groups},
        "windows": windows,
    }


def profile_section(recorded: dict[str, Any]) -> str:
    """docs/benchmarks.md's table: microseconds per request in each group, the product beside the lean app."""
    product, lean = recorded["servers"][PRODUCT], recorded["servers"][LEAN]
    lines = [
        f"`{' '.join(recorded['command'].split())}`, model {recorded['model']['name']} "
        f"{recorded['model']['version']}, {recorded['plan']['rounds']} rounds of {recorded['plan']['window_s']} s "
        f"windows, recorded {recorded['machine']['time']}. Medians of the rounds; the product served "
        f"{product['rps']['median']:.0f} requests/s ({product['per_request_us']['median']:.0f} us a request), the "
        f"lean app {lean['rps']['median']:.0f} ({lean['per_request_us']['median']:.0f} us).",
        "",
        "| where | product: us per request | share | lean app: us per request | share | product - lean |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for group in recorded["groups"]:
        ours, theirs = (server["us_per_request"].get(group) for server in (product, lean))
        if ours is None and theirs is None:
            continue
        mine, other = (s["median"] if s else 0.0 for s in (ours, theirs))
        share_of = [server["shares"].get(group, {"median": 0.0})["median"] for server in (product, lean)]
        lines.append(
            f"| {group} | {mine:.0f} | {100 * share_of[0]:.0f}% | {other:.0f} | {100 * share_of[1]:.0f}% "
            f"| {mine - other:+.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench.hot_path_profile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=int, default=6, help="seconds per window (perf samples the first WINDOW - 2)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.window < 3:
        parser.error("--window must be at least 3 seconds")
    missing = [tool for tool in ("perf", "wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        print(f"bench.hot_path_profile: needs {', '.join(missing)} (apt-get install linux-perf wrk)", file=sys.stderr)
        return 2
    results = run(args.rounds, args.window)
    if not results["other_cpus_busy"]["quiet"]:
        print("bench.hot_path_profile: something else kept the CPUs busy; no results written", file=sys.stderr)
        return 3
    write_json(args.results / "hot_path_profile.json", results)
    print(profile_section(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
