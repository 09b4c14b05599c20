"""The product section from PostHog (REPORTS.md 4.1 item 6): active users (weekly for weekly and
shorter reports, monthly otherwise) with their trend, signups, the activation funnel's conversion
and the top events, each from a named query of `[posthog.queries]` over explicit period bounds.

PostHog down or too slow: the whole section is unavailable, with why. One query refused (a HogQL
error): that figure is "n/a" and the section names the query and PostHog's reason; the error is
logged. No figure is ever made up."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

from postroom.config import Settings
from postroom.metrics import Metrics
from postroom.mrr.service import day_start
from postroom.reports.model import ChartImage, Figure, Section, Table, Unit
from postroom.reports.periods import Period
from postroom.sources.posthog.query import PostHogQueries, PostHogQueryError, QueryResult
from postroom.sources.posthog.query_settings import PostHogSettings

logger = logging.getLogger(__name__)

TREND = 12


def _day(value: Any) -> dt.date | None:
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


def _bounds(start: dt.date, end: dt.date) -> tuple[dt.datetime, dt.datetime]:
    return day_start(start), day_start(end + dt.timedelta(days=1))


class PostHogProduct:
    def __init__(self, queries: PostHogQueries, settings: PostHogSettings, locale: str):
        self._queries = queries
        self._settings = settings
        self._locale = locale

    async def aclose(self) -> None:
        await self._queries.aclose()

    async def _run(self, name: str, start: dt.date, end: dt.date) -> QueryResult:
        spec = self._settings.queries.get(name)
        if spec is None:
            raise PostHogQueryError(name, f"no [posthog.queries.{name}] is configured")
        return await self._queries.named(name, spec, _bounds(start, end))

    async def section(self, period: Period, history: Sequence[Period]) -> Section:
        problems: list[str] = []
        figures: list[Figure] = []
        images: list[ChartImage] = []
        tables: list[tuple[str, Table]] = []
        monthly = period.days > 7
        active = "mau" if monthly else "wau"
        first = period.previous(TREND - 1)
        try:
            result = await self._run(active, first.start, period.end)
            points = [(day, int(row[-1])) for row in result.rows if (day := _day(row[0])) is not None]
            by_bucket = dict(points)
            bucket = (period.start.replace(day=1) if monthly else period.start - dt.timedelta(days=period.start.weekday()))
            starts = [p.start.replace(day=1) if monthly else p.start - dt.timedelta(days=p.start.weekday())
                      for p in history]  # fmt: skip
            earlier = [by_bucket[s] for s in starts if s in by_bucket]
            figures.append(Figure(active, "Monthly active users" if monthly else "Weekly active users",
                                  by_bucket.get(bucket), Unit.COUNT, by_bucket.get(starts[0]) if starts else None,
                                  sum(earlier) / len(earlier) if earlier else None))  # fmt: skip
            from postroom.reports.charts import product_trend  # matplotlib: imported on first use

            chart = await asyncio.to_thread(product_trend, points,
                                            "Monthly active users" if monthly else "Weekly active users", self._locale)  # fmt: skip
            images.append(ChartImage(chart.content_id, chart.png, chart.alt))
        except PostHogQueryError as exc:
            problems.append(str(exc))
            figures.append(Figure(active, "Active users", None, Unit.COUNT))
        try:
            oldest = history[-1] if history else period
            result = await self._run("signups", oldest.start, period.end)
            daily = [(day, int(row[-1])) for row in result.rows if (day := _day(row[0])) is not None]

            def within(p: Period) -> int:
                return sum(n for day, n in daily if p.start <= day <= p.end)

            figures.append(Figure("signups", "Signups", within(period), Unit.COUNT,
                                  within(history[0]) if history else None,
                                  sum(within(p) for p in history) / len(history) if history else None))  # fmt: skip
        except PostHogQueryError as exc:
            problems.append(str(exc))
            figures.append(Figure("signups", "Signups", None, Unit.COUNT))
        try:
            result = await self._run("activation_funnel", period.start, period.end)
            levels = {int(row[0]): int(row[1]) for row in result.rows}
            last_step = self._settings.queries["activation_funnel"].steps or max(levels, default=1)
            started = sum(n for level, n in levels.items() if level >= 1)
            finished = sum(n for level, n in levels.items() if level >= last_step)
            figures.append(Figure("activation", "Activation (signed up -> subscribed, 7 days)",
                                  finished / started if started else None, Unit.RATE))  # fmt: skip
        except PostHogQueryError as exc:
            problems.append(str(exc))
            figures.append(Figure("activation", "Activation", None, Unit.RATE))
        try:
            result = await self._run("top_events", period.start, period.end)
            rows = tuple(tuple(row) for row in result.rows[:10])
            tables.append(("Top events", Table(tuple(result.columns) or ("event", "events", "users"), rows,
                                               (Unit.TEXT,) + (Unit.COUNT,) * (len(result.columns) - 1))))  # fmt: skip
        except PostHogQueryError as exc:
            problems.append(str(exc))
        for problem in problems:
            logger.warning("report product section: %s", problem)
        return Section("product", "Product (PostHog)", figures=figures, tables=tables, charts=images,
                       notes=tuple(f"Not available: {p}" for p in problems))  # fmt: skip

    async def table(self, name: str, period: Period) -> Section:
        result = await self._run(name, period.start, period.end)
        spec = self._settings.queries[name]
        table = Table(tuple(result.columns), tuple(tuple(row) for row in result.rows))
        return Section("hogql", spec.title or name, tables=((spec.title or name, table),))


class PostHogObserver:
    """PostHog queries counted in Prometheus, by query name and outcome."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def observe(self, name: str, outcome: str, seconds: float) -> None:
        self._metrics.posthog_queries.labels(name, outcome).inc()
        if outcome not in ("cached", "shared"):
            self._metrics.posthog_query_seconds.observe(seconds)


def product_source(settings: Settings, **kwargs: Any) -> PostHogProduct | None:
    """The product section's source, or None while PostHog is not configured."""
    if not settings.posthog.enabled:
        return None
    return PostHogProduct(PostHogQueries.from_settings(settings.posthog, **kwargs), settings.posthog,
                          settings.reports.locale)  # fmt: skip
