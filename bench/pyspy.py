#!/usr/bin/env python3
"""Sampling postroom's processes with py-spy during a benchmark, and reading the samples.

This module owns profiling for ``e2e.py --py-spy PATH``. py-spy is not a
dependency of the project: install it anywhere (``python3 -m venv /tmp/probe &&
/tmp/probe/bin/pip install py-spy``) and pass its path. :meth:`Profiler.attach`
starts one ``py-spy record --format raw --nonblocking`` per daemon process of
a tree; :meth:`Attached.stop` stops them (SIGINT, which makes py-spy write its
file). :func:`summarize` reads a raw (collapsed-stack) file and returns the
functions with the most samples on top of the stack (self) and anywhere in it
(inclusive), as percentages of the samples taken.

py-spy samples only threads that are running (not waiting), so the share of a
function is its share of the process's CPU; ``busy`` is the number of samples
over the number a fully busy thread would give in the same time.
A profiled run is slower than an unprofiled one and is reported apart.

    python3 bench/pyspy.py FILE.txt...     # print the summary of raw files
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

FRAME_LINE = re.compile(r":\d+\)$")


@dataclass
class Attached:
    name: str
    rate: int
    files: dict[int, Path]
    procs: list[subprocess.Popen[bytes]]
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    def stop(self) -> None:
        self.seconds = time.monotonic() - self.started
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class Profiler:
    py_spy: Path
    out_dir: Path
    rate: int = 100
    extra_args: tuple[str, ...] = ()  # e.g. ("--gil",): only the thread holding the GIL
    sessions: list[Attached] = field(default_factory=list)

    def attach(self, name: str, tree: Callable[[], list[int]]) -> Attached:
        """Start sampling every process of ``tree()`` except its root (the supervisor)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        pids = tree()[1:] or tree()
        files, procs = {}, []
        for pid in pids:
            out = self.out_dir / f"{name}-{pid}.txt"
            argv = [str(self.py_spy), "record", "--pid", str(pid), "--format", "raw",
                    "--output", str(out), "--rate", str(self.rate), "--nonblocking",
                    *self.extra_args]
            procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            files[pid] = out
        logger.info("py-spy sampling %s into %s", pids, self.out_dir)
        session = Attached(name, self.rate, files, procs)
        self.sessions.append(session)
        return session


# Leaf frames where a thread waits rather than works. py-spy's idle detection misses some of
# them (a thread blocked in a C call that released the GIL is reported as running), so they
# are taken out here before shares of the work are computed.
IDLE_LEAVES = (
    "_worker (concurrent/futures/thread.py)",  # an executor thread waiting for work
    "EpollSelector.select (selectors.py)",  # the event loop waiting for I/O
    "_connection_worker_thread (aiosqlite/core.py)",  # aiosqlite's thread waiting (or in C)
    "_WorkItem.run (concurrent/futures/thread.py)",  # a blocking C call in an executor (flock)
)
# Leaves that are a send() to a socket: with uvloop the transport is C, so the Python frame
# that called it is the leaf.
SEND_LEAVES = (
    "_SelectorSocketTransport.write (asyncio/selector_events.py)",
    "StreamWriter.write (asyncio/streams.py)",
    "SMTPProtocol.write (aiosmtplib/protocol.py)",
)
# uvloop runs its loop in C: a sample there is an epoll wait, a socket read or accept, or
# callback dispatch, and py-spy cannot tell which (with asyncio's loop these are Python frames).
UVLOOP_LEAF = "Runner.run (asyncio/runners.py)"
# What a sample is spent on, by the first of these found anywhere in its stack.
CATEGORIES = (
    ("DKIM signing", ("sign_message (",)),
    ("SQLite (writer thread, store)", ("SqliteBatchWriter", "sqlite_writer.py", "queue/store.py",
                                       "aiosqlite/", "sqlalchemy/")),
    ("socket writes (send)", ("_SelectorSocketTransport.write (",)),
    ("socket reads", ("_read_ready__data_received (", "_read_ready (")),
    ("SMTP ingest (aiosmtpd, postroom/smtp)", ("aiosmtpd/", "postroom/smtp/")),
    ("delivery client (aiosmtplib, postroom/delivery)", ("aiosmtplib/", "postroom/delivery/")),
    ("accept/close/register sockets", ("socket.accept", "_real_close", "register (",
                                       "_SelectorTransport.__init__")),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("logging", ("logging/",)),
    ("event loop and thread hand-offs", ("asyncio/", "concurrent/futures/", "threading.py")),
)


@dataclass
class Summary:
    file: str
    samples: int
    self_top: list[tuple[str, float]]
    inclusive_top: list[tuple[str, float]]
    idle: int = 0  # samples whose leaf is a wait (IDLE_LEAVES)
    categories: list[tuple[str, float]] = field(default_factory=list)  # % of the working samples
    loop_top: list[tuple[str, float]] = field(default_factory=list)  # the loop category's leaves


def function_of(frame: str) -> str:
    """'deliver (postroom/delivery/session.py:88)' -> 'deliver (postroom/delivery/session.py)'."""
    frame = FRAME_LINE.sub(")", frame.strip())
    return re.sub(r"\(/[^)]*?/(site-packages|lib/python3\.\d+|daemon)/", "(", frame)


def summarize(path: Path, top: int = 25) -> Summary:
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    loop_leaves: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [function_of(f) for f in stack.split(";") if f]
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if frames and frames[0].startswith("thread "):
            frames = frames[1:]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
        if frames[-1] in IDLE_LEAVES:
            idle += count
            continue
        joined = ";".join(frames)
        if frames[-1] in SEND_LEAVES:
            category = "socket writes (send)"
        elif frames[-1] == UVLOOP_LEAF:
            category = "inside uvloop's C loop (epoll waits, reads, accepts, dispatch)"
        else:
            category = next((label for label, needles in CATEGORIES
                             if any(needle in joined for needle in needles)), "other")
        categories[category] += count
        if category == "event loop and thread hand-offs":
            loop_leaves[frames[-1]] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, 100.0 * n / total) for name, n in counter.most_common(top)] if total else []

    working = total - idle
    shares = [(label, 100.0 * n / working) for label, n in categories.most_common()] \
        if working else []
    loop = [(name, 100.0 * n / working) for name, n in loop_leaves.most_common(8)] \
        if working else []
    return Summary(str(path), total, share(self_counts), share(inclusive), idle, shares, loop)


def render(summary: Summary, seconds: float | None = None, rate: int = 100) -> str:
    busy = f", busy {summary.samples / (seconds * rate):.0%} of one core" if seconds else ""
    lines = [f"{summary.file}: {summary.samples} samples{busy}, "
             f"{summary.samples - summary.idle} working (waits taken out)",
             "  work %  spent on"]
    lines += [f"  {pct:6.1f}  {label}" for label, pct in summary.categories]
    lines += [f"          {pct:5.1f}  {name}  (event loop leaf)" for name, pct in summary.loop_top]
    lines += ["  self %  function (all samples)"]
    lines += [f"  {pct:6.1f}  {name}" for name, pct in summary.self_top]
    lines += ["  incl %  function"]
    lines += [f"  {pct:6.1f}  {name}" for name, pct in summary.inclusive_top]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    files = argv if argv is not None else sys.argv[1:]
    for name in files:
        print(render(summarize(Path(name))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
