"""The DATA reader of PostroomSMTP, block by block: whatever the block boundaries, it returns the
message with dot stuffing undone and leaves pipelined commands in the stream; it refuses long lines
and oversized messages as before, and takes its bytes from the byte budget as they arrive. Also
the rate-limited log of failed TLS handshakes."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator

import pytest
from aiosmtpd.smtp import TLSSetupException
from hypothesis import given, settings
from hypothesis import strategies as st
from postroom.metrics import Metrics
from postroom.smtp.handshakes import HandshakeFailures
from postroom.smtp.protocol import (
    MAX_LINE,
    PostroomSMTP,
    _DataVerdict,
    declared_size,
    tls_failure_reason,
)
from postroom.submission.budget import ByteBudget
from prometheus_client import CollectorRegistry


class _Handler:
    async def handle_DATA(self, *args: object) -> str:
        return "250 OK"


class ChunkReader:
    """Hands out the stream in the given pieces (never more than asked for), like a socket."""

    def __init__(self, pieces: list[bytes]):
        self._pieces = list(pieces)
        self._buffer = bytearray()

    async def read(self, n: int) -> bytes:
        if not self._buffer:
            if not self._pieces:
                return b""
            self._buffer += self._pieces.pop(0)
        block = bytes(self._buffer[:n])
        del self._buffer[:n]
        return block

    def rest(self) -> bytes:
        return bytes(self._buffer) + b"".join(self._pieces)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def protocol(
    loop: asyncio.AbstractEventLoop, budget: ByteBudget | None = None, limit: int = 1 << 20
) -> PostroomSMTP:
    proto = PostroomSMTP(_Handler(), verifier=None, on_open=lambda: None, on_close=lambda: None,
                         loop=loop, budget=budget, data_size_limit=limit)  # fmt: skip
    return proto


def read(
    loop: asyncio.AbstractEventLoop, proto: PostroomSMTP, pieces: list[bytes]
) -> tuple[bytes, _DataVerdict, bytes]:
    reader = ChunkReader(pieces)
    proto._reader = reader  # type: ignore[assignment]
    content, verdict = loop.run_until_complete(proto._read_data())
    if proto._timeout_handle is not None:
        proto._timeout_handle.cancel()
    return bytes(content), verdict, reader.rest()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(c, 1), len(data) - 1) for c in cuts if len(data) > 1})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return [p for p in pieces if p]


def stuff(message: bytes) -> bytes:
    """What a client sends for `message` (RFC 5321 §4.5.2), end marker included."""
    lines = message.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines) + b".\r\n"


line = st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
dotted = st.one_of(line, line.map(lambda b: b"." + b), st.just(b"."), st.just(b".."))


@settings(max_examples=400, deadline=None)
@given(lines=st.lists(dotted, max_size=60), cuts=st.lists(st.integers(0, 6000), max_size=12))
def test_any_block_boundaries_give_the_message_back_unstuffed(lines: list[bytes], cuts: list[int]) -> None:
    message = b"".join(item + b"\r\n" for item in lines)
    pipelined = b"QUIT\r\n"
    loop = asyncio.new_event_loop()
    try:
        content, verdict, rest = read(loop, protocol(loop), split(stuff(message) + pipelined, cuts))
    finally:
        loop.close()
    assert verdict is _DataVerdict.OK
    assert content == message
    assert rest == pipelined


def test_a_large_message_with_dots_everywhere_crosses_blocks_intact(loop: asyncio.AbstractEventLoop) -> None:
    message = b"".join(b"." * (n % 7) + b"x" * (n % 90) + b"\r\n" for n in range(40_000))
    pieces = split(stuff(message), list(range(1, len(message), 65_533)))
    content, verdict, _ = read(loop, protocol(loop, limit=10 << 20), pieces)
    assert verdict is _DataVerdict.OK and content == message


@pytest.mark.parametrize("length", [MAX_LINE, MAX_LINE + 1])
def test_long_lines_are_refused_only_past_the_limit(loop: asyncio.AbstractEventLoop, length: int) -> None:
    message = b"a\r\n" + b"x" * length + b"\r\nb\r\n"
    # Cut right after the CR of the long line's CRLF, the case that must not count the CR.
    cut = message.index(b"x" * length) + length + 1
    _, verdict, _ = read(loop, protocol(loop), split(stuff(message), [cut]))
    assert verdict is (_DataVerdict.OK if length == MAX_LINE else _DataVerdict.TOO_LONG)


def test_over_the_size_limit_is_too_much_even_with_a_long_line(loop: asyncio.AbstractEventLoop) -> None:
    message = b"x" * 5000 + b"\r\n"
    pieces = split(stuff(message) + b"NOOP\r\n", [100, 3000])
    content, verdict, rest = read(loop, protocol(loop, limit=2048), pieces)
    assert (content, verdict, rest) == (b"", _DataVerdict.TOO_MUCH, b"NOOP\r\n")


def test_the_size_limit_counts_the_message_exactly(loop: asyncio.AbstractEventLoop) -> None:
    message = b"x" * 998 + b"\r\n"
    _, at_limit, _ = read(loop, protocol(loop, limit=1000), [stuff(message)])
    _, over, _ = read(loop, protocol(loop, limit=999), [stuff(message)])
    assert (at_limit, over) == (_DataVerdict.OK, _DataVerdict.TOO_MUCH)


def test_an_undeclared_upload_reserves_as_it_arrives_and_is_refused_when_the_budget_is_spent(
    loop: asyncio.AbstractEventLoop,
) -> None:
    budget = ByteBudget(1 << 20)
    assert budget.try_reserve(700_000)  # another upload holds most of it
    message = b"y" * 900 + b"\r\n"
    data = stuff(message * 500)  # 451,000 bytes
    proto = protocol(loop, budget)
    content, verdict, rest = read(loop, proto, split(data + b"RSET\r\n", list(range(0, len(data), 50_000))))
    assert (content, verdict, rest) == (b"", _DataVerdict.BUSY, b"RSET\r\n")
    assert budget.in_flight == 700_000 and proto._reserved == 0  # what it held was given back

    budget.release(700_000)
    content, verdict, _ = read(loop, proto, split(data, list(range(0, len(data), 50_000))))
    assert verdict is _DataVerdict.OK and content == message * 500
    assert proto._reserved >= len(data) - 5 and budget.in_flight == proto._reserved
    proto._set_post_data_state()  # the transaction is over: its bytes go back
    assert budget.in_flight == 0


def test_one_upload_larger_than_the_whole_budget_gets_through_alone(loop: asyncio.AbstractEventLoop) -> None:
    budget = ByteBudget(1 << 20)
    message = b"z" * 998 + b"\r\n"
    data = stuff(message * 2000)  # 2 MB
    pieces = split(data, list(range(0, len(data), 65_536)))
    content, verdict, _ = read(loop, protocol(loop, budget, limit=4 << 20), pieces)
    assert verdict is _DataVerdict.OK and len(content) == len(message) * 2000


def test_declared_size_reads_the_size_parameter() -> None:
    assert declared_size(["BODY=8BITMIME", "SIZE=12345"]) == 12345
    assert declared_size(["BODY=8BITMIME"]) == 0
    assert declared_size(["SIZE"]) == 0


def test_tls_failure_reason_is_one_short_line() -> None:
    error = TLSSetupException()
    error.__cause__ = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)")
    error.__cause__.reason = "WRONG_VERSION_NUMBER"  # type: ignore[misc]
    assert tls_failure_reason(error) == "WRONG_VERSION_NUMBER"
    reset = TLSSetupException()
    reset.__cause__ = ConnectionResetError()
    assert tls_failure_reason(reset) == "ConnectionResetError"


async def test_handshake_failures_are_logged_up_to_the_limit_then_summed_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="postroom.smtp.handshakes")
    registry = CollectorRegistry()
    failures = HandshakeFailures(Metrics(registry), limit=3, window=0.3)
    report = failures.reporter("mx")
    for n in range(8):
        report(f"192.0.2.{n}", "WRONG_VERSION_NUMBER")
    lines = [r.getMessage() for r in caplog.records if r.name == "postroom.smtp.handshakes"]
    assert lines == [f"TLS handshake failed on the mx listener from 192.0.2.{n}: WRONG_VERSION_NUMBER"
                     for n in range(3)]  # fmt: skip
    await asyncio.sleep(0.45)  # the window ends: one line for the rest
    lines = [r.getMessage() for r in caplog.records if r.name == "postroom.smtp.handshakes"]
    assert len(lines) == 4 and lines[3].startswith("... 5 more failed TLS handshakes")
    report("192.0.2.99", "EOF")  # a new window logs again
    assert caplog.records[-1].getMessage().endswith("from 192.0.2.99: EOF")
    assert registry.get_sample_value("postroom_smtp_tls_failures_total", {"listener": "mx"}) == 9
    assert all(r.levelno == logging.INFO and r.exc_info is None for r in caplog.records)
    failures.close()
