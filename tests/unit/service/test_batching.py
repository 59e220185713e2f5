import asyncio

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
    for x, (mean, logvar) in zip(inputs, results):
        np.testing.assert_array_equal(mean, encode(x)[0])
        np.testing.assert_array_equal(logvar, encode(x)[1])


def test_a_full_batch_flushes_at_once():
    async def run():
        batcher = MicroBatcher(encode, max_rows=2, max_wait_s=10.0)
        await asyncio.wait_for(asyncio.gather(batcher.submit(np.ones((1, 1, 1, 1))),
                                              batcher.submit(np.ones((1, 1, 1, 1)))), timeout=1)
        return batcher.calls

    assert asyncio.run(run()) == 1


def test_a_failure_reaches_every_waiting_request():
    def broken(x):
        raise RuntimeError("boom")

    async def run():
        batcher = MicroBatcher(broken, max_rows=8, max_wait_s=0.0)
        return await asyncio.gather(batcher.submit(np.ones((1, 1))), batcher.submit(np.ones((1, 1))),
                                    return_exceptions=True)

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(run()))


@pytest.mark.anyio
async def test_encode_route_gives_the_same_answer_with_micro_batching():
    from tests.unit.service.conftest import build, client_for, png_bytes
    from service.batching import MicroBatcher as Batcher

    plain, fake = build()
    batched, _ = build(fake, micro_batch=True)
    batched.state.vae.batcher = Batcher(fake.encode, max_rows=8, max_wait_s=0.0)
    headers = {"content-type": "image/png"}
    async with client_for(plain) as a, client_for(batched) as b:
        bodies = [png_bytes(i) for i in range(4)]
        expected = [(await a.post("/encode?sample=true&seed=2", content=x, headers=headers)).json() for x in bodies]
        got = await asyncio.gather(*[b.post("/encode?sample=true&seed=2", content=x, headers=headers) for x in bodies])
    for response, want in zip(got, expected):
        result, wanted = response.json()["results"][0], want["results"][0]
        for key in ("mean", "logvar", "z"):  # the fake's numpy matmul rounds differently in a batch
            np.testing.assert_allclose(result[key], wanted[key], rtol=1e-5, atol=1e-6)
    assert batched.state.vae.batcher.calls < 4


@pytest.fixture
def anyio_backend():
    return "asyncio"
