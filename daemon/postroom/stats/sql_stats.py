"""`SqlStats`: delivery analytics in SQL, one code path for SQLite and PostgreSQL.

Three grouped queries: events by type (with the bounce class and reason read from their JSON
detail) for what happened in the period; deliveries created for what was sent; and delivered
events joined to their messages for the accept-to-delivered latency, whose percentiles come
from window functions (`row_number` and `count` over each group: nearest rank, which both
engines compute without percentile functions SQLite lacks). The period buckets and the domain of
a recipient without a delivery row differ in spelling per engine and nothing else.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from postroom.core.types import SHADOW_ROUTE
from postroom.stats.model import (
    COUNTED,
    PERCENTILES,
    PERIODS,
    StatsGroup,
    StatsQuery,
    add_count,
    period_label,
)
from postroom.store.engine import read_only, translate_errors
from postroom.store.tables import deliveries, events, messages


def _bucket(conn: AsyncConnection, at: sa.ColumnElement[Any], size: int) -> sa.ColumnElement[Any]:
    """The start of the period `at` falls in (epoch seconds, UTC)."""
    if conn.dialect.name == "postgresql":
        return sa.cast(sa.func.floor(at / size), sa.BigInteger) * size
    return sa.cast(at / size, sa.Integer) * size  # times are positive: the cast floors them


def _domain_of(conn: AsyncConnection, address: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    if conn.dialect.name == "postgresql":
        return sa.func.lower(sa.func.split_part(address, "@", 2))
    return sa.func.lower(sa.func.substr(address, sa.func.instr(address, "@") + 1))


class SqlStats:
    def __init__(self, engine: AsyncEngine):
        self._reads = read_only(engine)

    async def compute(self, query: StatsQuery) -> list[StatsGroup]:
        """One group per combination of `query.group_by` values seen (one group when empty)."""
        with translate_errors("computing delivery statistics"):
            async with self._reads.connect() as conn:
                groups: dict[tuple[Any, ...], StatsGroup] = {}

                def group(values: tuple[Any, ...]) -> StatsGroup:
                    if values not in groups:
                        key = {}
                        for name, value in zip(query.group_by, values, strict=True):
                            key[name] = period_label(float(value)) if name in PERIODS else value
                        groups[values] = StatsGroup(key)
                    return groups[values]

                for row in await self._event_counts(conn, query):
                    values = tuple(row[: len(query.group_by)])
                    kind, cls, reason, count = row[len(query.group_by):]
                    add_count(group(values), kind, cls, reason, int(count))
                for row in await self._sent(conn, query):
                    group(tuple(row[:-1])).sent += int(row[-1])
                for row in await self._latency(conn, query):
                    count, *marks = row[len(query.group_by):]
                    if not count:
                        continue  # no group at all: the ungrouped query's one row of NULLs
                    found = group(tuple(row[: len(query.group_by)]))
                    found.latency_count = int(count)
                    found.latency = {f"p{p}": round(float(v), 3) for p, v in zip(PERCENTILES, marks, strict=True)
                                     if v is not None}  # fmt: skip
        if not query.group_by and not groups:
            return [StatsGroup({})]
        return [groups[k] for k in sorted(groups, key=lambda k: tuple((v is None, str(v)) for v in k))]

    def _dimensions(self, conn: AsyncConnection, query: StatsQuery, at: sa.ColumnElement[Any],
                    domain: sa.ColumnElement[Any]) -> list[sa.ColumnElement[Any]]:  # fmt: skip
        columns: list[sa.ColumnElement[Any]] = []
        for name in query.group_by:
            if name == "stream":
                columns.append(messages.c.stream)
            elif name == "template":
                columns.append(messages.c.template_id)
            elif name == "domain":
                columns.append(domain)
            else:
                columns.append(_bucket(conn, at, PERIODS[name]))
        return [c.label(f"g{i}") for i, c in enumerate(columns)]

    def _window(self, query: StatsQuery, at: sa.ColumnElement[Any]) -> list[sa.ColumnElement[bool]]:
        where = []
        if query.since is not None:
            where.append(at >= query.since)
        if query.until is not None:
            where.append(at < query.until)
        if query.stream is not None:
            where.append(messages.c.stream == query.stream)
        return where

    async def _event_counts(self, conn: AsyncConnection, query: StatsQuery) -> list[Any]:
        domain = sa.func.coalesce(deliveries.c.domain, _domain_of(conn, events.c.recipient))
        dims = self._dimensions(conn, query, events.c.at, domain)
        cls = events.c.detail["bounce_class"].as_string().label("cls")
        reason = events.c.detail["reason"].as_string().label("reason")
        source = events.outerjoin(messages, messages.c.id == events.c.message_id).outerjoin(
            deliveries, deliveries.c.id == events.c.delivery_id)  # fmt: skip
        statement = (
            sa.select(*dims, events.c.type, cls, reason, sa.func.count())
            .select_from(source)
            .where(events.c.type.in_(sorted(COUNTED)), *self._window(query, events.c.at))
            .group_by(*dims, events.c.type, cls, reason)
        )
        return list((await conn.execute(statement)).all())

    async def _sent(self, conn: AsyncConnection, query: StatsQuery) -> list[Any]:
        dims = self._dimensions(conn, query, deliveries.c.created_at, deliveries.c.domain)
        statement = (
            sa.select(*dims, sa.func.count())
            .select_from(deliveries.join(messages, messages.c.id == deliveries.c.message_id))
            # Shadow copies (shadow mode) went to the shadow sink, not to a recipient: not sent.
            .where(*self._window(query, deliveries.c.created_at), deliveries.c.route != SHADOW_ROUTE)
            .group_by(*dims)
        )
        return list((await conn.execute(statement)).all())

    async def _latency(self, conn: AsyncConnection, query: StatsQuery) -> list[Any]:
        domain = sa.func.coalesce(deliveries.c.domain, _domain_of(conn, events.c.recipient))
        dims = self._dimensions(conn, query, events.c.at, domain)
        latency = (events.c.at - messages.c.created_at).label("latency")
        partition = [d.element for d in dims] or None
        ranked = (
            sa.select(
                *dims,
                latency,
                sa.func.row_number().over(partition_by=partition, order_by=latency).label("rn"),
                sa.func.count().over(partition_by=partition).label("n"),
            )
            .select_from(events.join(messages, messages.c.id == events.c.message_id)
                         .outerjoin(deliveries, deliveries.c.id == events.c.delivery_id))
            .where(events.c.type == "delivered", *self._window(query, events.c.at))
            .subquery()
        )  # fmt: skip
        group_columns = [ranked.c[f"g{i}"] for i in range(len(dims))]
        # Nearest rank: the value at rank ceil(p/100 * n), in integer arithmetic on both engines.
        marks = [
            sa.func.max(sa.case((ranked.c.rn == (p * ranked.c.n + 99) // 100, ranked.c.latency)))
            for p in PERCENTILES
        ]
        statement = sa.select(*group_columns, sa.func.max(ranked.c.n), *marks).group_by(*group_columns)
        return list((await conn.execute(statement)).all())
