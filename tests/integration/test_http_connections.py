"""HTTP connections are bounded (issue 10, finding 7): a request head must arrive within
`header_timeout`, an idle keep-alive connection is closed after `keepalive_timeout`, and one client
address holds at most `max_connections_per_client` connections. Raw sockets, short timeouts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.conftest import RunningDaemon, running
from tests.support import make_settings

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def settings_for(tmp_path: Path, **http: object):  # type: ignore[no-untyped-def]
    return make_settings(tmp_path, http=http, delivery={"hold": True})


async def connect(d: RunningDaemon) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = d.daemon.http_bound or ("", 0)
    return await asyncio.open_connection(host, port)


async def closed_after(reader: asyncio.StreamReader, limit: float) -> tuple[float, bytes]:
    """Read until the server closes; (seconds it took, what it sent)."""
    started, received = time.monotonic(), b""
    while True:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), limit)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return time.monotonic() - started, received
        received += chunk


async def response(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, header_timeout=0.5, keepalive_timeout=30)) as d:
        reader, writer = await connect(d)
        took, sent = await closed_after(reader, 5)
        writer.close()
        assert 0.4 < took < 2.0
        assert sent.startswith(b"HTTP/1.1 408 ")
        assert d.metric("postroom_http_connections_closed_total", {"reason": "header_timeout"}) == 1


async def test_a_trickled_request_head_is_closed_after_the_header_timeout(tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, header_timeout=1.0, keepalive_timeout=30)) as d:
        reader, writer = await connect(d)
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 40 + b"\r\n\r\n"
        written = 0

        async def trickle() -> None:
            nonlocal written
            for byte in request:  # one byte every 0.2 s: the head would take 12 s
                writer.write(bytes([byte]))
                await writer.drain()
                written += 1
                await asyncio.sleep(0.2)

        feeding = asyncio.create_task(trickle())
        took, sent = await closed_after(reader, 10)
        feeding.cancel()
        writer.close()
        assert took < 3.0 and written < len(request) // 2
        assert sent.startswith(b"HTTP/1.1 408 ")


async def test_the_header_timeout_runs_from_the_first_byte_of_each_request(tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, header_timeout=0.8, keepalive_timeout=30)) as d:
        reader, writer = await connect(d)
        for _ in range(3):  # idle between requests longer than the header timeout: fine
            writer.write(HEALTHZ)
            assert (await response(reader)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(1.0)
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # a head begun and never finished
        took, sent = await closed_after(reader, 5)
        writer.close()
        assert took < 2.0 and sent.startswith(b"HTTP/1.1 408 ")


async def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, header_timeout=30, keepalive_timeout=1.0)) as d:
        reader, writer = await connect(d)
        writer.write(HEALTHZ)
        assert (await response(reader)).startswith(b"HTTP/1.1 200")
        took, sent = await closed_after(reader, 5)
        writer.close()
        assert 0.8 < took < 3.0 and sent == b""


async def test_connections_per_client_are_capped(tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, max_connections_per_client=3)) as d:
        held = [await connect(d) for _ in range(3)]
        reader, writer = await connect(d)
        took, sent = await closed_after(reader, 5)  # refused at once
        writer.close()
        assert took < 1.0 and sent.startswith(b"HTTP/1.1 429 ")
        assert b"Retry-After: 1" in sent and b'"too_many_connections"' in sent
        assert d.metric("postroom_http_connections_closed_total", {"reason": "too_many_connections"}) == 1

        for held_reader, held_writer in held:  # the held ones still work
            held_writer.write(HEALTHZ)
            assert (await response(held_reader)).startswith(b"HTTP/1.1 200")
        held[0][1].close()
        await held[0][1].wait_closed()
        await asyncio.sleep(0.1)
        reader, writer = await connect(d)  # a slot came free
        writer.write(HEALTHZ)
        assert (await response(reader)).startswith(b"HTTP/1.1 200")
        for _, held_writer in [*held[1:], (reader, writer)]:
            held_writer.close()
