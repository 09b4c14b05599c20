"""`SqlSuppressionStore`: the suppression list and the soft-failure counts in the database.

Adding is an upsert on (address key, scope): a second entry for the same address and scope
replaces the first unless the first lasts longer (a permanent entry is never shortened by a
temporary one). Writes that must commit with something else (the event outbox's cursor) take the
caller's connection (`add_in`, `count_soft_failure_in`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from postroom.store.engine import GatedStore, translate_errors
from postroom.store.tables import events, soft_failures, suppressions
from postroom.suppression.model import (
    Entry, NewEntry, address_key, first_matches, hashed_key, lookup_keys,
)  # fmt: skip

_COLUMNS = (
    suppressions.c.id, suppressions.c.address, suppressions.c.scope, suppressions.c.source,
    suppressions.c.reason, suppressions.c.bounce_record_id, suppressions.c.created_by,
    suppressions.c.created_at, suppressions.c.expires_at,
)  # fmt: skip

# Bound on the keys of one query: SQLite takes at most 32,766 bound parameters.
_KEYS_PER_QUERY = 2000


def _entry(row: Any) -> Entry:
    return Entry(int(row[0]), row[1], row[2], row[3], row[4], row[5], row[6], float(row[7]),
                 None if row[8] is None else float(row[8]))  # fmt: skip


def live_entry_queries(keys: Collection[str], scopes: Collection[str], now: float) -> list[sa.Select[Any]]:
    """The reads of a suppression check: (address key, entry columns) of live entries, in chunks of
    keys."""
    ordered = sorted(keys)
    return [
        sa.select(suppressions.c.address_key, *_COLUMNS).where(
            suppressions.c.address_key.in_(ordered[start : start + _KEYS_PER_QUERY]),
            suppressions.c.scope.in_(sorted(scopes)), _live(now),
        )
        for start in range(0, len(ordered), _KEYS_PER_QUERY)
    ]  # fmt: skip


def entries_of_rows(rows: Iterable[Any]) -> list[tuple[str, Entry]]:
    """The (address key, entry) rows of `live_entry_queries`, oldest entry first."""
    return sorted(((row[0], _entry(row[1:])) for row in rows), key=lambda item: item[1].id)


def _live(now: float) -> sa.ColumnElement[bool]:
    return sa.or_(suppressions.c.expires_at.is_(None), suppressions.c.expires_at > now)


class SqlSuppressionStore(GatedStore):

    # -- reading --------------------------------------------------------------------------

    async def matching(self, addresses: Sequence[str], scopes: Sequence[str], now: float) -> dict[str, Entry]:
        """The live entry (if any) that suppresses each address for any of `scopes`, by address
        as given; an erased entry matches through the address's hash. The reads and the choice
        are the queue's screen's (`SuppressionScreen`), run here on their own."""
        with translate_errors("reading the suppression list"):
            async with self._reads.connect() as conn:
                rows = [row for query in live_entry_queries(lookup_keys(addresses), scopes, now)
                        for row in (await conn.execute(query)).all()]  # fmt: skip
        return first_matches(addresses, scopes, entries_of_rows(rows))

    async def search(
        self, *, now: float, address: str | None = None, scope: str | None = None, source: str | None = None,
        after: int = 0, limit: int = 100, include_expired: bool = False,
    ) -> list[Entry]:  # fmt: skip
        """Entries by id, after the cursor `after` (an entry id)."""
        query = sa.select(*_COLUMNS).where(suppressions.c.id > after)
        if address:
            query = query.where(suppressions.c.address_key.in_([address_key(address), hashed_key(address)]))
        if scope:
            query = query.where(suppressions.c.scope == scope)
        if source:
            query = query.where(suppressions.c.source == source)
        if not include_expired:
            query = query.where(_live(now))
        with translate_errors("listing the suppression list"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(query.order_by(suppressions.c.id).limit(limit))).all()
        return [_entry(row) for row in rows]

    # -- writing --------------------------------------------------------------------------

    async def add(self, entries: Sequence[NewEntry], now: float) -> int:
        """Add (or lengthen) entries in one transaction; return how many were written."""
        with translate_errors("adding to the suppression list"):
            async with self._write() as conn:
                return await self.add_in(conn, entries, now)

    @staticmethod
    async def add_in(conn: AsyncConnection, entries: Sequence[NewEntry], now: float) -> int:
        written = 0
        for item in entries:
            values = {
                "address_key": address_key(item.address), "address": item.address.strip().strip("<>"),
                "scope": item.scope, "source": item.source, "reason": item.reason[:255],
                "bounce_record_id": item.bounce_record_id, "created_by": item.created_by,
                "created_at": now, "expires_at": item.expires_at,
            }  # fmt: skip
            insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(suppressions)
            excluded = insert.excluded
            # Replace unless the existing entry lasts longer: permanent beats temporary, later beats earlier.
            longer = sa.or_(
                excluded.expires_at.is_(None),
                sa.and_(suppressions.c.expires_at.is_not(None), excluded.expires_at > suppressions.c.expires_at),
                sa.and_(suppressions.c.expires_at.is_not(None), suppressions.c.expires_at <= now),
            )
            statement = insert.values(**values).on_conflict_do_update(
                index_elements=["address_key", "scope"],
                set_={name: excluded[name] for name in values if name != "address_key"},
                where=longer,
            )
            result = await conn.execute(statement)
            written += max(0, int(result.rowcount))
        return written

    async def unsubscribe(self, entry: NewEntry, message_id: str, now: float) -> None:
        """A one-click unsubscribe: the entry and an `unsubscribed` event, in one transaction."""
        with translate_errors("recording an unsubscribe"):
            async with self._write() as conn:
                await self.unsubscribe_in(conn, entry, message_id, now)

    @classmethod
    async def unsubscribe_in(
        cls, conn: AsyncConnection, entry: NewEntry, message_id: str, now: float, delivery_id: int | None = None
    ) -> None:
        """`unsubscribe` in the caller's transaction (Loops' unsubscribes commit with their record)."""
        await cls.add_in(conn, [entry], now)
        await conn.execute(events.insert().values(
            at=now, type="unsubscribed", message_id=message_id[:26], delivery_id=delivery_id,
            recipient=entry.address, detail={"scope": entry.scope, "source": entry.source},
        ))  # fmt: skip

    async def remove(self, address: str, scope: str | None = None) -> int:
        """Remove the entries of an address (in one scope, or all); return how many."""
        condition: sa.ColumnElement[bool] = suppressions.c.address_key.in_([address_key(address), hashed_key(address)])
        if scope:
            condition = sa.and_(condition, suppressions.c.scope == scope)
        with translate_errors("removing from the suppression list"):
            async with self._write() as conn:
                result = await conn.execute(suppressions.delete().where(condition))
        return int(result.rowcount)

    async def erase(self, address: str) -> int:
        """Keep the address's entries only as its hash (GDPR erasure); return how many."""
        plain, hashed = address_key(address), hashed_key(address)
        with translate_errors("erasing from the suppression list"):
            async with self._write() as conn:
                # An already-erased entry of the same scope stays; the named one goes.
                taken = sa.select(suppressions.c.scope).where(suppressions.c.address_key == hashed)
                await conn.execute(suppressions.delete().where(
                    suppressions.c.address_key == plain, suppressions.c.scope.in_(taken.scalar_subquery())))  # fmt: skip
                result = await conn.execute(
                    suppressions.update().where(suppressions.c.address_key == plain)
                    .values(address_key=hashed, address=None)
                )  # fmt: skip
        return int(result.rowcount)

    @staticmethod
    async def count_soft_failure_in(
        conn: AsyncConnection, address: str, reason: str, now: float, window: float
    ) -> int:
        """Record a soft failure and return how many the address had within `window` (this one
        included); older ones are dropped."""
        key = address_key(address)
        await conn.execute(soft_failures.delete().where(soft_failures.c.address_key == key,
                                                        soft_failures.c.at <= now - window))  # fmt: skip
        await conn.execute(soft_failures.insert().values(address_key=key, reason=reason[:32], at=now))
        count = await conn.scalar(
            sa.select(sa.func.count()).where(soft_failures.c.address_key == key, soft_failures.c.at > now - window)
        )
        return int(count or 0)
