#!/usr/bin/env python3
"""A paced SMTP sender for latency measurements (asyncio, stdlib only).

This module owns the sending end of the latency benchmark. ``smtp-source``
sends as fast as it can; this sends at a fixed rate: message ``i`` is due at
``start + i / rate``, and a dispatcher hands it at that moment to whichever of
``connections`` persistent SMTP sessions is free (MAIL, RCPT, DATA, one
message after the other on each session, without pipelining). Each message has
a unique ``X-Bench-Id`` header and a body of ``size`` bytes in 80-byte lines,
like smtp-source's ``-l``. The sender records, per message, when it was due,
when its MAIL command went out and when the 250 for its DATA arrived
(``time.monotonic()``, the clock the arrival sink uses too).

If every session is busy when a message falls due, it waits and starts late;
the report gives the achieved rate and the largest start delay, so a run that
could not keep the pace is visible.

    results = asyncio.run(send_paced(PacedJob(port=10025, rate=300, messages=9000)))
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from dataclasses import dataclass, field

from loadgen import require_loopback


@dataclass(frozen=True)
class PacedJob:
    port: int
    rate: float = 300.0
    messages: int = 9000
    connections: int = 10
    size: int = 5120
    sender: str = "bench@bench.test"
    recipient: str = "anyone@example.net"
    host: str = "127.0.0.1"
    run_id: str = "e2e"
    timeout: float = 60.0


@dataclass
class Sent:
    """One message: its id, when it was due, when it started, when DATA got its 250."""

    bench_id: str
    due: float
    started: float = 0.0
    acked: float = 0.0
    reply: str = ""

    @property
    def ok(self) -> bool:
        return self.reply.startswith("250")


@dataclass
class PacedResult:
    sent: list[Sent] = field(default_factory=list)
    first_due: float = 0.0
    seconds: float = 0.0  # from the first due time to the last 250

    @property
    def accepted(self) -> list[Sent]:
        return [s for s in self.sent if s.ok]

    @property
    def rate(self) -> float:
        return len(self.accepted) / self.seconds if self.seconds > 0 else 0.0

    @property
    def max_start_delay(self) -> float:
        return max((s.started - s.due for s in self.sent if s.started), default=0.0)


def body_of(size: int) -> bytes:
    """``size`` bytes of 78-character lines plus CRLF (dot-stuffing never needed)."""
    lines, total, n = [], 0, 0
    while total < size:
        n += 1
        line = (f"{n}" + "X" * 78)[:78].encode() + b"\r\n"
        lines.append(line)
        total += len(line)
    return b"".join(lines)[:size - 2].rstrip(b"\r\n") + b"\r\n"


def message_of(job: PacedJob, bench_id: str, body: bytes) -> bytes:
    domain = job.sender.rpartition("@")[2]
    head = (f"From: <{job.sender}>\r\nTo: <{job.recipient}>\r\n"
            f"Date: {email.utils.formatdate(localtime=False)}\r\n"
            f"Message-ID: <{bench_id}@{domain}>\r\nSubject: latency {bench_id}\r\n"
            f"X-Bench-Id: {bench_id}\r\n\r\n")
    return head.encode() + body


class Session:
    """One persistent SMTP client session (no pipelining: one command, one reply)."""

    def __init__(self, job: PacedJob) -> None:
        self.job = job
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def reply(self) -> str:
        assert self.reader is not None
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), self.job.timeout)
            if not line:
                raise ConnectionError("connection closed by the server")
            lines.append(line.decode("ascii", "replace").rstrip("\r\n"))
            if line[3:4] != b"-":
                return lines[-1] if len(lines) == 1 else "\n".join(lines)

    async def command(self, line: str, expect: str) -> str:
        assert self.writer is not None
        self.writer.write(line.encode() + b"\r\n")
        answer = await self.reply()
        if not answer.startswith(expect):
            raise ConnectionError(f"{line.split()[0]} answered {answer!r}")
        return answer

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            require_loopback(self.job.host), self.job.port)
        await self.reply()
        await self.command("EHLO paced-source.bench.test", "250")

    async def send(self, item: Sent, message: bytes) -> None:
        assert self.writer is not None
        item.started = time.monotonic()
        await self.command(f"MAIL FROM:<{self.job.sender}>", "250")
        await self.command(f"RCPT TO:<{self.job.recipient}>", "250")
        await self.command("DATA", "354")
        self.writer.write(message + b".\r\n")
        item.reply = await self.reply()
        item.acked = time.monotonic()

    async def close(self) -> None:
        if self.writer is None:
            return
        try:
            self.writer.write(b"QUIT\r\n")
            await asyncio.wait_for(self.reply(), 5)
        except (OSError, ConnectionError, TimeoutError):
            pass
        self.writer.close()


async def send_paced(job: PacedJob) -> PacedResult:
    """Send ``job.messages`` at ``job.rate`` per second; return what happened to each."""
    body = body_of(job.size)
    queue: asyncio.Queue[Sent | None] = asyncio.Queue()
    result = PacedResult()

    async def worker() -> None:
        session = Session(job)
        await session.open()
        try:
            while (item := await queue.get()) is not None:
                try:
                    await session.send(item, message_of(job, item.bench_id, body))
                except (OSError, ConnectionError, TimeoutError) as exc:
                    item.reply = f"error: {exc}"
                    await session.close()
                    session = Session(job)
                    await session.open()
        finally:
            await session.close()

    workers = [asyncio.create_task(worker()) for _ in range(job.connections)]
    await asyncio.sleep(0.2)  # let every session finish its EHLO before the clock starts
    start = time.monotonic() + 0.05
    result.first_due = start
    for i in range(job.messages):
        due = start + i / job.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        item = Sent(f"{job.run_id}-{i}", due)
        result.sent.append(item)
        queue.put_nowait(item)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    result.seconds = max((s.acked for s in result.sent), default=start) - start
    return result
