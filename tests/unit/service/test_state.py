import asyncio
import threading
import time

from service.observability import Metrics
from service.settings import Settings
from service.state import AppState


def test_heavy_model_calls_run_on_at_most_inference_threads_threads():
    state = AppState(settings=Settings(inference_threads=2, inline_cost=0), metrics=Metrics())
    lock, running, peak, threads = threading.Lock(), [0], [0], set()

    def work(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            threads.add(threading.get_ident())
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return i * 10

    async def run():
        return await asyncio.gather(*[state.run("decode", 100, work, i) for i in range(12)])

    assert asyncio.run(run()) == [i * 10 for i in range(12)]  # every call answered, in order
    assert peak[0] == 2 and threading.get_ident() not in threads


def test_small_model_calls_run_inline_on_the_event_loop():
    state = AppState(settings=Settings(inline_cost=64), metrics=Metrics())

    async def run():
        return await state.run("encode", 1, threading.get_ident)

    assert asyncio.run(run()) == threading.get_ident()
