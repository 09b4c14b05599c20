"""The billing state in the database: Stripe events once by id, the objects they describe, and the
MRR ledger they move. Each event is applied in one write transaction that locks its customer, so
two processes (or daemons) never interleave one customer's changes.

Ordering (MRR.md 1.3): each subscription keeps the `created` of the newest state applied; an older
snapshot is never applied over it. It is re-fetched from Stripe instead when postroom has an API
key (`NeedsFetch`), else recorded as stale. A snapshot that references what postroom has no copy
of (a discount id, an unexpanded tiered price) is re-fetched too, or flagged.

Objects are kept, and customers revalued (postroom.billing.settlement), a list at a time with one
statement per table: an event is a list of one, a backfill page a list of hundreds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from postroom.billing.events import Family, StripeEvent
from postroom.billing.objects import checked_subscription, id_of, invoice_subscription, net_shares, timestamp
from postroom.billing.settlement import LedgerWrites, insert_for, ledger_customers, load_books, lock_customers, upsert_many
from postroom.mrr.movements import Cause, Change
from postroom.mrr.policies import Policies
from postroom.mrr.revalue import openings
from postroom.mrr.valuation import Malformed, NeedsExpansion
from postroom.store.engine import GatedStore, WriteGate, translate_errors
from postroom.store.tables import (
    billing_coupons,
    billing_customers,
    billing_discounts,
    billing_invoices,
    billing_prices,
    billing_subscriptions,
    billing_syncs,
    stripe_events,
)

logger = logging.getLogger(__name__)

Json = Mapping[str, Any]


class EventStatus:
    PENDING = "pending"
    APPLIED = "applied"
    IGNORED = "ignored"
    STALE = "stale"
    FLAGGED = "flagged"


STATUSES = (EventStatus.PENDING, EventStatus.APPLIED, EventStatus.IGNORED, EventStatus.STALE, EventStatus.FLAGGED)


class NeedsFetch(Exception):
    """Apply the event again with the subscription as Stripe has it now."""

    def __init__(self, subscription: str, reason: str, coupon: str | None = None):
        super().__init__(f"subscription {subscription}: {reason}" if subscription else reason)
        self.subscription = subscription  # "": only the coupon is to be read
        self.reason = reason
        self.coupon = coupon  # a coupon to read first (a discount names it by id)


@dataclass(frozen=True)
class Applied:
    status: str
    detail: str = ""
    changes: Sequence[Change] = ()
    by_another: bool = False  # another process (or task) had applied it already: nothing was done


@dataclass(frozen=True)
class StoredEvent:
    id: str
    type: str
    created: float
    object_id: str | None
    received_at: float
    status: str
    detail: str


def _upsert(conn: AsyncConnection, table: sa.Table, values: Mapping[str, Any], keys: Sequence[str],
            kept: Sequence[str] = (), newer: str | None = None) -> tuple[Any, list[Mapping[str, Any]]]:  # fmt: skip
    """One row through `upsert_many`: the statement and its parameters, for `conn.execute(*...)`."""
    return upsert_many(conn, table, values, keys, kept, newer), [values]


class SqlBillingStore(GatedStore):
    def __init__(self, engine: AsyncEngine, policies: Policies, gate: WriteGate | None = None):
        super().__init__(engine, gate)
        self._policies = policies

    # -- events -------------------------------------------------------------------------------

    async def record(self, event: StripeEvent, now: float) -> bool:
        """Store the event as pending; False when its id was stored before (nothing changes)."""
        values = {"id": event.id, "type": event.type, "created": event.created, "object_id": event.object_id,
                  "received_at": now, "body": event.body, "status": EventStatus.PENDING, "detail": ""}  # fmt: skip
        with translate_errors("recording a Stripe event"):
            try:
                async with self._write() as conn:
                    await conn.execute(stripe_events.insert().values(**values))
            except IntegrityError:
                return False
        return True

    async def pending(self, limit: int = 100) -> list[StripeEvent]:
        """Events stored but not applied yet, oldest state first."""
        query = (sa.select(stripe_events.c.id, stripe_events.c.type, stripe_events.c.created, stripe_events.c.body)
                 .where(stripe_events.c.status == EventStatus.PENDING)
                 .order_by(stripe_events.c.created, stripe_events.c.received_at).limit(limit))  # fmt: skip
        with translate_errors("reading pending Stripe events"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(query)).all()
        out = []
        for row in rows:
            data = json.loads(row.body)
            obj = (data.get("data") or {}).get("object")
            out.append(StripeEvent(row.id, row.type, float(row.created), obj if isinstance(obj, dict) else {}, row.body))
        return out

    async def events(self, status: str | None = None, limit: int = 100) -> list[StoredEvent]:
        query = sa.select(stripe_events).order_by(stripe_events.c.received_at.desc()).limit(limit)
        if status:
            query = query.where(stripe_events.c.status == status)
        with translate_errors("reading Stripe events"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(query)).all()
        return [StoredEvent(r.id, r.type, float(r.created), r.object_id, float(r.received_at), r.status, r.detail)
                for r in rows]  # fmt: skip

    async def mark(self, event_id: str, status: str, detail: str, now: float) -> None:
        with translate_errors("marking a Stripe event"):
            async with self._write() as conn:
                await conn.execute(stripe_events.update().where(stripe_events.c.id == event_id)
                                   .values(status=status, detail=detail[:2000], applied_at=now))  # fmt: skip

    async def apply(self, event: StripeEvent, now: float, *, can_fetch: bool,
                    fetched: Json | None = None) -> Applied:  # fmt: skip
        """Apply a stored event in one transaction and mark it; raise NeedsFetch (with nothing
        written) when the subscription must be re-fetched first. A malformed object is marked
        flagged and logged; nothing else is written for it."""
        try:
            with translate_errors("applying a Stripe event"):
                async with self._write() as conn:
                    state = (await conn.execute(sa.select(stripe_events.c.status)
                                                .where(stripe_events.c.id == event.id).with_for_update())).scalar()  # fmt: skip
                    if state != EventStatus.PENDING:
                        return Applied(state or EventStatus.IGNORED, "applied by another process", by_another=True)
                    applied = await self._dispatch(conn, event, now, can_fetch, fetched)
                    await conn.execute(stripe_events.update().where(stripe_events.c.id == event.id)
                                       .values(status=applied.status, detail=applied.detail, applied_at=now))  # fmt: skip
                    return applied
        except NeedsExpansion as exc:
            if exc.coupon and can_fetch:
                raise NeedsFetch("", str(exc), coupon=exc.coupon) from None
            detail = f"{type(exc).__name__}: {exc}"
            logger.warning("Stripe event %s (%s) flagged: %s", event.id, event.type, detail)
            await self.mark(event.id, EventStatus.FLAGGED, detail, now)
            return Applied(EventStatus.FLAGGED, detail)
        except (Malformed, KeyError, TypeError, ValueError, ArithmeticError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            logger.warning("Stripe event %s (%s) flagged: %s", event.id, event.type, detail)
            await self.mark(event.id, EventStatus.FLAGGED, detail, now)
            return Applied(EventStatus.FLAGGED, detail)

    async def _dispatch(self, conn: AsyncConnection, event: StripeEvent, now: float, can_fetch: bool,
                        fetched: Json | None) -> Applied:  # fmt: skip
        obj = event.object
        if event.family is Family.IGNORED:
            return Applied(EventStatus.IGNORED, f"{event.type} does not move MRR")
        if not obj:
            raise Malformed("the event carries no data.object")
        if event.family is Family.SUBSCRIPTION:
            return await self._subscription_event(conn, event, now, can_fetch, fetched)
        if event.family is Family.INVOICE:
            return await self._invoice_event(conn, event, now)
        if event.family is Family.COUPON:
            if not id_of(obj):
                raise Malformed("the event's object is not a coupon")
            await self._write_coupons(conn, [obj], now)
            return Applied(EventStatus.APPLIED, "coupon kept")
        if event.family is Family.CUSTOMER:
            customer = id_of(obj)
            if not customer:
                raise Malformed("the event's object is not a customer")
            row = await self._lock_customer(conn, customer, now)
            if event.created < row.last_event_created:
                return Applied(EventStatus.STALE, "an older customer snapshot than the one applied")
            await self._keep_customers(conn, [obj], event.created, now, deleted=event.type == "customer.deleted")
            changes = await self._revalue(conn, customer, event.created, now, Cause.EVENT, event.id, None)
            return Applied(EventStatus.APPLIED, "", changes)
        discount_id, customer = id_of(obj), id_of(obj.get("customer"))
        if not discount_id or not customer:
            raise Malformed("the event's object is not a discount with a customer")
        await self._lock_customer(conn, customer, now)
        deleted = event.type == "customer.discount.deleted"
        await conn.execute(*_upsert(conn, billing_discounts, {
            "id": discount_id, "customer": customer, "subscription": id_of(obj.get("subscription")),
            "discount": dict(obj), "deleted": deleted, "updated_at": now}, ["id"]))  # fmt: skip
        if not obj.get("subscription") and not obj.get("subscription_item"):
            await conn.execute(billing_customers.update().where(billing_customers.c.id == customer)
                               .values(discount=None if deleted else dict(obj)))  # fmt: skip
        changes = await self._revalue(conn, customer, event.created, now, Cause.EVENT, event.id, None)
        return Applied(EventStatus.APPLIED, "", changes)

    async def _subscription_event(self, conn: AsyncConnection, event: StripeEvent, now: float, can_fetch: bool,
                                  fetched: Json | None) -> Applied:  # fmt: skip
        sub_id, customer = checked_subscription(event.object)
        locked = await self._lock_customer(conn, customer, now)
        last = (await conn.execute(sa.select(billing_subscriptions.c.last_event_created)
                                   .where(billing_subscriptions.c.id == sub_id))).scalar()  # fmt: skip
        snapshot: Json = event.object
        if fetched is not None:
            snapshot = fetched
            checked_subscription(snapshot)
        elif last is not None and (event.created < last or (event.created == last and can_fetch)):
            if can_fetch:
                raise NeedsFetch(sub_id, "older than the state applied")
            return Applied(EventStatus.STALE, "an older snapshot than the one applied (no API key to re-fetch)")
        await self._keep_subscriptions(conn, [snapshot], max(event.created, last or 0.0), now)
        try:
            changes = await self._revalue(conn, customer, event.created, now, Cause.EVENT, event.id, sub_id, locked)
        except NeedsExpansion as exc:
            if can_fetch and exc.coupon:
                raise NeedsFetch(sub_id, str(exc), coupon=exc.coupon) from None
            if can_fetch and fetched is None:
                raise NeedsFetch(sub_id, str(exc)) from None
            raise
        return Applied(EventStatus.APPLIED, "re-fetched from Stripe" if fetched is not None else "", changes)

    async def _invoice_event(self, conn: AsyncConnection, event: StripeEvent, now: float) -> Applied:
        invoice = event.object
        invoice_id, customer = id_of(invoice), id_of(invoice.get("customer"))
        if not invoice_id or not customer:
            raise Malformed("the event's object is not an invoice with a customer")
        await self._lock_customer(conn, customer, now)
        failed = event.type == "invoice.payment_failed"
        stored = (await conn.execute(sa.select(billing_invoices.c.last_event_created)
                                     .where(billing_invoices.c.id == invoice_id))).scalar()  # fmt: skip
        if stored is not None and event.created < stored:  # never start or end dunning from an old state
            return Applied(EventStatus.STALE, "an older invoice state than the one applied")
        await self._keep_invoices(conn, [invoice], event.created, now, failed=failed, paid=not failed)
        sub_id = invoice_subscription(invoice)
        if sub_id is None:
            return Applied(EventStatus.APPLIED, "an invoice of no subscription")
        row = (await conn.execute(sa.select(billing_subscriptions).where(billing_subscriptions.c.id == sub_id))).first()
        if row is None:
            return Applied(EventStatus.APPLIED, f"subscription {sub_id} is not known yet")
        values: dict[str, Any] = {}
        if failed and row.dunning_since is None:
            values = {"dunning_since": event.created, "dunning_invoice": invoice_id}
        elif not failed and row.dunning_invoice in (None, invoice_id):
            values = {"dunning_since": None, "dunning_invoice": None}
        shares = net_shares(invoice)
        if shares and invoice.get("billing_reason") in ("subscription_create", "subscription_cycle", "subscription_update"):
            values["net_shares"] = {**(row.net_shares or {}), **shares}
        if values:
            await conn.execute(billing_subscriptions.update().where(billing_subscriptions.c.id == sub_id).values(**values))
        changes = await self._revalue(conn, customer, event.created, now, Cause.EVENT, event.id, sub_id)
        return Applied(EventStatus.APPLIED, "", changes)

    # -- objects ------------------------------------------------------------------------------

    async def _lock_customer(self, conn: AsyncConnection, customer: str, now: float) -> Any:
        return (await lock_customers(conn, [customer], now))[customer]

    async def _keep_customers(self, conn: AsyncConnection, objs: Sequence[Json], created: float, now: float,
                              deleted: bool = False) -> None:  # fmt: skip
        """Update the (locked) customers' rows from their objects."""
        rows = []
        for obj in objs:
            discount = obj.get("discount")
            rows.append({"b_id": id_of(obj), "email": obj.get("email"), "name": obj.get("name"),
                         "currency": obj.get("currency"), "deleted": deleted or bool(obj.get("deleted")),
                         "discount": dict(discount) if isinstance(discount, Mapping) else None,
                         "created": timestamp(obj.get("created")), "last_event_created": created, "updated_at": now})  # fmt: skip
        if rows:
            await conn.execute(billing_customers.update().where(billing_customers.c.id == sa.bindparam("b_id"),
                                                                billing_customers.c.last_event_created <= created), rows)  # fmt: skip

    async def _keep_subscriptions(self, conn: AsyncConnection, snapshots: Sequence[Json], created: float,
                                  now: float) -> None:  # fmt: skip
        """Upsert the subscriptions (their net shares kept), the tiered prices and the discounts
        they carry; of one id seen twice the last wins."""
        subs: list[dict[str, Any]] = []
        prices: list[dict[str, Any]] = []
        discounts: list[dict[str, Any]] = []
        for snapshot in snapshots:
            sub_id, customer = checked_subscription(snapshot)
            subs.append({
                "id": sub_id, "customer": customer, "status": snapshot["status"], "currency": str(snapshot["currency"]).lower(),
                "snapshot": dict(snapshot), "start_date": timestamp(snapshot.get("start_date")),
                "canceled_at": timestamp(snapshot.get("canceled_at")), "ended_at": timestamp(snapshot.get("ended_at")),
                "cancel_at_period_end": bool(snapshot.get("cancel_at_period_end")),
                "trial_start": timestamp(snapshot.get("trial_start")), "trial_end": timestamp(snapshot.get("trial_end")),
                "net_shares": {}, "last_event_created": created, "updated_at": now})  # fmt: skip
            for item in snapshot["items"]["data"]:
                price = item["price"]
                if price.get("tiers") and id_of(price):
                    prices.append({"id": price["id"], "price": dict(price), "updated_at": now})
                for discount in [*(item.get("discounts") or []), *(snapshot.get("discounts") or [])]:
                    if isinstance(discount, Mapping) and id_of(discount):
                        discounts.append({"id": discount["id"], "customer": customer, "subscription": sub_id,
                                          "discount": dict(discount), "deleted": False, "updated_at": now})  # fmt: skip
        if subs:
            await conn.execute(upsert_many(conn, billing_subscriptions, subs[0], ["id"], ["net_shares"],
                                           newer="last_event_created"), subs)  # fmt: skip
            # Dunning ends with past_due (paid, or moved on to unpaid or canceled).
            ended = sorted({row["id"] for row in subs if row["status"] != "past_due"})
            if ended:
                await conn.execute(billing_subscriptions.update().where(
                    billing_subscriptions.c.id.in_(ended), billing_subscriptions.c.dunning_since.is_not(None),
                    billing_subscriptions.c.last_event_created <= created).values(dunning_since=None, dunning_invoice=None))  # fmt: skip
        for table, rows in ((billing_prices, prices), (billing_discounts, discounts)):
            if rows:
                await conn.execute(upsert_many(conn, table, rows[0], ["id"]), rows)

    async def _keep_invoices(self, conn: AsyncConnection, invoices: Sequence[Json], created: float, now: float,
                             failed: bool = False, paid: bool = False) -> None:  # fmt: skip
        """Upsert the invoices, except over one stored from a newer event. `paid`: an invoice in
        status paid was paid at `created` unless it says when; `failed`: its payment failed then
        (else the failure stored stays, as does a payment date stored when none is known now)."""
        rows = []
        for invoice in invoices:
            transitions = invoice.get("status_transitions") or {}
            paid_at = timestamp(transitions.get("paid_at")) or (created if paid and invoice.get("status") == "paid" else None)
            rows.append({
                "id": id_of(invoice), "customer": id_of(invoice.get("customer")),
                "subscription": invoice_subscription(invoice),
                "status": invoice.get("status"), "billing_reason": invoice.get("billing_reason"),
                "currency": str(invoice.get("currency") or "").lower() or None,
                "amount_due": int(invoice.get("amount_due") or 0), "amount_paid": int(invoice.get("amount_paid") or 0),
                "total": int(invoice.get("total") or 0), "attempt_count": int(invoice.get("attempt_count") or 0),
                "created": timestamp(invoice.get("created")) or created, "paid_at": paid_at or None,
                "failed_at": created if failed else None, "last_event_created": created, "updated_at": now})  # fmt: skip
        if not rows:
            return
        insert = insert_for(conn)(billing_invoices)
        kept = {"id", "paid_at", "failed_at"}
        changed = {c: insert.excluded[c] for c in rows[0] if c not in kept}
        changed["paid_at"] = sa.func.coalesce(insert.excluded.paid_at, billing_invoices.c.paid_at)
        if failed:
            changed["failed_at"] = insert.excluded.failed_at
        await conn.execute(insert.on_conflict_do_update(
            index_elements=["id"], set_=changed,
            where=billing_invoices.c.last_event_created <= insert.excluded.last_event_created), rows)  # fmt: skip

    async def _take_shares(self, conn: AsyncConnection, invoices: Sequence[Json]) -> None:
        """Merge the invoices' net shares into their stored subscriptions', in order."""
        taken = [(sub_id, shares) for invoice in invoices
                 if (sub_id := invoice_subscription(invoice)) and (shares := net_shares(invoice))]  # fmt: skip
        if not taken:
            return
        merged = {row.id: dict(row.net_shares or {}) for row in (await conn.execute(
            sa.select(billing_subscriptions.c.id, billing_subscriptions.c.net_shares)
            .where(billing_subscriptions.c.id.in_(sorted({sub_id for sub_id, _ in taken}))))).all()}  # fmt: skip
        for sub_id, shares in taken:
            if sub_id in merged:
                merged[sub_id].update(shares)
        if merged:
            await conn.execute(billing_subscriptions.update().where(billing_subscriptions.c.id == sa.bindparam("b_id"))
                               .values(net_shares=sa.bindparam("b_shares")),
                               [{"b_id": sub_id, "b_shares": shares} for sub_id, shares in merged.items()])  # fmt: skip

    # -- revaluation --------------------------------------------------------------------------

    async def _revalue(self, conn: AsyncConnection, customer: str, at: float, now: float, cause: Cause,
                       event_id: str | None, subscription: str | None, row: Any = None) -> list[Change]:  # fmt: skip
        """Recompute the customer and write what changed; `row`: the customer's row when the
        caller has it (as locked), else it is read."""
        books = await load_books(conn, [customer], None if row is None else {customer: row})
        writes = LedgerWrites(now)
        changes = writes.revalue(books[customer], at, self._policies, cause, event_id, subscription)
        await writes.write(conn)
        return changes

    # -- time, backfill and reconciliation ----------------------------------------------------

    async def due(self, now: float, limit: int = 500) -> list[tuple[str, float]]:
        """Customers whose MRR changes with time alone by `now`, with the moment it changes."""
        query = (sa.select(billing_subscriptions.c.customer, sa.func.min(billing_subscriptions.c.next_change_at))
                 .where(billing_subscriptions.c.next_change_at <= now)
                 .group_by(billing_subscriptions.c.customer).limit(limit))  # fmt: skip
        with translate_errors("reading scheduled MRR changes"):
            async with self._reads.connect() as conn:
                return [(row[0], float(row[1])) for row in (await conn.execute(query)).all()]

    async def apply_due(self, customer: str, at: float, now: float) -> list[Change]:
        with translate_errors("applying a scheduled MRR change"):
            async with self._write() as conn:
                await self._lock_customer(conn, customer, now)
                return await self._revalue(conn, customer, at, now, Cause.SCHEDULE, None, None)

    async def keep(self, *, customers: Sequence[Json] = (), invoices: Sequence[Json] = (),
                   subscriptions: Sequence[Json] = (), seen_at: float, now: float) -> None:  # fmt: skip
        """Store objects read from Stripe's API (backfill, reconcile) as of `seen_at`: newer than
        any event created before it. The customers they name are created if missing and locked
        first; each table is then written in one statement."""
        kept_customers = [obj for obj in customers if id_of(obj)]
        kept_invoices = [obj for obj in invoices if id_of(obj) and id_of(obj.get("customer"))]
        owners = [checked_subscription(obj)[1] for obj in subscriptions]
        named = [str(obj["id"]) for obj in kept_customers] + [str(id_of(obj.get("customer"))) for obj in kept_invoices]
        with translate_errors("storing Stripe objects"):
            async with self._write() as conn:
                await lock_customers(conn, named + owners, now)
                await self._keep_customers(conn, kept_customers, seen_at, now)
                # An invoice of status paid was paid by `seen_at` at the latest.
                await self._keep_invoices(conn, kept_invoices, seen_at, now, paid=True)
                await self._take_shares(conn, kept_invoices)
                await self._keep_subscriptions(conn, subscriptions, seen_at, now)

    async def settle(self, customers: Sequence[str], at: float, now: float,
                     paid_evidence: Collection[str] = ()) -> list[Change]:  # fmt: skip
        """After `keep`: bring each customer's ledger to the state just stored, all of them in one
        transaction. A customer the ledger has never seen opens at its subscriptions' start dates
        (backfill); any other difference is a `reconciliation` change at `at`. `paid_evidence`:
        customers known to have paid before (so their return is a reactivation)."""
        found: list[Change] = []
        names = list(dict.fromkeys(customers))
        with translate_errors("settling the MRR ledger"):
            async with self._write() as conn:
                books = await load_books(conn, names, await lock_customers(conn, names, now))
                seen = await ledger_customers(conn, [c for c in names if not books[c].positions])
                writes = LedgerWrites(now)
                for customer in names:
                    book = books[customer]
                    if book.positions or customer in seen:
                        found += writes.revalue(book, at, self._policies, Cause.RECONCILIATION)
                        continue
                    opened = openings(customer, book.held, at, self._policies)
                    writes.record(book, opened)
                    found += opened
                    writes.revalue(book, at, self._policies, Cause.RECONCILIATION)
                    if not opened and customer in paid_evidence:
                        writes.paid_before.append(customer)
                await writes.write(conn, paid_before_at=at)
        return found

    async def keep_coupons(self, coupons: Sequence[Json], now: float) -> None:
        """Store coupons read from Stripe (a discount names its coupon by id)."""
        with translate_errors("storing coupons"):
            async with self._write() as conn:
                await self._write_coupons(conn, coupons, now)

    async def _write_coupons(self, conn: AsyncConnection, coupons: Sequence[Json], now: float) -> None:
        for coupon in coupons:
            if id_of(coupon):
                await conn.execute(*_upsert(conn, billing_coupons, {"id": coupon["id"], "coupon": dict(coupon),
                                                                   "updated_at": now}, ["id"]))  # fmt: skip

    async def keep_prices(self, prices: Sequence[Json], now: float) -> None:
        """Store prices read with their tiers (webhooks and listings never carry tiers)."""
        with translate_errors("storing prices"):
            async with self._write() as conn:
                for price in prices:
                    if id_of(price) and price.get("tiers"):
                        await conn.execute(*_upsert(conn, billing_prices, {"id": price["id"], "price": dict(price),
                                                                          "updated_at": now}, ["id"]))  # fmt: skip

    async def tiered_prices_missing(self) -> list[str]:
        """Tiered prices of stored subscriptions with no stored tiers."""
        with translate_errors("reading prices"):
            async with self._reads.connect() as conn:
                known = {r[0] for r in (await conn.execute(sa.select(billing_prices.c.id))).all()}
                missing: set[str] = set()
                for (snapshot,) in (await conn.execute(sa.select(billing_subscriptions.c.snapshot))).all():
                    for item in snapshot["items"]["data"]:
                        price = item.get("price") or {}
                        if price.get("billing_scheme") == "tiered" and not price.get("tiers") and price.get("id"):
                            missing.add(str(price["id"]))
        return sorted(missing - known)

    async def postpone_due(self, customer: str, until: float) -> None:
        """Move the customer's changes due with time alone to `until` (one that cannot be applied)."""
        with translate_errors("postponing a scheduled MRR change"):
            async with self._write() as conn:
                await conn.execute(billing_subscriptions.update().where(
                    billing_subscriptions.c.customer == customer,
                    billing_subscriptions.c.next_change_at.is_not(None)).values(next_change_at=until))  # fmt: skip

    async def last_sync(self) -> float | None:
        """When the last backfill or reconciliation finished."""
        with translate_errors("reading reconciliations"):
            async with self._reads.connect() as conn:
                found = (await conn.execute(sa.select(sa.func.max(billing_syncs.c.finished_at)))).scalar()
        return float(found) if found is not None else None

    async def record_sync(self, finished_at: float, subscriptions: int, opened: int, drift: dict[str, int]) -> None:
        with translate_errors("recording a reconciliation"):
            async with self._write() as conn:
                await conn.execute(billing_syncs.insert().values(finished_at=finished_at, subscriptions=subscriptions,
                                                                 opened_customers=opened, drift=drift))  # fmt: skip
