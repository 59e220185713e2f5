"""The bounded decoder: where each image is decoded, the request's pixel budget, deadlines and the queue."""

import logging
import os

import anyio
import numpy as np
import pytest
from PIL import Image

from model.core.preprocess import PreprocessContract, bytes_to_array
from service import decoding
from service.decoding import DecodeLimits, DecodePool, ImageDecoder
from service.errors import ApiError
from tests.hostile_images import encode, progressive_jpeg_bomb

pytestmark = pytest.mark.anyio
CONTRACT = PreprocessContract()


@pytest.fixture
def anyio_backend():
    return "asyncio"


def noise_png(side: int, seed: int = 0) -> bytes:
    return encode(Image.fromarray(np.random.default_rng(seed).integers(0, 255, (side, side), dtype=np.uint8)), "PNG")


@pytest.fixture
async def decoder():
    decoder = ImageDecoder(DecodeLimits(timeout_s=60), workers=1, queue_limit=0)
    yield decoder
    decoder.close()


async def refusal(coroutine) -> tuple[int, str, str]:
    with pytest.raises(ApiError) as caught:
        await coroutine
    return caught.value.status, caught.value.code, caught.value.message


async def test_small_images_decode_inline_without_a_process(decoder, monkeypatch):
    monkeypatch.setattr(decoding, "_Worker", lambda context: pytest.fail("a 28x28 PNG went to a process"))
    blobs = [noise_png(28, seed) for seed in range(3)]
    out = await decoder.decode(blobs, CONTRACT)
    np.testing.assert_array_equal(out, np.stack([bytes_to_array(b, CONTRACT) for b in blobs]))


async def test_large_images_decode_in_a_process_with_the_same_result(decoder):
    blobs = [noise_png(28), noise_png(300, seed=1)]  # 300x300 is over the inline pixel limit
    out = await decoder.decode(blobs, CONTRACT)
    np.testing.assert_array_equal(out, np.stack([bytes_to_array(b, CONTRACT) for b in blobs]))
    assert decoder.pool._idle.qsize() == 1  # the process is kept for the next request


async def test_the_request_budget_counts_every_image_before_any_is_decoded(monkeypatch):
    monkeypatch.setattr(decoding, "image_to_array", lambda *a: pytest.fail("decoded before the budget check"))
    decoder = ImageDecoder(DecodeLimits(max_request_pixels=2 * 100 * 100, inline_pixels=100 * 100))
    status, code, message = await refusal(decoder.decode([noise_png(100, s) for s in range(3)], CONTRACT))
    assert (status, code) == (413, "request_too_many_pixels")
    assert "30000 pixels in all" in message and "VAE_MAX_REQUEST_PIXELS" in message


async def test_the_budget_includes_the_inline_images_when_others_go_to_a_process():
    decoder = ImageDecoder(DecodeLimits(max_request_pixels=300 * 300 + 28 * 28 - 1), workers=1)
    try:
        status, code, message = await refusal(decoder.decode([noise_png(28), noise_png(300)], CONTRACT))
        assert (status, code) == (413, "request_too_many_pixels") and f"{300 * 300 + 28 * 28} pixels" in message
    finally:
        decoder.close()


@pytest.mark.parametrize(
    "blobs, status, code, words",
    [
        ([b""], 400, "invalid_image", "the image is empty"),
        ([noise_png(28), b"x" * 20_000], 400, "invalid_image", "image 1: the bytes are not a decodable"),
        ([encode(Image.new("L", (28, 28)), "ICO")], 400, "invalid_image", "PNG, JPEG, WebP, BMP, GIF or TIFF"),
        ([noise_png(2049)], 413, "image_too_large", "2049x2049 = 4198401 pixels; the limit is 4194304"),
        ([progressive_jpeg_bomb((64, 64), 70)], 422, "too_many_scans", "more than 64 scans"),
        ([progressive_jpeg_bomb((1024, 1024), 70)], 422, "too_many_scans", "more than 64 scans"),
    ],
)
async def test_refusals_name_the_image_and_the_limit(decoder, blobs, status, code, words):
    got_status, got_code, message = await refusal(decoder.decode(blobs, CONTRACT))
    assert (got_status, got_code) == (status, code) and words in message


async def test_a_decode_past_its_deadline_is_killed_and_its_slot_freed(caplog):
    pool = DecodePool(workers=1, queue_limit=0)
    limits = DecodeLimits()
    try:
        pool.prestart()
        slow = ([(0, progressive_jpeg_bomb((2048, 2048), 60))], 1, CONTRACT, limits, 0)
        with caplog.at_level(logging.WARNING, "vae.service"):
            status, code, message = await refusal(pool.run(slow, timeout_s=0.001))
        assert (status, code) == (422, "decode_timeout") and "0.001 s" in message
        killed = next(r.args[1] for r in caplog.records if "killed" in r.getMessage())
        with pytest.raises(ProcessLookupError):
            os.kill(killed, 0)  # killed and reaped
        small = ([(0, noise_png(300))], 1, CONTRACT, limits, 0)
        [array] = await pool.run(small, timeout_s=60)  # the only slot is free again
        np.testing.assert_array_equal(array, bytes_to_array(noise_png(300), CONTRACT))
    finally:
        pool.close()


class _ExitOnUnpickle:
    def __reduce__(self):
        return os._exit, (3,)


async def test_a_decoder_process_that_dies_is_a_clean_400_and_is_replaced():
    pool = DecodePool(workers=1, queue_limit=0)
    try:
        status, code, _ = await refusal(pool.run((_ExitOnUnpickle(),), timeout_s=60))
        assert (status, code) == (400, "invalid_image")
        [array] = await pool.run(([(0, noise_png(300))], 1, CONTRACT, DecodeLimits(), 0), timeout_s=60)
        assert array.shape == (1, 28, 28)
    finally:
        pool.close()


async def test_a_full_queue_is_answered_429_at_once():
    pool = DecodePool(workers=1, queue_limit=0)
    job = ([(0, noise_png(300))], 1, CONTRACT, DecodeLimits(), 0)
    outcomes: list = []

    async def first() -> None:
        outcomes.append(await pool.run(job, timeout_s=60))

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(first)
            with anyio.fail_after(10):
                while pool._jobs == 0:
                    await anyio.sleep(0)
            status, code, message = await refusal(pool.run(job, timeout_s=60))
        assert (status, code) == (429, "decode_queue_full") and "retry" in message
        assert len(outcomes) == 1 and outcomes[0][0].shape == (1, 28, 28)  # the first was served
    finally:
        pool.close()


def test_only_short_png_and_jpeg_headers_decode_inline():
    png, jpeg = noise_png(28), encode(Image.new("L", (28, 28)), "JPEG")
    assert decoding.few_segments(png) and decoding.few_segments(jpeg)
    text = b"\x00\x00\x00\x05zTXtk\x00\x00x\x9c" + b"\x00" * 4  # the CRC is not checked here
    assert not decoding.few_segments(png[:33] + text + png[33:])  # inflated on open: to a process
    assert not decoding.few_segments(jpeg[:2] + b"\xff\xfe\x00\x02" * 20 + jpeg[2:])  # 20 comments
    assert decoding.few_segments(png[:20]) is False  # a cut header is judged, not an error
    for fmt in ("GIF", "BMP", "TIFF", "WEBP"):
        assert not decoding.few_segments(encode(Image.new("L", (28, 28)), fmt))


class _AllocatingCount(int):
    """A pixel count whose sum allocates 2 GiB, inside decode_job in the decoder process."""

    def __add__(self, other):
        return len(bytearray(2 << 30)) + other


async def test_a_decoder_process_cannot_allocate_past_its_memory_limit():
    pool = DecodePool(workers=1, queue_limit=0)
    try:
        job = ([(0, noise_png(300))], 1, CONTRACT, DecodeLimits(), _AllocatingCount(0))
        status, code, message = await refusal(pool.run(job, timeout_s=60))
        assert (status, code) == (413, "image_too_large") and "more memory" in message
        [array] = await pool.run(([(0, noise_png(300))], 1, CONTRACT, DecodeLimits(), 0), timeout_s=60)
        assert array.shape == (1, 28, 28)  # the same process, still serving
    finally:
        pool.close()
