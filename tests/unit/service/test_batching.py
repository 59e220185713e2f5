import asyncio
import threading

import numpy as np
import pytest

from service.batching import MicroBatcher


def encode(x):
    flat = x.reshape(len(x), -1)
    return flat.sum(axis=1, keepdims=True), -flat.sum(axis=1, keepdims=True)


def test_concurrent_requests_share_one_call_and_get_their_own_rows():
    async def run():
        batcher = MicroBatcher(encode, max_rows=64, max_wait_s=0.0)
        inputs = [np.full((n, 1, 2, 2), float(i)) for i, n in enumerate([1, 3, 2])]
        results = await asyncio.gather(*[batcher.submit(x) for x in inputs])
        return batcher.calls, inputs, results

    calls, inputs, results = asyncio.run(run())
    assert calls == 1
    for x, (mean, logvar) in zip(inputs, results, strict=False):
        np.testing.assert_array_equal(mean, encode(x)[0])
        np.testing.assert_array_equal(logvar, encode(x)[1])


def test_a_closed_batcher_sends_what_it_holds_and_then_every_request_alone():
    async def run():
        batcher = MicroBatcher(encode, max_rows=64, max_wait_s=3600.0)  # a timer that would never fire in a test
        held = asyncio.ensure_future(batcher.submit(np.ones((1, 1, 1, 1))))
        await asyncio.sleep(0)  # queued behind the timer
        batcher.close()  # the version is replaced: nothing may wait on its timer
        first = await held
        later = await batcher.submit(np.full((2, 1, 1, 1), 2.0))
        return batcher.calls, batcher._timer, first, later

    calls, timer, first, later = asyncio.run(run())
    assert calls == 2 and timer is None
    np.testing.assert_array_equal(first[0], [[1.0]])
    np.testing.assert_array_equal(later[0], [[2.0], [2.0]])


def test_a_full_batch_flushes_at_once_without_waiting_for_its_timer():
    async def run():
        batcher = MicroBatcher(encode, max_rows=2, max_wait_s=3600.0)  # a timer that would never fire in a test
        first = asyncio.ensure_future(batcher.submit(np.ones((1, 1, 1, 1))))
        await asyncio.sleep(0)  # one loop turn: the first request is queued and its timer armed, nothing flushed
        queued = (batcher.calls, first.done(), batcher._timer is not None)
        second = await batcher.submit(np.full((1, 1, 1, 1), 2.0))  # fills the batch: flushed on the spot
        return queued, batcher.calls, await first, second, batcher._timer

    queued, calls, first, second, timer = asyncio.run(run())
    assert queued == (0, False, True)
    assert calls == 1 and timer is None
    np.testing.assert_array_equal(first[0], [[1.0]])
    np.testing.assert_array_equal(second[0], [[2.0]])


def test_a_failure_reaches_every_waiting_request():
    def broken(x):
        raise RuntimeError("boom")

    async def run():
        batcher = MicroBatcher(broken, max_rows=8, max_wait_s=0.0)
        return await asyncio.gather(
            batcher.submit(np.ones((1, 1))), batcher.submit(np.ones((1, 1))), return_exceptions=True
        )

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(run()))


def test_an_async_encode_runs_the_batch_off_the_loop_and_requests_queue_behind_it():
    threads = []

    async def encode_in_thread(x):
        def work():
            threads.append(threading.get_ident())
            return encode(x)

        return await asyncio.to_thread(work)

    async def run():
        batcher = MicroBatcher(encode_in_thread, max_rows=64, max_wait_s=0.0)
        inputs = [np.full((1, 1, 2, 2), float(i)) for i in range(4)]
        return batcher.calls, inputs, await asyncio.gather(*[batcher.submit(x) for x in inputs])

    _, inputs, results = asyncio.run(run())
    assert threads and threading.get_ident() not in threads
    for x, (mean, _) in zip(inputs, results, strict=False):
        np.testing.assert_array_equal(mean, encode(x)[0])


@pytest.mark.anyio
async def test_encode_route_gives_the_same_answer_with_micro_batching():
    from service.batching import MicroBatcher as Batcher
    from tests.unit.service.conftest import build, client_for, png_bytes

    plain, fake = build(micro_batch=False)
    batched, _ = build(fake, micro_batch=True)
    served = batched.state.vae.resolve()
    served.batcher = Batcher(fake.encode, max_rows=8, max_wait_s=0.0)
    headers = {"content-type": "image/png"}
    bodies = [png_bytes(i) for i in range(4)]
    started, all_started = [], asyncio.Event()

    async def held_until_all_started(body: bytes):
        """The body is sent only once every request has begun, so all four are in flight together."""
        started.append(body)
        if len(started) == len(bodies):
            all_started.set()
        await all_started.wait()
        yield body

    async with client_for(plain) as a, client_for(batched) as b:
        expected = [(await a.post("/encode?sample=true&seed=2", content=x, headers=headers)).json() for x in bodies]
        got = await asyncio.wait_for(
            asyncio.gather(
                *[
                    b.post("/encode?sample=true&seed=2", content=held_until_all_started(x), headers=headers)
                    for x in bodies
                ]
            ),
            timeout=30,
        )
    for response, want in zip(got, expected, strict=False):
        result, wanted = response.json()["results"][0], want["results"][0]
        for key in ("mean", "logvar", "z"):  # the fake's numpy matmul rounds differently in a batch
            np.testing.assert_allclose(result[key], wanted[key], rtol=1e-5, atol=1e-6)
    assert 1 <= served.batcher.calls < len(bodies)  # the batcher ran, and coalesced


@pytest.fixture
def anyio_backend():
    return "asyncio"


def test_a_batch_runs_off_the_loop_only_while_other_requests_are_being_handled():
    """A lone request's batch runs inline (no thread hop); with others in the process, off the loop."""
    ways = []

    def inline(x):
        ways.append(("inline", len(x)))
        return encode(x)

    async def off_loop(x):
        ways.append(("off_loop", len(x)))
        return await asyncio.to_thread(encode, x)

    async def run(active: int, count: int):
        batcher = MicroBatcher(inline, max_rows=64, max_wait_s=0.0, off_loop=off_loop, others=lambda: active)
        await asyncio.gather(*[batcher.submit(np.full((1, 1, 2, 2), float(i))) for i in range(count)])

    asyncio.run(run(active=1, count=1))
    asyncio.run(run(active=3, count=3))  # all the requests there are, in this batch
    asyncio.run(run(active=5, count=2))  # three more being handled: they can use the loop meanwhile
    assert ways == [("inline", 1), ("inline", 3), ("off_loop", 2)]


def test_while_max_running_batches_run_new_rows_gather_into_one_batch_sent_when_one_ends():
    release = None
    sizes = []

    async def slow(x):
        sizes.append(len(x))
        await release.wait()
        return encode(x)

    async def run():
        nonlocal release
        release = asyncio.Event()
        batcher = MicroBatcher(slow, max_rows=64, max_wait_s=0.0, max_running=1)
        first = asyncio.ensure_future(batcher.submit(np.zeros((1, 1, 2, 2))))
        await asyncio.sleep(0.01)  # the first batch runs, and waits
        later = [asyncio.ensure_future(batcher.submit(np.full((1, 1, 2, 2), float(i)))) for i in range(1, 4)]
        await asyncio.sleep(0.01)
        assert sizes == [1]  # the later rows wait: no batch of their own while the first runs
        release.set()
        results = await asyncio.gather(first, *later)
        return batcher.calls, results

    calls, results = asyncio.run(run())
    assert calls == 2 and sizes == [1, 3]
    for i, (mean, _) in enumerate(results):
        np.testing.assert_array_equal(mean, encode(np.full((1, 1, 2, 2), float(i)))[0])


def test_close_sends_the_gathered_rows_even_while_batches_run():
    async def run():
        release = asyncio.Event()

        async def slow(x):
            await release.wait()
            return encode(x)

        batcher = MicroBatcher(slow, max_rows=64, max_wait_s=0.0, max_running=1)
        first = asyncio.ensure_future(batcher.submit(np.zeros((1, 1, 2, 2))))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(batcher.submit(np.ones((1, 1, 2, 2))))
        await asyncio.sleep(0.01)
        batcher.close()  # the version is being replaced: nothing waits for a running batch any more
        assert batcher.calls == 2
        release.set()
        await asyncio.gather(first, second)

    asyncio.run(run())
