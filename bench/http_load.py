"""HTTP load for the API benchmarks: N JSON POSTs over C concurrent keep-alive clients, timed.

This module owns the client side of ``http_api.py`` and nothing else: one
aiohttp ``ClientSession`` whose connector holds at most C connections (kept
alive between requests), C coroutines that take the next request body from a
shared iterator until there is none left, and a count of every response by
status. The bodies are encoded before the clock starts, so the client's JSON
encoding is not part of the measured time. A response counts as good when its
status is the expected one and ``accept(body)`` says its JSON is the expected
answer; anything else (another status, a bad body, a connection error) is kept
as a failure with its first bytes, to be shown when the run is refused.

Needs aiohttp (the project's venv). Only loopback URLs are accepted.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from loadgen import require_loopback

MAX_FAILURES_KEPT = 5


@dataclass(frozen=True)
class Batch:
    """One timed batch: where to POST, with what, and what a good answer is."""

    url: str
    bodies: list[bytes]
    headers: dict[str, str]
    concurrency: int
    expected_status: int
    accept: Callable[[Any], bool]
    timeout: float = 60.0


@dataclass
class BatchResult:
    """What came back from one batch, and how long it took."""

    requests: int
    seconds: float
    statuses: Counter[int] = field(default_factory=Counter)
    good: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Requests per second of wall time (all of them: a run with failures is refused)."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def encode_bodies(payloads: Iterable[Any]) -> list[bytes]:
    """Each payload as compact JSON bytes."""
    return [json.dumps(p, separators=(",", ":")).encode() for p in payloads]


def loopback_url(url: str) -> str:
    """``url`` if its host is a loopback address, else ValueError."""
    require_loopback(urlsplit(url).hostname or "")
    return url


async def run_batch(batch: Batch) -> BatchResult:
    """POST every body of ``batch`` with ``batch.concurrency`` clients; count what came back."""
    url = loopback_url(batch.url)
    result = BatchResult(requests=len(batch.bodies), seconds=0.0)
    pending = iter(batch.bodies)
    connector = aiohttp.TCPConnector(limit=batch.concurrency, limit_per_host=batch.concurrency)
    timeout = aiohttp.ClientTimeout(total=batch.timeout)

    def failed(what: str) -> None:
        if len(result.failures) < MAX_FAILURES_KEPT:
            result.failures.append(what)

    async def client(session: aiohttp.ClientSession) -> None:
        for body in pending:  # one iterator shared by all clients: each body is sent once
            try:
                async with session.post(url, data=body) as response:
                    raw = await response.read()
                    status = response.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                result.statuses[0] += 1
                failed(f"{type(exc).__name__}: {exc}")
                continue
            result.statuses[status] += 1
            try:
                answer = json.loads(raw)
            except ValueError:
                answer = None
            if status == batch.expected_status and batch.accept(answer):
                result.good += 1
            else:
                failed(f"{status}: {raw[:200]!r}")

    # trust_env=False (the default): no proxy from the environment, the request goes to 127.0.0.1.
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers=batch.headers) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(batch.concurrency)))
        result.seconds = time.perf_counter() - started
    return result


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (a cheaper client leaves more CPU to the daemon), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def send(batch: Batch) -> BatchResult:
    """Run one batch on a fresh event loop (synchronous, for the benchmark's sequential code)."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(run_batch(batch))


def loop_name() -> str:
    """Which event loop ``send`` uses."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"
