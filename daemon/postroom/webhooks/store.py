"""The SQL of outbound webhooks on SQLAlchemy Core, one code path for SQLite and PostgreSQL:
endpoints (create, list, delete, enable), enqueueing delivery rows in a caller's transaction (the
outbox consumer's, or a replay's), claiming due rows with a lease (`FOR UPDATE SKIP LOCKED` on
PostgreSQL, so several daemons share the work), and recording each attempt with the endpoint's
failure streak. Driver errors become StoreError here.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from postroom.core.errors import NotFoundError
from postroom.store.engine import GatedStore, translate_errors
from postroom.store.tables import events, messages, webhook_deliveries, webhook_endpoints
from postroom.webhooks.model import (
    Attempt,
    DeliveryState,
    DueDelivery,
    Endpoint,
    EventFacts,
    payload,
    subscribed,
    webhook_id,
    webhook_type,
)

MAX_ERROR_TEXT = 1000
ACTIVE = (DeliveryState.PENDING.value, DeliveryState.SENDING.value)
REPLAY_BATCH = 500


def _endpoint(row: Any, pending: int = 0) -> Endpoint:
    return Endpoint(row.id, row.url, tuple(row.event_types), row.description, bool(row.enabled),
                    float(row.created_at), float(row.updated_at), int(row.failure_streak), row.disabled_at,
                    row.disabled_reason, row.last_success_at, row.last_failure_at, pending)  # fmt: skip


@dataclass(frozen=True)
class Subscriber:
    id: str
    event_types: tuple[str, ...]
    created_at: float


async def subscribers(conn: AsyncConnection, endpoint_id: str | None = None) -> list[Subscriber]:
    """The enabled endpoints (or the one named, enabled or not)."""
    query = sa.select(webhook_endpoints.c.id, webhook_endpoints.c.event_types, webhook_endpoints.c.created_at)
    if endpoint_id is None:
        query = query.where(webhook_endpoints.c.enabled.is_(True))
    else:
        query = query.where(webhook_endpoints.c.id == endpoint_id)
    return [Subscriber(r.id, tuple(r.event_types), float(r.created_at)) for r in (await conn.execute(query)).all()]


async def message_facts(conn: AsyncConnection, message_ids: Sequence[str]) -> dict[str, tuple[str, str | None, tuple[str, ...]]]:
    """stream, template id and tags of each message still stored."""
    if not message_ids:
        return {}
    rows = (
        await conn.execute(
            sa.select(messages.c.id, messages.c.stream, messages.c.template_id, messages.c.tags)
            .where(messages.c.id.in_(sorted(set(message_ids))))
        )
    ).all()
    return {r.id: (r.stream, r.template_id, tuple(r.tags or ())) for r in rows}


async def enqueue(
    conn: AsyncConnection, found: Sequence[EventFacts], targets: Sequence[Subscriber], now: float,
    *, newer_only: bool = False,
) -> int:
    """One pending delivery row per (event, subscribed endpoint), in the caller's transaction;
    return how many. `newer_only`: not for events that happened before the endpoint was added
    (the consumer catching up after a pause; replay sends older events on purpose)."""
    if not found or not targets:
        return 0
    rows = []
    for facts in found:
        kind = webhook_type(facts.type)
        if kind is None:
            continue
        body = payload(kind, facts)
        for target in targets:
            if subscribed(target.event_types, kind) and not (newer_only and facts.at < target.created_at):
                rows.append({"endpoint_id": target.id, "event_id": facts.event_id,
                             "webhook_id": webhook_id(facts.event_id), "type": kind.value, "payload": body,
                             "state": DeliveryState.PENDING.value, "attempts": 0, "created_at": now,
                             "updated_at": now, "next_attempt_at": now})  # fmt: skip
    if rows:
        await conn.execute(webhook_deliveries.insert(), rows)
    return len(rows)


class SqlWebhookStore(GatedStore):

    # -- endpoints ------------------------------------------------------------------------

    async def create_endpoint(self, endpoint_id: str, url: str, secret: str, event_types: Sequence[str],
                              description: str, now: float) -> Endpoint:  # fmt: skip
        with translate_errors("creating a webhook endpoint"):
            async with self._write() as tx:
                await tx.execute(webhook_endpoints.insert().values(
                    id=endpoint_id, url=url, secret=secret, event_types=list(event_types),
                    description=description, enabled=True, created_at=now, updated_at=now, failure_streak=0,
                ))  # fmt: skip
        return await self.endpoint(endpoint_id)

    async def endpoints(self) -> list[Endpoint]:
        pending = (
            sa.select(webhook_deliveries.c.endpoint_id, sa.func.count().label("n"))
            .where(webhook_deliveries.c.state.in_(ACTIVE))
            .group_by(webhook_deliveries.c.endpoint_id)
            .subquery()
        )
        with translate_errors("listing webhook endpoints"):
            async with self._reads.connect() as conn:
                rows = (
                    await conn.execute(
                        sa.select(webhook_endpoints, pending.c.n)
                        .outerjoin(pending, pending.c.endpoint_id == webhook_endpoints.c.id)
                        .order_by(webhook_endpoints.c.created_at, webhook_endpoints.c.id)
                    )
                ).all()
        return [_endpoint(r, int(r.n or 0)) for r in rows]

    async def endpoint(self, endpoint_id: str) -> Endpoint:
        for found in await self.endpoints():
            if found.id == endpoint_id:
                return found
        raise NotFoundError(f"no webhook endpoint {endpoint_id}")

    async def secret(self, endpoint_id: str) -> tuple[str, str]:
        """(url, secret) of an endpoint."""
        with translate_errors("reading a webhook endpoint"):
            async with self._reads.connect() as conn:
                row = (await conn.execute(sa.select(webhook_endpoints.c.url, webhook_endpoints.c.secret)
                                          .where(webhook_endpoints.c.id == endpoint_id))).first()  # fmt: skip
        if row is None:
            raise NotFoundError(f"no webhook endpoint {endpoint_id}")
        return row.url, row.secret

    async def delete_endpoint(self, endpoint_id: str) -> None:
        with translate_errors("deleting a webhook endpoint"):
            async with self._write() as tx:
                await tx.execute(webhook_deliveries.delete().where(webhook_deliveries.c.endpoint_id == endpoint_id))
                result = await tx.execute(webhook_endpoints.delete().where(webhook_endpoints.c.id == endpoint_id))
        if result.rowcount == 0:
            raise NotFoundError(f"no webhook endpoint {endpoint_id}")

    async def set_enabled(self, endpoint_id: str, enabled: bool, now: float) -> Endpoint:
        values: dict[str, Any] = {"enabled": enabled, "updated_at": now}
        if enabled:
            values.update(failure_streak=0, disabled_at=None, disabled_reason=None)
        else:
            values.update(disabled_at=now, disabled_reason="disabled by an operator")
        with translate_errors("changing a webhook endpoint"):
            async with self._write() as tx:
                result = await tx.execute(webhook_endpoints.update()
                                          .where(webhook_endpoints.c.id == endpoint_id).values(**values))  # fmt: skip
        if result.rowcount == 0:
            raise NotFoundError(f"no webhook endpoint {endpoint_id}")
        return await self.endpoint(endpoint_id)

    # -- the sender's side ----------------------------------------------------------------

    async def claim(self, limit: int, now: float, lease_seconds: float, *, per_endpoint: int | None = None,
                    busy: Collection[str] = ()) -> list[DueDelivery]:  # fmt: skip
        """Lease up to `limit` due deliveries of enabled endpoints (and ones whose lease ran out:
        their sender died), at most `per_endpoint` of one endpoint, none of the `busy` ones (this
        sender still has requests to them in flight), oldest due first.

        The candidates are read first, then leased by an UPDATE that checks again that each is
        still due: of two daemons racing for a row, the second finds it leased (PostgreSQL
        re-reads a row another transaction changed before updating it) and skips it."""
        due = sa.or_(
            sa.and_(webhook_deliveries.c.state == DeliveryState.PENDING.value,
                    webhook_deliveries.c.next_attempt_at <= now),
            sa.and_(webhook_deliveries.c.state == DeliveryState.SENDING.value,
                    webhook_deliveries.c.lease_expires_at <= now),
        )  # fmt: skip
        enabled = sa.select(webhook_endpoints.c.id).where(webhook_endpoints.c.enabled.is_(True))
        conditions = [due, webhook_deliveries.c.endpoint_id.in_(enabled)]
        if busy:
            conditions.append(webhook_deliveries.c.endpoint_id.not_in(sorted(busy)))
        ranked = sa.select(
            webhook_deliveries.c.id,
            webhook_deliveries.c.next_attempt_at,
            sa.func.row_number().over(partition_by=webhook_deliveries.c.endpoint_id,
                                      order_by=(webhook_deliveries.c.next_attempt_at, webhook_deliveries.c.id))
            .label("rank"),
        ).where(*conditions).subquery()  # fmt: skip
        candidates = sa.select(ranked.c.id).order_by(ranked.c.next_attempt_at, ranked.c.id).limit(limit)
        if per_endpoint is not None:
            candidates = candidates.where(ranked.c.rank <= per_endpoint)
        with translate_errors("claiming webhook deliveries"):
            async with self._write() as tx:
                ids = list((await tx.execute(candidates)).scalars().all())
                if not ids:
                    return []
                claimed = (
                    await tx.execute(
                        webhook_deliveries.update()
                        .where(webhook_deliveries.c.id.in_(ids), due)
                        .values(state=DeliveryState.SENDING.value, lease_expires_at=now + lease_seconds,
                                updated_at=now)
                        .returning(webhook_deliveries.c.id)
                    )
                ).scalars().all()  # fmt: skip
                if not claimed:
                    return []
                rows = (
                    await tx.execute(
                        sa.select(webhook_deliveries, webhook_endpoints.c.url, webhook_endpoints.c.secret)
                        .join(webhook_endpoints, webhook_endpoints.c.id == webhook_deliveries.c.endpoint_id)
                        .where(webhook_deliveries.c.id.in_(list(claimed)))
                        .order_by(webhook_deliveries.c.id)
                    )
                ).all()
        return [DueDelivery(int(r.id), r.endpoint_id, r.url, r.secret, r.webhook_id, r.type, dict(r.payload),
                            int(r.attempts)) for r in rows]  # fmt: skip

    async def record(
        self, attempts: Sequence[Attempt], next_attempt: Callable[[int], float | None], now: float,
        disable_after: int,
    ) -> list[str]:  # fmt: skip
        """Write each attempt's result; `next_attempt(attempts so far)` is when a failed delivery
        is due again, None when it has had all its attempts. Return the endpoints this disabled."""
        disabled: list[str] = []
        with translate_errors("recording webhook attempts"):
            async with self._write() as tx:
                for attempt in attempts:
                    row = (await tx.execute(sa.select(webhook_deliveries.c.attempts)
                                            .where(webhook_deliveries.c.id == attempt.delivery_id))).first()  # fmt: skip
                    if row is None:
                        continue  # the endpoint was deleted meanwhile
                    tried = int(row.attempts) + 1
                    values: dict[str, Any] = {"attempts": tried, "updated_at": now, "lease_expires_at": None,
                                              "last_status": attempt.status,
                                              "last_error": attempt.error[:MAX_ERROR_TEXT] or None}  # fmt: skip
                    endpoint = webhook_endpoints.c
                    if attempt.ok:
                        values.update(state=DeliveryState.DELIVERED.value, delivered_at=now)
                        change: dict[str, Any] = {"failure_streak": 0, "last_success_at": now}
                    else:
                        due = next_attempt(tried)
                        if due is None:
                            values.update(state=DeliveryState.FAILED.value)
                        else:
                            values.update(state=DeliveryState.PENDING.value, next_attempt_at=due)
                        change = {"failure_streak": endpoint.failure_streak + 1, "last_failure_at": now}
                    await tx.execute(webhook_deliveries.update()
                                     .where(webhook_deliveries.c.id == attempt.delivery_id).values(**values))  # fmt: skip
                    await tx.execute(webhook_endpoints.update().where(endpoint.id == attempt.endpoint_id)
                                     .values(**change))  # fmt: skip
                reason = f"{disable_after} failed attempts in a row"
                disabled = list(
                    (
                        await tx.execute(
                            webhook_endpoints.update()
                            .where(webhook_endpoints.c.enabled.is_(True),
                                   webhook_endpoints.c.failure_streak >= disable_after)
                            .values(enabled=False, disabled_at=now, disabled_reason=reason, updated_at=now)
                            .returning(webhook_endpoints.c.id)
                        )
                    ).scalars().all()
                )  # fmt: skip
        return disabled

    async def prune(self, before: float, limit: int = 5000) -> int:
        """Delete up to `limit` delivered or failed deliveries last updated before `before`."""
        old = (
            sa.select(webhook_deliveries.c.id)
            .where(webhook_deliveries.c.state.in_((DeliveryState.DELIVERED.value, DeliveryState.FAILED.value)),
                   webhook_deliveries.c.updated_at < before)
            .limit(limit)
            .scalar_subquery()
        )  # fmt: skip
        with translate_errors("pruning webhook deliveries"):
            async with self._write() as tx:
                result = await tx.execute(webhook_deliveries.delete().where(webhook_deliveries.c.id.in_(old)))
        return int(result.rowcount or 0)

    async def queue_figures(self) -> tuple[dict[str, int], float | None]:
        """Deliveries by state, and the oldest `created_at` of one not yet sent."""
        with translate_errors("reading the webhook queue"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(sa.select(webhook_deliveries.c.state, sa.func.count())
                                           .group_by(webhook_deliveries.c.state))).all()  # fmt: skip
                oldest = await conn.scalar(sa.select(sa.func.min(webhook_deliveries.c.created_at))
                                           .where(webhook_deliveries.c.state.in_(ACTIVE)))  # fmt: skip
        return {r[0]: int(r[1]) for r in rows}, None if oldest is None else float(oldest)

    async def deliveries(self, endpoint_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """An endpoint's newest deliveries, without their payloads."""
        await self.endpoint(endpoint_id)  # NotFoundError
        c = webhook_deliveries.c
        query = (
            sa.select(c.id, c.event_id, c.webhook_id, c.type, c.state, c.attempts, c.created_at, c.next_attempt_at,
                      c.delivered_at, c.last_status, c.last_error)
            .where(c.endpoint_id == endpoint_id)
            .order_by(c.id.desc())
            .limit(limit)
        )  # fmt: skip
        with translate_errors("listing webhook deliveries"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(query)).mappings().all()
        return [dict(r) for r in rows]

    # -- replay ---------------------------------------------------------------------------

    async def replay(
        self, *, event_ids: Sequence[int] = (), since: float | None = None, until: float | None = None,
        endpoint_id: str | None = None, now: float, progress: Callable[[int, int], None] | None = None,
    ) -> int:  # fmt: skip
        """Enqueue the events named (by id, or `since` <= at < `until`) again for the enabled
        endpoints subscribed to them (or the one named); return the rows enqueued. Works in
        batches of events, each its own short transaction; `progress(events done, rows)` after each."""
        condition: sa.ColumnElement[bool]
        if event_ids:
            condition = events.c.id.in_(sorted(set(event_ids)))
        else:
            parts = [events.c.at >= since] if since is not None else []
            parts += [events.c.at < until] if until is not None else []
            condition = sa.and_(sa.true(), *parts)
        last_id, done, total = -1, 0, 0
        while True:
            with translate_errors("replaying webhooks"):
                async with self._write() as tx:
                    targets = await subscribers(tx, endpoint_id)
                    if endpoint_id is not None and not targets:
                        raise NotFoundError(f"no webhook endpoint {endpoint_id}")
                    rows = (await tx.execute(sa.select(events).where(condition, events.c.id > last_id)
                                             .order_by(events.c.id).limit(REPLAY_BATCH))).all()  # fmt: skip
                    if not rows:
                        return total
                    found = await facts_of(tx, rows)
                    total += await enqueue(tx, found, targets, now)
            last_id, done = int(rows[-1].id), done + len(rows)
            if progress is not None:
                progress(done, total)


async def facts_of(conn: AsyncConnection, rows: Sequence[Any]) -> list[EventFacts]:
    """EventFacts of event rows (or `Event`s), with their messages' stream, template and tags."""
    about = await message_facts(conn, [r.message_id for r in rows])
    found = []
    for r in rows:
        stream, template, tags = about.get(r.message_id, (None, None, ()))
        found.append(EventFacts(int(r.id), r.type, float(r.at), r.message_id, r.delivery_id, r.recipient,
                                dict(r.detail or {}), stream, template, tags))  # fmt: skip
    return found
