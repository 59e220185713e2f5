"""The statistics: what a request's model calls record (inline, on a worker thread, through the micro-batcher),
how a request's time is split, and the REST routes in Triton's shape."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.batching import MicroBatcher
from service.engine import Engine
from service.observability import Metrics
from service.served import ServedModel
from service.settings import Settings
from service.v2 import statistics
from service.v2.models import MODELS
from service.v2.statistics import Request, Statistics
from tests.unit.service.conftest import build, client_for, v2_error
from tests.unit.service.fakes import FakeVAE

MODEL = "fake-vae"


def test_a_model_call_outside_a_request_records_nothing():
    request = Request(time.perf_counter_ns())
    with request.model(rows=1):
        pass
    assert statistics.current.get() is None
    statistics.model_call(0, 5, 9, rows=3)  # a native route's call, outside any request's model()
    assert request.phases == statistics.Phases()  # the request's phases are not its to record into


def test_a_request_s_time_is_split_into_queue_infer_input_and_output():
    request = Request(time.perf_counter_ns())
    with request.model(rows=4):
        statistics.model_call(queued_ns=100, started_ns=400, ended_ns=1400, rows=4)
        statistics.model_call(queued_ns=2000, started_ns=2000, ended_ns=2500, rows=4)
    phases = request.phases
    assert (phases.queue_ns, phases.infer_ns, phases.executions, phases.batch_size) == (300, 1500, 2, 4)
    assert statistics.current.get() is None  # the context is the caller's again
    store = Statistics()
    store.record("m.encoder", "1", request, ok=True)
    row = store.get("m.encoder", "1").as_dict("m.encoder", "1")
    stats = row["inference_stats"]
    assert stats["queue"] == {"count": 1, "ns": 300} and stats["compute_infer"] == {"count": 1, "ns": 1500}
    total = stats["success"]["ns"]
    parts = sum(stats[p]["ns"] for p in ("queue", "compute_input", "compute_infer", "compute_output"))
    assert stats["success"]["count"] == 1 and parts == total  # the four phases tile the request's time
    assert (row["inference_count"], row["execution_count"]) == (4, 2)
    assert [b["batch_size"] for b in row["batch_stats"]] == [4] and row["last_inference"] > 0
    assert stats["fail"] == {"count": 0, "ns": 0} and stats["cache_hit"] == {"count": 0, "ns": 0}


def test_a_failure_counts_its_time_and_nothing_else():
    store = Statistics()
    store.record("m.encoder", "1", Request(time.perf_counter_ns()), ok=False)
    stats = store.get("m.encoder", "1").as_dict("m.encoder", "1")
    assert stats["inference_stats"]["fail"]["count"] == 1 and stats["inference_stats"]["success"]["count"] == 0
    assert stats["inference_count"] == 0 and stats["batch_stats"] == []


def test_a_thread_s_wait_is_queue_and_its_run_is_infer():
    served = ServedModel.create(Engine.from_model(FakeVAE()), Settings(inline_cost=0, inference_threads=1), Metrics())
    gate = threading.Event()

    def slow(seconds: float) -> str:
        gate.wait(5)
        time.sleep(seconds)
        return "done"

    async def run():
        first, second = Request(time.perf_counter_ns()), Request(time.perf_counter_ns())

        async def call(request: Request, seconds: float) -> None:
            with request.model(rows=1):
                await served.run("elbo", 1, slow, seconds)

        tasks = [asyncio.create_task(call(first, 0.05)), asyncio.create_task(call(second, 0.0))]
        for _ in range(10_000):  # until the second waits for the one thread the first holds
            limiter = served.calls.limiter
            if limiter is not None and limiter.statistics().tasks_waiting == 1:
                break
            await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*tasks)
        return first.phases, second.phases

    first, second = asyncio.run(run())
    assert first.infer_ns >= 50_000_000 and second.infer_ns < 50_000_000
    assert second.queue_ns >= 50_000_000  # it waited for the first call to end
    assert first.executions == second.executions == 1


def test_a_micro_batch_is_one_execution_shared_by_its_requests():
    def encode(x):
        flat = x.reshape(len(x), -1)
        return flat.sum(axis=1, keepdims=True), flat.sum(axis=1, keepdims=True)

    async def run():
        batcher = MicroBatcher(encode, max_rows=64, max_wait_s=0.0)
        requests = [Request(time.perf_counter_ns()) for _ in range(3)]

        async def submit(request: Request, rows: int) -> None:
            with request.model(rows=rows):
                await batcher.submit(np.ones((rows, 1, 2, 2), np.float32))

        await asyncio.gather(*[submit(r, n) for r, n in zip(requests, (1, 3, 2), strict=True)])
        return batcher.calls, [r.phases for r in requests]

    calls, phases = asyncio.run(run())
    assert calls == 1
    assert [p.executions for p in phases] == [1, 0, 0]  # counted once, for the first request in it
    assert [p.batch_size for p in phases] == [6, 6, 6]  # each saw the batch's rows
    assert all(p.infer_ns > 0 for p in phases)


@pytest.mark.anyio
async def test_the_rest_routes_answer_in_triton_s_shape():
    app, fake = build()
    version = fake.manifest.version
    async with client_for(app) as client:
        width = fake.manifest.latent[0]
        z = {"inputs": [{"name": "z", "datatype": "FP32", "shape": [2, width], "data": [0.0] * (2 * width)}]}
        assert (await client.post(f"/v2/models/{MODEL}.decode/infer", json=z)).status_code == 200
        bad = {"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 1], "data": [0.0]}]}
        assert (await client.post(f"/v2/models/{MODEL}.decode/infer", json=bad)).status_code == 400
        one = (await client.get(f"/v2/models/{MODEL}.decode/versions/{version}/stats")).json()["model_stats"]
        every = (await client.get("/v2/models/stats")).json()["model_stats"]
        of_model = (await client.get(f"/v2/models/{MODEL}/stats")).json()["model_stats"]
        missing = await client.get("/v2/models/nothing.decode/stats")
        unknown_version = await client.get(f"/v2/models/{MODEL}.decode/versions/0.0.404/stats")
    (row,) = one
    assert (row["name"], row["version"], row["inference_count"], row["execution_count"]) == (
        f"{MODEL}.decode",
        version,
        2,
        1,
    )
    assert row["inference_stats"]["success"]["count"] == 1 and row["inference_stats"]["fail"]["count"] == 1
    assert row in every and row in of_model
    assert {r["name"] for r in of_model} == {r["name"] for r in every} and len(of_model) == len(MODELS)
    assert all(r["inference_count"] == 0 for r in every if r["name"] != f"{MODEL}.decode")
    assert "model 'nothing' is not loaded" in v2_error(missing, 404)
    assert "0.0.404" in v2_error(unknown_version, 404)
