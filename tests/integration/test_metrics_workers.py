"""/metrics with two uvicorn workers: every scrape reports the whole process group (Prometheus
multiprocess mode, set up by vae-serve), whichever worker answers the scrape or the requests."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import MODEL_VERSION, Server, poll

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("VAE_BASE_URL")), reason="starts a two-worker server of its own, to read its metrics files"
)
ROUTE = "/healthz"  # needs no model, so a worker still loading answers it too


def scrape(url: str) -> str:
    """One /metrics on a new connection, so that either worker may answer it."""
    with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        response = client.get(f"{url}/metrics")
    assert response.status_code == 200, response.text
    return response.text


def value(text: str, name: str, **labels: str) -> float:
    """The sample `name` with exactly `labels` (in any order), 0 where there is none."""
    return next(
        (
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and sample.labels == labels
        ),
        0.0,
    )


def route_count(text: str) -> float:
    return value(text, "vae_requests_total", method="GET", route=ROUTE, status="200")


def pid(path: Path) -> int:
    """The process a multiprocess-mode file belongs to: prometheus_client names it <kind>_<pid>.db."""
    return int(path.stem.rsplit("_", 1)[1])


def per_worker_counts(metrics_dir: Path) -> dict[int, float]:
    """Each worker's own count of ROUTE, from its file: which workers answered, and how many."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        samples = [
            s
            for metric in MultiProcessCollector.merge([str(path)])
            for s in metric.samples
            if s.name == "vae_requests_total" and s.labels.get("route") == ROUTE
        ]
        counts[pid(path)] = sum(s.value for s in samples)
    return counts


def send(url: str, count: int) -> None:
    """`count` requests, 8 at a time, each on a new connection so that both workers accept some."""

    def one(_: int) -> None:
        with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            response = client.get(url + ROUTE)
        assert response.status_code == 200 and response.json() == {"status": "ok"}

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))


def test_metrics_sum_every_worker_and_survive_a_killed_worker(tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    server = Server(tmp_path, VAE_WORKERS="2", TMPDIR=str(temp))
    try:
        server.wait()
        poll(lambda: value(scrape(server.url), "vae_workers") == 2, "both workers report their metrics")
        (metrics_dir,) = temp.glob("vae-metrics-*")

        sent = 0
        for _ in range(40):  # until both workers have answered some (the kernel picks who accepts)
            send(server.url, 25)
            sent += 25
            if len([c for c in per_worker_counts(metrics_dir).values() if c]) == 2:
                break
        workers = per_worker_counts(metrics_dir)
        assert len([c for c in workers.values() if c]) == 2, workers
        assert sum(workers.values()) == sent
        scrapes = [scrape(server.url) for _ in range(10)]
        assert [route_count(text) for text in scrapes] == [sent] * 10  # every scrape, whoever answers it
        assert {value(text, "vae_workers") for text in scrapes} == {2}
        assert {
            value(text, "vae_model_info", model="fashion-mnist-vae", version=MODEL_VERSION) for text in scrapes
        } == {1}

        # A killed worker cannot clean up: its live gauges go at the next scrape, its counts stay.
        victim = next(iter(workers))
        os.kill(victim, signal.SIGKILL)

        def replaced() -> bool:  # the scrape comes first: it is what drops the killed worker's gauges
            workers_now = value(scrape(server.url), "vae_workers")
            return workers_now == 2 and victim not in {pid(path) for path in metrics_dir.glob("gauge_livesum_*.db")}

        poll(replaced, "the restarted worker replaces the killed one")
        text = scrape(server.url)
        assert route_count(text) == sent and value(text, "vae_requests_in_flight") == 0
    finally:
        server.stop()
    assert not metrics_dir.exists()  # vae-serve removes its directory on the way out
