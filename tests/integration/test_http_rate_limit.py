"""Per-key rate limits on a running daemon, through both APIs: Loops' 10/s by default, the rate
headers on every counted answer (errors included), one 429 with Retry-After in each API's own
error shape, keys and route classes with quotas of their own, and the metric. The daemon's clock
is held still, so "in one second" means exactly that."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from postroom.core.clock import FakeClock
from postroom.store import schema
from postroom.store.credentials import Role, SqlApiKeys
from postroom.store.engine import create_engine
from tests.conftest import running
from tests.support import make_settings

MESSAGE = {"from": "app@postroom.test", "to": ["a@example.com"], "subject": "Hi", "text": "Hello"}


@dataclass
class Limited:
    session: aiohttp.ClientSession
    tokens: dict[str, str]
    clock: FakeClock
    metrics_url: str

    async def call(self, method: str, path: str, key: str = "app", body: Any = None) -> aiohttp.ClientResponse:
        headers = {"Authorization": f"Bearer {self.tokens[key]}"}
        async with self.session.request(method, path, json=body, headers=headers) as response:
            await response.read()
            return response


async def limited_daemon(tmp_path: Path, rate_limit: dict[str, Any]) -> AsyncIterator[Limited]:
    settings = make_settings(tmp_path, http={"rate_limit": {"enabled": True, **rate_limit}})
    engine = create_engine(settings.database)
    await schema.upgrade(engine)
    keys = SqlApiKeys(engine)
    tokens = {name: (await keys.create(name, Role.ADMIN, time.time()))[1] for name in ("app", "other", "batch")}
    await engine.dispose()
    clock = FakeClock(time.time())
    async with running(settings, clock=clock) as daemon, aiohttp.ClientSession(daemon.http) as session:
        yield Limited(session, tokens, clock, f"{daemon.http}/metrics")


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Limited]:
    async for limited in limited_daemon(tmp_path, {}):
        yield limited


async def test_eleven_loops_requests_in_one_second_get_one_429_with_retry_after(api: Limited) -> None:
    answers = [await api.call("GET", "/api/v1/api-key") for _ in range(11)]
    assert [a.status for a in answers] == [200] * 10 + [429]
    assert [a.headers["x-ratelimit-remaining"] for a in answers] == [str(n) for n in range(9, -1, -1)] + ["0"]
    assert {a.headers["x-ratelimit-limit"] for a in answers} == {"10"}
    refused = answers[-1]
    assert refused.headers["Retry-After"] == "1"
    assert await refused.json() == {"success": False, "message": "Rate limit of 10 requests exceeded; retry after 1 s."}
    api.clock.advance(0.1)  # one request's worth comes back
    assert (await api.call("GET", "/api/v1/api-key")).status == 200
    assert (await api.call("GET", "/api/v1/api-key")).status == 429


async def test_the_native_api_shares_the_keys_quota_and_answers_its_own_429(api: Limited) -> None:
    for _ in range(5):
        assert (await api.call("GET", "/api/v1/api-key")).status == 200
    answers = [await api.call("POST", "/v1/messages", body=MESSAGE) for _ in range(6)]
    assert [a.status for a in answers] == [202] * 5 + [429]
    body = await answers[-1].json()
    assert body["error"]["code"] == "rate_limited" and "10 requests" in body["error"]["message"]
    assert answers[-1].headers["Retry-After"] == "1"


async def test_error_answers_carry_the_rate_headers_too(api: Limited) -> None:
    bad = await api.call("POST", "/v1/messages", body={"from": "nobody"})
    assert bad.status == 400 and bad.headers["x-ratelimit-remaining"] == "9"
    missing = await api.call("GET", "/api/v1/contacts/find?email=nobody@example.com")
    assert missing.status == 200 and missing.headers["x-ratelimit-remaining"] == "8"
    unsupported = await api.call("GET", "/api/v1/campaigns")
    assert unsupported.status == 501 and unsupported.headers["x-ratelimit-remaining"] == "7"


async def test_each_key_has_its_own_bucket(api: Limited) -> None:
    for _ in range(10):
        await api.call("GET", "/api/v1/api-key", key="app")
    assert (await api.call("GET", "/api/v1/api-key", key="app")).status == 429
    other = await api.call("GET", "/api/v1/api-key", key="other")
    assert other.status == 200 and other.headers["x-ratelimit-remaining"] == "9"


async def test_unauthenticated_and_operational_requests_are_not_counted(api: Limited) -> None:
    for _ in range(15):
        async with api.session.get("/healthz") as response:
            assert response.status == 200 and "x-ratelimit-limit" not in response.headers
    async with api.session.get("/api/v1/api-key", headers={"Authorization": "Bearer nope"}) as response:
        assert response.status == 401 and "x-ratelimit-limit" not in response.headers
    assert (await api.call("GET", "/api/v1/api-key")).headers["x-ratelimit-remaining"] == "9"


async def test_refusals_are_counted_by_route_class(api: Limited) -> None:
    for _ in range(12):
        await api.call("POST", "/api/v1/transactional", body={"transactionalId": "none", "email": "a@example.com"})
    async with api.session.get(api.metrics_url) as response:
        text = await response.text()
    assert 'postroom_http_rate_limited_total{route_class="send"} 2.0' in text


async def test_a_keys_own_quota_and_a_class_quota_apply(tmp_path: Path) -> None:
    limits = {"default": "3/s", "keys": {"batch": "20/s"}, "classes": {"send": "2/min"}}
    async for api in limited_daemon(tmp_path, limits):
        reads = [(await api.call("GET", "/v1/domains/postroom.test", key="batch")).status for _ in range(21)]
        assert reads.count(429) == 1 and reads[-1] == 429
        reads = [(await api.call("GET", "/api/v1/lists")).status for _ in range(4)]
        assert reads == [200, 200, 200, 429]
        sends = [await api.call("POST", "/v1/messages", body=MESSAGE) for _ in range(3)]
        assert [s.status for s in sends] == [202, 202, 429]  # send has its own bucket, apart from reads
        assert sends[0].headers["x-ratelimit-limit"] == "2"
        assert sends[-1].headers["Retry-After"] == "30"
