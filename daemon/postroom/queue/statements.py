"""The SQL of the queue as SQLAlchemy Core statements, shared by both store implementations.

Hot-path statements take every changing value as a bindparam, so their SQL never changes and is
compiled once (`functools.cache`; the SQLite writer thread also caches the compiled text). Lists go
in as one parameter: an expanding IN list elsewhere, one JSON array read with `json_each` on
SQLite (`as_json`), so the SQL stays the same for any number of values.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from postroom.core.addresses import domain_of
from postroom.core.types import SHADOW_ROUTE, DeliveryState, Submission
from postroom.queue.models import ClaimedDelivery, QueuedMessage, Release
from postroom.store.tables import deliveries, events, messages

IDEMPOTENCY_WINDOW = 24 * 3600.0
CLAIMABLE = (DeliveryState.QUEUED.value, DeliveryState.DEFERRED.value)


def request_hash(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


@dataclass(frozen=True)
class Lease:
    """Deliveries written already leased to a worker (`insert_many(..., lease=)`)."""

    owner: str
    expires_at: float


def _copies_to_send(batch: list[tuple[str, Submission]]) -> list[tuple[str, Submission, str, str]]:
    """(message id, submission, recipient, route) of every delivery to send: one per recipient on
    its route, and one more on SHADOW_ROUTE per shadow copy (not for a recipient the screen took out)."""
    copies = [(message_id, item, recipient, item.recipient_routes.get(recipient, item.route))
              for message_id, item in batch for recipient in item.recipients]  # fmt: skip
    copies += [(message_id, item, recipient, SHADOW_ROUTE)
               for message_id, item in batch if item.shadow_copies
               for recipient in item.shadow_copies if recipient in item.recipients]  # fmt: skip
    return copies


def insert_statements(
    batch: list[tuple[str, Submission]], now: float, lease: Lease | None = None
) -> list[tuple[sa.Insert, list[dict[str, Any]]]]:
    """The rows one batch of submissions writes: its messages, deliveries and `accepted` events.
    With `lease`, the deliveries start out leased to that worker instead of queued."""
    state = DeliveryState.SENDING.value if lease else DeliveryState.QUEUED.value
    leased = {"lease_owner": lease.owner, "lease_expires_at": lease.expires_at} if lease else {}
    return [
        (
            messages.insert(),
            [
                {
                    "id": message_id,
                    "created_at": now,
                    "source": item.source,
                    "submitted_by": item.submitted_by,
                    "mail_from": item.mail_from,
                    "header_from": item.header_from,
                    "subject": item.subject,
                    "stream": item.stream,
                    "route": item.route,
                    "tags": list(item.tags),
                    "size": len(item.content),
                    "content": item.content,
                    "error": None,
                    "template_id": item.template[0] if item.template else None,
                    "template_version": item.template[1] if item.template else None,
                    "template_data": dict(item.template_data) if item.template_data is not None else None,
                }
                for message_id, item in batch
            ],
        ),
        (
            deliveries.insert(),
            [
                {
                    "message_id": message_id,
                    "recipient": recipient,
                    "domain": domain_of(recipient),
                    "state": state,
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                    "next_attempt_at": now,
                    "route": route,
                    "mail_from": item.return_paths.get(recipient),
                    "last_reply": None,
                    "finished_at": None,
                    **leased,
                }
                for message_id, item, recipient, route in _copies_to_send(batch)
            ]
            + [
                {
                    "message_id": message_id,
                    "recipient": recipient,
                    "domain": domain_of(recipient),
                    "state": DeliveryState.SUPPRESSED.value,
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                    "next_attempt_at": now,
                    "route": item.recipient_routes.get(recipient, item.route),
                    "mail_from": None,
                    "last_reply": f"suppressed: {why.get('reason', '')}"[:2000],
                    "finished_at": now,
                    **{key: None for key in leased},  # rows of one executemany name the same columns
                }
                for message_id, item in batch
                for recipient, why in item.suppressed.items()
            ],
        ),
        (
            events.insert(),
            [
                {
                    "at": now,
                    "type": "accepted",
                    "message_id": message_id,
                    "delivery_id": None,
                    "recipient": None,
                    "detail": {"source": item.source, "recipients": len(item.recipients)},
                }
                for message_id, item in batch
            ]
            + [
                {
                    "at": now,
                    "type": "suppressed",
                    "message_id": message_id,
                    "delivery_id": None,
                    "recipient": recipient,
                    "detail": dict(why),
                }
                for message_id, item in batch
                for recipient, why in item.suppressed.items()
            ],
        ),
    ]


@functools.cache
def suppressed_events_statement(as_json: bool) -> sa.Update:
    """Takes :ids (message ids): gives their `suppressed` events, written with the batch before the
    deliveries had ids, the id of the delivery each is about (in the same transaction)."""
    delivery = (
        sa.select(deliveries.c.id)
        .where(deliveries.c.message_id == events.c.message_id, deliveries.c.recipient == events.c.recipient)
        .limit(1)
        .scalar_subquery()
    )
    return (
        events.update()
        .where(in_list(events.c.message_id, "ids", as_json), events.c.type == "suppressed",
               events.c.delivery_id.is_(None))
        .values(delivery_id=delivery)
    )  # fmt: skip


def in_list(column: sa.ColumnElement[Any], name: str, as_json: bool) -> sa.ColumnElement[bool]:
    """`column IN (:name)`: on SQLite one JSON array parameter read with json_each, so the SQL is
    the same for any number of values (and compiled once); elsewhere an expanding parameter."""
    if as_json:
        values: sa.Select[Any] = sa.select(sa.column("value")).select_from(
            sa.func.json_each(sa.bindparam(name))
        )
        return column.in_(values.scalar_subquery())
    return column.in_(sa.bindparam(name, expanding=True))


def claim_params(
    owner: str, limit: int, now: float, lease_seconds: float, exclude_domains: Sequence[str], as_json: bool
) -> dict[str, Any]:
    """The parameters of `claim_statement(bool(exclude_domains), as_json)`."""
    params: dict[str, Any] = {"owner": owner, "limit": limit, "now": now, "until": now + lease_seconds}
    if exclude_domains:
        excluded = sorted(exclude_domains)
        params["excluded"] = json.dumps(excluded) if as_json else excluded
    return params


@functools.cache
def claim_statement(excluding: bool, as_json: bool) -> sa.Update:
    """Takes :owner, :limit, :now, :until and, when `excluding`, :excluded (the domains)."""
    candidates = sa.select(deliveries.c.id).where(
        sa.or_(*(deliveries.c.state == state for state in CLAIMABLE)),  # no IN list: cacheable SQL
        deliveries.c.next_attempt_at <= sa.bindparam("now"),
    )
    if excluding:
        candidates = candidates.where(sa.not_(in_list(deliveries.c.domain, "excluded", as_json)))
    due = (
        candidates.order_by(deliveries.c.next_attempt_at)
        .limit(sa.bindparam("limit"))
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return (
        deliveries.update()
        .where(deliveries.c.id.in_(due))
        .values(
            state=DeliveryState.SENDING.value,
            lease_owner=sa.bindparam("owner"),
            lease_expires_at=sa.bindparam("until"),
            updated_at=sa.bindparam("now"),
        )
        .returning(*CLAIMED_COLUMNS)
    )


# What a worker needs of a claimed delivery, in the order `claimed_deliveries` reads it.
CLAIMED_COLUMNS = (
    deliveries.c.id,
    deliveries.c.message_id,
    deliveries.c.recipient,
    deliveries.c.attempts,
    deliveries.c.created_at,
    deliveries.c.route,
    deliveries.c.mail_from,
)


def claimed_deliveries(rows: Iterable[Any]) -> list[ClaimedDelivery]:
    return [
        ClaimedDelivery(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in sorted(rows, key=lambda r: r[0])
    ]


@functools.cache
def leased_statement(as_json: bool) -> sa.Select[Any]:
    """Takes :ids (message ids): their deliveries to send (not the suppressed ones), as
    `claimed_deliveries` reads them."""
    return sa.select(*CLAIMED_COLUMNS).where(
        in_list(deliveries.c.message_id, "ids", as_json),
        deliveries.c.state == DeliveryState.SENDING.value,
    )


@functools.cache
def messages_statement(as_json: bool) -> sa.Select[Any]:
    """Takes :ids."""
    return sa.select(
        messages.c.id,
        messages.c.mail_from,
        messages.c.content,
        messages.c.stream,
        messages.c.route,
        messages.c.created_at,
        messages.c.header_from,
        messages.c.signature,
        messages.c.template_id,
        messages.c.template_data,
    ).where(in_list(messages.c.id, "ids", as_json))


def queued_message(row: Any) -> QueuedMessage:
    signature = bytes(row[7]) if row[7] is not None else None
    data = row[9]
    if isinstance(data, str):  # the SQLite writer thread reads the JSON column's text as it is
        data = json.loads(data)
    return QueuedMessage(row[0], row[1], bytes(row[2]), row[3], row[4], row[5], row[6], signature,
                         row[8], data)  # fmt: skip


@functools.cache
def still_ours_statement(as_json: bool) -> sa.Select[Any]:
    """Takes :ids and :owner: the deliveries among them still leased to owner."""
    return (
        sa.select(deliveries.c.id)
        .where(
            in_list(deliveries.c.id, "ids", as_json),
            deliveries.c.lease_owner == sa.bindparam("owner"),
            deliveries.c.state == DeliveryState.SENDING.value,
        )
        .with_for_update()
    )


@functools.cache
def signature_statement() -> sa.Update:
    """Takes rows of :s_id (message id) and :s_value; keeps a message's first signature."""
    return (
        messages.update()
        .where(messages.c.id == sa.bindparam("s_id"), messages.c.signature.is_(None))
        .values(signature=sa.bindparam("s_value"))
    )


@functools.cache
def release_statement() -> sa.Update:
    """Takes the rows of `release_rows`."""
    return (
        deliveries.update()
        .where(
            deliveries.c.id == sa.bindparam("b_id"),
            deliveries.c.lease_owner == sa.bindparam("b_owner"),
            deliveries.c.state == DeliveryState.SENDING.value,
        )
        .values(
            state=sa.bindparam("b_state"),
            attempts=deliveries.c.attempts + sa.bindparam("b_tried"),
            next_attempt_at=sa.bindparam("b_next"),
            last_reply=sa.bindparam("b_reply"),
            finished_at=sa.bindparam("b_finished"),
            updated_at=sa.bindparam("b_now"),
            lease_owner=None,
            lease_expires_at=None,
        )
    )


def release_rows(kept: Sequence[Release], owner: str, now: float) -> list[dict[str, Any]]:
    return [
        {
            "b_id": o.delivery_id,
            "b_owner": owner,
            "b_now": now,
            "b_state": o.state.value,
            "b_tried": 1 if o.tried and o.state is not DeliveryState.DEAD else 0,
            "b_next": o.next_attempt_at if o.next_attempt_at is not None else now,
            "b_reply": o.reply[:2000],
            "b_finished": now if o.state.is_final else None,
        }
        for o in kept
    ]


def event_rows(kept: Sequence[Release], now: float) -> list[dict[str, Any]]:
    """One event per outcome. A shadow copy's (shadow mode: sent only to the shadow sink) is typed
    `shadow_<state>`: it is about the sink, not the recipient, so no consumer (suppression,
    webhooks, DSNs, statistics) may take it for the recipient's."""
    return [
        {
            "at": now,
            "type": ("shadow_" if o.route == SHADOW_ROUTE else "") + (o.state.value if o.tried else "held"),
            "message_id": o.message_id,
            "delivery_id": o.delivery_id,
            "recipient": o.recipient,
            "detail": {"reply": o.reply[:2000], **o.detail},
        }
        for o in kept
    ]
