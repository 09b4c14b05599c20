"""Giving memory back to the system: glibc keeps freed heap pages for reuse unless asked."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc


def malloc_trim() -> None:
    """Return the free pages at the top of glibc's heaps to the system (no-op elsewhere)."""
    name = ctypes.util.find_library("c")
    if not name:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name).malloc_trim(0)


def release_after_burst() -> None:
    """After a burst of short-lived objects with reference cycles (a report's charts): collect them
    now rather than at the next full collection, then trim the heap."""
    gc.collect()
    malloc_trim()
