"""Reports end to end (issue 16): the worked month of MRR.md (a fake Stripe, its 9 signed events,
a month-end EUR rate) and a fake PostHog on 127.0.0.1, one daemon in this process.

- the monthly report for 2026-02: its roll-forward equals the MRR engine's numbers to the cent;
  mailed through postroom's own queue with its charts inline by Content-ID and every figure in
  the text part; the run recorded with its figures, render time and message id;
- the weekly report: the week's movements; the product section from PostHog's named queries;
- PostHog answering 500 or hanging: the report is still sent, the product section marked
  unavailable with why; a HogQL error: the query named in the report;
- `postroom reports preview` writes HTML, text, PNGs and CSV; `reports ls|history`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email
import email.policy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from postroom.cli import main
from postroom.core.clock import FakeClock
from tests.integration.test_stripe_mrr import Rig, _cli_config, _month_bodies, rig_for
from tests.posthog_fake import API_KEY as POSTHOG_KEY
from tests.posthog_fake import PROJECT_ID, Answer, FakePostHog, fake_posthog, hang, hogql_error, hogql_response
from tests.support import wait_until

pytestmark = pytest.mark.slow

FEBRUARY = {"period": "2026-02", "to": ["cfo@example.com"]}


def february(received: Any) -> Answer:
    """PostHog's answers for February 2026: weekly and monthly active users, daily signups, the
    funnel and top events."""
    name = received.name.removeprefix("postroom:")
    tables: dict[str, tuple[list[str], list[list[Any]]]] = {
        "wau": (["week", "wau"], [["2026-01-26", 1700], ["2026-02-02", 1840], ["2026-02-09", 1902],
                                  ["2026-02-16", 2051], ["2026-02-23", 2110]]),
        "mau": (["month", "mau"], [["2026-01-01", 6120], ["2026-02-01", 6480]]),
        "signups": (["day", "signups"], [["2026-01-20", 30], ["2026-02-03", 37], ["2026-02-17", 41]]),
        "activation_funnel": (["level", "persons"], [[1, 612], [2, 233], [3, 58]]),
        "top_events": (["event", "events", "users"], [["$pageview", 48213, 2011], ["project_created", 233, 201]]),
    }  # fmt: skip
    columns, rows = tables.get(name, ([], []))
    return Answer(body=hogql_response(columns, [], rows, received.sql))


@contextlib.asynccontextmanager
async def month(db_url: str, tmp_path: Path, posthog: FakePostHog, posthog_extra: dict[str, Any] | None = None,
                **reports: Any) -> AsyncIterator[Rig]:  # fmt: skip
    sections: dict[str, Any] = {
        "posthog": {"host": posthog.url, "project_id": PROJECT_ID, "personal_api_key": POSTHOG_KEY,
                    "timeout": 1.0, "budget": 2.0, **(posthog_extra or {})},
        "reports": {"section_timeout": 5.0, **reports},
    }  # fmt: skip
    async with rig_for(db_url, tmp_path, **sections) as rig:
        await rig.reconcile()
        for body in _month_bodies():
            await rig.post_event(body)
        await rig.settled()
        config = _cli_config(rig)
        done = await asyncio.to_thread(CliRunner().invoke, main, ["--config", str(config), "fx", "set", "2026-02-28",
                                                                  "EUR", "1.10"])  # fmt: skip
        assert done.exit_code == 0, done.output
        yield rig


async def run_report(rig: Rig, name: str, body: dict[str, Any]) -> dict[str, Any]:
    async with rig.session.post(f"{rig.daemon.http}/v1/reports/{name}/run", json=body, headers=rig.auth) as response:
        assert response.status == 200, await response.text()
        return dict(await response.json())


def captured(rig: Rig, message_id: str) -> email.message.EmailMessage:
    outbox = Path(rig.daemon.settings.delivery.capture_dir)
    found = [p for p in outbox.rglob("*.eml") if message_id in p.name] or list(outbox.rglob("*.eml"))
    assert found, f"nothing captured in {outbox}"
    parsed = email.message_from_bytes(found[-1].read_bytes(), policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


@pytest.fixture
async def posthog() -> AsyncIterator[FakePostHog]:
    async with fake_posthog() as fake:
        fake.responder = february
        yield fake


async def test_monthly_report_equals_the_mrr_engine(db_url: str, tmp_path: Path, posthog: FakePostHog) -> None:
    async with month(db_url, tmp_path, posthog) as rig:
        run = await run_report(rig, "monthly", FEBRUARY)
        assert run["status"] == "sent" and run["period"] == "2026-02" and run["trigger"] == "manual"
        figures = run["figures"]
        roll = figures["mrr-movements"]
        assert {k: roll[k] for k in ("start", "new", "expansion", "reactivation", "contraction", "churn", "fx", "end",
                                     "net_new")} == {
            "start": 166_820, "new": 25_000, "expansion": 9_800, "reactivation": 15_000, "contraction": 6_000,
            "churn": 23_000, "fx": 180, "end": 187_800, "net_new": 20_800}  # fmt: skip
        engine = await _engine_figures(rig)
        assert roll["end"] == engine["mrr_cents"] and roll["fx"] == engine["movements"]["fx"]
        assert figures["headline"]["mrr"] == 187_800 and figures["headline"]["paying_customers"] == 13
        assert figures["customers"]["new"] == 2 and figures["customers"]["churned"] == 2
        assert (figures["customers"]["trials_started"], figures["customers"]["trials_converted"]) == (1, 1)
        assert figures["product"]["mau"] == 6_480 and figures["product"]["signups"] == 78
        assert round(figures["product"]["activation"], 4) == round(58 / 903, 4)
        assert run["render_seconds"] > 0 and len(run["deliveries"]) == 1

        async def queued() -> bool:
            return any(Path(rig.daemon.settings.delivery.capture_dir).rglob("*.eml"))

        await wait_until(queued, timeout=10, what="the report delivered to the capture directory")
        message = captured(rig, run["deliveries"][0])
        assert message["To"] == "cfo@example.com" and "Monthly executive report: 2026-02" in message["Subject"]
        images = [p for p in message.walk() if p.get_content_type() == "image/png"]
        html = next(p for p in message.walk() if p.get_content_type() == "text/html").get_content()
        text = next(p for p in message.walk() if p.get_content_type() == "text/plain").get_content()
        assert len(images) >= 3 and all(p["Content-ID"] for p in images)
        for image in images:
            assert f"cid:{image['Content-ID'].strip('<>')}" in html
        assert "$1,878.00" in text and "Churn: $230.00" in text and "FX: $1.80" in text
        assert "discounts=forever_only" in text and "Last reconciliation" in text


async def _engine_figures(rig: Rig) -> dict[str, Any]:
    return dict(await rig.get("/v1/mrr", at="2026-02-28", since="2026-02-01"))


async def test_weekly_report_and_posthog_failures(db_url: str, tmp_path: Path, posthog: FakePostHog) -> None:
    async with month(db_url, tmp_path, posthog) as rig:
        week = await run_report(rig, "weekly", {"period": "2026-W07", "to": ["ops@example.com"]})
        moved = week["figures"]["mrr-movements"]
        # 2026-W07 is 9-15 February: J's reactivation (15th) and I's churn to unpaid (12th).
        assert (moved["reactivation"], moved["churn"]) == (15_000, 15_000)
        assert week["figures"]["product"]["wau"] == 1_902

        # Each failure on a period not asked before: a period's answers are cached for an hour.
        posthog.always(Answer(status=500, body={"detail": "boom"}))
        down = await run_report(rig, "weekly", {"period": "2026-W06", "to": ["ops@example.com"]})
        assert down["status"] == "sent"
        assert "unavailable" in down["figures"]["product"] and "500" in down["figures"]["product"]["unavailable"]

        posthog.always(hang(10))
        slow = await run_report(rig, "weekly", {"period": "2026-W08", "to": ["ops@example.com"]})
        assert slow["status"] == "sent" and "unavailable" in slow["figures"]["product"]

        posthog.always(hogql_error("Unknown function windowFunel"))
        broken = await run_report(rig, "weekly", {"period": "2026-W09", "to": ["ops@example.com"]})
        assert broken["figures"]["product"]["wau"] is None  # never a made-up figure
        history = await rig.get("/v1/reports/weekly/runs")
        assert [r["status"] for r in history["runs"]] == ["sent"] * 4


async def test_preview_ls_history_cli(db_url: str, tmp_path: Path, posthog: FakePostHog) -> None:
    async with month(db_url, tmp_path, posthog) as rig:
        config = _cli_config(rig)
        out = tmp_path / "preview"
        shown = await asyncio.to_thread(CliRunner().invoke, main, ["--config", str(config), "reports", "preview",
                                                                   "monthly", "--period", "2026-02", "--out", str(out)])  # fmt: skip
        assert shown.exit_code == 0, shown.output
        files = sorted(p.name for p in out.iterdir())
        assert "report.html" in files and "report.txt" in files and "figures.csv" in files
        assert sum(1 for name in files if name.endswith(".png")) >= 2
        html = (out / "report.html").read_text()
        assert "cid:" not in html and ".png" in html
        listed = await asyncio.to_thread(CliRunner().invoke, main, ["--config", str(config), "reports", "ls", "--json"])
        names = [r["name"] for r in json.loads(listed.output)]
        assert names == ["monthly", "weekly"]
        bad = await asyncio.to_thread(CliRunner().invoke, main, ["--config", str(config), "reports", "preview", "weekly",
                                                                 "--period", "2026-13", "--out", str(out)])  # fmt: skip
        assert bad.exit_code == 2 and "not a period" in bad.output
        unknown = await asyncio.to_thread(CliRunner().invoke, main, ["--config", str(config), "reports", "run", "daily"])
        assert unknown.exit_code == 2 and "no report 'daily'" in unknown.output


async def test_the_daemon_schedules_the_weekly_report(db_url: str, tmp_path: Path, posthog: FakePostHog) -> None:
    """The daemon's own scheduler, its clock stepped to Monday 2026-02-16 08:00 Europe/Berlin
    (07:00 UTC): the weekly report for 2026-W07 is mailed once, as a scheduled run; a second tick
    sends nothing more."""
    definitions = {"weekly": {"timezone": "Europe/Berlin", "recipients": ["founders@example.com"]}}
    async with month(db_url, tmp_path, posthog, definitions=definitions) as rig:
        reports = rig.daemon.daemon.reports
        assert reports is not None
        clock = rig.daemon.daemon.clock
        assert isinstance(clock, FakeClock)
        await reports.scheduler.tick()  # watched from 2026-02-01: nothing due yet
        assert (await rig.get("/v1/reports/weekly/runs"))["runs"] == []
        clock.advance(dt.datetime(2026, 2, 16, 7, 0, 5, tzinfo=dt.UTC).timestamp() - clock.now())
        await reports.scheduler.tick()
        await reports.scheduler.tick()
        runs = (await rig.get("/v1/reports/weekly/runs"))["runs"]
        # The two Mondays the clock jumped over are past the grace window: recorded missed, not sent.
        assert sorted((r["period"], r["status"]) for r in runs) == [("2026-W05", "missed"), ("2026-W06", "missed"),
                                                                    ("2026-W07", "sent")]  # fmt: skip
        sent = next(r for r in runs if r["status"] == "sent")
        assert sent["trigger"] == "schedule" and len(sent["deliveries"]) == 1
        assert sent["scheduled_for"] == dt.datetime(2026, 2, 16, 7, 0, tzinfo=dt.UTC).timestamp()
        assert rig.daemon.metric("postroom_report_runs_total", {"report": "weekly", "outcome": "missed"}) == 2
        listed = (await rig.get("/v1/reports"))["reports"]
        weekly = next(r for r in listed if r["name"] == "weekly")
        assert weekly["next_run_at"] == dt.datetime(2026, 2, 23, 7, 0, tzinfo=dt.UTC).timestamp()


async def test_posthog_alerts_run_a_report_or_mail(db_url: str, tmp_path: Path, posthog: FakePostHog) -> None:
    sections = {"webhook_secret": "alert-secret",
                "alerts": {"MRR dropped": {"action": "report", "report": "weekly"},
                           "Signups fell": {"action": "email", "to": ["oncall@example.com"]}}}  # fmt: skip
    async with month(db_url, tmp_path, posthog, posthog_extra=sections) as rig:
        url = f"{rig.daemon.http}/webhooks/posthog"
        body = {"event": "$insight_alert_firing", "properties": {"alert_name": "MRR dropped"}}
        async with rig.session.post(url, json=body, headers={"X-Postroom-Secret": "wrong"}) as response:
            assert response.status == 401
        async with rig.session.post(url, json=body, headers={"X-Postroom-Secret": "alert-secret"}) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["action"] == "report:weekly"

        async def ran() -> bool:
            runs = (await rig.get("/v1/reports/weekly/runs"))["runs"]
            return bool(runs) and runs[0]["status"] != "running"

        await wait_until(ran, timeout=20, what="the report the alert asked for")
        assert (await rig.get("/v1/reports/weekly/runs"))["runs"][0]["trigger"] == "alert"
        mail = {"event": "$insight_alert_firing", "properties": {"alert_name": "Signups fell"}}
        async with rig.session.post(url + "?secret=alert-secret", json=mail) as response:
            assert (await response.json())["action"] == "alert_email"


async def test_consecutive_roll_forwards_equal_one_at_a_time(db_url: str, tmp_path: Path, posthog: FakePostHog) -> None:
    """`roll_forwards` (one read of the ledger for a report's 12-period trends) gives each period
    what `roll_forward` gives it alone: movements, start, end, FX."""
    from postroom.mrr.ledger import SqlLedger
    from postroom.mrr.service import MrrService
    from postroom.reports.periods import parse_period
    from postroom.store.engine import create_engine

    async with month(db_url, tmp_path, posthog) as rig:
        engine = create_engine(rig.daemon.settings.database)
        try:
            service = MrrService(SqlLedger(engine), rig.daemon.settings.mrr)
            for last in (parse_period("2026-02"), parse_period("2026-W09"), parse_period("2026-02-10..2026-02-16")):
                periods = [last.previous(n) for n in range(11, -1, -1)]
                together = await service.roll_forwards([(p.start, p.end) for p in periods])
                alone = [await service.roll_forward(p.start, p.end) for p in periods]
                assert together == alone
        finally:
            await engine.dispose()
