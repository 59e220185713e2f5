"""Giving freed memory back to the operating system, and keeping the garbage collector off what lives long.

A replaced model version's onnxruntime sessions are freed when its last request ends, but glibc keeps
the freed pages in its per-thread arenas, so the process's RSS keeps the high-water mark of every
version it has held. `malloc_trim(0)` returns the free pages of every arena. Called once per released
version (seconds apart at most), its cost does not matter; elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger("vae.service")


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def return_freed_memory() -> bool:
    """Trim every malloc arena; False where the C library has no malloc_trim."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def settle_garbage_collector() -> float:
    """Collect, then freeze every object alive now (the models just loaded, the app, the imported modules)
    out of the garbage collector's sight; returns the seconds it took.

    CPython's collector runs its oldest generation once enough objects have survived the younger ones,
    and that collection walks every object in the process: after a model loads, tens of milliseconds
    on the event loop, which is the tail of every request waiting behind it (p99 at c=32, in
    docs/benchmarks.md). Frozen objects are never walked again. Called after every change of what is
    served: what was frozen before is thawed and collected first, so cycles in a replaced version are
    still freed, then everything that survives is frozen again. Objects freed by their reference count
    (nearly all: a request's objects, a released version's sessions) are freed as before."""
    began = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    seconds = time.perf_counter() - began
    log.debug("garbage collector settled in %.1f ms, %d objects frozen", seconds * 1000, gc.get_freeze_count())
    return seconds
