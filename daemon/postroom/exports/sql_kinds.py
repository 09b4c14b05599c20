"""The standard export kinds, read from postroom's own tables: `deliveries`, `bounces`,
`suppressions` and `contacts` (docs/exports.md lists their columns).

Every source reads by keyset pagination: a page of `page_size` rows after the last id seen, each
page in its own short read-only transaction (no SQLite write lock, no long-running PostgreSQL
snapshot), so an export of millions of rows holds one page and a slow reader never holds the
database. The date range filters each kind's `time_column`.

What was erased (GDPR, `contacts erase` and `suppressions erase`) stays erased here: a delivery whose
recipient the queue keeps only as a hash shows no recipient and none of its replies (an SMTP reply
often quotes the address); a suppression shows the address the suppression service shows (none once
erased, never its hash); a bounce record about an erased delivery or address shows neither its
recipient nor its diagnostic.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from postroom.core.clock import Clock
from postroom.core.types import DeliveryState
from postroom.exports.model import DateRange, ExportKind, Row, RowSource, columns
from postroom.store.engine import read_only, translate_errors
from postroom.store.tables import bounce_records, contact_lists, contacts, deliveries, messages, suppressions
from postroom.suppression.model import Entry, hashed_key

T = TypeVar("T")
PAGE_SIZE = 1000
# How the queue keeps a recipient once erased (`contacts.sql_store.SqlContactStore.erase`).
ERASED_RECIPIENT = "erased:"
_ACTIVE = frozenset({DeliveryState.QUEUED.value, DeliveryState.DEFERRED.value, DeliveryState.SENDING.value})


def moment(timestamp: float | None) -> datetime.datetime | None:
    return None if timestamp is None else datetime.datetime.fromtimestamp(float(timestamp), datetime.UTC)


def within(column: sa.ColumnElement[Any], span: DateRange) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    if span.since is not None:
        conditions.append(column >= span.since)
    if span.until is not None:
        conditions.append(column < span.until)
    return conditions


async def paged(
    engine: AsyncEngine, action: str, page_size: int, query: Any, key: sa.ColumnElement[Any], first: Any,
    complete: Callable[[AsyncConnection, Sequence[Any]], Awaitable[T]],
) -> AsyncIterator[tuple[Sequence[Any], T]]:
    """Pages of `query` (whose first column is `key`, unique) in key order, each read after the last
    key of the one before (`first`: below every key), with what `complete` reads about the page in
    the same transaction. The connection is back in the pool before the page is handed out: a slow
    consumer holds no transaction."""
    reads = read_only(engine)
    after = first
    while True:
        with translate_errors(action):
            async with reads.connect() as conn:
                rows = (await conn.execute(query.where(key > after).order_by(key).limit(page_size))).all()
                extra = await complete(conn, rows)
        if rows:
            yield rows, extra
        if len(rows) < page_size:
            return
        after = rows[-1][0]


async def nothing_more(_conn: AsyncConnection, _rows: Sequence[Any]) -> None:
    return None


# -- deliveries ---------------------------------------------------------------------------------

DELIVERY_COLUMNS = columns(
    ("delivery_id", "the delivery's id (one per recipient and copy of a message)"),
    ("message_id", "the message's id, as `queue show` and `GET /v1/messages/{id}` take it"),
    ("recipient", "the recipient's address (empty once erased)"),
    ("domain", "the recipient's domain, lower-cased"),
    ("stream", "the message's stream (transactional, marketing, ...)"),
    ("source", "how the message came in: smtp, api, cli, mx, dsn"),
    ("template", "the template it was rendered from (empty: composed by its sender)"),
    ("template_version", "the template's version"),
    ("route", "the transport of this copy: inhouse, loops, shadow"),
    ("status", "queued, deferred, sending, delivered, bounced, expired, dead or suppressed"),
    ("attempts", "delivery attempts made"),
    ("created_at", "when the message was accepted (the date range filters on this)"),
    ("updated_at", "when the delivery last changed"),
    ("finished_at", "when it reached a final status (empty while queued, deferred or sending)"),
    ("next_attempt_at", "when it is due again (only while queued or deferred)"),
    ("last_reply", "the last SMTP reply (or transport error) about it (empty once erased)"),
    ("dsn_status", "the status code (RFC 3464) of the last delivery status notification about it"),
    ("dsn_diagnostic", "that notification's diagnostic code (empty once erased)"),
    ("dsn_received_at", "when that notification arrived"),
    ("erased", "true when the recipient was erased on request (GDPR): the address and replies are not shown"),
)


def delivery_rows(engine: AsyncEngine, page_size: int = PAGE_SIZE) -> RowSource:
    d, m = deliveries, messages
    query = sa.select(
        d.c.id, d.c.message_id, d.c.recipient, d.c.domain, m.c.stream, m.c.source, m.c.template_id,
        m.c.template_version, d.c.route, d.c.state, d.c.attempts, d.c.created_at, d.c.updated_at, d.c.finished_at,
        d.c.next_attempt_at, d.c.last_reply,
    ).select_from(d.join(m, m.c.id == d.c.message_id))  # fmt: skip

    async def rows(span: DateRange) -> AsyncIterator[Row]:
        filtered = query.where(*within(d.c.created_at, span))
        async for page, dsns in paged(engine, "reading deliveries", page_size, filtered, d.c.id, 0, _last_dsns):
            for r in page:
                yield _delivery_row(r, dsns.get(int(r.id)))

    return rows


async def _last_dsns(conn: AsyncConnection, page: Sequence[Any]) -> dict[int, Any]:
    """The newest DSN record about each delivery of the page."""
    b = bounce_records
    found: dict[int, Any] = {}
    ids = [int(r.id) for r in page]
    if not ids:
        return found
    result = await conn.execute(
        sa.select(b.c.delivery_id, b.c.status, b.c.diagnostic, b.c.received_at)
        .where(b.c.delivery_id.in_(ids), b.c.kind == "dsn").order_by(b.c.id)
    )  # fmt: skip
    for record in result:
        found[int(record.delivery_id)] = record  # later ids replace earlier ones
    return found


def _delivery_row(r: Any, dsn: Any) -> Row:
    erased = str(r.recipient).startswith(ERASED_RECIPIENT)
    return (
        int(r.id), r.message_id, None if erased else r.recipient, r.domain, r.stream, r.source, r.template_id,
        r.template_version, r.route, r.state, int(r.attempts), moment(r.created_at), moment(r.updated_at),
        moment(r.finished_at), moment(r.next_attempt_at) if r.state in _ACTIVE else None,
        None if erased else r.last_reply, dsn.status if dsn is not None else None,
        None if erased or dsn is None else dsn.diagnostic, moment(dsn.received_at) if dsn is not None else None,
        erased,
    )  # fmt: skip


# -- bounces ------------------------------------------------------------------------------------

BOUNCE_COLUMNS = columns(
    ("bounce_id", "the bounce record's id, as `GET /v1/bounces` shows it"),
    ("received_at", "when it reached the return path (the date range filters on this)"),
    ("kind", "dsn, feedback (a complaint, RFC 5965), autoreply or not_bounce"),
    ("recipient", "the recipient it reports on (empty once erased, or when it names none)"),
    ("message_id", "the message it is about, when known"),
    ("delivery_id", "the delivery its VERP return path named (empty: it came to a feedback address)"),
    ("bounce_class", "hard, soft or none"),
    ("reason", "the classified reason (userunknown, mailboxfull, ...)"),
    ("status", "the RFC 3464 status code (5.1.1, ...)"),
    ("reply_code", "the SMTP reply code the remote server gave"),
    ("diagnostic", "the remote server's diagnostic text (empty once erased)"),
    ("feedback_type", "for complaints: the RFC 5965 feedback type (abuse, ...)"),
    ("raw_size", "the size in bytes of the bounce as it arrived"),
    ("erased", "true when its recipient was erased on request (GDPR)"),
)


def bounce_rows(engine: AsyncEngine, page_size: int = PAGE_SIZE) -> RowSource:
    b, d = bounce_records, deliveries
    query = sa.select(
        b.c.id, b.c.received_at, b.c.kind, b.c.recipient, b.c.message_id, b.c.delivery_id, b.c.bounce_class,
        b.c.reason, b.c.status, b.c.reply_code, b.c.diagnostic, b.c.feedback_type, b.c.raw_size,
        d.c.recipient.label("delivery_recipient"),
    ).select_from(b.outerjoin(d, d.c.id == b.c.delivery_id))  # fmt: skip

    async def rows(span: DateRange) -> AsyncIterator[Row]:
        filtered = query.where(*within(b.c.received_at, span))
        async for page, erased in paged(engine, "reading bounce records", page_size, filtered, b.c.id, 0,
                                        _erased_addresses):  # fmt: skip
            for r in page:
                hidden = (str(r.delivery_recipient or "").startswith(ERASED_RECIPIENT)
                          or (r.recipient is not None and r.recipient in erased))  # fmt: skip
                yield (
                    int(r.id), moment(r.received_at), r.kind, None if hidden else r.recipient, r.message_id,
                    r.delivery_id, r.bounce_class, r.reason, r.status, r.reply_code,
                    None if hidden else r.diagnostic, r.feedback_type, int(r.raw_size), hidden,
                )  # fmt: skip

    return rows


async def _erased_addresses(conn: AsyncConnection, page: Sequence[Any]) -> set[str]:
    """Which recipients of the page the suppression list keeps only as a hash (erased on request):
    one read of its unique index per page."""
    by_hash = {hashed_key(r.recipient): r.recipient for r in page if r.recipient}
    if not by_hash:
        return set()
    keys = sa.select(suppressions.c.address_key).where(suppressions.c.address_key.in_(list(by_hash)))
    result = await conn.execute(keys)
    return {by_hash[key] for key in result.scalars()}


# -- suppressions -------------------------------------------------------------------------------

SUPPRESSION_COLUMNS = columns(
    ("suppression_id", "the entry's id"),
    ("email", "the suppressed address (empty once erased: the entry still blocks it, unnamed)"),
    ("erased", "true when the address was erased on request (GDPR)"),
    ("scope", "global, or stream:<name> for one stream"),
    ("source", "bounce, complaint, unsubscribe, manual or import"),
    ("reason", "why (the bounce reason, one-click, the note given)"),
    ("bounce_id", "the bounce record that caused it, if any"),
    ("created_by", "who added it (events, cli:<user>, apikey:<id>, import:<file>, recipient)"),
    ("created_at", "when it was added (the date range filters on this)"),
    ("expires_at", "when it lapses (empty: until removed)"),
)


def suppression_rows(engine: AsyncEngine, clock: Clock, page_size: int = PAGE_SIZE) -> RowSource:
    """Live entries (those that block now), as the suppression service lists them: the address
    column, never the key (an erased entry's key is the address's hash)."""
    s = suppressions
    query = sa.select(s.c.id, s.c.address, s.c.scope, s.c.source, s.c.reason, s.c.bounce_record_id, s.c.created_by,
                      s.c.created_at, s.c.expires_at)  # fmt: skip

    async def rows(span: DateRange) -> AsyncIterator[Row]:
        now = clock.now()
        live = sa.or_(s.c.expires_at.is_(None), s.c.expires_at > now)
        filtered = query.where(live, *within(s.c.created_at, span))
        async for page, _ in paged(engine, "reading the suppression list", page_size, filtered, s.c.id, 0,
                                   nothing_more):  # fmt: skip
            for r in page:
                entry = Entry(int(r.id), r.address, r.scope, r.source, r.reason, r.bounce_record_id, r.created_by,
                              float(r.created_at), None if r.expires_at is None else float(r.expires_at))  # fmt: skip
                yield (
                    entry.id, entry.address, entry.erased, entry.scope, entry.source, entry.reason,
                    entry.bounce_record_id, entry.created_by, moment(entry.created_at), moment(entry.expires_at),
                )  # fmt: skip

    return rows


# -- contacts -----------------------------------------------------------------------------------

CONTACT_COLUMNS = columns(
    ("contact_id", "the contact's id"),
    ("email", "the address"),
    ("first_name", "firstName"),
    ("last_name", "lastName"),
    ("user_id", "userId: the application's id of the person"),
    ("user_group", "userGroup"),
    ("source", "where the contact came from (API, import, ...)"),
    ("subscribed", "true when the contact receives marketing mail"),
    ("opt_in_status", "double opt-in: pending, accepted, rejected (empty: none asked)"),
    ("mailing_lists", "the ids of the mailing lists it is on ([contacts] lists), as a JSON list"),
    ("properties", "its custom properties (a JSON object)"),
    ("created_at", "when it was created (the date range filters on this)"),
    ("updated_at", "when it last changed"),
)


def contact_rows(engine: AsyncEngine, page_size: int = PAGE_SIZE) -> RowSource:
    c = contacts
    query = sa.select(c.c.id, c.c.email, c.c.first_name, c.c.last_name, c.c.user_id, c.c.user_group, c.c.source,
                      c.c.subscribed, c.c.opt_in_status, c.c.properties, c.c.created_at, c.c.updated_at)  # fmt: skip

    async def rows(span: DateRange) -> AsyncIterator[Row]:
        filtered = query.where(*within(c.c.created_at, span))
        async for page, lists in paged(engine, "reading contacts", page_size, filtered, c.c.id, "", _memberships):
            for r in page:
                yield (
                    r.id, r.email, r.first_name, r.last_name, r.user_id, r.user_group, r.source, bool(r.subscribed),
                    r.opt_in_status, lists.get(r.id, []), dict(r.properties or {}), moment(r.created_at),
                    moment(r.updated_at),
                )  # fmt: skip

    return rows


async def _memberships(conn: AsyncConnection, page: Sequence[Any]) -> dict[str, list[str]]:
    lists: dict[str, list[str]] = {}
    if not page:
        return lists
    result = await conn.execute(
        sa.select(contact_lists.c.contact_id, contact_lists.c.list_id)
        .where(contact_lists.c.contact_id.in_([r.id for r in page])).order_by(contact_lists.c.list_id)
    )  # fmt: skip
    for contact_id, list_id in result:
        lists.setdefault(contact_id, []).append(list_id)
    return lists


def standard_kinds(engine: AsyncEngine, clock: Clock, page_size: int = PAGE_SIZE) -> list[ExportKind]:
    """The kinds every postroom has, reading `engine`."""
    return [
        ExportKind("deliveries", "One row per delivery (a recipient's copy of a message): its status, "
                   "attempts, times, last reply and last DSN", DELIVERY_COLUMNS, "created_at",
                   delivery_rows(engine, page_size)),
        ExportKind("bounces", "Bounce records: every DSN, complaint and auto-reply that reached the return path",
                   BOUNCE_COLUMNS, "received_at", bounce_rows(engine, page_size)),
        ExportKind("suppressions", "The suppression list: live entries, as `suppressions ls` shows them",
                   SUPPRESSION_COLUMNS, "created_at", suppression_rows(engine, clock, page_size)),
        ExportKind("contacts", "Contacts of the Loops-compatible API, with their lists and custom properties",
                   CONTACT_COLUMNS, "created_at", contact_rows(engine, page_size)),
    ]  # fmt: skip
