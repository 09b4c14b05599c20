"""The buckets of every rate limit, in one fixed-size table of memory that all processes of a
daemon map from one file (the supervisor creates it and hands its path down in
$POSTROOM_RATE_LIMIT_FILE); a daemon of a single process keeps the same table in anonymous memory.

Each slot holds a bucket's key (8 bytes of a BLAKE2b hash) and its theoretical arrival time
(`quota.spend`). A bucket is found by linear probing from its hash over `PROBE` slots; a slot
whose time has passed is a full bucket, the same as an empty slot, so it is reused freely. Only
when all `PROBE` slots hold buckets still refilling is the one closest to full given up, which
lets that key start full again: with 8192 slots that takes thousands of keys limited at once.
Every read-modify-write of a slot happens under an exclusive flock of the file: a few
microseconds, no waiting on the event loop in practice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

from postroom.ratelimit.quota import Quota, Verdict, held, spend

RATE_LIMIT_FILE_ENV = "POSTROOM_RATE_LIMIT_FILE"
SLOTS = 8192
PROBE = 16
_MAGIC = b"PRRL\x01\x00\x00\x00"
_HEADER = len(_MAGIC) + 8  # magic, slot count (u64)
_SLOT = struct.Struct("<Qd")  # key hash, theoretical arrival time


def bucket_hash(key: str) -> int:
    value = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return value or 1  # 0 marks an empty slot


def table_size(slots: int = SLOTS) -> int:
    return _HEADER + slots * _SLOT.size


def create_table_file(path: Path, slots: int = SLOTS) -> None:
    """A fresh, empty table at `path` (mode 0600), for the processes of one daemon to share."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, table_size(slots))
        os.pwrite(fd, _MAGIC + struct.pack("<Q", slots), 0)
    finally:
        os.close(fd)


class RateTable:
    """Spends requests from buckets kept in `memory` (file-backed when `lock_fd` is given)."""

    def __init__(self, memory: mmap.mmap, lock_fd: int | None, clock: Callable[[], float]):
        if memory[: len(_MAGIC)] != _MAGIC:
            raise ValueError("not a postroom rate-limit table")
        self._slots: int = struct.unpack_from("<Q", memory, len(_MAGIC))[0]
        if len(memory) < table_size(self._slots):
            raise ValueError("the rate-limit table is truncated")
        self._memory = memory
        self._lock_fd = lock_fd
        self._clock = clock

    @classmethod
    def in_memory(cls, clock: Callable[[], float], slots: int = SLOTS) -> RateTable:
        memory = mmap.mmap(-1, table_size(slots))
        memory[: _HEADER] = _MAGIC + struct.pack("<Q", slots)
        return cls(memory, None, clock)

    @classmethod
    def shared(cls, path: Path, clock: Callable[[], float]) -> RateTable:
        fd = os.open(path, os.O_RDWR)
        try:
            memory = mmap.mmap(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(memory, fd, clock)

    def close(self) -> None:
        self._memory.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def spend(self, key: str, quota: Quota) -> Verdict:
        wanted = bucket_hash(key)
        with self._locked():
            now = self._clock()
            offset = self._slot_of(wanted, now)
            stored, tat = _SLOT.unpack_from(self._memory, offset)
            new_tat, verdict = spend(tat if stored == wanted else 0.0, now, quota)
            if verdict.allowed:
                _SLOT.pack_into(self._memory, offset, wanted, new_tat)
            return verdict

    def hold(self, key: str, quota: Quota, until: float) -> None:
        """Let no request of bucket `key` through before `until`, in every process (`quota.held`)."""
        wanted = bucket_hash(key)
        with self._locked():
            offset = self._slot_of(wanted, self._clock())
            stored, tat = _SLOT.unpack_from(self._memory, offset)
            _SLOT.pack_into(self._memory, offset, wanted, held(tat if stored == wanted else 0.0, until, quota))

    def _slot_of(self, wanted: int, now: float) -> int:
        """The slot of the bucket `wanted`, else a free one (empty or full again), else the
        probed slot closest to full."""
        start = wanted % self._slots
        free: int | None = None
        fullest, fullest_tat = 0, float("inf")
        for step in range(PROBE):
            offset = _HEADER + ((start + step) % self._slots) * _SLOT.size
            key, tat = _SLOT.unpack_from(self._memory, offset)
            if key == wanted:
                return offset
            if free is None and (key == 0 or tat <= now):
                free = offset
            if tat < fullest_tat:
                fullest, fullest_tat = offset, tat
        return free if free is not None else fullest

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._lock_fd is None:  # one process, one thread: nothing to exclude
            yield
            return
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
