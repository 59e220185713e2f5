"""A served model version: its model calls, admission (429 past max_in_flight) and micro-batching."""

import asyncio
import threading
import time

import anyio
import pytest

from service.engine import Engine
from service.errors import ApiError
from service.observability import Metrics
from service.served import ServedModel
from service.settings import Settings
from tests.unit.service.conftest import PNG, build, client_for, error_of, png_bytes
from tests.unit.service.fakes import FakeVAE


def served_with(**settings) -> ServedModel:
    return ServedModel.create(Engine.from_model(FakeVAE()), Settings(**settings), Metrics())


pytestmark = pytest.mark.anyio


class GatedVAE(FakeVAE):
    """Encode calls wait at a gate, so a test can hold requests inside the model for as long as it needs."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.inside, self._lock = threading.Event(), 0, threading.Lock()

    def encode(self, x):
        with self._lock:
            self.inside += 1
        if not self.gate.wait(timeout=30):
            raise TimeoutError("the test never opened the gate")
        return super().encode(x)


async def wait_for(condition, timeout: float = 10.0) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await anyio.sleep(0.005)


def test_heavy_model_calls_run_on_at_most_inference_threads_threads():
    state = served_with(inference_threads=2, inline_cost=0)
    lock, running, peak, threads = threading.Lock(), [0], [0], set()
    pair = threading.Barrier(2, timeout=10)  # each call waits for a second one to run beside it

    def work(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            threads.add(threading.get_ident())
        pair.wait()
        with lock:
            running[0] -= 1
        return i * 10

    async def run():
        return await asyncio.gather(*[state.run("decode", 100, work, i) for i in range(12)])

    assert asyncio.run(run()) == [i * 10 for i in range(12)]  # every call answered, in order
    assert peak[0] == 2 and threading.get_ident() not in threads


def test_small_model_calls_run_inline_on_the_event_loop():
    state = served_with(inline_cost=64)

    async def run():
        return await state.run("encode", 1, threading.get_ident)

    assert asyncio.run(run()) == threading.get_ident()


def test_past_max_in_flight_model_calls_are_refused_with_429_and_the_slot_comes_back():
    state = served_with(max_in_flight=1, inline_cost=0)
    started, release = threading.Event(), threading.Event()

    def blocking():
        started.set()
        release.wait(timeout=10)
        return "first"

    async def run():
        first = asyncio.create_task(state.run("decode", 100, blocking))
        await asyncio.to_thread(started.wait, 10)
        assert state.in_flight == 1
        with pytest.raises(ApiError) as refused:
            await state.run("decode", 100, lambda: "second")
        release.set()
        return refused.value, await first, await state.run("decode", 100, lambda: "third")

    refused, first, third = asyncio.run(run())
    assert (refused.status, refused.code, refused.headers) == (429, "overloaded", {"Retry-After": "1"})
    assert "fake-vae 9.9.9" in refused.message
    assert (first, third, state.in_flight) == ("first", "third", 0)
    assert state.metrics.registry.get_sample_value("vae_requests_rejected_overload_total") == 1.0


def test_a_failing_model_call_gives_its_slot_back():
    state = served_with(max_in_flight=1)

    def fails():
        raise RuntimeError("boom")

    async def run():
        with pytest.raises(RuntimeError):
            await state.run("encode", 1, fails)
        return await state.run("encode", 1, lambda: "ok")

    assert asyncio.run(run()) == "ok" and state.in_flight == 0


async def test_overload_is_429_and_the_rest_are_served():
    fake = GatedVAE()
    app, _ = build(fake, max_in_flight=2, inline_cost=0, micro_batch=False)  # one model call per request
    async with client_for(app) as client:

        async def post():
            return await client.post("/encode", content=png_bytes(0), headers=PNG)

        held = []
        async with anyio.create_task_group() as group:

            async def hold():
                held.append(await post())

            for _ in range(2):
                group.start_soon(hold)
            await wait_for(lambda: fake.inside == 2)  # both slots are taken, inside the model
            refused = [await post() for _ in range(3)]
            fake.gate.set()
    assert [error_of(r) for r in refused] == [(429, "overloaded")] * 3
    assert [r.status_code for r in held] == [200, 200] and all(len(r.json()["results"]) == 1 for r in held)


def test_a_row_of_a_large_image_model_weighs_its_pixels_so_it_never_runs_on_the_event_loop():
    """VAE_INLINE_COST counts rows of a 28 x 28 image: a 512 x 512 model's single row is 335 of them."""
    vae = FakeVAE()
    big = vae.manifest.input.model_copy(update={"shape": [1, 512, 512]})
    vae.manifest = vae.manifest.model_copy(update={"input": big})
    served = ServedModel.create(Engine.from_model(vae), Settings(), Metrics())
    assert served.calls.row_weight == 335
    assert served_with().calls.row_weight == 1  # a Fashion-MNIST-sized model: VAE_INLINE_COST as it was


async def test_a_large_image_models_single_row_runs_on_a_worker_thread():
    vae = FakeVAE()
    vae.manifest = vae.manifest.model_copy(
        update={"input": vae.manifest.input.model_copy(update={"shape": [1, 512, 512]})}
    )
    served = ServedModel.create(Engine.from_model(vae), Settings(), Metrics())
    loop_thread = threading.get_ident()
    ran_on = await served.run("decode", 1, threading.get_ident)
    assert ran_on != loop_thread
    small = served_with()
    assert await small.run("decode", 1, threading.get_ident) == loop_thread


def test_a_batch_leaves_the_loop_under_load_only_when_the_worker_has_a_cpu_to_spare(monkeypatch):
    from service import settings as module

    monkeypatch.setattr(module, "available_cpus", lambda: 4)
    # one worker on four CPUs: a worker thread runs a batch beside the loop
    alone = served_with(workers=1).batcher
    assert alone is not None and alone.off_loop is not None
    # a worker per CPU (the default): on one CPU a thread would run instead of the loop, not beside it
    shared = served_with().batcher
    assert shared is not None and shared.off_loop is None
    assert served_with(workers=2).batcher.off_loop is not None
