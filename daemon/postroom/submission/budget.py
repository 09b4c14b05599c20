"""`ByteBudget`: how many bytes of messages being received a process holds at once.

Every SMTP DATA upload and every HTTP request body reserves its size before it is read into memory
(the SMTP SIZE parameter or Content-Length, and the bytes as they arrive when neither was said) and
gives it back once the message is committed or refused. When the budget is spent, new uploads are
refused with a temporary reply (SMTP 452 4.3.1, HTTP 503 with Retry-After) instead of growing the
process until the OOM killer takes it: a burst of large messages costs a bounded amount of memory
and the clients retry. One budget per process, shared by both ingresses; single-threaded (the
event loop), so no lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
from collections.abc import Iterator
from typing import Protocol

from postroom.core.memory import malloc_trim

logger = logging.getLogger(__name__)

# glibc keeps freed arenas mapped; after a burst of large messages the process would stay at its
# peak. malloc_trim(0) hands the free pages back (a no-op elsewhere), once a burst of at least
# this many bytes in flight is over.
_TRIM_AFTER_BYTES = 8 * 1024 * 1024


# glibc serves a block above its mmap threshold with its own mapping, returned to the system the
# moment it is freed; but each such free raises the threshold to the block's size (up to 32 MiB),
# so after the first large message the next ones came from the heap, where they fragment it and
# stay. Pinning the threshold keeps every message-sized buffer in its own mapping.
_M_MMAP_THRESHOLD = -3  # mallopt(3)
_MMAP_THRESHOLD = 1024 * 1024


def _pin_mmap_threshold() -> None:
    name = ctypes.util.find_library("c")
    if not name:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name).mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)


class Settable(Protocol):
    def set(self, value: float) -> None: ...


class ByteBudget:
    def __init__(self, limit: int, gauge: Settable | None = None):
        _pin_mmap_threshold()  # one budget per process: the process's large buffers, see above
        self.limit = limit
        self.in_flight = 0
        self._gauge = gauge
        self._peak_since_trim = 0

    def _changed(self) -> None:
        self._peak_since_trim = max(self._peak_since_trim, self.in_flight)
        if self._gauge is not None:
            self._gauge.set(self.in_flight)

    def try_reserve(self, size: int) -> bool:
        """Take `size` bytes if they fit (a single upload larger than the whole budget fits only
        when nothing else is in flight, so one maximum-size message always gets through)."""
        if self.in_flight and self.in_flight + size > self.limit:
            return False
        self.in_flight += size
        self._changed()
        return True

    def try_extend(self, held: int, extra: int) -> bool:
        """Take `extra` more bytes for an upload already holding `held` (one whose size was not
        said in advance grows as it arrives): they fit, or that upload is all that is in flight."""
        if self.in_flight > held and self.in_flight + extra > self.limit:
            return False
        self.in_flight += extra
        self._changed()
        return True

    def release(self, size: int) -> None:
        self.in_flight = max(0, self.in_flight - size)
        self._changed()
        # Trim once a burst is over (at least _TRIM_AFTER_BYTES were in flight at once), not
        # after every few thousand small messages of a steady stream, which never needs it.
        if self.in_flight == 0 and self._peak_since_trim >= _TRIM_AFTER_BYTES:
            self._peak_since_trim = 0
            malloc_trim()

    @contextlib.contextmanager
    def reserved(self, size: int) -> Iterator[bool]:
        """`with budget.reserved(n) as ok:` reserve for the block if possible; `ok` says whether."""
        ok = self.try_reserve(size)
        try:
            yield ok
        finally:
            if ok:
                self.release(size)
