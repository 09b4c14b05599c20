"""Revenue end to end (issue 15): one daemon in this process with its clock at the start of the
worked month (2026-02-01), a fake Stripe API on 127.0.0.1 serving the 15 subscriptions of
shared/data/stripe/realistic, and the 9 signed events of MRR.md section 1.5 posted to
`POST /webhooks/stripe`, re-signed now with the stripe SDK (their own timestamps are from February).

- backfill (`POST /v1/stripe/reconcile` on an empty ledger, and `postroom stripe backfill`): MRR
  166,820 with 12 paying customers, each opening dated at its subscription's start_date;
- the worked month in order, shuffled and with duplicates: the movements of section 1.5, end MRR
  187,620 at the static rate and 187,800 with a month-end rate of 1.10 (FX 180), 13 paying;
- bad input: bad signature and stale timestamp 400 with nothing stored, unknown type stored and
  ignored, a malformed object stored and flagged while the daemon goes on;
- reconcile against a fake Stripe whose state drifted records exactly that drift, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import json
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
import stripe
from click.testing import CliRunner

from postroom.cli import main
from postroom.core.clock import FakeClock
from postroom.store import schema
from postroom.store.credentials import Role, SqlApiKeys
from postroom.store.engine import create_engine
from postroom.store.tables import mrr_ledger, stripe_events
from tests.conftest import RunningDaemon, running
from tests.stripe_fake import API_KEY, FakeStripe, fake_stripe
from tests.stripe_fixtures import SECRET, event_files, invoice_n, stripe_data
from tests.support import make_settings, wait_until

FEB_1 = dt.datetime(2026, 2, 1, tzinfo=dt.UTC).timestamp()
MONTH = {"since": "2026-02-01", "at": "2026-02-28"}
# MRR.md 1.5: (customer, kind, cents) in the order of the month.
WORKED_MONTH = [
    ("cus_P", "new", 5_000), ("cus_A", "expansion", 9_800), ("cus_E", "contraction", -6_000),
    ("cus_I", "churn", -15_000), ("cus_J", "reactivation", 15_000), ("cus_H", "new", 20_000),
    ("cus_M", "churn", -8_000),
]  # fmt: skip


def signed(body: bytes, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    timestamp = int(at if at is not None else time.time())
    signature = stripe.WebhookSignature._compute_signature(f"{timestamp}.{body.decode()}", secret)
    return {"Stripe-Signature": f"t={timestamp},v1={signature}", "Content-Type": "application/json"}


class Rig:
    def __init__(self, daemon: RunningDaemon, fake: FakeStripe, token: str, session: aiohttp.ClientSession):
        self.daemon, self.fake, self.token, self.session = daemon, fake, token, session

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def get(self, path: str, **params: str) -> Any:
        async with self.session.get(self.daemon.http + path, params=params, headers=self.auth) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def reconcile(self) -> Any:
        async with self.session.post(self.daemon.http + "/v1/stripe/reconcile", headers=self.auth) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def post_event(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with self.session.post(self.daemon.http + "/webhooks/stripe", data=body,
                                     headers=headers or signed(body)) as response:  # fmt: skip
            return response.status, await response.json()

    async def settled(self) -> None:
        async def nothing_pending() -> bool:
            return not (await self.get("/v1/stripe/events", status="pending"))["events"]

        await wait_until(nothing_pending, timeout=10, what="every Stripe event applied")


@contextlib.asynccontextmanager
async def rig_for(db_url: str, tmp_path: Path, clock: FakeClock | None = None, mrr: dict[str, Any] | None = None,
                  **sections: dict[str, Any]) -> AsyncIterator[Rig]:  # fmt: skip
    stripe_data()  # skip without the data
    async with fake_stripe() as fake:
        fake.load_fixtures()
        fake.put_invoice(invoice_n())
        settings = make_settings(
            tmp_path, db_url,
            stripe={"api_key": API_KEY, "api_base": fake.url, "webhook_secrets": [SECRET], "max_network_retries": 0,
                    "reconcile_at": "", "sweep_interval": 0.1},
            mrr={"fx_rates": {"eur": "1.08"}, **(mrr or {})},
            **sections,
        )  # fmt: skip
        engine = create_engine(settings.database)
        await schema.upgrade(engine)
        token = (await SqlApiKeys(engine).create("admin", Role.ADMIN, time.time()))[1]
        await engine.dispose()
        async with running(settings, clock=clock or FakeClock(FEB_1)) as daemon, aiohttp.ClientSession() as session:
            yield Rig(daemon, fake, token, session)


@pytest.fixture
async def rig(db_url: str, tmp_path: Path) -> AsyncIterator[Rig]:
    async with rig_for(db_url, tmp_path) as made:
        yield made


async def test_backfill_gives_the_worked_examples_total(rig: Rig) -> None:
    summary = await rig.reconcile()
    assert (summary["subscriptions"], summary["opened_customers"], summary["drift"]) == (15, 12, [])
    figures = await rig.get("/v1/mrr", at="2026-01-31")
    assert (figures["mrr_cents"], figures["paying_customers"], figures["arr_cents"]) == (166_820, 12, 2_001_840)
    assert figures["policies"]["discounts"] == "forever_only"
    # Each opening is dated at its subscription's start_date: M started 2025-01-25.
    early = await rig.get("/v1/mrr", at="2025-12-31", since="2025-01-01")
    assert (early["mrr_cents"], early["paying_customers"], early["movements"]["new"]) == (8_000, 1, 8_000)
    assert rig.daemon.metric("postroom_mrr_cents", {"currency": "usd"}) == 166_820
    assert rig.daemon.metric("postroom_paying_customers") == 12


def _month_bodies() -> list[bytes]:
    return [path.read_bytes() for path in event_files()]


@pytest.mark.parametrize("order", ["in_order", "shuffled", "duplicated"])
async def test_the_worked_month(rig: Rig, order: str) -> None:
    await rig.reconcile()
    bodies = _month_bodies()
    if order == "shuffled":
        random.Random(15).shuffle(bodies)
    if order == "duplicated":
        bodies = [body for body in bodies for _ in range(2)]
        random.Random(7).shuffle(bodies)
    answers = [await rig.post_event(body) for body in bodies]
    assert all(status == 200 for status, _ in answers)
    assert sum(1 for _, answer in answers if answer["duplicate"]) == (9 if order == "duplicated" else 0)
    await rig.settled()

    figures = await rig.get("/v1/mrr", **MONTH)
    assert figures["start"] == {"mrr_cents": 166_820, "paying_customers": 12}
    assert figures["movements"] == {"new": 25_000, "expansion": 9_800, "contraction": 6_000, "churn": 23_000,
                                    "reactivation": 15_000, "reconciliation": 0, "fx": 0}  # fmt: skip
    assert (figures["mrr_cents"], figures["paying_customers"], figures["net_new_mrr_cents"]) == (187_620, 13, 20_800)
    listed = (await rig.get("/v1/mrr/movements", since="2026-02-01", until="2026-02-28"))["movements"]
    assert [(m["customer"], m["kind"], m["amount_cents"]) for m in listed] == WORKED_MONTH
    assert {m["customer"]: m["event_id"] for m in listed}["cus_A"] == "evt_02_expansion"

    # Month-end revaluation: EUR 1.08 -> 1.10 on the 28th moves K's 9,000 EUR by 180, as FX only.
    runner = await asyncio.to_thread(CliRunner().invoke, main, ["--config", str(_cli_config(rig)), "fx", "set",
                                                                "2026-02-28", "EUR", "1.10"])  # fmt: skip
    assert runner.exit_code == 0, runner.output
    figures = await rig.get("/v1/mrr", **MONTH)
    assert (figures["mrr_cents"], figures["movements"]["fx"]) == (187_800, 180)
    moved = figures["movements"]
    identity = (figures["start"]["mrr_cents"] + moved["new"] + moved["expansion"] + moved["reactivation"]
                - moved["contraction"] - moved["churn"] + moved["reconciliation"] + moved["fx"])  # fmt: skip
    assert identity == figures["mrr_cents"]
    assert figures["arpa_cents"] == 14_446


def _cli_config(rig: Rig) -> Path:
    settings = rig.daemon.settings
    path = Path(settings.state_dir) / "cli.toml"
    path.write_text(f"""state_dir = "{settings.state_dir}"
[database]
url = "{settings.database.url}"
[mrr]
fx_rates = {{ eur = "1.08" }}
[stripe]
api_key = "{API_KEY}"
api_base = "{settings.stripe.api_base}"
max_network_retries = 0
""")
    return path


async def _stored(rig: Rig) -> list[Any]:
    engine = create_engine(rig.daemon.settings.database)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(sa.select(stripe_events.c.id, stripe_events.c.status,
                                                      stripe_events.c.detail))).all())  # fmt: skip
    finally:
        await engine.dispose()


async def test_bad_input(rig: Rig) -> None:
    await rig.reconcile()
    body = _month_bodies()[0]
    status, answer = await rig.post_event(body, signed(body, secret="whsec_not_the_one"))
    assert (status, answer["error"]["code"]) == (400, "invalid_signature")
    status, _ = await rig.post_event(body, signed(body, at=time.time() - 600))
    assert status == 400
    status, _ = await rig.post_event(body + b"tampered", signed(body))
    assert status == 400
    assert await _stored(rig) == []

    unknown = json.dumps({"id": "evt_unknown", "object": "event", "type": "charge.refunded", "created": 1770000000,
                          "data": {"object": {"id": "ch_1", "object": "charge"}}}).encode()  # fmt: skip
    assert (await rig.post_event(unknown))[0] == 200
    broken = json.dumps({"id": "evt_broken", "object": "event", "type": "customer.subscription.updated",
                         "created": 1770000000, "data": {"object": {"id": "sub_A", "customer": "cus_A", "currency": "usd",
                                                                    "status": "active"}}}).encode()  # fmt: skip
    assert (await rig.post_event(broken))[0] == 200
    assert (await rig.post_event(b"{not json", signed(b"{not json")))[0] == 400
    assert (await rig.post_event(body))[0] == 200  # the daemon goes on
    await rig.settled()
    stored = {row.id: (row.status, row.detail) for row in await _stored(rig)}
    assert stored["evt_unknown"][0] == "ignored"
    assert stored["evt_broken"][0] == "flagged" and "items" in stored["evt_broken"][1]
    assert stored["evt_01_new"][0] == "applied"
    flagged = (await rig.get("/v1/stripe/events", status="flagged"))["events"]
    assert [e["id"] for e in flagged] == ["evt_broken"]
    assert (await rig.get("/v1/mrr", at="2026-02-28"))["mrr_cents"] == 166_820 + 5_000


async def test_reconcile_records_exactly_the_drift(rig: Rig) -> None:
    await rig.reconcile()
    drifted = json.loads(json.dumps(rig.fake.subscriptions["sub_A"]))
    drifted["items"]["data"][0]["quantity"] = 4  # a change whose webhook never came
    rig.fake.put_subscription(drifted)
    rig.fake.remove("sub_J")  # gone from Stripe's listing: left as the ledger has it
    summary = await rig.reconcile()
    assert [(d["customer"], d["delta_cents"]) for d in summary["drift"]] == [("cus_A", 4_900)]
    assert (await rig.reconcile())["drift"] == []  # recorded once
    listed = (await rig.get("/v1/mrr/movements", since="2026-02-01", until="2026-02-01"))["movements"]
    assert [(m["customer"], m["kind"], m["amount_cents"]) for m in listed] == [("cus_A", "reconciliation", 4_900)]
    assert (await rig.get("/v1/mrr", at="2026-02-01"))["mrr_cents"] == 166_820 + 4_900
    assert rig.daemon.metric("postroom_mrr_reconciliation_drift_cents_total") == 4_900


async def test_cli_backfill_and_show(rig: Rig) -> None:
    config = _cli_config(rig)
    backfill = await asyncio.to_thread(CliRunner().invoke, main, ["--config", str(config), "stripe", "backfill", "--json"])
    assert backfill.exit_code == 0, backfill.output
    assert json.loads(backfill.output)["opened_customers"] == 12
    shown = await asyncio.to_thread(CliRunner().invoke, main, ["--config", str(config), "mrr", "show", "--json"])
    assert shown.exit_code == 0, shown.output
    figures = json.loads(shown.output)
    assert (figures["mrr_cents"], figures["paying_customers"], figures["currency"]) == (166_820, 12, "usd")
    assert set(figures["movements"]) >= {"new", "expansion", "contraction", "churn", "reactivation", "fx"}
    text = await asyncio.to_thread(CliRunner().invoke, main, ["--config", str(config), "mrr", "show"])
    assert "1,668.20 USD" in text.output and "discounts=forever_only" in text.output
    bad = await asyncio.to_thread(CliRunner().invoke, main, ["--config", str(config), "mrr", "show", "--at", "Feb"])
    assert bad.exit_code == 2 and "not a date" in bad.output


async def test_ledger_rows_carry_their_event(rig: Rig) -> None:
    await rig.reconcile()
    await rig.post_event(_month_bodies()[1])
    await rig.settled()
    engine = create_engine(rig.daemon.settings.database)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(mrr_ledger).where(mrr_ledger.c.customer == "cus_A")
                                       .order_by(mrr_ledger.c.seq))).all()  # fmt: skip
    finally:
        await engine.dispose()
    assert [(r.cause, r.before_cents, r.after_cents, r.event_id) for r in rows] == [
        ("opening", 0, 14_700, None), ("event", 14_700, 24_500, "evt_02_expansion")]


async def test_churn_at_request_moves_m_to_its_request(db_url: str, tmp_path: Path) -> None:
    """MRR.md 1.5: under at_request, M's churn is recorded when it scheduled its cancellation (31
    January), not when the subscription ended in February."""
    async with rig_for(db_url, tmp_path, mrr={"churn_recognition": "at_request"}) as rig:
        await rig.reconcile()
        january = await rig.get("/v1/mrr", at="2026-01-31", since="2026-01-01")
        assert (january["mrr_cents"], january["movements"]["churn"]) == (166_820 - 8_000, 8_000)
        for body in _month_bodies():
            await rig.post_event(body)
        await rig.settled()
        figures = await rig.get("/v1/mrr", **MONTH)
        assert (figures["movements"]["churn"], figures["mrr_cents"]) == (15_000, 187_620)
        assert figures["policies"]["churn_recognition"] == "at_request"


async def test_all_active_discount_ending_is_an_expansion(db_url: str, tmp_path: Path) -> None:
    """MRR.md 1.4-1.5: under all_active G's coupon counts (156,820 in all) until its end on day 90,
    when time alone brings a +10,000 expansion."""
    clock = FakeClock(FEB_1)
    async with rig_for(db_url, tmp_path, clock, mrr={"discounts": "all_active"}) as rig:
        await rig.reconcile()
        assert (await rig.get("/v1/mrr", at="2026-01-31"))["mrr_cents"] == 156_820
        clock.advance(dt.datetime(2026, 4, 2, tzinfo=dt.UTC).timestamp() - FEB_1)

        async def expanded() -> bool:
            return bool((await rig.get("/v1/mrr/movements", since="2026-04-01", until="2026-04-01"))["movements"])

        await wait_until(expanded, timeout=10, what="the coupon's end applied")
        listed = (await rig.get("/v1/mrr/movements", since="2026-04-01", until="2026-04-01"))["movements"]
        assert [(m["customer"], m["kind"], m["amount_cents"], m["causes"]) for m in listed] == [
            ("cus_G", "expansion", 10_000, ["schedule"])]
        assert (await rig.get("/v1/mrr", at="2026-04-01"))["mrr_cents"] == 166_820


async def test_revenue_exports(rig: Rig) -> None:
    await rig.reconcile()
    for body in _month_bodies():
        await rig.post_event(body)
    await rig.settled()
    url = rig.daemon.http + "/v1/exports/mrr-movements"
    params = {"since": "2026-02-01", "until": "2026-03-01", "format": "jsonl"}
    async with rig.session.get(url, params=params, headers=rig.auth) as response:
        assert response.status == 200, await response.text()
        lines = [json.loads(line) for line in (await response.text()).splitlines()]
    assert [(r["customer"], r["kind"], r["amount_cents"]) for r in lines] == WORKED_MONTH
    assert lines[1]["event_ids"] == ["evt_02_expansion"]

    config = _cli_config(rig)
    subs = await asyncio.to_thread(CliRunner().invoke, main, ["--config", str(config), "export", "subscriptions"])
    assert subs.exit_code == 0, subs.output
    rows = list(csv.DictReader(io.StringIO(subs.output)))
    by_id = {r["id"]: r for r in rows}
    assert len(rows) == 16 and by_id["sub_A"]["status"] == "active"
    assert json.loads(by_id["sub_A"]["items"])[0]["quantity"] == 5
    assert by_id["sub_M"]["status"] == "canceled"
    customers = await asyncio.to_thread(CliRunner().invoke, main, ["--config", str(config), "export", "customers",
                                                                   "--format", "jsonl"])  # fmt: skip
    mrr = {r["id"]: r["mrr"] for r in map(json.loads, customers.output.splitlines())}
    assert mrr["cus_K"] == {"eur": 9_000} and mrr["cus_I"] == {} and mrr["cus_A"] == {"usd": 24_500}
    invoices = await asyncio.to_thread(CliRunner().invoke, main, ["--config", str(config), "export", "invoices",
                                                                  "--format", "jsonl"])  # fmt: skip
    statuses = {r["id"]: r["status"] for r in map(json.loads, invoices.output.splitlines())}
    assert statuses["in_I_fail"] == "open" and statuses["in_J_ok"] == "paid" and statuses["in_N"] == "paid"
