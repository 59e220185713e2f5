"""`make bench`'s scale-out measurement: two replicas behind one address against one replica.

    python -m bench.scaleout [--rounds 5] [--window 2] [--warmup 1]   # -> bench/results/scaleout.json

A replica is one `vae-serve` process with one worker, as one pod of docker/kubernetes/ runs. The
address is bench/proxy.py, a round-robin TCP proxy that balances per connection as a Kubernetes
Service does. The cells, measured in interleaved rounds as bench/run.py does (bench/rounds.py):
one replica directly, one replica behind the proxy, two replicas behind the proxy, for /encode at
c=32 and c=64. The ratios, taken per round: two replicas over one (both behind the proxy), and the
proxy's own cost (one replica behind it over one directly). wrk, the proxy and the replicas share
this machine's cores, so two replicas here compete with the load generator for the same CPU; on a
cluster each pod has its own cores (docs/deploying.md says what that means).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.plan import ENCODE, MODEL_DIR, RESULTS, Bench, Plan
from bench.provenance import git_state, served_model
from bench.rounds import Cell, Ratio, WindowFailed, round_ratios, summarise_cell, summarise_ratios
from bench.run import machine, preflight, routes, run_rounds, test_pngs, write_json, wrk
from bench.servers import REPO, Server, free_port

CONCURRENCY = (32, 64)
CELLS = tuple(
    Cell(server, ENCODE, c)
    for server in ("one_replica", "one_replica_proxied", "two_replicas_proxied")
    for c in CONCURRENCY
)
RATIOS = {
    **{
        f"two_vs_one_replica_c{c}": Ratio(
            Cell("two_replicas_proxied", ENCODE, c), Cell("one_replica_proxied", ENCODE, c)
        )
        for c in CONCURRENCY
    },
    **{
        f"proxy_vs_direct_c{c}": Ratio(Cell("one_replica_proxied", ENCODE, c), Cell("one_replica", ENCODE, c))
        for c in CONCURRENCY
    },
}
PLAN = Plan("scaleout", CELLS, RATIOS, ())  # 6 cells x 5 rounds x (1 s + 2 s): about 90 s of load


@dataclass
class Proxy:
    """bench/proxy.py in its own process, in front of `backends`."""

    backends: list[Server]

    def __post_init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "bench.proxy",
            "--port",
            str(self.port),
            *(arg for server in self.backends for arg in ("--backend", f"127.0.0.1:{server.port}")),
        ]
        self.process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bench.proxy exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.01)
        raise TimeoutError(f"bench.proxy not answering after {timeout}s")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


def encode_count(server: Server) -> float:
    """The /encode requests a replica has answered, from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url + "/metrics", timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "vae_requests_total" and s.labels.get("route") == "/encode"
    )


def balance(bench: Bench, replicas: list[Server], seconds: int = 2) -> dict[str, Any]:
    """One more window through the two-replica proxy: how many of its requests each replica answered."""
    before = [encode_count(r) for r in replicas]
    stats = wrk(bench.servers["two_replicas_proxied"].url, 32, seconds, bench.routes[ENCODE])
    answered = [encode_count(r) - b for r, b in zip(replicas, before, strict=True)]
    return {
        "window_requests": stats["requests"],
        "answered_per_replica": answered,
        "smaller_share": min(answered) / max(sum(answered), 1),
    }


def measure(plan: Plan, command: str) -> dict[str, Any]:
    pngs = test_pngs(256)
    replicas = [Server("product", MODEL_DIR) for _ in range(2)]
    proxies: list[Proxy] = []
    try:
        for replica in replicas:
            replica.wait_ready()
        proxies = [Proxy(replicas[:1]), Proxy(replicas)]
        for proxy in proxies:
            proxy.wait_ready()
        servers = {"one_replica": replicas[0], "one_replica_proxied": proxies[0], "two_replicas_proxied": proxies[1]}
        bench = Bench(plan, servers, pngs, routes(pngs))  # type: ignore[arg-type]  # a proxy has the url too
        preflight(bench)
        results: dict[str, Any] = {
            "machine": machine(),
            "git": git_state(),
            "command": command,
            "model": served_model(replicas[0].url),
            "plan": {
                "rounds": plan.rounds,
                "window_s": plan.window_s,
                "warmup_s": plan.warmup_s,
                "seed": plan.seed,
                "cells": len(plan.cells),
            },
            "setup": "each replica: vae-serve, 1 worker; proxy: bench/proxy.py, round-robin per connection; "
            "wrk, proxy and replicas on the same cores",
        }
        results["order"] = run_rounds(bench)
        results["balance"] = balance(bench, replicas)
    finally:
        for process in (*proxies, *replicas):
            process.stop()
    results["cells"] = {
        key: {
            "server": cell.server,
            "route": cell.route,
            "concurrency": cell.concurrency,
            **summarise_cell(bench.windows[key]),
            "windows": bench.windows[key],
        }
        for key, cell in ((cell.key, cell) for cell in plan.cells)
    }
    results["ratios"] = summarise_ratios(round_ratios(bench.windows, plan.ratios))
    return results


def scaleout_section(results: dict[str, Any]) -> str:
    """The docs block (bench/report.py writes it into docs/deploying.md): requests/s per cell and the ratios,
    as medians of
    the rounds with their range, and how the balance window split between the replicas."""
    from bench.report import _spread

    cells, ratios, m, plan, git = (results[k] for k in ("cells", "ratios", "machine", "plan", "git"))
    tree = "" if git["dirty"] is False else " (with uncommitted changes)"
    model = results.get("model")
    served = f", model `{model['name']}` {model['version']}" if model else ""
    lines = [
        f"Measured by `{results['command']}` on {m['cores']} cores ({m['cpu']}), {m['time']}, at commit "
        f"`{(git['commit'] or 'unknown')[:12]}`{tree}{served}: `POST /encode` (1 PNG) requests/s, the median of "
        f"{plan['rounds']} interleaved rounds of {plan['window_s']} s windows, (min-max) in brackets. wrk, "
        f"the proxy and the replicas share the cores.",
        "",
        "| | c=32 | c=64 |",
        "|---|---|---|",
    ]
    for server, label in (
        ("one_replica", "one replica, direct"),
        ("one_replica_proxied", "one replica behind the proxy"),
        ("two_replicas_proxied", "two replicas behind the proxy"),
    ):
        lines.append(
            f"| {label} | "
            + " | ".join(_spread(cells[f"{server}/{ENCODE}/c{c}"]["rps"], ".0f") for c in CONCURRENCY)
            + " |"
        )
    for name, label in (
        ("two_vs_one_replica", "two replicas / one (both behind the proxy)"),
        ("proxy_vs_direct", "one replica: behind the proxy / direct"),
    ):
        lines.append(
            f"| {label} | " + " | ".join(_spread(ratios[f"{name}_c{c}"], ".2f", "x") for c in CONCURRENCY) + " |"
        )
    shares = results["balance"]["answered_per_replica"]
    lines += [
        "",
        f"In one more window through the two-replica proxy the replicas answered {shares[0]:.0f} and "
        f"{shares[1]:.0f} requests.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench.scaleout", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=PLAN.rounds)
    parser.add_argument("--window", type=int, default=PLAN.window_s, help="seconds per measured window")
    parser.add_argument("--warmup", type=int, default=PLAN.warmup_s, help="seconds of warm-up before each window")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.window < 1 or args.warmup < 0:
        parser.error("--rounds and --window must be >= 1 and --warmup >= 0")
    plan = Plan(PLAN.name, PLAN.cells, PLAN.ratios, (), rounds=args.rounds, window_s=args.window, warmup_s=args.warmup)
    command = " ".join(["python -m bench.scaleout", *(sys.argv[1:] if argv is None else argv)])
    try:
        results = measure(plan, command)
    except WindowFailed as failure:
        print(
            f"bench.scaleout: a window failed, so its numbers would be wrong; no results written.\n"
            f"bench.scaleout: {failure}",
            file=sys.stderr,
        )
        return 1
    write_json(args.results / f"{plan.name}.json", results)
    print(json.dumps({name: round(r["median"], 3) for name, r in results["ratios"].items()}, indent=2))
    if args.results.resolve() == RESULTS.resolve():
        from bench.report import update_docs

        update_docs()
    return 0


if __name__ == "__main__":
    sys.exit(main())
