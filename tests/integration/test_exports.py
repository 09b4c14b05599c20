"""Exports on both databases, from rows written by postroom's own services (the queue, the bounce
intake, the suppression list, the contacts): every standard kind's rows and columns, the date range,
erasure kept (an erased recipient's address, replies and diagnostics never appear, an erased
suppression shows no address), keyset paging that reads one page at a time; then the same through
`postroom export` (stdout, --output, --format, --list, exit 2 for a bad kind or date, exit 1 for a
database that cannot be reached) and through `GET /v1/exports` on the running daemon (headers,
formats, 404/400/401 in the house error shape, metrics, 20,000 rows streamed in chunks)."""

from __future__ import annotations

import asyncio
import csv
import datetime
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.bounces.intake import SqlBounceIntake
from postroom.bounces.model import BounceClass, BounceKind, BounceRecipient, ParsedBounce
from postroom.contacts.model import MailingList
from postroom.contacts.service import ContactService
from postroom.contacts.sql_store import SqlContactStore
from postroom.core.clock import FakeClock
from postroom.config import HttpSettings
from postroom.core.errors import StoreError
from postroom.core.types import DeliveryState, Submission
from postroom.exports.model import DateRange, ExportColumn, ExportKind, ExportRegistry, Row
from postroom.exports.range import date_range
from postroom.exports.sql_kinds import standard_kinds
from postroom.http.app import build_app
from postroom.http.exports import ExportRoutes
from postroom.metrics import Metrics
from postroom.queue.models import Release
from postroom.queue.sql_store import SqlQueueStore
from postroom.store import schema
from postroom.store.credentials import ApiKey, Role, SqlApiKeys
from postroom.store.engine import WriteGate, create_engine
from postroom.suppression.model import NewEntry
from postroom.suppression.service import SuppressionService
from postroom.suppression.sql_store import SqlSuppressionStore
from tests.conftest import running
from tests.integration.test_cli import Cli, write_cli_config
from tests.integration.test_contacts_cli import on_terminal
from tests.support import claim, make_settings, postroom_cli

UTC = datetime.UTC
NOV_30 = datetime.datetime(2026, 11, 30, 10, tzinfo=UTC).timestamp()
DEC_1 = datetime.datetime(2026, 12, 1, 10, tzinfo=UTC).timestamp()
HOUR = 3600.0


def iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dsn_about(address: str, diagnostic: str) -> ParsedBounce:
    return ParsedBounce(BounceKind.DSN, (BounceRecipient(address, "userunknown", BounceClass.HARD, "5.1.1", 550,
                                                         diagnostic, "mx.example.net"),))  # fmt: skip


def complaint_about(address: str) -> ParsedBounce:
    return ParsedBounce(BounceKind.FEEDBACK, (BounceRecipient(address, "feedback", BounceClass.NONE,
                                                              diagnostic=f"complaint from {address}",
                                                              feedback_type="abuse"),))  # fmt: skip


@dataclass
class Seeded:
    message_a: str
    message_b: str
    delivery: dict[str, int]  # recipient -> delivery id


async def seed(engine: AsyncEngine) -> Seeded:
    """Nov 30, 10:00: message A (stream transactional) to ada, bob and erin, sent: ada delivered,
    bob delivered and then a DSN bounces him, erin delivered (her address in the reply) and then she
    complains through a feedback address and is suppressed. Dec 1, 10:00: message B (stream news) to
    carol, still queued. Suppressions: zed (Nov 30), yan (Dec 1, expired since). Contacts: ada
    (Nov 30, on the news list, a custom property), grace (Dec 1), erin. Then erin is erased."""
    clock = FakeClock(NOV_30)
    metrics = Metrics(CollectorRegistry())
    store = SqlQueueStore(engine)
    [message_a] = await store.insert_many([Submission(
        "app@postroom.test", ("ada@example.com", "bob@example.net", "erin@example.com"),
        b"Subject: A\r\n\r\nhello\r\n", "api", subject="A")], clock.now())  # fmt: skip
    claimed = await claim(store, "w", 10, clock.now(), 60)
    ids = {d.recipient: d.id for d in claimed}
    clock.advance(60)
    await store.release("w", [Release(d.id, d.message_id, d.recipient, DeliveryState.DELIVERED,
                                      f"250 2.0.0 ok <{d.recipient}>") for d in claimed], clock.now())  # fmt: skip
    clock.advance(60)

    def intake(parsed: ParsedBounce) -> SqlBounceIntake:
        return SqlBounceIntake(engine, WriteGate(None), lambda raw: parsed, clock, metrics)

    await intake(dsn_about("bob@example.net", "550 5.1.1 <bob@example.net>: no such user")).take(
        ids["bob@example.net"], b"a DSN")
    await intake(complaint_about("erin@example.com")).take(None, b"an ARF report")
    await intake(dsn_about("erin@example.com", "550 5.1.1 <erin@example.com> gone")).take(
        ids["erin@example.com"], b"a DSN about erin")
    suppressions = SuppressionService(SqlSuppressionStore(engine), clock, metrics)
    await suppressions.add([NewEntry("zed@example.com", "global", "manual", "asked, by phone", created_by="cli:ops"),
                            NewEntry("erin@example.com", "global", "complaint", "abuse", created_by="events")])  # fmt: skip
    contacts = ContactService(SqlContactStore(engine), [MailingList("news", "News")], clock,
                              erase_suppression=suppressions.erase)  # fmt: skip
    await contacts.update({"email": "ada@example.com", "firstName": "Ada", "mailingLists": {"news": True},
                           "plan": "pro, yearly"})  # fmt: skip
    await contacts.update({"email": "erin@example.com", "firstName": "Erin"})

    clock.advance(DEC_1 - clock.now())
    [message_b] = await store.insert_many([Submission(
        "app@postroom.test", ("carol@example.org",), b"Subject: B\r\n\r\nnews\r\n", "api", stream="news")],
        clock.now())  # fmt: skip
    await suppressions.add([NewEntry("yan@example.com", "stream:news", "manual", "for a day",
                                     expires_at=clock.now() + 60)])  # fmt: skip
    await contacts.update({"email": "grace@example.org", "lastName": "Hopper"})
    await contacts.erase("erin@example.com")
    return Seeded(message_a, message_b, {**ids, "carol@example.org": ids["ada@example.com"] + 3})


def kinds(engine: AsyncEngine, now: float = DEC_1 + HOUR, page_size: int = 2) -> dict[str, ExportKind]:
    return {k.name: k for k in standard_kinds(engine, FakeClock(now), page_size=page_size)}


async def rows_of(kind: ExportKind, span: DateRange = DateRange()) -> list[dict[str, Any]]:
    return [dict(zip(kind.column_names, row, strict=True)) async for row in kind.rows(span)]


# -- the kinds, on both databases ---------------------------------------------------------------

async def test_deliveries(engine: AsyncEngine) -> None:
    seeded = await seed(engine)
    kind = kinds(engine)["deliveries"]
    found = await rows_of(kind)
    assert [r["delivery_id"] for r in found] == sorted(r["delivery_id"] for r in found)
    by_id = {r["delivery_id"]: r for r in found}
    assert len(found) == 4
    ada = by_id[seeded.delivery["ada@example.com"]]
    assert ada["recipient"] == "ada@example.com" and ada["status"] == "delivered" and ada["attempts"] == 1
    assert (ada["message_id"], ada["stream"], ada["source"], ada["route"], ada["domain"]) == (
        seeded.message_a, "transactional", "api", "inhouse", "example.com")
    assert ada["created_at"] == datetime.datetime.fromtimestamp(NOV_30, UTC)
    assert ada["finished_at"] == datetime.datetime.fromtimestamp(NOV_30 + 60, UTC) and ada["next_attempt_at"] is None
    assert ada["last_reply"] == "250 2.0.0 ok <ada@example.com>" and ada["dsn_status"] is None and not ada["erased"]
    bob = by_id[seeded.delivery["bob@example.net"]]
    assert bob["status"] == "bounced" and bob["dsn_status"] == "5.1.1"
    assert bob["dsn_diagnostic"] == "550 5.1.1 <bob@example.net>: no such user"
    assert bob["dsn_received_at"] == datetime.datetime.fromtimestamp(NOV_30 + 120, UTC)
    erin = by_id[seeded.delivery["erin@example.com"]]
    assert erin["erased"] is True and erin["recipient"] is None and erin["last_reply"] is None
    assert erin["dsn_status"] == "5.1.1" and erin["dsn_diagnostic"] is None
    assert "erin" not in repr(found)
    [carol] = await rows_of(kind, date_range("2026-12-01"))
    assert (carol["recipient"], carol["stream"], carol["status"], carol["message_id"]) == (
        "carol@example.org", "news", "queued", seeded.message_b)
    assert carol["next_attempt_at"] == datetime.datetime.fromtimestamp(DEC_1, UTC) and carol["finished_at"] is None
    assert len(await rows_of(kind, date_range(until="2026-12-01"))) == 3
    assert await rows_of(kind, date_range("2026-12-01T10:00:00.001Z")) == []  # since is inclusive, to the ms


async def test_bounces(engine: AsyncEngine) -> None:
    seeded = await seed(engine)
    found = await rows_of(kinds(engine)["bounces"])
    assert [(r["kind"], r["recipient"], r["erased"]) for r in found] == [
        ("dsn", "bob@example.net", False), ("feedback", None, True), ("dsn", None, True)]
    bob, complaint, erin = found
    assert bob["delivery_id"] == seeded.delivery["bob@example.net"] and bob["message_id"] == seeded.message_a
    assert (bob["bounce_class"], bob["reason"], bob["status"], bob["reply_code"], bob["raw_size"]) == (
        "hard", "userunknown", "5.1.1", 550, len(b"a DSN"))
    assert bob["received_at"] == datetime.datetime.fromtimestamp(NOV_30 + 120, UTC)
    assert complaint["feedback_type"] == "abuse" and complaint["diagnostic"] is None and complaint["delivery_id"] is None
    assert erin["diagnostic"] is None and "erin" not in repr(found)
    assert await rows_of(kinds(engine)["bounces"], date_range("2026-12-01")) == []


async def test_suppressions_as_the_service_shows_them(engine: AsyncEngine) -> None:
    await seed(engine)
    kind = kinds(engine)["suppressions"]
    found = await rows_of(kind)
    assert [(r["email"], r["erased"], r["scope"], r["source"]) for r in found] == [
        ("zed@example.com", False, "global", "manual"), (None, True, "global", "complaint")]
    assert found[0]["reason"] == "asked, by phone" and found[0]["created_by"] == "cli:ops"
    assert found[0]["expires_at"] is None and "sha256" not in repr(found) and "erin" not in repr(found)
    # Before yan's entry lapsed it was live, and only Dec 1 has it.
    earlier = kinds(engine, now=DEC_1 + 1)["suppressions"]
    assert [r["email"] for r in await rows_of(earlier, date_range("2026-12-01"))] == ["yan@example.com"]


async def test_contacts(engine: AsyncEngine) -> None:
    await seed(engine)
    kind = kinds(engine)["contacts"]
    found = {r["email"]: r for r in await rows_of(kind)}
    assert set(found) == {"ada@example.com", "grace@example.org"}  # erin was erased
    ada = found["ada@example.com"]
    assert ada["first_name"] == "Ada" and ada["mailing_lists"] == ["news"] and ada["properties"] == {"plan": "pro, yearly"}
    assert ada["subscribed"] is True and ada["created_at"] == datetime.datetime.fromtimestamp(NOV_30 + 120, UTC)
    assert found["grace@example.org"]["mailing_lists"] == [] and found["grace@example.org"]["last_name"] == "Hopper"
    assert [r["email"] for r in await rows_of(kind, date_range("2026-12-01", "2026-12-02"))] == ["grace@example.org"]


async def test_a_large_export_is_read_a_page_at_a_time(engine: AsyncEngine) -> None:
    """2,500 deliveries in pages of 1,000: the first row comes after one page (and its DSN read),
    and every page is its own statement: the table is never read whole."""
    store = SqlQueueStore(engine)
    recipients = tuple(f"user{n}@example.com" for n in range(500))
    await store.insert_many([Submission("app@postroom.test", recipients, b"Subject: x\r\n\r\nx\r\n", "api")] * 5,
                            NOV_30)  # fmt: skip
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    sa.event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        kind = kinds(engine, page_size=1000)["deliveries"]
        rows = kind.rows(DateRange())
        first = await anext(rows)
        assert first[2] == "user0@example.com"
        assert len(statements) == 2  # one page, and the DSNs about it
        rest = [row async for row in rows]
        assert len(rest) == 2499 and len(statements) == 6  # three pages, each with its DSN read
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", count)


# -- postroom export ----------------------------------------------------------------------------

@pytest.fixture
async def exporting(tmp_path: Path, db_url: str) -> AsyncIterator[Path]:
    """A migrated, seeded database on each engine and a config naming it."""
    config = write_cli_config(tmp_path, db_url)
    engine = create_engine(make_settings(tmp_path, db_url).database)
    try:
        await schema.upgrade(engine)
        await seed(engine)
    finally:
        await engine.dispose()
    yield config


def export_cli(config: Path, *args: str, check: bool = True) -> Any:
    return postroom_cli("export", *args, "--config", str(config), check=check)


@pytest.mark.slow
async def test_export_command(exporting: Path, tmp_path: Path) -> None:
    out = export_cli(exporting, "deliveries")
    assert out.stderr == ""  # no progress off a terminal
    table = list(csv.reader(io.StringIO(out.stdout, newline="")))
    assert table[0][:4] == ["delivery_id", "message_id", "recipient", "domain"] and len(table) == 5
    assert [row[2] for row in table[1:]] == ["ada@example.com", "bob@example.net", "", "carol@example.org"]
    assert table[1][11] == iso(NOV_30) and table[3][-1] == "true"

    lines = export_cli(exporting, "suppressions", "--format", "jsonl", "--until", "2026-12-01").stdout.splitlines()
    assert [json.loads(line)["email"] for line in lines] == ["zed@example.com", None]
    assert json.loads(lines[0])["created_at"] == iso(NOV_30 + 120)

    target = tmp_path / "exports" / "contacts.jsonl"
    target.parent.mkdir()
    target.write_text("the previous export\n")
    done = export_cli(exporting, "contacts", "--format", "jsonl", "--since", "2026-12-01T00:00:00+01:00",
                      "--output", str(target))  # fmt: skip
    assert done.stdout.strip() == f"exported 1 contacts rows to {target}"
    [grace] = [json.loads(line) for line in target.read_text().splitlines()]
    assert grace["email"] == "grace@example.org" and list(target.parent.iterdir()) == [target]

    as_file = tmp_path / "deliveries.csv"
    export_cli(exporting, "deliveries", "-o", str(as_file))
    assert as_file.read_bytes().count(b"\r\n") == 5 and as_file.read_bytes().decode() == out.stdout.replace("\n", "\r\n")

    # With stderr on a terminal (and the rows going elsewhere): the rows written, on stderr only.
    code, stdout, shown = on_terminal(Cli(exporting, ""), "export", "deliveries", "--format", "jsonl")
    assert code == 0 and len(stdout.splitlines()) == 4 and "\rexporting 4 rows" in shown and "carol" not in shown

    listed = json.loads(export_cli(exporting, "--list", "--json").stdout)
    assert [k["name"] for k in listed] == ["bounces", "contacts", "customers", "deliveries", "invoices",
                                           "mrr-movements", "subscriptions", "suppressions"]  # fmt: skip
    assert {k["name"]: k["time_column"] for k in listed}["bounces"] == "received_at"
    assert "deliveries: One row per delivery" in export_cli(exporting, "--list").stdout


@pytest.mark.slow
async def test_export_command_refusals(exporting: Path, tmp_path: Path) -> None:
    bad = export_cli(exporting, "parcels", check=False)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == ("postroom: no export kind 'parcels'; known kinds: bounces, contacts, customers, "
                          "deliveries, invoices, mrr-movements, subscriptions, suppressions\n")  # fmt: skip
    for args in (("--since", "last week"), ("--until", "2026-02-30"), ("--since", "2026-12-02", "--until", "2026-12-01")):
        refused = export_cli(exporting, "deliveries", *args, check=False)
        assert refused.returncode == 2 and refused.stdout == "" and len(refused.stderr.splitlines()) == 1, args
    assert export_cli(exporting, check=False).returncode == 2
    assert export_cli(exporting, "deliveries", "--format", "xml", check=False).returncode == 2
    # A database that cannot be reached: exit 1, one line, and an --output file left as it was.
    (tmp_path / "down").mkdir()
    unreachable = write_cli_config(tmp_path / "down", "postgresql+asyncpg://postgres@127.0.0.1:9/none")
    target = tmp_path / "kept.csv"
    target.write_text("kept\n")
    down = export_cli(unreachable, "deliveries", "--output", str(target), check=False)
    assert down.returncode == 1 and down.stderr.startswith("postroom: ") and len(down.stderr.splitlines()) == 1
    assert target.read_text() == "kept\n" and sorted(p.name for p in tmp_path.iterdir() if "partial" in p.name) == []


# -- GET /v1/exports ----------------------------------------------------------------------------

async def test_http_exports(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url, delivery={"hold": True})
    engine = create_engine(settings.database)
    try:
        await schema.upgrade(engine)
        seeded = await seed(engine)
        _, token = await SqlApiKeys(engine).create("reports", Role.VIEWER, time.time())
    finally:
        await engine.dispose()
    auth = {"Authorization": f"Bearer {token}"}
    async with running(settings) as daemon, aiohttp.ClientSession(daemon.http) as http:
        async with http.post("/v1/messages", headers=auth, json={}) as resp:
            assert resp.status == 403  # a viewer cannot send; the seeded mail is what there is
        async with http.get("/v1/exports", headers=auth) as resp:
            listed = (await resp.json())["data"]
        assert [k["name"] for k in listed] == ["bounces", "contacts", "customers", "deliveries", "invoices",
                                           "mrr-movements", "subscriptions", "suppressions"]  # fmt: skip
        assert listed[3]["columns"][0] == {"name": "delivery_id", "description": listed[3]["columns"][0]["description"]}

        async with http.get("/v1/exports/deliveries", params={"since": "2026-11-30", "until": "2026-12-01"},
                            headers=auth) as resp:  # fmt: skip
            assert resp.status == 200 and resp.headers["Content-Type"] == "text/csv; charset=utf-8"
            assert resp.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in resp.headers
            disposition = resp.headers["Content-Disposition"]
            text = await resp.text()
        assert disposition.startswith('attachment; filename="postroom-deliveries-') and disposition.endswith('.csv"')
        table = list(csv.reader(io.StringIO(text, newline="")))
        assert [row[1] for row in table[1:]] == [seeded.message_a] * 3 and table[3][2] == ""

        async with http.get("/v1/exports/bounces", params={"format": "jsonl"}, headers=auth) as resp:
            assert resp.headers["Content-Type"] == "application/x-ndjson"
            assert resp.headers["Content-Disposition"].endswith('.jsonl"')
            records = [json.loads(line) for line in (await resp.text()).splitlines()]
        assert [r["recipient"] for r in records] == ["bob@example.net", None, None]
        assert records[0]["reply_code"] == 550 and records[0]["received_at"] == iso(NOV_30 + 120)

        async with http.get("/v1/exports/parcels", headers=auth) as resp:
            assert resp.status == 404
            assert await resp.json() == {"error": {"code": "not_found", "message": "no export kind 'parcels'; known "
                                                   "kinds: bounces, contacts, customers, deliveries, invoices, "
                                                   "mrr-movements, subscriptions, suppressions"}}  # fmt: skip
        for bad in ({"since": "yesterday"}, {"since": "2026-12-02", "until": "2026-12-01"}, {"format": "xml"},
                    {"limit": "5"}):  # fmt: skip
            async with http.get("/v1/exports/deliveries", params=bad, headers=auth) as resp:
                assert resp.status == 400, bad
                assert (await resp.json())["error"]["code"] == "invalid_query"
        async with http.get("/v1/exports/deliveries") as resp:
            assert resp.status == 401
        async with http.get("/v1/exports") as resp:
            assert resp.status == 401
        assert daemon.metric("postroom_exports_total", {"kind": "deliveries", "format": "csv", "surface": "http"}) == 1
        assert daemon.metric("postroom_exports_total", {"kind": "bounces", "format": "jsonl", "surface": "http"}) == 1
        assert daemon.metric("postroom_export_rows_total", {"kind": "deliveries"}) == 3
        async with http.get("/metrics") as resp:
            assert "postroom_export_rows_total" in await resp.text()


@pytest.mark.slow
async def test_http_export_of_20000_deliveries_streams(tmp_path: Path, db_url: str) -> None:
    """20,000 rows come in many chunks, the first long before the last row is read: when the first
    bytes arrive the daemon has counted fewer rows than there are."""
    settings = make_settings(tmp_path, db_url, delivery={"hold": True})
    engine = create_engine(settings.database)
    try:
        await schema.upgrade(engine)
        store = SqlQueueStore(engine)
        for batch in range(20):
            recipients = tuple(f"user{batch}-{n}@example.com" for n in range(1000))
            await store.insert_many([Submission("app@postroom.test", recipients, b"Subject: x\r\n\r\nx\r\n", "api")],
                                    NOV_30 + batch)  # fmt: skip
        _, token = await SqlApiKeys(engine).create("reports", Role.VIEWER, time.time())
    finally:
        await engine.dispose()
    async with running(settings) as daemon, aiohttp.ClientSession(daemon.http) as http:
        async with http.get("/v1/exports/deliveries", params={"format": "jsonl"},
                            headers={"Authorization": f"Bearer {token}"}) as resp:  # fmt: skip
            assert resp.status == 200
            first = await resp.content.readany()
            rows_when_first_arrived = daemon.metric("postroom_export_rows_total", {"kind": "deliveries"})
            body = first + await resp.content.read()
    assert first and rows_when_first_arrived < 20_000
    lines = body.decode().splitlines()
    assert len(lines) == 20_000 and len({json.loads(line)["recipient"] for line in lines}) == 20_000
    assert daemon.metric("postroom_export_rows_total", {"kind": "deliveries"}) == 20_000


# -- a kind another package plugs in ------------------------------------------------------------

class OneKey:
    async def authenticate(self, token: str) -> ApiKey | None:
        return ApiKey("k1", "test", Role.VIEWER, 0.0, None) if token == "good" else None


def plugged_in(release: asyncio.Event) -> ExportRegistry:
    """A registry of three kinds, registered as another package would add its own: one that
    holds its second page until the test lets it go, one whose database fails at once, and one
    whose database fails after its first page."""

    async def held(span: DateRange) -> AsyncIterator[Row]:
        for n in range(1000):
            yield (n, datetime.datetime.fromtimestamp(NOV_30 + n, UTC))
        await release.wait()  # only once the client has the first rows
        yield (1000, datetime.datetime.fromtimestamp(NOV_30 + 1000, UTC))

    async def down(span: DateRange) -> AsyncIterator[Row]:
        raise StoreError("reading runs failed: ConnectionRefusedError")
        yield ()

    async def breaks(span: DateRange) -> AsyncIterator[Row]:
        for n in range(600):
            yield (n, None)
        raise StoreError("reading runs failed: connection lost")

    registry = ExportRegistry()
    columns = (ExportColumn("n", "a number"), ExportColumn("at", "a time"))
    for name, source in (("held", held), ("down", down), ("breaks", breaks)):
        registry.register(ExportKind(name, f"{name} rows", columns, "at", source))
    return registry


async def test_a_plugged_in_kind_streams_before_its_end(aiohttp_client: Any) -> None:
    release = asyncio.Event()
    metrics = Metrics(CollectorRegistry())
    app = build_app(HttpSettings(listen="127.0.0.1:0"), OneKey(), metrics,
                    [ExportRoutes(plugged_in(release), metrics, FakeClock(DEC_1))])  # fmt: skip
    client: TestClient[Any, Any] = await aiohttp_client(app)
    auth = {"Authorization": "Bearer good"}
    async with client.get("/v1/exports", headers=auth) as resp:
        assert [k["name"] for k in (await resp.json())["data"]] == ["breaks", "down", "held"]
    async with client.get("/v1/exports/held", headers=auth) as resp:
        assert resp.headers["Content-Disposition"] == 'attachment; filename="postroom-held-20261201T100000Z.csv"'
        received = b""
        while received.count(b"\r\n") < 1001:  # the header and the first 1000 rows, with the export not done
            received += await asyncio.wait_for(resp.content.readany(), timeout=10)
        release.set()
        received += await resp.content.read()
    assert received.count(b"\r\n") == 1002 and received.endswith(b"1000,2026-11-30T10:16:40.000Z\r\n")

    async with client.get("/v1/exports/down", headers=auth) as resp:
        assert resp.status == 503 and resp.headers["Retry-After"] == "5"
        assert (await resp.json())["error"]["code"] == "unavailable"
    async with client.get("/v1/exports/breaks", params={"format": "jsonl"}, headers=auth) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()  # the body ends without its last chunk: the client knows it is cut short
