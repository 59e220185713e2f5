"""Per-image cost of the decode step /encode takes for a 28x28 PNG: `bytes_to_array` then `np.stack`
on the loop (the step before the decoder existed), the decoder's inline path (what /encode now takes
for such an image), and a round trip to a decoder process (what larger images take). CPU time of this
process (`time.process_time`, so other load on the
machine inflates it less than wall time) and wall time, best of 5 rounds. Prints; writes nothing.

    python -m bench.image_decode_cost
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from bench.run import test_pngs
from model.core.preprocess import PreprocessContract, bytes_to_array
from service.decoding import DecodeLimits, ImageDecoder

ROUNDS = 5


async def main() -> None:
    contract, png = PreprocessContract(), test_pngs(1)[0]
    inline = ImageDecoder(DecodeLimits())
    pooled = ImageDecoder(DecodeLimits(inline_bytes=0), workers=1)  # every image to the process
    await pooled.start()

    async def decoded(decoder: ImageDecoder) -> None:
        await decoder.decode([png], contract)

    async def before() -> None:  # what read_images did before the decoder: decode on the loop, then stack
        np.stack([bytes_to_array(png, contract)])

    paths = (
        ("stacked decode", before, 3000),
        ("decoder, inline", lambda: decoded(inline), 3000),
        ("decoder, process", lambda: decoded(pooled), 300),
    )
    best: dict[str, tuple[float, float]] = {}
    try:
        for _ in range(ROUNDS):
            for name, call, count in paths:
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(count):
                    await call()
                cpu, wall = (time.process_time() - cpu) / count * 1e6, (time.perf_counter() - wall) / count * 1e6
                previous = best.get(name, (float("inf"), float("inf")))
                best[name] = (min(previous[0], cpu), min(previous[1], wall))
    finally:
        pooled.close()
    for name, (cpu, wall) in best.items():
        print(f"{name:>18}: {cpu:7.1f} us CPU, {wall:7.1f} us wall per 28x28 PNG")


if __name__ == "__main__":
    asyncio.run(main())
