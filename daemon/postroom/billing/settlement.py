"""Customers' MRR revalued in the database a chunk at a time: their rows locked, what their
revaluation reads loaded in one query per table (`IN` over the chunk), and what it changes written
in one statement per table. A webhook's event is a chunk of one; a backfill or reconciliation
settles hundreds of customers per transaction with the same handful of statements (the
per-statement cost of SQLAlchemy, not the database, is what a customer used to cost).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from postroom.mrr.movements import Cause, Change, Holding
from postroom.mrr.policies import Policies
from postroom.mrr.revalue import Held, Position, revalue
from postroom.mrr.valuation import Context
from postroom.store.tables import (
    billing_coupons,
    billing_customers,
    billing_discounts,
    billing_prices,
    billing_subscriptions,
    mrr_ledger,
    mrr_positions,
)

Stored = tuple[Any, Any, Any]  # a subscription's stored (mrr, scheduled churn, next change)


def insert_for(conn: AsyncConnection) -> Callable[[sa.Table], Any]:
    """The dialect's INSERT, which has ON CONFLICT."""
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def upsert_many(conn: AsyncConnection, table: sa.Table, columns: Iterable[str], keys: Sequence[str],
                kept: Collection[str] = (), newer: str | None = None) -> Any:  # fmt: skip
    """An INSERT to execute with many rows of `columns`: on conflict on `keys` every other column
    but `kept` (set on insert only) takes the new row's value; with `newer`, only where the stored
    row's `newer` column is not ahead of the new one (an older state never overwrites a newer one)."""
    insert = insert_for(conn)(table)
    changed = {c: insert.excluded[c] for c in columns if c not in keys and c not in kept}
    where = table.c[newer] <= insert.excluded[newer] if newer else None
    return insert.on_conflict_do_update(index_elements=list(keys), set_=changed, where=where)


async def lock_customers(conn: AsyncConnection, customers: Collection[str], now: float) -> dict[str, Any]:
    """Create the customers not stored yet and lock their rows until the transaction ends, in id
    order so that two transactions locking overlapping chunks cannot deadlock."""
    ids = sorted(set(customers))
    if not ids:
        return {}
    await conn.execute(insert_for(conn)(billing_customers).on_conflict_do_nothing(index_elements=["id"]),
                       [{"id": customer, "updated_at": now} for customer in ids])  # fmt: skip
    query = (sa.select(billing_customers).where(billing_customers.c.id.in_(ids))
             .order_by(billing_customers.c.id).with_for_update())  # fmt: skip
    return {row.id: row for row in (await conn.execute(query)).all()}


@dataclass
class Book:
    """One customer as its revaluation needs it: its row, its subscriptions with what they
    reference, each one's stored value, and its positions as read and as the pending writes leave
    them (currency -> an `mrr_positions` row)."""

    customer: str
    row: Any
    held: list[Held]
    stored: dict[str, Stored]
    read: dict[str, dict[str, Any]]
    positions: dict[str, dict[str, Any]]

    def current(self) -> dict[str, Position]:
        return {currency: Position(Holding(row["cents"], row["free"]), row["occurred_at"])
                for currency, row in self.positions.items()}  # fmt: skip


def _group(rows: Iterable[Any], key: str) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = {}
    for row in rows:
        groups.setdefault(getattr(row, key), []).append(row)
    return groups


async def load_books(conn: AsyncConnection, customers: Collection[str],
                     rows: Mapping[str, Any] | None = None) -> dict[str, Book]:  # fmt: skip
    """Each customer's book, in one query per table; `rows`: the customers' rows when the caller
    has them (as locked), else they are read."""
    ids = sorted(set(customers))
    if rows is None:
        rows = {r.id: r for r in (await conn.execute(sa.select(billing_customers)
                                                     .where(billing_customers.c.id.in_(ids)))).all()}  # fmt: skip
    subs = _group((await conn.execute(sa.select(billing_subscriptions).where(billing_subscriptions.c.customer.in_(ids))
                                      .order_by(billing_subscriptions.c.customer, billing_subscriptions.c.id))).all(),
                  "customer")  # fmt: skip
    discounts: dict[str, list[Any]] = {}
    if subs:
        discounts = _group((await conn.execute(sa.select(billing_discounts).where(
            billing_discounts.c.customer.in_(sorted(subs)), billing_discounts.c.deleted == sa.false()))).all(),
            "customer")  # fmt: skip
    price_ids = sorted({str(item["price"].get("id")) for held in subs.values() for sub in held
                        for item in sub.snapshot["items"]["data"]
                        if item["price"].get("billing_scheme") == "tiered" and not item["price"].get("tiers")})  # fmt: skip
    prices = {}
    if price_ids:
        prices = {r.id: r.price for r in (await conn.execute(
            sa.select(billing_prices).where(billing_prices.c.id.in_(price_ids)))).all()}  # fmt: skip
    positions = _group((await conn.execute(sa.select(mrr_positions).where(mrr_positions.c.customer.in_(ids)))).all(),
                       "customer")  # fmt: skip
    coupon_ids = sorted({coupon for d in [*(r.discount for held in discounts.values() for r in held),
                                          *(row.discount for row in rows.values() if row is not None),
                                          *(d for held in subs.values() for sub in held for d in discounts_of(sub.snapshot))]
                         if (coupon := coupon_id(d))})  # fmt: skip
    coupons = {}
    if coupon_ids:
        coupons = {r.id: r.coupon for r in (await conn.execute(
            sa.select(billing_coupons).where(billing_coupons.c.id.in_(coupon_ids)))).all()}  # fmt: skip
    books = {}
    for customer in ids:
        row = rows.get(customer)
        found = {p.currency: _position_row(p) for p in positions.get(customer, [])}
        books[customer] = Book(customer, row, _held(subs.get(customer, []), discounts.get(customer, []), prices, row,
                                                    coupons),  # fmt: skip
                               {s.id: (s.mrr, s.scheduled_churn, s.next_change_at) for s in subs.get(customer, [])},
                               found, {currency: dict(row) for currency, row in found.items()})  # fmt: skip
    return books


def _position_row(row: Any) -> dict[str, Any]:
    return {"customer": row.customer, "currency": row.currency, "cents": int(row.cents), "free": bool(row.free),
            "occurred_at": float(row.occurred_at), "scheduled_churn_cents": int(row.scheduled_churn_cents)}  # fmt: skip


def discounts_of(snapshot: Mapping[str, Any]) -> list[Any]:
    """The discounts a subscription snapshot carries, its items' included (objects or ids)."""
    found = list(snapshot.get("discounts") or [])
    for item in (snapshot.get("items") or {}).get("data") or []:
        found.extend(item.get("discounts") or [])
    return found


def coupon_id(discount: Any) -> str | None:
    """The id of the coupon a discount names by id (since API 2025-09-30.clover); None otherwise."""
    if not isinstance(discount, Mapping):
        return None
    source = discount.get("source")
    coupon = source.get("coupon") if isinstance(source, Mapping) else discount.get("coupon")
    return coupon if isinstance(coupon, str) else None


def _held(subs: Sequence[Any], discounts: Sequence[Any], prices: Mapping[str, Any], row: Any,
          coupons: Mapping[str, Any]) -> list[Held]:  # fmt: skip
    by_id = {r.id: r.discount for r in discounts}
    customer_discount = row.discount if row is not None and not row.deleted else None
    held = []
    for sub in subs:
        dunning = dt.datetime.fromtimestamp(sub.dunning_since, dt.UTC) if sub.dunning_since else None
        shares = {k: Decimal(v) for k, v in (sub.net_shares or {}).items()}
        context = Context(by_id, prices, customer_discount, shares, dunning, coupons)
        held.append(Held(sub.id, sub.snapshot, context, sub.start_date))
    return held


async def ledger_customers(conn: AsyncConnection, customers: Collection[str]) -> set[str]:
    """Those of `customers` the ledger has a change of."""
    if not customers:
        return set()
    query = sa.select(mrr_ledger.c.customer).where(mrr_ledger.c.customer.in_(sorted(customers))).distinct()
    return {row[0] for row in (await conn.execute(query)).all()}


@dataclass
class LedgerWrites:
    """What revaluing a chunk of customers changes, gathered to be written in one statement per
    table: ledger rows in order, subscription values that differ from those stored, each book's
    positions where they differ from those read, and customers found to have paid before."""

    now: float
    ledger: list[dict[str, Any]] = field(default_factory=list)
    values: list[dict[str, Any]] = field(default_factory=list)
    books: dict[str, Book] = field(default_factory=dict)
    paid_before: list[str] = field(default_factory=list)

    def record(self, book: Book, changes: Sequence[Change], scheduled: Mapping[str, int] | None = None) -> None:
        """Append changes to the ledger and move the book's positions to each currency's last
        `after`; `scheduled`: the scheduled churn to store with them (None: left as it is)."""
        for c in changes:
            self.ledger.append({"customer": c.customer, "currency": c.currency, "occurred_at": c.occurred_at.timestamp(),
                                "before_cents": c.before.cents, "before_free": c.before.free,
                                "after_cents": c.after.cents, "after_free": c.after.free, "cause": c.cause.value,
                                "event_id": c.event_id, "subscription": c.subscription, "recorded_at": self.now})  # fmt: skip
            old = book.positions.get(c.currency)
            churn = scheduled.get(c.currency, 0) if scheduled is not None else (old["scheduled_churn_cents"] if old else 0)
            book.positions[c.currency] = {"customer": c.customer, "currency": c.currency, "cents": c.after.cents,
                                          "free": c.after.free, "occurred_at": c.occurred_at.timestamp(),
                                          "scheduled_churn_cents": churn}  # fmt: skip
        self.books[book.customer] = book

    def revalue(self, book: Book, at: float, policies: Policies, cause: Cause, event_id: str | None = None,
                subscription: str | None = None) -> list[Change]:  # fmt: skip
        """Recompute the customer against its positions; only what differs is written (a
        subscription's stored value, a position's scheduled churn)."""
        result = revalue(book.customer, book.held, book.current(), at, policies, cause, event_id, subscription)
        for sub_id, v in result.values.items():
            nxt = result.next_changes[sub_id]
            values = (str(v.mrr), str(v.scheduled_churn), nxt.timestamp() if nxt else None)
            if book.stored.get(sub_id) != values:
                self.values.append({"b_id": sub_id, "b_mrr": values[0], "b_churn": values[1], "b_next": values[2]})
        self.record(book, result.changes, result.scheduled_churn)
        changed = {c.currency for c in result.changes}
        for currency in (set(result.holdings) | set(result.scheduled_churn)) - changed:
            position = book.positions.get(currency)
            if position is not None:
                position["scheduled_churn_cents"] = result.scheduled_churn.get(currency, 0)
        return list(result.changes)

    async def write(self, conn: AsyncConnection, paid_before_at: float | None = None) -> None:
        """Write what was gathered; `paid_before_at`: the date the paid-before customers get."""
        if self.values:
            await conn.execute(billing_subscriptions.update().where(billing_subscriptions.c.id == sa.bindparam("b_id"))
                               .values(mrr=sa.bindparam("b_mrr"), scheduled_churn=sa.bindparam("b_churn"),
                                       next_change_at=sa.bindparam("b_next")), self.values)  # fmt: skip
        if self.ledger:
            await conn.execute(mrr_ledger.insert(), self.ledger)
        positions = [row for book in self.books.values() for currency, row in sorted(book.positions.items())
                     if book.read.get(currency) != row]  # fmt: skip
        if positions:
            await conn.execute(upsert_many(conn, mrr_positions, positions[0], ["customer", "currency"]), positions)
        if self.paid_before and paid_before_at is not None:
            await conn.execute(billing_customers.update().where(billing_customers.c.id.in_(self.paid_before))
                               .values(paid_before_at=paid_before_at))  # fmt: skip
