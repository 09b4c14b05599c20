"""The operator's view of direct delivery: the queue grouped by destination and state (store,
`postroom queue ls --by-destination`, GET /v1/queue/destinations), every attempt with where it
went and its TLS version (`postroom queue show`), and migration 0004 filling in the domain of
deliveries queued before it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from postroom.core.types import DeliveryState, Submission
from postroom.queue.models import Release
from postroom.queue.sql_store import SqlQueueStore
from postroom.queue.views import SqlQueueViews
from postroom.store import schema
from postroom.store.credentials import Role
from postroom.store.engine import create_engine
from postroom.store.tables import deliveries
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.test_cli import Cli, write_cli_config
from tests.integration.test_http_api import serving
from tests.support import claim, make_settings

NOW = 1_790_000_000.0
TLS_ATTEMPT = {"mx": "mx1.example.org", "ip": "192.0.2.7", "port": 25, "tls": "TLSv1.3", "code": 451}


async def queue_mail(store: SqlQueueStore, *recipients: str) -> str:
    [message_id] = await store.insert_many(
        [Submission("app@postroom.test", recipients, b"Subject: x\r\n\r\nbody\r\n", "api")], NOW
    )
    return message_id


async def defer_all(store: SqlQueueStore, domain: str, reply: str, detail: dict[str, object]) -> int:
    claimed = [d for d in await claim(store, "w", 1000, NOW + 1, 60) if d.domain == domain]
    releases = [
        Release(d.id, d.message_id, d.recipient, DeliveryState.DEFERRED, reply, NOW + 600, dict(detail))
        for d in claimed
    ]
    await store.release("w", releases, NOW + 2)
    await store.reap(NOW + 10_000)  # hand back the ones claimed but not deferred here
    return len(releases)


async def test_destinations_group_by_domain_and_state_largest_first(engine: AsyncEngine) -> None:
    store = SqlQueueStore(engine)
    await queue_mail(store, "a@slow.example", "b@slow.example", "c@Slow.Example", "d@fast.example")
    await queue_mail(store, "e@slow.example")
    assert await defer_all(store, "slow.example", "451 4.7.0 try later", TLS_ATTEMPT) == 4

    groups = await SqlQueueViews(engine).destinations()
    assert [(g.domain, g.state, g.count) for g in groups] == [
        ("slow.example", "deferred", 4),
        ("fast.example", "queued", 1),
    ]
    slow = groups[0]
    assert slow.last_reply == "451 4.7.0 try later"
    assert slow.oldest_created_at == NOW and slow.next_attempt_at == NOW + 600
    assert groups[1].last_reply is None

    # Final states only with include_final.
    [fast] = [d for d in await claim(store, "w", 10, NOW + 20_000, 60) if d.domain == "fast.example"]
    await store.release("w", [Release(fast.id, fast.message_id, fast.recipient,
                                      DeliveryState.DELIVERED, "250 ok")], NOW + 20_001)  # fmt: skip
    await store.reap(NOW + 90_000)
    assert ("fast.example", "delivered") not in {(g.domain, g.state) for g in await SqlQueueViews(engine).destinations()}
    everything = {(g.domain, g.state): g.count for g in await SqlQueueViews(engine).destinations(include_final=True)}
    assert everything[("fast.example", "delivered")] == 1


async def test_claim_skips_excluded_domains(engine: AsyncEngine) -> None:
    store = SqlQueueStore(engine)
    await queue_mail(store, "a@held.example", "b@other.example", "c@HELD.example")
    claimed = await claim(store, "w", 10, NOW + 1, 60, exclude_domains=["held.example"])
    assert [d.recipient for d in claimed] == ["b@other.example"]
    rest = await claim(store, "w", 10, NOW + 1, 60)
    assert sorted(d.recipient for d in rest) == ["a@held.example", "c@HELD.example"]


async def test_untried_hand_backs_are_held_events_and_do_not_count_as_attempts(
    engine: AsyncEngine,
) -> None:
    store = SqlQueueStore(engine)
    message_id = await queue_mail(store, "a@example.org")
    [claimed] = await claim(store, "w", 10, NOW, 60)
    await store.release("w", [Release(claimed.id, message_id, claimed.recipient, DeliveryState.QUEUED,
                                      "destination held back", NOW + 60, {"postponed": True},
                                      tried=False)], NOW)  # fmt: skip
    detail = await SqlQueueViews(engine).show(message_id)
    [delivery] = detail.deliveries
    assert (delivery.state, delivery.attempts, delivery.next_attempt_at) == ("queued", 0, NOW + 60)
    assert [e["type"] for e in detail.events if e["delivery_id"]] == ["held"]


@pytest.mark.slow
async def test_cli_groups_by_destination_and_shows_each_attempt(tmp_path: Path, db_url: str) -> None:
    cli = Cli(write_cli_config(tmp_path, db_url), db_url)
    cli("db", "upgrade")
    assert cli("queue", "ls", "--by-destination").stdout.strip() == "no deliveries in the queue"
    message_id = cli.send("a@slow.example", "b@fast.example")
    engine = create_engine(make_settings(tmp_path, db_url).database)
    try:
        store = SqlQueueStore(engine)
        [slow] = [d for d in await claim(store, "w", 10, 4e9, 60) if d.domain == "slow.example"]
        await store.release("w", [Release(slow.id, message_id, slow.recipient, DeliveryState.DEFERRED,
                                          "451 4.7.0 try later", 4e9 + 600, TLS_ATTEMPT)], 4e9)  # fmt: skip
        await store.reap(5e9)
    finally:
        await engine.dispose()

    table = cli("queue", "ls", "--by-destination").stdout.splitlines()
    assert table[0].split()[:3] == ["DESTINATION", "STATE", "COUNT"]
    rows = {tuple(line.split()[:3]) for line in table[1:]}
    assert rows == {("slow.example", "deferred", "1"), ("fast.example", "queued", "1")}
    assert any("451 4.7.0 try later" in line for line in table)
    as_json = json.loads(cli("queue", "ls", "--by-destination", "--json").stdout)
    assert {(g["domain"], g["state"], g["count"]) for g in as_json} == {
        ("slow.example", "deferred", 1), ("fast.example", "queued", 1)}  # fmt: skip

    shown = cli("queue", "show", message_id).stdout
    assert "a@slow.example: deferred, 1 attempt(s)" in shown
    assert "deferred via mx1.example.org [192.0.2.7]:25 TLSv1.3: 451 4.7.0 try later" in shown
    detail = cli.show(message_id)
    [slow_delivery] = [d for d in detail["deliveries"] if d["recipient"] == "a@slow.example"]  # type: ignore[attr-defined]
    [attempt] = slow_delivery["events"]
    assert attempt["detail"]["tls"] == "TLSv1.3" and attempt["detail"]["mx"] == "mx1.example.org"


async def test_http_destinations_view(tmp_path: Path, db_url: str) -> None:
    async with serving(tmp_path, db_url) as api:
        status, body, _ = await api.send({"from": "app@postroom.test", "to": ["a@one.example", "b@two.example",
                                                                           "c@two.example"],
                                       "subject": "s", "text": "t"})  # fmt: skip
        assert status == 202, body
        status, body = await api.get("/v1/queue/destinations")
        assert status == 200
        assert [(g["domain"], g["state"], g["count"]) for g in body["data"]] == [
            ("two.example", "queued", 2), ("one.example", "queued", 1)]  # fmt: skip
        status, body = await api.get("/v1/queue/destinations", limit=1)
        assert status == 200 and len(body["data"]) == 1
        status, body = await api.get("/v1/queue/destinations", limit="lots")
        assert status == 400 and body["error"]["code"] == "invalid_query"
        status, body = await api.get("/v1/queue/destinations", all="maybe")
        assert status == 400 and body["error"]["code"] == "invalid_query"
        async with api.session.get("/v1/queue/destinations") as resp:
            assert resp.status == 401
        status, _ = await api.get("/v1/queue/destinations", role=Role.SENDER)
        assert status == 200  # roles are ordered: a sender may do what a viewer may


async def test_migration_0004_fills_in_the_domain_of_queued_deliveries(db_url: str) -> None:
    engine = create_engine(make_settings(Path("/nonexistent"), db_url).database)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(schema._alembic_config(c), "0003"))
            await conn.execute(sa.text(
                "INSERT INTO messages (id, created_at, source, mail_from, stream, route, tags, size, content)"
                " VALUES ('01J00000000000000000000000', 1, 'api', 'a@postroom.test', 't', 'inhouse',"
                " '[]', 1, :content)"), {"content": b"x"})  # fmt: skip
            for recipient in ("user@Example.ORG", '"odd@local"@quoted.example', "nodomain"):
                await conn.execute(sa.text(
                    "INSERT INTO deliveries (message_id, recipient, state, attempts, created_at,"
                    " updated_at, next_attempt_at) VALUES ('01J00000000000000000000000', :r, 'queued',"
                    " 0, 1, 1, 1)"), {"r": recipient})  # fmt: skip
        await schema.upgrade(engine)
        async with engine.connect() as conn:
            rows = dict((await conn.execute(sa.select(deliveries.c.recipient, deliveries.c.domain))).all())
    finally:
        await engine.dispose()
    assert rows == {"user@Example.ORG": "example.org", '"odd@local"@quoted.example': "quoted.example",
                    "nodomain": ""}  # fmt: skip
