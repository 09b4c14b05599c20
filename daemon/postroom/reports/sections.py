"""The section catalogue: each builds its figures for a period from its source. A section whose
source fails (PostHog down, a HogQL error, a timeout) comes back unavailable with the reason, and
the report is still sent; nothing is ever shown as 0 in its place."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from postroom.billing.figures import SqlBillingFigures
from postroom.mrr.money import round_minor
from postroom.mrr.movements import Kind, RollForward
from postroom.mrr.service import MrrService, day_start
from postroom.reports import formatting
from postroom.reports.model import ChartImage, Figure, Section, Table, Unit
from postroom.reports.periods import Period
from postroom.stats.model import StatsQuery
from postroom.stats.sql_stats import SqlStats

logger = logging.getLogger(__name__)

HISTORY = 4  # periods the average compares with
TREND = 12  # periods the charts show


class ProductSource(Protocol):
    """PostHog's figures for a period (postroom.reports.product)."""

    async def section(self, period: Period, history: Sequence[Period]) -> Section: ...
    async def table(self, name: str, period: Period) -> Section: ...


@dataclass(frozen=True)
class Sources:
    mrr: MrrService
    billing: SqlBillingFigures
    stats: SqlStats
    product: ProductSource | None  # None: PostHog is not configured
    locale: str


def _bounds(period: Period) -> tuple[float, float]:
    return day_start(period.start).timestamp(), day_start(period.end + dt.timedelta(days=1)).timestamp()


def _average(values: Sequence[float | int]) -> float | None:
    return sum(values) / len(values) if values else None


def _arpa(cents: int, customers: int) -> int | None:
    """MRR per paying customer, half-even to a whole minor unit (as `GET /v1/mrr` has it)."""
    return round_minor(Decimal(cents) / customers) if customers else None


def _charts() -> Any:
    """`postroom.reports.charts`, imported on first use: matplotlib takes most of a second to
    import, which every `postroom` command and daemon start would otherwise pay."""
    from postroom.reports import charts

    return charts


def _image(chart: Any) -> ChartImage:
    return ChartImage(chart.content_id, chart.png, chart.alt)


class SectionBuilder:
    def __init__(self, sources: Sources):
        self._s = sources
        self._rolls: dict[tuple[dt.date, dt.date], RollForward] = {}

    @property
    def currency(self) -> str:
        return self._s.mrr.currency

    async def _roll(self, period: Period) -> RollForward:
        key = (period.start, period.end)
        if key not in self._rolls:
            await self._trend(period)
        return self._rolls[key]

    async def _trend(self, period: Period) -> list[RollForward]:
        """The roll-forwards of the TREND periods ending with `period`, from one read of the ledger
        (the headline's sparkline, the waterfall, the averages and the comparisons all use them)."""
        periods = [period.previous(n) for n in range(TREND - 1, -1, -1)]
        if all((p.start, p.end) in self._rolls for p in periods):
            return [self._rolls[(p.start, p.end)] for p in periods]
        rolls = await self._s.mrr.roll_forwards([(p.start, p.end) for p in periods])
        for p, roll in zip(periods, rolls, strict=True):
            self._rolls[(p.start, p.end)] = roll
        return rolls

    def builders(self) -> Mapping[str, Callable[[Period, str], Awaitable[Section]]]:
        return {
            "headline": self.headline, "mrr-movements": self.movements, "customers": self.customers,
            "revenue-risk": self.risk, "cash": self.cash, "product": self.product,
            "delivery-health": self.delivery, "hogql": self.hogql, "data-freshness": self.freshness,
        }  # fmt: skip

    async def headline(self, period: Period, _arg: str) -> Section:
        ends = [period.previous(n) for n in range(TREND - 1, -1, -1)]
        snapshots = [roll.end for roll in await self._trend(period)]
        now, before = snapshots[-1], snapshots[-2]
        history = [s.cents for s in snapshots[-1 - HISTORY : -1]]
        currency = self._s.mrr.currency
        sparkline = await asyncio.to_thread(_charts().mrr_sparkline, [(p.end, s.cents) for p, s in
                                            zip(ends, snapshots, strict=True)], currency, self._s.locale)  # fmt: skip
        arpa = _arpa(now.cents, now.paying_customers)
        return Section("headline", "Headline", figures=(
            Figure("mrr", "MRR", now.cents, Unit.MONEY, before.cents, _average(history)),
            Figure("arr", "ARR", now.cents * 12, Unit.MONEY, before.cents * 12),
            Figure("paying_customers", "Paying customers", now.paying_customers, Unit.COUNT, before.paying_customers,
                   _average([s.paying_customers for s in snapshots[-1 - HISTORY : -1]])),
            Figure("arpa", "ARPA", arpa, Unit.MONEY, _arpa(before.cents, before.paying_customers)),
        ), charts=(_image(sparkline),))  # fmt: skip

    async def movements(self, period: Period, _arg: str) -> Section:
        roll = await self._roll(period)
        previous = (await self._roll(period.previous())).totals()
        totals = roll.totals()
        history = [await self._roll(period.previous(n)) for n in range(1, HISTORY + 1)]

        def net(t: Mapping[str, int]) -> int:
            return t["new"] + t["expansion"] + t["reactivation"] - t["contraction"] - t["churn"]

        def figure(key: str, label: str, bad: bool = False) -> Figure:
            return Figure(key, label, totals[key], Unit.MONEY, previous[key],
                          _average([h.totals()[key] for h in history]), rise_is_bad=bad)  # fmt: skip

        figures = (
            Figure("start", "MRR at the start", roll.start.cents, Unit.MONEY),
            figure("new", "New"), figure("expansion", "Expansion"), figure("reactivation", "Reactivation"),
            figure("contraction", "Contraction", True), figure("churn", "Churn", True),
            figure("reconciliation", "Reconciliation"), figure("fx", "FX"),
            Figure("end", "MRR at the end", roll.end.cents, Unit.MONEY),
            Figure("net_new", "Net new MRR", net(totals), Unit.MONEY, net(previous),
                   _average([net(h.totals()) for h in history])),
        )  # fmt: skip
        top = sorted(roll.movements, key=lambda m: (-abs(m.cents), m.customer))[:5]
        table = Table(("Customer", "Movement", "Amount"), tuple((m.customer, m.kind.value, m.cents) for m in top),
                      (Unit.TEXT, Unit.TEXT, Unit.MONEY))  # fmt: skip
        trend = [period.previous(n) for n in range(TREND - 1, -1, -1)] if period.kind != "days" else [period]
        bars = []
        for p in trend:
            t = (await self._roll(p)).totals()
            bars.append(_charts().PeriodMovements(p.label, t["new"], t["expansion"], t["reactivation"], t["contraction"],
                                               t["churn"], t["fx"] + t["reconciliation"]))  # fmt: skip
        waterfall = await asyncio.to_thread(_charts().movements_waterfall, bars, self._s.mrr.currency, self._s.locale)
        return Section("mrr-movements", "MRR movements", figures=figures,
                       tables=(("The largest movements", table),) if top else (), charts=(_image(waterfall),))  # fmt: skip

    async def customers(self, period: Period, _arg: str) -> Section:
        roll = await self._roll(period)
        before = await self._roll(period.previous())
        counts = {kind: len({m.customer for m in roll.movements if m.kind is kind}) for kind in Kind}
        previous = {kind: len({m.customer for m in before.movements if m.kind is kind}) for kind in Kind}
        since, until = _bounds(period)
        trials = await self._s.billing.trials(since, until)
        start = roll.start.paying_customers
        logo_churn = counts[Kind.CHURN] / start if start else None
        return Section("customers", "Customers", figures=(
            Figure("paying", "Paying customers", roll.end.paying_customers, Unit.COUNT, roll.start.paying_customers),
            Figure("new", "New", counts[Kind.NEW], Unit.COUNT, previous[Kind.NEW]),
            Figure("churned", "Churned", counts[Kind.CHURN], Unit.COUNT, previous[Kind.CHURN], rise_is_bad=True),
            Figure("reactivated", "Reactivated", counts[Kind.REACTIVATION], Unit.COUNT, previous[Kind.REACTIVATION]),
            Figure("logo_churn", "Logo churn", logo_churn, Unit.RATE, rise_is_bad=True),
            Figure("trials_started", "Trials started", trials.started, Unit.COUNT),
            Figure("trials_converted", "Trials converted", trials.converted, Unit.COUNT),
        ))  # fmt: skip

    async def _reporting(self, amounts: Mapping[str, int], day: dt.date) -> int:
        fx = await self._s.mrr.fx()
        return sum(fx.convert(cents, currency, day) for currency, cents in amounts.items() if currency)

    async def risk(self, period: Period, _arg: str) -> Section:
        since, until = _bounds(period)
        risk = await self._s.billing.risk(since, until)
        day = period.end
        return Section("revenue-risk", "Revenue at risk", figures=(
            Figure("scheduled_churn", "Scheduled churn MRR (cancellations at period end)",
                   await self._reporting(risk.scheduled_churn_cents, day), Unit.MONEY, rise_is_bad=True),
            Figure("past_due_mrr", "Past-due MRR", await self._reporting(risk.past_due_cents, day), Unit.MONEY,
                   rise_is_bad=True),
            Figure("past_due_count", "Past-due subscriptions", risk.past_due_count, Unit.COUNT, rise_is_bad=True),
            Figure("failed_payments", "Failed payments", risk.failed_payments, Unit.COUNT, rise_is_bad=True),
            Figure("failed_amount", "Failed payment amount", await self._reporting(risk.failed_cents, day), Unit.MONEY,
                   rise_is_bad=True),
            Figure("recovered_payments", "Recovered payments", risk.recovered_payments, Unit.COUNT),
            Figure("recovered_amount", "Recovered amount", await self._reporting(risk.recovered_cents, day), Unit.MONEY),
        ), notes=("Past-due and scheduled churn are as of now; payments are those of the period.",))  # fmt: skip

    async def cash(self, period: Period, _arg: str) -> Section:
        since, until = _bounds(period)
        cash = await self._s.billing.cash(since, until)
        before = await self._s.billing.cash(*_bounds(period.previous()))
        return Section("cash", "Cash (not MRR)", figures=(
            Figure("payments", "Payments", cash.payments, Unit.COUNT, before.payments),
            Figure("gross", "Gross payments", await self._reporting(cash.gross_cents, period.end), Unit.MONEY,
                   await self._reporting(before.gross_cents, period.previous().end)),
        ), notes=("Invoices paid in the period, converted at the period's last rates. Refunds and disputes "
                  "are not read from Stripe yet, so net volume is not shown.",))  # fmt: skip

    async def product(self, period: Period, _arg: str) -> Section:
        if self._s.product is None:
            return Section("product", "Product", unavailable="PostHog is not configured ([posthog] project_id and "
                                                              "personal_api_key)")  # fmt: skip
        return await self._s.product.section(period, [period.previous(n) for n in range(1, HISTORY + 1)])

    async def hogql(self, period: Period, name: str) -> Section:
        if self._s.product is None:
            return Section("hogql", name, unavailable="PostHog is not configured")
        return await self._s.product.table(name, period)

    async def delivery(self, period: Period, _arg: str) -> Section:
        since, until = _bounds(period)
        totals = await self._s.stats.compute(StatsQuery(since, until))
        total = totals[0] if totals else None
        if total is None or not (total.sent or total.delivered or total.bounced):
            return Section("delivery-health", "Delivery health", notes=("No mail was sent in the period.",))
        previous_bounds = _bounds(period.previous())
        earlier = await self._s.stats.compute(StatsQuery(*previous_bounds))
        before = earlier[0] if earlier else None
        days = await self._s.stats.compute(StatsQuery(since, until, group_by=("day",)))
        points = [_charts().DeliveryPoint(dt.date.fromisoformat(str(g.key["day"])[:10]), g.sent, g.delivered, g.bounced,
                                       g.complained) for g in days]  # fmt: skip
        chart = await asyncio.to_thread(_charts().delivery_health, points, self._s.locale)
        return Section("delivery-health", "Delivery health", figures=(
            Figure("sent", "Sent", total.sent, Unit.COUNT, before.sent if before else None),
            Figure("delivered", "Delivered", total.delivered, Unit.COUNT, before.delivered if before else None),
            Figure("bounce_rate", "Bounce rate", total.bounce_rate, Unit.RATE, before.bounce_rate if before else None,
                   rise_is_bad=True),
            Figure("complaint_rate", "Complaint rate", total.complaint_rate, Unit.RATE,
                   before.complaint_rate if before else None, rise_is_bad=True),
            Figure("deferred", "Deferred", total.deferred, Unit.COUNT, before.deferred if before else None,
                   rise_is_bad=True),
            Figure("latency_p50", "Accepted to delivered, median", total.latency.get("p50"), Unit.SECONDS),
            Figure("latency_p95", "Accepted to delivered, p95", total.latency.get("p95"), Unit.SECONDS),
        ), charts=(_image(chart),))  # fmt: skip

    async def freshness(self, period: Period, _arg: str) -> Section:
        fresh = await self._s.billing.freshness()
        drift = ", ".join(f"{currency.upper()} {formatting.money(cents, currency, self._s.locale)}"
                          for currency, cents in sorted(fresh.last_reconciliation_drift.items()) if cents) or "none"
        return Section("data-freshness", "Data freshness", figures=(
            Figure("last_webhook", "Last Stripe webhook", _when(fresh.last_webhook_at), Unit.TEXT),
            Figure("last_reconciliation", "Last reconciliation", _when(fresh.last_reconciliation_at), Unit.TEXT),
            Figure("reconciliation_drift", "Drift it corrected", drift, Unit.TEXT),
            Figure("flagged_events", "Malformed Stripe events", fresh.flagged_events, Unit.COUNT, rise_is_bad=True),
        ))  # fmt: skip


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


async def build_section(builder: SectionBuilder, name: str, period: Period, arg: str, timeout: float) -> Section:
    """One section, or the section marked unavailable with why (logged): a report is never held
    back, or shown with a made-up figure, because one source failed."""
    build = builder.builders()[name]
    try:
        return await asyncio.wait_for(build(period, arg), timeout)
    except TimeoutError:
        reason = f"timed out after {timeout:g} s"
    except Exception as exc:  # noqa: BLE001 - any source failure is reported in the section, not raised
        reason = f"{type(exc).__name__}: {exc}"
    logger.warning("report section %s for %s unavailable: %s", name, period.label, reason)
    return Section(name, name.replace("-", " ").capitalize(), unavailable=reason)
