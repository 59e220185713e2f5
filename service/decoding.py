"""Image decoding as bounded, accountable work.

A request's images are opened (header only) and checked before any pixel is decoded: the
per-image pixel limit, the request's pixel budget over all its images, the JPEG scan cap.
Then each image is decoded where its worst case is affordable:

- inline, on the event loop, when it is a PNG or JPEG whose bytes (`decode_inline_bytes`) and
  declared pixels (`decode_inline_pixels`) are both small and whose header is a few segments with
  no compressed text (`few_segments`). The work for such an image is bounded by those limits, so
  the stall it puts on the loop is bounded too. This is the common case (a 28x28 PNG), for which a
  round trip to a process would cost more CPU and latency than the decode itself (the figures are
  in docs/design/serving-measurements.md).
- otherwise in a pool of `decode_workers` processes, one request's images in one job, with one
  deadline per job. Threads cannot be stopped, so a decode past its deadline would keep its
  slot; a process is killed and replaced, and the slot is free at once. At most
  `decode_queue` jobs wait for a process; the next is answered 429 without waiting.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import signal
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
from PIL import Image

from model.core.preprocess import (
    PNG_SIGNATURE,
    ImageDecodeError,
    ImageTooComplexError,
    ImageTooLargeError,
    PreprocessContract,
    image_to_array,
    open_image,
    plain_png,
)
from service import tracing
from service.errors import ApiError

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

log = logging.getLogger("vae.service")
# A decoder process maps about 180 MB (Python, numpy, Pillow, FastAPI) and a 2048x2048 RGBA image with
# its conversions needs about 100 MB more; 1 GiB of address space leaves room and stops allocation bombs.
DECODER_ADDRESS_SPACE = 1 << 30


@dataclass(frozen=True)
class DecodeLimits:
    max_image_pixels: int = 4_194_304
    max_request_pixels: int = 16_777_216
    max_jpeg_scans: int = 64
    timeout_s: float = 3.0
    inline_bytes: int = 8192
    inline_pixels: int = 16_384

    @classmethod
    def from_settings(cls, settings: Any) -> DecodeLimits:
        return cls(
            max_image_pixels=settings.max_image_pixels,
            max_request_pixels=settings.max_request_pixels,
            max_jpeg_scans=settings.max_jpeg_scans,
            timeout_s=settings.decode_timeout_s,
            inline_bytes=settings.decode_inline_bytes,
            inline_pixels=settings.decode_inline_pixels,
        )


def which(index: int, count: int) -> str:
    return f"image {index}" if count > 1 else "the image"


def inspect(blob: bytes, index: int, count: int, limits: DecodeLimits) -> Image.Image:
    """Open one image's header and apply the per-image checks; nothing is decoded yet."""
    if not blob:
        raise ApiError(400, "invalid_image", f"{which(index, count)} is empty")
    try:
        return open_image(blob, limits.max_image_pixels, limits.max_jpeg_scans)
    except ImageTooLargeError as exc:
        raise ApiError(413, "image_too_large", f"{which(index, count)}: {exc}") from None
    except ImageTooComplexError as exc:
        raise ApiError(422, "too_many_scans", f"{which(index, count)}: {exc}") from None
    except ImageDecodeError as exc:
        raise ApiError(400, "invalid_image", f"{which(index, count)}: {exc}") from None


def check_budget(declared: int, limits: DecodeLimits) -> None:
    if declared > limits.max_request_pixels:
        raise ApiError(
            413,
            "request_too_many_pixels",
            f"the request's images declare {declared} pixels in all; the limit is "
            f"{limits.max_request_pixels} (VAE_MAX_REQUEST_PIXELS); send fewer or smaller images",
        )


def convert(image: Image.Image, contract: PreprocessContract, index: int, count: int) -> np.ndarray:
    try:
        return image_to_array(image, contract)
    except ImageDecodeError as exc:
        raise ApiError(400, "invalid_image", f"{which(index, count)}: {exc}") from None


def decode_job(
    blobs: list[tuple[int, bytes]],
    count: int,
    contract: PreprocessContract,
    limits: DecodeLimits,
    declared_elsewhere: int,
) -> list[np.ndarray]:
    """Every header first, then the budget over the whole request, then the pixels: (C, H, W) each."""
    images = [(index, inspect(blob, index, count, limits)) for index, blob in blobs]
    check_budget(declared_elsewhere + sum(image.width * image.height for _, image in images), limits)
    return [convert(image, contract, index, count) for index, image in images]


JPEG_SOI = b"\xff\xd8"
MAX_INLINE_SEGMENTS = 16
# Chunks Pillow inflates while reading the header, up to 1 MB each: a thousandfold amplification.
PNG_INFLATED_CHUNKS = (b"zTXt", b"iTXt", b"iCCP")


def few_segments(blob: bytes) -> bool:
    """Whether opening the image walks at most MAX_INLINE_SEGMENTS chunks or markers and inflates no
    text: Pillow reads PNG chunks and JPEG markers one by one in Python (so a small file of many empty
    JPEG comments costs far more than its size suggests) and inflates PNG text and ICC chunks on
    open. PNG and JPEG only; other formats go to a process. At most MAX_INLINE_SEGMENTS steps, so the
    check is cheap whatever the bytes."""
    if blob.startswith(PNG_SIGNATURE):
        position = len(PNG_SIGNATURE)
        for _ in range(MAX_INLINE_SEGMENTS):
            kind = blob[position + 4 : position + 8]
            if kind in PNG_INFLATED_CHUNKS:
                return False
            if kind == b"IEND":
                return True
            position += 12 + int.from_bytes(blob[position : position + 4], "big")  # length, type, data, CRC
        return False
    if blob.startswith(JPEG_SOI):
        position = len(JPEG_SOI)
        for _ in range(MAX_INLINE_SEGMENTS):
            if blob[position : position + 1] != b"\xff":
                return False
            if blob[position + 1 : position + 2] == b"\xda":  # start of scan: libjpeg (C) reads the rest
                return True
            position += 2 + int.from_bytes(blob[position + 2 : position + 4], "big")
        return False
    return False


class ImageDecoder:
    """Decodes a request's image bytes under the limits; one per app. `close()` at shutdown."""

    def __init__(self, limits: DecodeLimits, workers: int = 2, queue_limit: int = 32) -> None:
        self.limits = limits
        self.pool = DecodePool(workers, queue_limit)

    @classmethod
    def from_settings(cls, settings: Any) -> ImageDecoder:
        return cls(DecodeLimits.from_settings(settings), settings.decode_workers, settings.decode_queue)

    async def start(self) -> None:
        """Start the decoder processes now rather than on the first large image (optional)."""
        await anyio.to_thread.run_sync(self.pool.prestart)

    def close(self) -> None:
        self.pool.close()

    async def decode(self, blobs: list[bytes], contract: PreprocessContract) -> np.ndarray:
        """The images as (N, C, H, W) float32 in [0, 1], or an ApiError naming the image and the limit.
        Traced as one `decode images` span (an error recorded on it) when tracing is on."""
        if not tracing.enabled():
            return await self._decode(blobs, contract, None)
        with tracing.span("decode images", {"vae.images": len(blobs), "vae.bytes": sum(map(len, blobs))}) as span:
            return await self._decode(blobs, contract, span)

    async def _decode(self, blobs: list[bytes], contract: PreprocessContract, span: Any) -> np.ndarray:
        count, limits = len(blobs), self.limits
        if count == 1 and 0 < len(blobs[0]) <= limits.inline_bytes:  # /encode's one PNG: the short way
            pixels = plain_png(blobs[0], contract)
            if pixels is not None:
                check_budget(pixels.shape[1] * pixels.shape[2], limits)
                return pixels[None]
        inline: list[tuple[int, Image.Image]] = []
        heavy: list[tuple[int, bytes]] = []
        declared = 0
        arrays: list[np.ndarray] = [np.empty(0)] * count
        for index, blob in enumerate(blobs):
            small = 0 < len(blob) <= limits.inline_bytes
            pixels = plain_png(blob, contract) if small else None  # the model's own size: nothing to inspect
            if pixels is not None:
                arrays[index] = pixels
                declared += pixels.shape[1] * pixels.shape[2]
                continue
            if small and few_segments(blob):
                image = inspect(blob, index, count, limits)  # a short header: cheap on the loop
                if image.width * image.height <= limits.inline_pixels:
                    inline.append((index, image))
                    declared += image.width * image.height
                    continue
            elif not blob:
                inspect(blob, index, count, limits)  # raises: empty
            heavy.append((index, blob))
        if heavy:  # the job checks the request's budget, the inline images' pixels included
            tracing.set_attributes(span, {"vae.images_in_process": len(heavy)})
            decoded = await self.pool.run((heavy, count, contract, limits, declared), limits.timeout_s)
            for (index, _), array in zip(heavy, decoded, strict=False):
                arrays[index] = array
        else:
            check_budget(declared, limits)
        for index, image in inline:
            arrays[index] = convert(image, contract, index, count)
        return arrays[0][None] if count == 1 else np.stack(arrays)  # (N, C, H, W); a view costs less than stack


class DecodePool:
    """`workers` processes running `decode_job`, started on demand and killed past a deadline."""

    def __init__(self, workers: int, queue_limit: int) -> None:
        self.workers, self.queue_limit = workers, queue_limit
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._jobs = 0  # running and waiting, counted on the event loop
        self._limiter: anyio.CapacityLimiter | None = None  # made in the loop, on first use
        self._closed = threading.Event()
        self._context = _context()

    async def run(self, job: tuple[Any, ...], timeout_s: float) -> list[np.ndarray]:
        if self._jobs >= self.workers + self.queue_limit:
            raise ApiError(
                429,
                "decode_queue_full",
                f"{self._jobs} requests are decoding or waiting to; retry shortly",
                headers={"Retry-After": "1"},
            )
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.workers)
        self._jobs += 1
        try:
            outcome = await anyio.to_thread.run_sync(self._exchange, job, timeout_s, limiter=self._limiter)
        finally:
            self._jobs -= 1
        if outcome[0] == "ok":
            images: list[np.ndarray] = outcome[1]
            return images
        if outcome[0] == "error":
            raise ApiError(*outcome[1:])
        if outcome[0] == "timeout":
            raise ApiError(
                422,
                "decode_timeout",
                f"decoding took longer than {timeout_s:g} s "
                "(VAE_DECODE_TIMEOUT_S) and was stopped; send a smaller or simpler image",
            )
        raise ApiError(400, "invalid_image", "the image could not be decoded")

    def prestart(self) -> None:
        for _ in range(self.workers):
            self._idle.put(_Worker(self._context))

    def close(self) -> None:
        self._closed.set()
        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                return

    def _exchange(self, job: tuple[Any, ...], timeout_s: float) -> tuple[Any, ...]:
        """In a thread holding one of `workers` slots: hand the job to an idle process, wait up to the deadline."""
        try:
            worker = self._idle.get_nowait()
            if not worker.process.is_alive():  # died idle (the OOM killer, say): not this image's fault
                worker.kill()
                worker = _Worker(self._context)
        except queue.Empty:
            worker = _Worker(self._context)  # started before the clock: its start-up is not the image's fault
        try:
            worker.connection.send(job)
            if not worker.connection.poll(timeout_s):
                log.warning(
                    "decode job over its %.3g s deadline; decoder process %d killed", timeout_s, worker.process.pid
                )
                worker.kill()
                return ("timeout",)
            outcome = worker.connection.recv()
        except (EOFError, OSError):
            log.warning("decoder process %d died (exit code %s); replaced", worker.process.pid, worker.process.exitcode)
            worker.kill()
            return ("crashed",)
        if self._closed.is_set():
            worker.kill()
        else:
            self._idle.put(worker)
        return tuple(outcome)


class _Worker:
    def __init__(self, context: Any) -> None:
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child,), daemon=True, name="vae-decoder")
        self.process.start()
        child.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.connection.close()


def _context() -> Any:
    """forkserver: a clean process (no onnxruntime threads to fork) that forks decoders in milliseconds,
    with Pillow and numpy imported once. spawn where the platform has no forkserver."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["service.decoding"])
        return context
    return multiprocessing.get_context("spawn")


def _serve(connection: Any) -> None:
    """A decoder process: jobs in, ("ok", arrays) or ("error", status, code, message) out, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle; it closes the pipe
    warnings.simplefilter("ignore")  # Pillow's warnings about hostile bytes would flood the log; the reply says it
    if resource is not None:  # an allocation bomb is a MemoryError here, not the host's OOM killer
        resource.setrlimit(resource.RLIMIT_AS, (DECODER_ADDRESS_SPACE, resource.getrlimit(resource.RLIMIT_AS)[1]))
    while True:
        try:
            job = connection.recv()
        except (EOFError, OSError):
            return
        try:
            outcome: tuple[Any, ...] = ("ok", decode_job(*job))
        except MemoryError:
            outcome = ("error", 413, "image_too_large", "the image needs more memory to decode than a decoder has")
        except ApiError as exc:
            outcome = ("error", exc.status, exc.code, exc.message)
        except Exception:  # a decoder bug must not take the process down with a half-sent reply
            outcome = ("error", 400, "invalid_image", "the image could not be decoded")
        connection.send(outcome)
