"""The HTTP API against malformed and oversized input (the outside probe's findings 4 and 6): every
such request gets a 4xx JSON error naming the problem, never a 500, and request bodies are bounded
by the process's byte budget before they are read."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from postroom.store import schema
from postroom.store.credentials import Role, SqlApiKeys
from postroom.store.engine import create_engine
from tests.conftest import RunningDaemon, running
from tests.support import make_settings

MESSAGE: dict[str, Any] = {"from": "app@postroom.test", "to": "u@example.com", "subject": "hi", "text": "x"}


async def started(tmp_path: Path, **sections: dict[str, Any]) -> tuple[Any, str]:
    settings = make_settings(tmp_path, delivery={"hold": True}, **sections)
    engine = create_engine(settings.database)
    await schema.upgrade(engine)
    _, token = await SqlApiKeys(engine).create("sender", Role.SENDER, time.time())
    await engine.dispose()
    return settings, token


async def post(daemon: RunningDaemon, token: str, body: bytes, **headers: str) -> tuple[int, Any]:
    all_headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", **headers}
    async with aiohttp.ClientSession(daemon.http) as session:
        async with session.post("/v1/messages", data=body, headers=all_headers) as resp:
            return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json", "nested too deeply"),
        (json.dumps({**MESSAGE, "subject": "\ud800"}).encode(), "invalid_request", "subject: not valid text"),
        (json.dumps({**MESSAGE, "headers": {"X-A": "\ud83d"}}).encode(), "invalid_request", "headers.X-A"),
        (json.dumps({**MESSAGE, "subject": "a\u2028Bcc: x@evil.example"}).encode(), "invalid_message", "header subject"),
        (json.dumps({**MESSAGE, "subject": "a\x0bb"}).encode(), "invalid_message", "U+000B"),
        (json.dumps({**MESSAGE, "subject": "a\x0cb"}).encode(), "invalid_message", "U+000C"),
        (json.dumps({**MESSAGE, "headers": {"X-A": "a\x85b"}}).encode(), "invalid_message", "header X-A"),
        (json.dumps({**MESSAGE, "headers": {"X-A": "a\x00b"}}).encode(), "invalid_message", "U+0000"),
        (json.dumps({**MESSAGE, "from": {"email": "app@postroom.test", "name": "A\u2029B"}}).encode(),
         "invalid_message", "header address"),
    ],
    ids=["deep-json", "surrogate-subject", "surrogate-header", "u2028", "vt", "ff", "nel", "nul", "u2029-name"],
)
async def test_malformed_input_is_a_400_naming_the_problem(
    tmp_path: Path, body: bytes, code: str, words: str
) -> None:
    settings, token = await started(tmp_path)
    async with running(settings) as d:
        status, answer = await post(d, token, body)
    assert status == 400, answer
    assert answer["error"]["code"] == code and words in answer["error"]["message"], answer


async def test_a_body_over_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    settings, token = await started(tmp_path, http={"max_body_size": 4096})
    async with running(settings) as d:
        host, port = d.daemon.http_bound or ("", 0)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n".encode())  # fmt: skip
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # answered without the body
        writer.close()
    assert head.startswith(b"HTTP/1.1 413")


async def test_bodies_beyond_the_byte_budget_wait_their_turn_with_503(tmp_path: Path) -> None:
    """Two large bodies in flight at once on a 1 MiB budget: the second is refused for now
    (503 busy, Retry-After), and goes through once the first is done."""
    settings, token = await started(tmp_path, limits={"bytes_in_flight": 1024 * 1024})
    big = json.dumps({**MESSAGE, "text": "x" * 700_000}).encode()
    async with running(settings) as d:
        host, port = d.daemon.http_bound or ("", 0)
        slow_reader, slow = await asyncio.open_connection(host, port)
        slow.write(f"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(big)}\r\n\r\n".encode() + big[:1000])  # fmt: skip
        await slow.drain()
        await asyncio.sleep(0.3)  # the first body holds its reservation while it trickles in
        status, answer = await post(d, token, big)
        assert (status, answer["error"]["code"]) == (503, "busy")
        assert d.metric("postroom_ingress_busy_refusals_total", {"ingress": "http"}) == 1.0
        slow.write(big[1000:])
        await slow.drain()
        first = await asyncio.wait_for(slow_reader.readuntil(b"\r\n\r\n"), 10)
        slow.close()
        assert first.startswith(b"HTTP/1.1 202")
        status, answer = await post(d, token, big)
        assert status == 202, answer
        assert d.metric("postroom_ingress_bytes_in_flight") == 0.0
