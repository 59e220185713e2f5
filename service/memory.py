"""Giving freed memory back to the operating system.

A replaced model version's onnxruntime sessions are freed when its last request ends, but glibc keeps
the freed pages in its per-thread arenas, so the process's RSS keeps the high-water mark of every
version it has held. `malloc_trim(0)` returns the free pages of every arena. Called once per released
version (seconds apart at most), its cost does not matter; elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


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
