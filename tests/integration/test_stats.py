"""Delivery analytics on both databases from a known set of messages, deliveries and events:
counts by type, bounces by class and reason, latency percentiles (nearest rank), grouping by
stream, template, recipient domain and period, the time window; and the rate gauges."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.config import DatabaseSettings
from postroom.core.clock import FakeClock
from postroom.metrics import Metrics
from postroom.stats.gauges import RateGauges
from postroom.stats.model import StatsQuery
from postroom.stats.settings import StatsSettings
from postroom.stats.sql_stats import SqlStats
from postroom.store import schema
from postroom.store.credentials import Role, SqlApiKeys
from postroom.store.engine import create_engine
from postroom.store.tables import deliveries, events, messages
from tests.conftest import running
from tests.integration.test_cli import write_cli_config
from tests.support import make_settings, postroom_cli

DAY = 86400.0
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


async def seed(engine: AsyncEngine) -> None:
    """Day 1: stream "tx" (template "welcome"), ten recipients at gmail.com accepted at T0 and
    delivered after 1..10 s; two at yahoo.com: one hard bounce (userunknown), one expired.
    Day 2: stream "news" (no template), four at gmail.com: one delivered after 100 s, one
    deferred then soft-bounced (mailboxfull), one complaint about the delivered one, one
    suppressed, one unsubscribed."""
    message_rows: list[dict[str, Any]] = []
    delivery_rows: list[dict[str, Any]] = []
    event_rows: list[dict[str, Any]] = []
    next_delivery = iter(range(1, 1000))

    def message(mid: str, at: float, stream: str, template: str | None) -> None:
        message_rows.append({"id": mid, "created_at": at, "source": "api", "mail_from": "a@postroom.test",
                             "stream": stream, "route": "inhouse", "tags": [], "size": 1, "content": b"x",
                             "template_id": template, "template_version": 1 if template else None})  # fmt: skip

    def delivery(mid: str, recipient: str, at: float) -> int:
        did = next(next_delivery)
        delivery_rows.append({"id": did, "message_id": mid, "recipient": recipient,
                              "domain": recipient.split("@")[1], "state": "queued", "created_at": at,
                              "updated_at": at, "next_attempt_at": at})  # fmt: skip
        return did

    def event(mid: str, kind: str, at: float, did: int | None, recipient: str | None, **detail: Any) -> None:
        event_rows.append({"at": at, "type": kind, "message_id": mid, "delivery_id": did, "recipient": recipient,
                           "detail": {"reply": "x", **detail}})  # fmt: skip

    message("TX", T0, "tx", "welcome")
    event("TX", "accepted", T0, None, None)
    for n in range(1, 11):
        did = delivery("TX", f"u{n}@gmail.com", T0)
        event("TX", "delivered", T0 + n, did, f"u{n}@gmail.com")
    hard = delivery("TX", "gone@yahoo.com", T0)
    event("TX", "bounced", T0 + 5, hard, "gone@yahoo.com", bounce_class="hard", reason="userunknown")
    late = delivery("TX", "late@yahoo.com", T0)
    event("TX", "expired", T0 + 3 * 3600, late, "late@yahoo.com")

    day2 = T0 + DAY
    message("NEWS", day2, "news", None)
    ok = delivery("NEWS", "ok@gmail.com", day2)
    event("NEWS", "delivered", day2 + 100, ok, "ok@gmail.com")
    event("NEWS", "complained", day2 + 500, ok, "ok@gmail.com", feedback_type="abuse")
    full = delivery("NEWS", "full@gmail.com", day2)
    event("NEWS", "deferred", day2 + 10, full, "full@gmail.com")
    event("NEWS", "bounced", day2 + 20, full, "full@gmail.com", bounce_class="soft", reason="mailboxfull")
    event("NEWS", "suppressed", day2, None, "blocked@gmail.com")
    event("NEWS", "unsubscribed", day2 + 900, None, "leaver@gmail.com")
    async with engine.begin() as conn:
        await conn.execute(messages.insert(), message_rows)
        await conn.execute(deliveries.insert(), delivery_rows)
        await conn.execute(events.insert(), event_rows)


async def test_totals_bounces_and_latency(engine: AsyncEngine) -> None:
    await seed(engine)
    [total] = await SqlStats(engine).compute(StatsQuery())
    got = total.as_dict()
    assert got["sent"] == 14 and got["delivered"] == 11 and got["deferred"] == 1
    assert got["bounced"] == {"total": 3, "by_class": {"hard": 1, "soft": 2},
                              "by_reason": {"expired": 1, "mailboxfull": 1, "userunknown": 1}}  # fmt: skip
    assert (got["complained"], got["suppressed"], got["unsubscribed"]) == (1, 1, 1)
    # Latencies 1..10 and 100: nearest rank p50 = 6th of 11, p90 = 10th, p99 = 11th.
    assert got["latency_seconds"] == {"count": 11, "p50": 6.0, "p90": 10.0, "p99": 100.0}
    assert got["bounce_rate"] == pytest.approx(3 / 14, abs=1e-6)
    assert got["complaint_rate"] == pytest.approx(1 / 11, abs=1e-6)


async def test_grouped_by_stream_template_domain_and_day(engine: AsyncEngine) -> None:
    await seed(engine)
    stats = SqlStats(engine)
    by_stream = {g.key["stream"]: g for g in await stats.compute(StatsQuery(group_by=("stream",)))}
    assert set(by_stream) == {"tx", "news"}
    assert by_stream["tx"].delivered == 10 and by_stream["tx"].sent == 12
    assert by_stream["tx"].latency == {"p50": 5.0, "p90": 9.0, "p99": 10.0}
    assert by_stream["news"].bounced_by_reason == {"mailboxfull": 1} and by_stream["news"].complained == 1

    by_template = {g.key["template"]: g.delivered for g in await stats.compute(StatsQuery(group_by=("template",)))}
    assert by_template == {"welcome": 10, None: 1}

    by_domain = {g.key["domain"]: g for g in await stats.compute(StatsQuery(group_by=("domain",)))}
    assert by_domain["yahoo.com"].bounced == 2 and by_domain["yahoo.com"].delivered == 0
    assert by_domain["gmail.com"].suppressed == 1  # no delivery row: the domain of its recipient
    assert by_domain["gmail.com"].sent == 12

    by_day = await stats.compute(StatsQuery(group_by=("day", "stream")))
    assert [(g.key["day"], g.key["stream"], g.delivered) for g in by_day] == [
        ("2026-01-01T00:00:00Z", "tx", 10), ("2026-01-02T00:00:00Z", "news", 1)]


async def test_the_window_and_a_stream_filter(engine: AsyncEngine) -> None:
    await seed(engine)
    stats = SqlStats(engine)
    [first_hour] = await stats.compute(StatsQuery(since=T0, until=T0 + 3600))
    assert first_hour.delivered == 10 and first_hour.bounced == 1  # the expiry came later
    [news] = await stats.compute(StatsQuery(stream="news"))
    assert news.delivered == 1 and news.sent == 2
    [empty] = await stats.compute(StatsQuery(since=T0 - 10 * DAY, until=T0 - DAY))
    assert empty.sent == 0 and empty.latency_count == 0 and empty.latency == {}
    with pytest.raises(ValueError, match="cannot group by"):
        StatsQuery(group_by=("country",))
    with pytest.raises(ValueError, match="one period"):
        StatsQuery(group_by=("day", "hour"))


async def test_rate_gauges_over_the_rolling_window(engine: AsyncEngine) -> None:
    await seed(engine)
    metrics = Metrics(CollectorRegistry())
    clock = FakeClock(T0 + DAY + 1000)
    gauges = RateGauges(SqlStats(engine), StatsSettings(rate_window=DAY), clock, metrics)
    await gauges.refresh()

    def value(name: str, stream: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"stream": stream})

    assert value("postroom_complaint_rate", "news") == pytest.approx(1.0)  # 1 complaint / 1 delivered
    assert value("postroom_bounce_rate", "news") == pytest.approx(0.5)
    assert value("postroom_bounce_rate", "tx") == pytest.approx(1.0)  # only the expiry (T0 + 3 h) is in it
    clock.advance(2 * DAY)
    await gauges.refresh()
    assert value("postroom_bounce_rate", "news") == 0.0  # out of the window


async def test_http_stats(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url, delivery={"hold": True})
    engine = create_engine(settings.database)
    try:
        await schema.upgrade(engine)
        await seed(engine)
        _, token = await SqlApiKeys(engine).create("viewer", Role.VIEWER, time.time())
    finally:
        await engine.dispose()
    auth = {"Authorization": f"Bearer {token}"}
    async with running(settings) as daemon, aiohttp.ClientSession(daemon.http) as http:
        params = {"from": "2026-01-01T00:00:00Z", "to": "2026-01-03T00:00:00Z", "group_by": "stream,day"}
        async with http.get("/v1/stats", params=params, headers=auth) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["group_by"] == ["stream", "day"]
        assert body["totals"]["delivered"] == 11 and body["totals"]["bounced"]["by_class"] == {"hard": 1, "soft": 2}
        assert [(g["stream"], g["day"], g["sent"]) for g in body["groups"]] == [
            ("news", "2026-01-02T00:00:00Z", 2), ("tx", "2026-01-01T00:00:00Z", 12)]
        async with http.get("/v1/stats", params={"from": "2026-01-02"}, headers=auth) as resp:
            assert (await resp.json())["totals"]["delivered"] == 1
        for bad in ({"group_by": "country"}, {"from": "yesterday"}, {"from": "2026-02-01", "to": "2026-01-01"}):
            async with http.get("/v1/stats", params=bad, headers=auth) as resp:
                assert resp.status == 400, bad
        async with http.get("/v1/stats") as resp:
            assert resp.status == 401


@pytest.mark.slow
async def test_stats_command(tmp_path: Path) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    config = write_cli_config(tmp_path, db_url)
    engine = create_engine(DatabaseSettings(url=db_url))
    try:
        await schema.upgrade(engine)
        await seed(engine)
    finally:
        await engine.dispose()
    result = postroom_cli("--config", str(config), "stats", "--group-by", "domain", "--json")
    body = json.loads(result.stdout)
    assert {g["domain"]: g["bounced"]["total"] for g in body["groups"]} == {"gmail.com": 1, "yahoo.com": 2}
    table = postroom_cli("--config", str(config), "stats", "--from", "2026-01-01", "--to", "2026-01-02").stdout
    assert "total" in table and "userunknown 1" in table
    bad = postroom_cli("--config", str(config), "stats", "--group-by", "day,hour", check=False)
    assert bad.returncode == 2 and "one period" in bad.stderr
