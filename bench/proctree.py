#!/usr/bin/env python3
"""CPU time and memory of process trees, read from /proc (Linux only, stdlib only).

This module owns the accounting the end-to-end benchmarks report beside their rates:

* :func:`descendants` lists a process and everything below it (by PPid).
* :class:`CpuMeter` takes a snapshot of the CPU time (user + system) of a set of
  processes before and after a run. It adds each process's ``cutime``/``cstime``
  (children it has reaped), so the work of short-lived children counts too:
  Postfix's master reaps its smtpd/cleanup/smtp processes as they exit, so a
  child that lived and died inside the run is in the master's figure at the end.
* :class:`MemorySampler` polls VmRSS of a tree from a thread and keeps the
  peak of the sum; :func:`peak_rss` reads each process's VmHWM (the kernel's
  own high-water mark of its resident set).

Processes are found with a callable (``lambda: descendants(pid)``), because
trees change while they run.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PidSource = Callable[[], Iterable[int]]


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces or parentheses.
    return text[text.rindex(")") + 2:].split()


def parent_map() -> dict[int, int]:
    """pid -> parent pid for every process visible now."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                parents[int(entry.name)] = int(fields[1])  # field 4: ppid
    return parents


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parent_map().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if Path(f"/proc/{pid}").exists():
            found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and of the children it has reaped (0.0 if gone)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLOCK_TICKS


def status_kib(pid: int, key: str) -> int:
    """A 'kB' field of /proc/PID/status (VmRSS, VmHWM), 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size in KiB (shared pages split between their users), 0 if gone.

    Unlike VmRSS, PSS can be summed over processes without counting shared
    library pages once per process. Reading it walks the page tables, so it
    is sampled rarely.
    """
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss(pids: Iterable[int]) -> dict[int, int]:
    """VmHWM in KiB of each live process."""
    return {pid: status_kib(pid, "VmHWM") for pid in pids}


@dataclass
class CpuMeter:
    """CPU seconds a tree used between :meth:`start` and :meth:`stop`.

    A process that was alive at the start and has exited (and been reaped by a
    member of the tree) by the end is counted by its reaper's cutime/cstime; its
    own figure at the start is subtracted, so nothing is counted twice.
    """

    pids: PidSource
    before: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0
    started: float = 0.0
    wall: float = 0.0

    def snapshot(self) -> dict[int, float]:
        return {pid: cpu_seconds(pid) for pid in self.pids()}

    def start(self) -> None:
        self.before = self.snapshot()
        self.started = time.perf_counter()

    def stop(self) -> float:
        after = self.snapshot()
        self.wall = time.perf_counter() - self.started
        self.seconds = sum(after.values()) - sum(self.before.values())
        return self.seconds

    @property
    def cores(self) -> float:
        """Average number of cores busy over the measured wall time."""
        return self.seconds / self.wall if self.wall > 0 else 0.0


class MemorySampler:
    """Samples the summed VmRSS of a tree every ``interval`` seconds in a thread.

    :attr:`peak_kib` is the largest sum seen; :attr:`hwm_kib` (after :meth:`stop`)
    the sum of each process's VmHWM, the largest resident set each ever had
    (an upper bound of the peak of the sum, exact for the processes' own peaks).
    """

    def __init__(self, pids: PidSource, interval: float = 0.5) -> None:
        self.pids = pids
        self.interval = interval
        self.peak_kib = 0
        self.peak_by_pid: dict[int, int] = {}
        self.hwm_by_pid: dict[int, int] = {}
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def hwm_kib(self) -> int:
        return sum(self.hwm_by_pid.values())

    def sample(self) -> int:
        """Take one sample now; return the summed VmRSS in KiB."""
        pids = list(self.pids())
        rss = {pid: status_kib(pid, "VmRSS") for pid in pids}
        total = sum(rss.values())
        self.samples.append((time.time(), total))
        if total > self.peak_kib:
            self.peak_kib, self.peak_by_pid = total, rss
        # Keep the high-water marks of processes that may exit before stop().
        for pid, hwm in peak_rss(pids).items():
            self.hwm_by_pid[pid] = max(hwm, self.hwm_by_pid.get(pid, 0))
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> None:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sample()


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    return (sum(values) - idle) / CLOCK_TICKS, sum(values) / CLOCK_TICKS
