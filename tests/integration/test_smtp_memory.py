"""A burst of large messages over SMTP costs bounded memory (issue 10, finding 4).

A real `postroom serve` with two daemon processes receives 16 concurrent 24 MiB messages, half of
them declaring their size (MAIL FROM ... SIZE=), half not. The summed resident memory of the
supervisor and its children is sampled from /proc throughout; each message either got 250 and is
stored exactly once, or got a temporary refusal (4xx) and was not stored; afterwards the memory
comes back down, and the refused messages go through when sent again.

Delivery is held, so what is measured is ingest alone (the delivery side holds what it sends).
Figures measured on the 2-core development machine are in docs/security.md ("Limits").
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from postroom.config import DatabaseSettings, load_settings
from postroom.store.engine import create_engine
from postroom.store.tables import messages

from tests.support import (
    free_port,
    postroom_cli,
    start_daemon,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
MESSAGE_SIZE = 24 * MIB
SENDERS = 16
# The summed peak RSS (supervisor + 2 daemon processes, each process's VmHWM) the burst must stay
# under, with the default [limits] bytes_in_flight (32 MiB per process). Per process: its idle size
# (~111 MiB before issues 15-16, ~128-133 MiB since: the billing applier, the MRR service and the
# report scheduler run in every process; the supervisor ~27 MiB), the budget, and the commit of one
# message (its stamped copy,
# and SQLite's two: the bound parameter and the record). Measured 376-456 MiB (sampled 352-428);
# before the budget, 1.36-1.53 GiB. See docs/security.md, "Limits".
RSS_BUDGET = 440 * 1000 * 1000  # 440 MB (420 MiB): the figure docs/security.md promises
# What the processes may keep above their idle size once the burst is over: SQLite's cached
# INSERT keeps its last bound message until the next insert (at most one message per process).
RSS_SETTLED_MARGIN = 80 * MIB

LINE = b"x" * 76 + b"\r\n"
BLOCK = LINE * 840  # 65,520 bytes


@dataclass
class Result:
    n: int
    code: int
    text: str

    @property
    def queue_id(self) -> str | None:
        found = re.search(r"queued as (\S+)", self.text)
        return found.group(1) if self.code == 250 and found else None


async def _reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readline(), 120)
        if not line:
            raise ConnectionResetError("server closed the connection")
        lines.append(line.decode().rstrip("\r\n"))
        if line[3:4] != b"-":
            return int(line[:3]), " ".join(entry[4:] for entry in lines)


async def send_large(port: int, n: int, declare_size: bool) -> Result:
    """One message of MESSAGE_SIZE bytes, streamed block by block (the client holds 64 KiB)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _reply(reader)
        writer.write(b"EHLO big.test\r\n")
        await _reply(reader)
        size = f" SIZE={MESSAGE_SIZE}" if declare_size else ""
        writer.write(f"MAIL FROM:<app@postroom.test>{size}\r\n".encode())
        code, text = await _reply(reader)
        if code != 250:
            return Result(n, code, text)
        writer.write(f"RCPT TO:<big{n}@example.com>\r\n".encode())
        code, text = await _reply(reader)
        if code != 250:
            return Result(n, code, text)
        writer.write(b"DATA\r\n")
        code, text = await _reply(reader)
        if code != 354:
            return Result(n, code, text)
        head = (f"From: app@postroom.test\r\nTo: big{n}@example.com\r\nSubject: big {n}\r\n"
                f"X-Test-Token: big-{n}\r\n\r\n").encode()  # fmt: skip
        writer.write(head)
        left = MESSAGE_SIZE - len(head)
        while left > 0:
            chunk = BLOCK if left >= len(BLOCK) else LINE * (left // len(LINE) + 1)
            writer.write(chunk)
            left -= len(chunk)
            await writer.drain()
        writer.write(b".\r\n")
        code, text = await _reply(reader)
        writer.write(b"QUIT\r\n")
        return Result(n, code, text)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _status(pid: int, field: str) -> int:
    """A /proc/<pid>/status field in bytes (VmRSS, VmHWM); 0 once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else 0


def _family(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *map(int, children)]


def summed(pid: int, field: str) -> int:
    return sum(_status(member, field) for member in _family(pid))


@contextlib.contextmanager
def sampling(pid: int, interval: float = 0.02) -> Iterator[list[int]]:
    """Sample the summed VmRSS in a thread (the test's loop is busy sending) into a list."""
    samples: list[int] = []
    done = threading.Event()

    def run() -> None:
        while not done.is_set():
            samples.append(summed(pid, "VmRSS"))
            done.wait(interval)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()


async def stored(db_url: str) -> dict[str, int]:
    engine = create_engine(DatabaseSettings(url=db_url))
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(sa.select(messages.c.id, sa.func.count()).group_by(messages.c.id))
            return {row[0]: int(row[1]) for row in rows}
    finally:
        await engine.dispose()


async def test_a_burst_of_large_messages_costs_bounded_memory(tmp_path: Path) -> None:
    submission, http = free_port(), free_port()
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'q.db'}"
    config = write_config(tmp_path / "postroom.toml", db_url=db_url, submission_port=submission,
                          http_port=http, mx_port=free_port(), sink_port=free_port(), processes=2)  # fmt: skip
    config.write_text(config.read_text().replace("[delivery]\n", "[delivery]\nhold = true\n"))
    assert load_settings(config, {}).delivery.hold
    postroom_cli("db", "upgrade", "--config", str(config))
    daemon = start_daemon(config, tmp_path / "serve.log")
    try:
        await wait_until(lambda: len(_family(daemon.pid)) == 3 and _accepts(submission), 60,
                         what="both daemon processes")  # fmt: skip
        await asyncio.sleep(1.0)  # let start-up allocations settle
        idle = summed(daemon.pid, "VmRSS")

        with sampling(daemon.pid) as samples:
            results = await asyncio.gather(
                *(send_large(submission, n, declare_size=n % 2 == 0) for n in range(SENDERS))
            )
        peak_sampled = max(samples)
        peak_hwm = summed(daemon.pid, "VmHWM")

        accepted = [r for r in results if r.code == 250]
        refused = [r for r in results if r.code != 250]
        busy = await asyncio.to_thread(metric_sum, http, "postroom_ingress_busy_refusals_total")
        assert busy == len(refused)
        rows = await stored(db_url)
        assert all(400 <= r.code < 500 for r in refused), [(r.code, r.text) for r in refused]
        assert all(r.text.startswith("4.3.1") for r in refused), [r.text for r in refused]
        assert sorted(rows) == sorted(r.queue_id for r in accepted)  # stored exactly the 250s
        assert set(rows.values()) <= {1}
        assert accepted, "the budget must let some messages through"

        settled = 0
        with contextlib.suppress(TimeoutError):
            await wait_until(lambda: summed(daemon.pid, "VmRSS") < idle + RSS_SETTLED_MARGIN, 15,
                             what="memory to come back down")  # fmt: skip
        settled = summed(daemon.pid, "VmRSS")
        print(f"\nRSS summed over supervisor + 2 processes: idle {idle / MIB:.0f} MiB, "
              f"peak sampled {peak_sampled / MIB:.0f} MiB, peak (sum of VmHWM) {peak_hwm / MIB:.0f} MiB, "
              f"settled {settled / MIB:.0f} MiB; {len(accepted)} accepted, {len(refused)} refused "
              f"with 4xx in the burst")  # fmt: skip
        assert peak_hwm < RSS_BUDGET, f"peak {peak_hwm / MIB:.0f} MiB"
        assert settled < idle + RSS_SETTLED_MARGIN, f"idle {idle / MIB:.0f} MiB, after {settled / MIB:.0f} MiB"

        # A temporary refusal is temporary: sent again, a few at a time, every message gets in.
        pending = [r.n for r in refused]
        for _ in range(20):
            if not pending:
                break
            again = []
            for start in range(0, len(pending), 2):
                again += await asyncio.gather(*(send_large(submission, n, declare_size=n % 2 == 0)
                                                for n in pending[start:start + 2]))  # fmt: skip
            accepted += [r for r in again if r.code == 250]
            pending = [r.n for r in again if r.code != 250]
        assert pending == []
        rows = await stored(db_url)
        assert len(rows) == SENDERS and set(rows.values()) == {1}
        assert sorted(rows) == sorted(r.queue_id for r in accepted)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(daemon.wait, 30)
        finally:
            if daemon.poll() is None:
                daemon.kill()
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def metric_sum(http_port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + "{"))


def _accepts(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return sock.recv(3) == b"220"
    except OSError:
        return False
