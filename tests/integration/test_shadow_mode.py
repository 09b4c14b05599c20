"""Shadow mode end to end (issue 14): one daemon in this process, a fake Loops on 127.0.0.1, in-house
delivery by smarthost to an aiosmtpd sink on 127.0.0.1 (its envelope says who got a copy), and the
shadow sink capturing to a directory of its own.

- `split 30` over 10,000 recipients: 30 % +/- 2 in-house, exactly the recipients whose keyed hash
  says so, each recipient one copy (Loops' requests and the sink's envelopes together); `split 50`
  keeps every earlier in-house recipient in-house.
- `shadow`: Loops delivers every recipient once; nobody gets an in-house copy; the shadow sink gets
  one copy per message; the copies' events are `shadow_delivered` and count nowhere else.
- the guard: in-house 550 5.1.1 for a share of recipients steps `split 50` back to `split 25` with
  the reason, a metric and a `route_changed` event; without failures it changes nothing.
- `PUT /v1/routes` refuses settings that cannot apply (422 with the reason); `GET /v1/routes` lists
  routes and changes with who and why.
- `postroom route set|rollback|status --json` against the daemon's database (click's runner): the
  daemon follows within `refresh_interval`; a rollback is legacy at once, listed as manual.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from aiosmtpd.smtp import SMTP, Envelope, Session
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from postroom.cli import main
from postroom.config import Settings
from postroom.core.clock import SystemClock
from postroom.core.types import INHOUSE_ROUTE, LOOPS_ROUTE, SHADOW_ROUTE
from postroom.metrics import Metrics
from postroom.app import route_service, routing_key
from postroom.shadow.announce import RouteEvents
from postroom.shadow.compare import SqlComparison
from postroom.shadow.guard import Guard
from postroom.shadow.routing import BUCKETS, bucket
from postroom.shadow.settings import GuardSettings, RampSettings
from postroom.store import schema
from postroom.store.credentials import Role, SqlApiKeys
from postroom.store.engine import WriteGate, create_engine
from postroom.store.tables import deliveries, events, route_changes
from postroom.templates.service import TemplateService
from postroom.templates.sql_store import SqlTemplateStore
from tests.conftest import RunningDaemon, running
from tests.integration.test_loops_api import RECEIPT
from tests.loops_fake import FakeLoops, fake_loops
from tests.webhook_receiver import webhook_receiver
from tests.support import SinkHandler, make_settings, smtp_sink, wait_until

API_KEY = "loops-test-key"
ROUTING_KEY = "shadow-mode-test-routing-key"
LOOPS_TEMPLATES = {"receipt": "cltx-receipt"}
DATA = {"name": "Ada", "order": "A-17"}
STREAM = "transactional"


@pytest.fixture
async def loops() -> AsyncIterator[FakeLoops]:
    async with fake_loops() as fake:
        yield fake


class FailingSink(SinkHandler):
    """The in-house path's receiver: 550 5.1.1 at RCPT for every address whose local part ends in
    one of `refused_digits`, 250 for the rest."""

    def __init__(self, refused_digits: str = "") -> None:
        super().__init__()
        self.refused_digits = refused_digits
        self.refused: list[str] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        local = address.partition("@")[0]
        if self.refused_digits and local[-1:] in self.refused_digits:
            self.refused.append(address)
            return f"550 5.1.1 <{address}>: user unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    def recipients(self) -> list[str]:
        return [address for message in self.messages for address in message.recipients]


def shadow_settings(tmp_path: Path, db_url: str | None, loops_url: str, sink_port: int,
                    **sections: dict[str, Any]) -> Settings:  # fmt: skip
    shadow = {"routing_key": ROUTING_KEY, "sink": "capture", "capture_dir": str(tmp_path / "shadow-sink"),
              "refresh_interval": 0.2, "guard": {"enabled": False}}  # fmt: skip
    return make_settings(
        tmp_path, db_url,
        loops={"api_key": API_KEY, "base_url": loops_url, "templates": LOOPS_TEMPLATES, "rate_limit": "10000/s"},
        delivery={"mode": "smarthost", "smarthost": f"127.0.0.1:{sink_port}", "smarthost_tls": "none",
                  "poll_interval": 0.05, "concurrency": 20},
        shadow={**shadow, **sections.pop("shadow", {})},
        **sections,
    )  # fmt: skip


async def prepare(settings: Settings) -> str:
    """Migrate; an admin key (returned) and the published template `receipt` (mapped to Loops) and
    `unmapped` (not)."""
    engine = create_engine(settings.database)
    try:
        await schema.upgrade(engine)
        token: str = (await SqlApiKeys(engine).create("admin", Role.ADMIN, time.time()))[1]
        templates = TemplateService(SqlTemplateStore(engine), SystemClock())
        for name in ("receipt", "unmapped"):
            made = await templates.create(name, RECEIPT, "test")
            await templates.publish(name, made.version)
    finally:
        await engine.dispose()
    return token


@dataclass
class Client:
    session: aiohttp.ClientSession
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def call(self, method: str, path: str, body: Any = None, **params: Any) -> tuple[int, Any]:
        async with self.session.request(method, path, json=body, params=params or None, headers=self.auth) as resp:
            return resp.status, await resp.json()

    async def set_route(self, reason: str = "test", **route: Any) -> Any:
        status, body = await self.call("PUT", "/v1/routes", {"stream": STREAM, **route, "reason": reason})
        assert status == 200, body
        return body

    async def send(self, recipients: Sequence[str], template: str = "receipt") -> str:
        message = {"to": list(recipients), "template": {"id": template}, "data": DATA, "stream": STREAM}
        status, body = await self.call("POST", "/v1/messages", message)
        assert status == 202, body
        return str(body["id"])

    async def send_all(self, batches: Sequence[Sequence[str]], parallel: int = 8) -> list[str]:
        limit = asyncio.Semaphore(parallel)

        async def one(batch: Sequence[str]) -> str:
            async with limit:
                return await self.send(batch)

        return list(await asyncio.gather(*(one(batch) for batch in batches)))


@dataclass
class Rig:
    daemon: RunningDaemon
    client: Client
    loops: FakeLoops
    sink: FailingSink
    settings: Settings
    engine: Any

    async def route_counts(self) -> dict[tuple[str, str], int]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(deliveries.c.route, deliveries.c.state, sa.func.count())
                                       .group_by(deliveries.c.route, deliveries.c.state))).all()  # fmt: skip
        return {(row[0], row[1]): int(row[2]) for row in rows}

    async def all_final(self, expected: int) -> bool:
        async with self.engine.connect() as conn:
            total = (await conn.execute(sa.select(sa.func.count()).select_from(deliveries))).scalar_one()
            pending = (await conn.execute(sa.select(sa.func.count()).select_from(deliveries)
                                          .where(deliveries.c.finished_at.is_(None)))).scalar_one()  # fmt: skip
        return int(total) == expected and int(pending) == 0

    async def wait_final(self, expected: int, timeout: float = 60.0) -> None:
        await wait_until(lambda: self.all_final(expected), timeout, interval=0.2,
                         what=f"{expected} deliveries in a final state")  # fmt: skip

    def shadow_files(self) -> list[Path]:
        return sorted(Path(self.settings.shadow.capture_dir).glob("*.eml"))


@pytest.fixture
async def rig_factory(tmp_path: Path, loops: FakeLoops) -> AsyncIterator[Any]:
    """Starts the daemon for a database URL with an in-house sink refusing `refused_digits`."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(db_url: str | None, refused_digits: str = "", **sections: Any) -> Rig:
            sink, port = await stack.enter_async_context(smtp_sink(FailingSink(refused_digits)))
            assert isinstance(sink, FailingSink)
            settings = shadow_settings(tmp_path, db_url, loops.url, port, **sections)
            token = await prepare(settings)
            daemon = await stack.enter_async_context(running(settings))
            session = await stack.enter_async_context(aiohttp.ClientSession(daemon.http))
            engine = create_engine(settings.database)
            stack.push_async_callback(engine.dispose)
            return Rig(daemon, Client(session, token), loops, sink, settings, engine)

        yield start


def addresses(count: int, domains: int = 10) -> list[str]:
    return [f"user{n}@d{n % domains}.example.org" for n in range(count)]


def chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[n:n + size] for n in range(0, len(items), size)]


# -- split N over 10,000 recipients -----------------------------------------------------------------

async def _split_round(rig: Rig, recipients: list[str], percent: int, expected_total: int) -> set[str]:
    """Send to every recipient at `split percent`; check one copy each; the in-house set."""
    rig.loops.requests.clear()
    rig.sink.messages.clear()
    await rig.client.set_route(mode="split", percent=percent, reason=f"split {percent}")
    await rig.client.send_all(chunks(recipients, 100))
    await rig.wait_final(expected_total, timeout=90)
    via_loops = [r.body["email"] for r in rig.loops.requests]
    inhouse = rig.sink.recipients()
    copies = Counter(via_loops) + Counter(inhouse)
    assert set(copies) == set(recipients), "someone got nothing, or a stranger got something"
    assert max(copies.values()) == 1, [a for a, n in copies.items() if n > 1][:5]
    share = 100.0 * len(inhouse) / len(recipients)
    print(f"split {percent}: {len(inhouse)} of {len(recipients)} in-house = {share:.2f} %")
    assert percent - 2 <= share <= percent + 2, share
    # Exactly those whose keyed hash falls below the share: the routing key decides, nothing else.
    key = routing_key(rig.settings.shadow)
    assert set(inhouse) == {r for r in recipients if bucket(key, r) < percent * BUCKETS // 100}
    counts = await rig.route_counts()
    assert counts.get((SHADOW_ROUTE, "delivered"), 0) == 0
    return set(inhouse)


@pytest.mark.slow
async def test_split_30_then_50_over_10000_recipients(db_url: str, rig_factory: Any) -> None:
    rig: Rig = await rig_factory(db_url)
    recipients = addresses(10_000)
    started = time.monotonic()
    at_30 = await _split_round(rig, recipients, 30, 10_000)
    at_50 = await _split_round(rig, recipients, 50, 20_000)
    print(f"two rounds of 10,000 in {time.monotonic() - started:.1f} s")
    assert at_30 < at_50, "raising the share moved somebody from in-house back to Loops"
    counts = await rig.route_counts()
    assert counts == {(INHOUSE_ROUTE, "delivered"): len(at_30) + len(at_50),
                      (LOOPS_ROUTE, "delivered"): 20_000 - len(at_30) - len(at_50)}  # fmt: skip
    assert rig.shadow_files() == []


# -- shadow -----------------------------------------------------------------------------------------

async def test_shadow_loops_delivers_and_the_sink_gets_one_copy_per_message(db_url: str, rig_factory: Any) -> None:
    async with webhook_receiver() as receiver:
        rig: Rig = await rig_factory(db_url, webhooks={"poll_interval": 0.05})
        status, endpoint = await rig.client.call("POST", "/v1/webhook-endpoints",
                                                 {"url": receiver.url, "event_types": ["*"]})  # fmt: skip
        assert status in (200, 201), endpoint
        receiver.secret = endpoint["secret"]
        changed = await rig.client.set_route(mode="shadow", reason="shadow before the ramp")
        assert changed["changed"] is True and changed["route"]["mode"] == "shadow"
        # 20 messages of 1 to 3 recipients: 40 recipients.
        recipients = addresses(40)
        batches = [recipients[0:1], *chunks(recipients[1:], 3)]  # 1 + 13 messages of 3
        message_ids = await rig.client.send_all(batches)
        await rig.wait_final(2 * len(recipients), timeout=30)

        # Loops delivered every recipient, once; nobody got an in-house copy.
        assert Counter(r.body["email"] for r in rig.loops.requests) == Counter(recipients)
        assert rig.sink.messages == []
        # The shadow sink: one copy per message, as it would go on the wire.
        files = rig.shadow_files()
        assert sorted(f.stem for f in files) == sorted(message_ids)
        assert all(b"Subject: Receipt A-17" in f.read_bytes() for f in files)
        assert await rig.route_counts() == {(LOOPS_ROUTE, "delivered"): len(recipients),
                                            (SHADOW_ROUTE, "delivered"): len(recipients)}  # fmt: skip

        # The copies' events are the sink's: shadow_delivered, never delivered.
        async with rig.engine.connect() as conn:
            rows = (await conn.execute(
                sa.select(deliveries.c.route, events.c.type, sa.func.count())
                .select_from(events.join(deliveries, deliveries.c.id == events.c.delivery_id))
                .where(events.c.type != "accepted")
                .group_by(deliveries.c.route, events.c.type)
            )).all()  # fmt: skip
        assert {(r[0], r[1]): int(r[2]) for r in rows} == {(LOOPS_ROUTE, "delivered"): len(recipients),
                                                           (SHADOW_ROUTE, "shadow_delivered"): len(recipients)}  # fmt: skip
        # ... and count nowhere: not in /v1/stats, not as webhooks, no suppressions.
        status, stats = await rig.client.call("GET", "/v1/stats")
        assert status == 200
        assert (stats["totals"]["sent"], stats["totals"]["delivered"]) == (len(recipients), len(recipients))
        # Webhooks: one email.queued per message, one email.delivered per recipient (Loops'), and
        # nothing about the shadow copies.
        expected = len(message_ids) + len(recipients)
        await wait_until(lambda: len(receiver.verified) >= expected, 15, what="the webhooks")
        types = Counter(r.payload["type"] for r in receiver.verified)
        assert types == {"email.queued": len(message_ids), "email.delivered": len(recipients)}, types
        delivered = [r.payload["data"] for r in receiver.verified if r.payload["type"] == "email.delivered"]
        assert Counter(d["recipient"] for d in delivered) == Counter(recipients)
        status, suppressed = await rig.client.call("GET", "/v1/suppressions")
        assert status == 200 and suppressed["data"] == []
        assert rig.daemon.metric("postroom_routed_recipients_total",
                                 {"stream": STREAM, "route": SHADOW_ROUTE}) == len(recipients)  # fmt: skip


# -- the guard --------------------------------------------------------------------------------------

def guard_for(rig: Rig, registry: CollectorRegistry, min_messages: int = 50) -> Guard:
    """A guard on the daemon's database (as the daemon builds it), with its own metrics."""
    metrics = Metrics(registry)
    routes = route_service(rig.settings, rig.engine, None, SystemClock(), metrics)
    return Guard(routes, SqlComparison(rig.engine), SystemClock(), metrics,
                 GuardSettings(min_messages=min_messages, window=3600.0), RampSettings(),
                 RouteEvents(rig.engine, WriteGate(None)))  # fmt: skip


async def _split_50_traffic(rig: Rig) -> list[str]:
    await rig.client.set_route(mode="split", percent=50, ramp=True, reason="ramp at 50")
    recipients = addresses(400)
    await rig.client.send_all(chunks(recipients, 100))
    await rig.wait_final(len(recipients), timeout=30)
    return recipients


async def test_injected_inhouse_failures_trip_the_guard(db_url: str, rig_factory: Any) -> None:
    # The in-house receiver refuses every address ending in 0..3: about 40 % of in-house recipients.
    rig: Rig = await rig_factory(db_url, refused_digits="0123")
    await _split_50_traffic(rig)
    counts = await rig.route_counts()
    assert counts[(INHOUSE_ROUTE, "bounced")] == len(rig.sink.refused) > 0
    assert (LOOPS_ROUTE, "bounced") not in counts
    registry = CollectorRegistry()
    guard = guard_for(rig, registry)
    [change] = await guard.check()

    assert (change.setting.mode.value, change.setting.percent, change.source, change.changed_by) == (
        "split", 25, "guard", "guard")
    assert change.previous is not None and change.previous.percent == 50
    assert change.reason.startswith("guard: hard_bounce rate in-house") and "vs Loops 0.00%" in change.reason
    assert registry.get_sample_value("postroom_route_guard_breaches_total",
                                     {"stream": STREAM, "limit": "hard_bounce"}) == 1.0  # fmt: skip
    assert registry.get_sample_value("postroom_route_guard_state", {"stream": STREAM, "template": ""}) == 1.0
    assert registry.get_sample_value("postroom_route_changes_total", {"source": "guard"}) == 1.0
    async with rig.engine.connect() as conn:
        recorded = (await conn.execute(sa.select(route_changes).order_by(route_changes.c.id))).all()
        announced = (await conn.execute(sa.select(events.c.detail).where(events.c.type == "route_changed"))).all()
    assert [(r.source, r.mode, r.percent, r.previous_percent) for r in recorded] == [
        ("manual", "split", 50, None), ("guard", "split", 25, 50)]
    assert "hard_bounce" in recorded[-1].reason
    [(detail,)] = announced
    assert (detail["from"], detail["to"], detail["source"]) == ("split 50%", "split 25%", "guard")
    assert [b["limit"] for b in detail["breaches"]] == ["hard_bounce"]
    # The daemon follows: its API shows the guard's setting, and routes new mail by it.
    status, listed = await rig.client.call("GET", "/v1/routes")
    assert status == 200
    [route] = listed["routes"]
    assert (route["mode"], route["percent"], route["changed_by"]) == ("split", 25, "guard")
    assert listed["changes"][0]["source"] == "guard" and "hard_bounce" in listed["changes"][0]["reason"]

    # The failures that tripped it were judged once: checking again without new traffic at the new
    # share does not step the route back again (25 -> 5 -> 1 -> legacy on stale figures).
    assert await guard.check() == []
    status, listed = await rig.client.call("GET", "/v1/routes")
    assert listed["routes"][0]["percent"] == 25


async def test_the_guard_changes_nothing_without_failures(db_url: str, rig_factory: Any) -> None:
    rig: Rig = await rig_factory(db_url)
    await _split_50_traffic(rig)
    counts = await rig.route_counts()
    assert set(counts) == {(INHOUSE_ROUTE, "delivered"), (LOOPS_ROUTE, "delivered")}
    assert counts[(INHOUSE_ROUTE, "delivered")] >= 50  # enough to be judged
    registry = CollectorRegistry()
    assert await guard_for(rig, registry).check() == []
    assert registry.get_sample_value("postroom_route_guard_state", {"stream": STREAM, "template": ""}) == 0.0
    assert registry.get_sample_value("postroom_route_guard_breaches_total",
                                     {"stream": STREAM, "limit": "hard_bounce"}) is None  # fmt: skip
    async with rig.engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(route_changes))).scalar_one() == 1
        assert (await conn.execute(sa.select(sa.func.count()).select_from(events)
                                   .where(events.c.type == "route_changed"))).scalar_one() == 0  # fmt: skip


# -- route settings through the API -----------------------------------------------------------------

async def test_invalid_route_settings_are_refused_with_the_reason(db_url: str, rig_factory: Any) -> None:
    rig: Rig = await rig_factory(db_url)
    refused: list[tuple[dict[str, Any], str]] = [
        ({"template": "unmapped", "mode": "legacy"}, "template 'unmapped' has no Loops transactionalId"),
        ({"template": "unmapped", "mode": "split", "percent": 10}, "has no Loops transactionalId"),
        ({"mode": "legacy", "percent": 30}, "percent applies to mode split only, not legacy"),
        ({"mode": "split", "percent": 30, "fallback": True}, "fallback applies to mode inhouse only"),
        ({"mode": "shadow", "ramp": True}, "a ramp plan moves a split route"),
    ]
    answers = []
    for body, _ in refused:
        status, answer = await rig.client.call("PUT", "/v1/routes", {"stream": STREAM, **body, "reason": "try"})
        error = answer.get("error", answer)
        answers.append((status, error.get("code"), error.get("message", str(answer))))
    # Everything about each answer at once: the code and the reason, and the status (422).
    assert [(status, code, why in message) for (status, code, message), (_, why) in zip(answers, refused)] == [
        (422, "route_refused", True)] * len(refused), answers

    status, listed = await rig.client.call("GET", "/v1/routes")
    assert (status, listed) == (200, {"routes": [], "changes": []})  # nothing refused was recorded

    # Settings that apply are listed with who set them and why, the latest change first.
    key_id = await api_key_id(rig)
    await rig.client.set_route(mode="split", percent=30, reason="first step of the migration")
    await rig.client.set_route(template="receipt", mode="shadow", reason="receipts in shadow first")
    await rig.client.set_route(template="unmapped", mode="inhouse", reason="Loops cannot send it anyway")
    again = await rig.client.set_route(mode="split", percent=30, reason="the same again")
    assert again["changed"] is False
    status, listed = await rig.client.call("GET", "/v1/routes")
    assert status == 200
    routes = {(r["stream"], r["template"]): r for r in listed["routes"]}
    assert {key: (r["mode"], r["inhouse_percent"], r["changed_by"], r["reason"]) for key, r in routes.items()} == {
        (STREAM, None): ("split", 30, f"apikey:{key_id}", "first step of the migration"),
        (STREAM, "receipt"): ("shadow", 0, f"apikey:{key_id}", "receipts in shadow first"),
        (STREAM, "unmapped"): ("inhouse", 100, f"apikey:{key_id}", "Loops cannot send it anyway"),
    }
    assert [(c["route"]["template"], c["route"]["mode"], c["source"], c["changed_by"], c["reason"], c["previous"])
            for c in listed["changes"]] == [
        ("unmapped", "inhouse", "manual", f"apikey:{key_id}", "Loops cannot send it anyway", None),
        ("receipt", "shadow", "manual", f"apikey:{key_id}", "receipts in shadow first", None),
        (None, "split", "manual", f"apikey:{key_id}", "first step of the migration", None),
    ]  # fmt: skip


async def api_key_id(rig: Rig) -> str:
    [key] = await SqlApiKeys(rig.engine).list()
    return str(key.id)


# -- the command ------------------------------------------------------------------------------------

def cli_config(rig: Rig, directory: Path) -> Path:
    """A config for `postroom route` on the daemon's database, with the same Loops mapping."""
    path = directory / "cli.toml"
    path.write_text(f"""state_dir = "{directory}"
[database]
url = "{rig.settings.database.url}"
[http]
listen = "127.0.0.1:0"
[smtp]
hostname = "mail.postroom.test"
submission_listen = "127.0.0.1:0"
mx_listen = "127.0.0.1:0"
[delivery]
mode = "capture"
capture_dir = "{directory / "outbox"}"
[loops]
api_key = "{API_KEY}"
base_url = "{rig.loops.url}"
[loops.templates]
receipt = "cltx-receipt"
[shadow]
routing_key = "{ROUTING_KEY}"
[[domains]]
name = "postroom.test"
dkim = "off"
""")  # fmt: skip
    return path


async def test_route_set_rollback_status_from_the_command(db_url: str, rig_factory: Any, tmp_path: Path) -> None:
    rig: Rig = await rig_factory(db_url)
    config = cli_config(rig, tmp_path)

    async def route(*args: str, check: bool = True) -> Any:
        """`postroom route ...` in-process (click's runner) on a thread of its own: the command
        runs its own event loop, and the daemon keeps running in this one meanwhile."""
        invoked = await asyncio.to_thread(CliRunner().invoke, main, ["--config", str(config), "route", *args])
        if check:
            assert invoked.exit_code == 0, (invoked.output, invoked.exception)
        return invoked

    def share() -> float | None:
        return rig.daemon.registry.get_sample_value("postroom_route_inhouse_share", {"stream": STREAM, "template": ""})

    result = await route("set", "--stream", STREAM, "--mode", "inhouse", "--reason", "all in-house", "--json")
    assert json.loads(result.stdout) == {"changed": True, "stream": STREAM, "template": None, "route": "inhouse"}
    refused = await route("set", "--stream", STREAM, "--template", "unmapped", "--mode", "legacy", "--reason", "no",
                          check=False)  # fmt: skip
    assert refused.exit_code == 2 and "has no Loops transactionalId" in refused.stderr, refused
    # The daemon follows within [shadow] refresh_interval: in-house now.
    await wait_until(lambda: share() == 100.0, 10, what="the daemon to follow the command")
    recipients = addresses(5)
    await rig.client.send(recipients)
    await rig.wait_final(5)
    assert sorted(rig.sink.recipients()) == sorted(recipients) and rig.loops.requests == []

    result = await route("rollback", "--stream", STREAM, "--reason", "hard bounces up", "--json")
    assert json.loads(result.stdout) == {"changed": True, "stream": STREAM, "template": None, "route": "legacy"}
    await wait_until(lambda: share() == 0.0, 10, what="the daemon to follow the rollback")
    again = addresses(10)[5:]
    await rig.client.send(again)
    await rig.wait_final(10)
    assert sorted(r.body["email"] for r in rig.loops.requests) == sorted(again)
    assert len(rig.sink.recipients()) == 5

    status = json.loads((await route("status", "--json")).stdout)
    user = getpass.getuser()
    assert [(r["stream"], r["template"], r["mode"], r["inhouse_percent"], r["changed_by"], r["reason"])
            for r in status["routes"]] == [(STREAM, None, "legacy", 0, f"cli:{user}", "hard bounces up")]  # fmt: skip
    assert [(c["from"], c["to"], c["source"], c["changed_by"], c["reason"]) for c in status["changes"]] == [
        ("inhouse", "legacy", "manual", f"cli:{user}", "hard bounces up"),
        (None, "inhouse", "manual", f"cli:{user}", "all in-house"),
    ]  # fmt: skip
    text = (await route("status")).stdout
    assert "legacy" in text and "hard bounces up" in text and "[manual" in text
