"""Hostile images against a real server, each sent while a thread polls /healthz.

Every test asserts that /healthz never waited over 1 s, that each hostile request got the
expected 4xx (or 200) with its error code and message, and that the server is ready afterwards.
"""

from __future__ import annotations

import asyncio
import struct
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.hostile_images import black_png, encode, many_frame_gif, many_page_tiff, progressive_jpeg_bomb
from tests.integration.conftest import HealthGuard, Server


def start(tmp_path_factory, **env: str) -> Server:
    server = Server(tmp_path_factory.mktemp("adversarial"), **env)
    try:
        server.wait(timeout=60)
    except Exception:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The default limits: 4,194,304 pixels an image, 16,777,216 a request, 64 JPEG scans, 3 s."""
    server = start(tmp_path_factory, VAE_MAX_IN_FLIGHT="512")
    yield server
    server.stop()
    assert "Traceback" not in server.log(), server.log()


@pytest.fixture(scope="module")
def lenient(tmp_path_factory):
    """Per-image and scan limits opened wide, so the request budget, the deadline and the queue
    are what stop the attacks: one decoder process, two waiting jobs, a 1 s deadline."""
    server = start(
        tmp_path_factory,
        VAE_MAX_IN_FLIGHT="512",
        VAE_MAX_IMAGE_PIXELS="16777216",
        VAE_MAX_JPEG_SCANS="4096",
        VAE_DECODE_TIMEOUT_S="1",
        VAE_DECODE_WORKERS="1",
        VAE_DECODE_QUEUE="2",
    )
    yield server
    server.stop()
    assert "Traceback" not in server.log(), server.log()


def post(url: str, content: bytes, content_type: str = "image/png", timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{url}/encode", content=content, headers={"content-type": content_type}, timeout=timeout)


def post_files(url: str, blobs: list[bytes]) -> httpx.Response:
    files = [("file", (f"{i}.png", blob, "image/png")) for i, blob in enumerate(blobs)]
    return httpx.post(f"{url}/encode", files=files, timeout=60)


def error(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    assert set(body) == {"error"}, body
    return response.status_code, body["error"]["code"], body["error"]["message"]


def assert_ready(server: Server) -> None:
    assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200


def assert_encoded(response: httpx.Response, images: int = 1) -> None:
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(images)) and all(np.isfinite(r["mean"]).all() for r in results)


def test_a_progressive_jpeg_declaring_4096x4096_with_150_scans_is_refused_on_its_header(server):
    bomb = progressive_jpeg_bomb((4096, 4096), repeats=150, encoded_side=1024)
    assert 5_000 < len(bomb) < 20_000
    with HealthGuard(server.url):
        status, code, message = error(post(server.url, bomb, "image/jpeg"))
    assert (status, code) == (413, "image_too_large") and "4096x4096 = 16777216 pixels" in message
    assert_ready(server)


def test_a_jpeg_over_the_scan_cap_is_refused_before_decoding(server):
    bomb = progressive_jpeg_bomb((2048, 2048), repeats=150, encoded_side=1024)
    with HealthGuard(server.url):
        status, code, message = error(post(server.url, bomb, "image/jpeg"))
    assert (status, code) == (422, "too_many_scans") and "more than 64 scans" in message
    assert_ready(server)


def test_a_jpeg_bomb_past_the_scan_cap_is_stopped_by_the_deadline_and_frees_its_slot(lenient):
    bomb = progressive_jpeg_bomb((4096, 4096), repeats=2000)
    with HealthGuard(lenient.url):
        status, code, message = error(post(lenient.url, bomb, "image/jpeg"))
        assert (status, code) == (422, "decode_timeout") and "longer than 1 s" in message
        assert_encoded(post(lenient.url, black_png(300)))  # the only decoder process was replaced
    assert "decoder process" in lenient.log() and "killed" in lenient.log()
    assert_ready(lenient)


def test_64_black_4000x4000_pngs_are_refused_by_the_pixel_limits(server, lenient):
    blobs = [black_png(4000)] * 64
    assert sum(map(len, blobs)) < 1_100_000
    with HealthGuard(server.url):
        status, code, message = error(post_files(server.url, blobs))
    assert (status, code) == (413, "image_too_large") and message.startswith("image 0: image is 4000x4000")
    with HealthGuard(lenient.url):  # each image now allowed: the request's budget refuses them together
        status, code, message = error(post_files(lenient.url, blobs))
    assert (status, code) == (413, "request_too_many_pixels") and "1024000000 pixels in all" in message
    assert_ready(server)
    assert_ready(lenient)


def test_a_large_image_within_the_limits_is_decoded_off_the_loop(server):
    with HealthGuard(server.url):
        assert_encoded(post_files(server.url, [black_png(2048), encode(Image.new("L", (28, 28), 9), "PNG")]), 2)
    assert_ready(server)


def test_a_gif_with_700k_frames_is_decoded_from_its_first_frame_only(server):
    gif = many_frame_gif(700_000)
    with HealthGuard(server.url):  # counting the frames stalled the loop for seconds
        assert_encoded(post(server.url, gif, "image/gif"))
    assert_ready(server)


def test_a_tiff_with_12k_pages_is_decoded_from_its_first_page_only(server):
    tiff = many_page_tiff(12_000)
    with HealthGuard(server.url):  # counting the pages is quadratic: it stalled the loop for seconds
        assert_encoded(post(server.url, tiff, "image/tiff"))
    assert_ready(server)


def test_a_full_decode_queue_is_answered_429_at_once(lenient):
    bomb = progressive_jpeg_bomb((4096, 4096), repeats=2000)  # each holds the one process for its 1 s deadline

    async def flood() -> list[tuple[float, httpx.Response]]:
        async with httpx.AsyncClient(base_url=lenient.url, timeout=60) as client:

            async def one() -> tuple[float, httpx.Response]:
                began = time.perf_counter()
                response = await client.post("/encode", content=bomb, headers={"content-type": "image/jpeg"})
                return time.perf_counter() - began, response

            return await asyncio.gather(*[one() for _ in range(8)])

    with HealthGuard(lenient.url):
        outcomes = asyncio.run(flood())
    by_code: dict[str, list[float]] = {}
    for elapsed, response in outcomes:
        status, code, message = error(response)
        assert (status, code) in {(422, "decode_timeout"), (429, "decode_queue_full")}, (status, code, message)
        by_code.setdefault(code, []).append(elapsed)
    assert by_code.get("decode_queue_full") and by_code.get("decode_timeout"), by_code
    assert max(by_code["decode_queue_full"]) < min(by_code["decode_timeout"])  # refused without waiting
    assert_ready(lenient)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _with_chunks(png: bytes, chunks: bytes) -> bytes:
    return png[:33] + chunks + png[33:]  # after the signature and IHDR


def _patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def _wider_search() -> list[tuple[str, bytes, str, int, str, str]]:
    """(name, bytes, content type, status, code or "", words in the message)."""
    grey = Image.new("L", (28, 28), 7)
    png = encode(grey, "PNG")
    jpeg = encode(grey, "JPEG")
    frames = [Image.new("L", (28, 28), v) for v in range(256)] * 4
    text_bomb = _png_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"\x00" * ((1 << 20) - 1), 9))
    exif_loop = (
        b"Exif\x00\x00II*\x00\x08\x00\x00\x00" + struct.pack("<H", 4000) + struct.pack("<HHII", 0x8769, 4, 1, 8) * 4000
    )  # every entry points back at the same IFD
    webp = encode(Image.new("L", (1, 1)), "WEBP", lossless=True)
    vp8l = webp.index(b"VP8L") + 9  # 14 bits of width - 1, 14 of height - 1
    fields = int.from_bytes(webp[vp8l : vp8l + 4], "little") & ~((1 << 28) - 1) | 16382 | (16382 << 14)
    return [
        (
            "bmp declaring 100000x100000",
            _patched(encode(grey, "BMP"), 18, struct.pack("<ii", 100000, 100000)),
            "image/bmp",
            413,
            "image_too_large",
            "100000x100000",
        ),
        (
            "webp declaring 16383x16383",
            _patched(webp, vp8l, fields.to_bytes(4, "little")),
            "image/webp",
            413,
            "image_too_large",
            "16383x16383",
        ),
        (
            "tiff declaring 60000x60000",
            _patched(
                _patched(many_page_tiff(1), 8 + 784 + 2 + 8, struct.pack("<H", 60000)),
                8 + 784 + 2 + 12 + 8,
                struct.pack("<H", 60000),
            ),
            "image/tiff",
            413,
            "image_too_large",
            "60000x60000",
        ),
        (
            "animated webp, 1024 frames",
            encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
            "image/webp",
            200,
            "",
            "",
        ),
        (
            "apng, 1024 frames",
            encode(frames[0], "PNG", save_all=True, append_images=frames[1:]),
            "image/png",
            200,
            "",
            "",
        ),
        (
            "png with 80 zTXt chunks of 1 MB each",
            _with_chunks(png, text_bomb * 80),
            "image/png",
            400,
            "invalid_image",
            "not a decodable",
        ),
        (
            "png with a 50 MB iCCP profile",
            _with_chunks(png, _png_chunk(b"iCCP", b"p\x00\x00" + zlib.compress(b"\x00" * (50 << 20), 9))),
            "image/png",
            400,
            "invalid_image",
            "not a decodable",
        ),
        (
            "jpeg with a looping EXIF",
            jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(exif_loop) + 2) + exif_loop + jpeg[2:],
            "image/jpeg",
            200,
            "",
            "",
        ),
        (
            "jpeg at the scan cap, declaring 2048x2048",
            progressive_jpeg_bomb((2048, 2048), repeats=58),
            "image/jpeg",
            200,
            "",
            "",
        ),
        (
            "16-bit grey png",
            encode(Image.fromarray(np.full((28, 28), 40000, np.uint16)), "PNG"),
            "image/png",
            200,
            "",
            "",
        ),
        (
            "float tiff",
            encode(Image.fromarray(np.zeros((28, 28), np.float32)), "TIFF"),
            "image/tiff",
            400,
            "invalid_image",
            "floating-point",
        ),
        ("cmyk jpeg", encode(Image.new("CMYK", (28, 28)), "JPEG"), "image/jpeg", 200, "", ""),
        (
            "eps sent as png (Ghostscript is never run)",
            b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nshowpage\n",
            "image/png",
            400,
            "invalid_image",
            "PNG, JPEG, WebP, BMP, GIF or TIFF",
        ),
        (
            "pdf sent as png",
            encode(Image.new("RGB", (28, 28)), "PDF"),
            "image/png",
            400,
            "invalid_image",
            "PNG, JPEG, WebP, BMP, GIF or TIFF",
        ),
        ("truncated 2048x2048 png", black_png(2048)[:-40], "image/png", 400, "invalid_image", "truncated"),
    ]


WIDER_SEARCH = _wider_search()


@pytest.mark.parametrize(
    "name, data, content_type, status, code, words", WIDER_SEARCH, ids=[case[0] for case in WIDER_SEARCH]
)
def test_wider_search(server, name, data, content_type, status, code, words):
    with HealthGuard(server.url):
        response = post(server.url, data, content_type)
    if status == 200:
        assert_encoded(response)
    else:
        got_status, got_code, message = error(response)
        assert (got_status, got_code) == (status, code) and words in message, message
    assert_ready(server)


def test_a_jpeg_of_two_million_comment_segments_is_stopped_by_the_deadline(lenient):
    """Pillow reads a JPEG's segments one by one in Python: 8 MB of empty comments take many seconds."""
    jpeg = encode(Image.new("L", (28, 28), 7), "JPEG")
    flood = jpeg[:2] + b"\xff\xfe\x00\x02" * 2_000_000 + jpeg[2:]
    with HealthGuard(lenient.url):
        status, code, message = error(post(lenient.url, flood, "image/jpeg"))
    assert (status, code) == (422, "decode_timeout") and "VAE_DECODE_TIMEOUT_S" in message
    assert_ready(lenient)
