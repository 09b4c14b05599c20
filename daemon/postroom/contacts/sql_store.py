"""`SqlContactStore`: contacts, their property types, list memberships and events in the database.

Uniqueness (one contact per normalised address, one per user id, one event per live idempotency
key) is the database's to enforce: a write that would break it fails with ConflictError naming the
field, so two requests racing to create the same contact cannot both succeed.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from postroom.contacts.model import (
    Contact,
    ContactChanges,
    ContactProperty,
    PropertyType,
    PropertyValue,
    email_key,
    label_of,
)
from postroom.contacts.sql_batch import (
    Identities,
    Identity,
    MergedBatch,
    add_properties,
    merged_properties,
    new_contact_id,
    not_null,
    user_id_after,
)
from postroom.core.errors import ConflictError
from postroom.store.engine import read_only, translate_errors
from postroom.store.tables import contact_events, contact_lists, contact_properties, contacts, deliveries, messages

IDEMPOTENCY_WINDOW = 24 * 3600.0


def address_hash(address: str) -> str:
    return hashlib.sha256(email_key(address).encode()).hexdigest()


def _conflict(exc: IntegrityError) -> ConflictError:
    text = str(exc.orig).lower()
    if "user_id" in text:
        return ConflictError("userId is already in use by another contact")
    if "idempotency" in text:
        return ConflictError("this Idempotency-Key was already used in the last 24 hours")
    if "contact_properties" in text:
        return ConflictError("that property already exists")
    return ConflictError("email is already in use by another contact")


class SqlContactStore:
    def __init__(self, engine: AsyncEngine):
        self._engine = engine
        self._reads = read_only(engine)

    # -- properties ----------------------------------------------------------------------------

    async def properties(self) -> dict[str, ContactProperty]:
        with translate_errors("reading contact properties"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(sa.select(contact_properties).order_by(contact_properties.c.created_at,
                                                                                  contact_properties.c.key))).all()  # fmt: skip
        return {r.key: ContactProperty(r.key, r.label, PropertyType(r.type)) for r in rows}

    async def create_property(self, key: str, kind: PropertyType, now: float) -> ContactProperty:
        prop = ContactProperty(key, label_of(key), kind)
        try:
            with translate_errors("creating a contact property"):
                async with self._engine.begin() as conn:
                    await conn.execute(contact_properties.insert().values(key=key, label=prop.label, type=kind.value,
                                                                          created_at=now))  # fmt: skip
        except IntegrityError as exc:
            raise ConflictError(f"property {key!r} already exists") from exc
        return prop

    # -- contacts ------------------------------------------------------------------------------

    async def find(self, *, email: str | None = None, user_id: str | None = None, contact_id: str | None = None) -> Contact | None:
        with translate_errors("reading a contact"):
            async with self._reads.connect() as conn:
                return await self._find(conn, email=email, user_id=user_id, contact_id=contact_id)

    async def _find(self, conn: AsyncConnection, *, email: str | None = None, user_id: str | None = None,
                    contact_id: str | None = None) -> Contact | None:  # fmt: skip
        query = sa.select(contacts)
        if contact_id is not None:
            query = query.where(contacts.c.id == contact_id)
        elif user_id is not None:
            query = query.where(contacts.c.user_id == user_id)
        elif email is not None:
            query = query.where(contacts.c.email_key == email_key(email))
        else:
            return None
        row = (await conn.execute(query)).first()
        if row is None:
            return None
        lists = (await conn.execute(sa.select(contact_lists.c.list_id).where(contact_lists.c.contact_id == row.id))).scalars()
        return _contact(row, frozenset(lists))

    async def find_many(self, *, emails: Collection[str] = (), user_ids: Collection[str] = ()) -> list[Contact]:
        """The contacts with one of `emails` (compared as `email_key` does) or one of `user_ids`,
        in one query: how an import checks a batch of rows."""
        keys = list({email_key(e) for e in emails})
        ids = list(set(user_ids))
        if not keys and not ids:
            return []
        with translate_errors("reading contacts"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(sa.select(contacts).where(
                    sa.or_(contacts.c.email_key.in_(keys), contacts.c.user_id.in_(ids))))).all()  # fmt: skip
                memberships = await self._memberships(conn, [r.id for r in rows])
        return [_contact(row, frozenset(memberships.get(row.id, ()))) for row in rows]

    async def create(self, email: str, changes: ContactChanges, now: float, *, source: str = "API") -> Contact:
        try:
            with translate_errors("creating a contact"):
                async with self._engine.begin() as conn:
                    contact_id = await self._insert(conn, email, changes, now, source)
                    found = await self._find(conn, contact_id=contact_id)
        except IntegrityError as exc:
            raise _conflict(exc) from exc
        assert found is not None
        return found

    async def update(self, contact: Contact, changes: ContactChanges, now: float, *, email: str | None = None) -> Contact:
        """Apply `changes` (and a new address) to a contact found before; properties merge, a
        null removes one."""
        try:
            with translate_errors("updating a contact"):
                async with self._engine.begin() as conn:
                    await self._apply(conn, contact.id, contact.properties, changes, now, email)
                    found = await self._find(conn, contact_id=contact.id)
        except IntegrityError as exc:
            raise _conflict(exc) from exc
        if found is None:
            raise ConflictError("the contact was deleted meanwhile")
        return found

    async def upsert_many(self, rows: Sequence[tuple[str, str | None, ContactChanges]], now: float, *,
                          partial: bool = False) -> list[bool | ConflictError]:  # fmt: skip
        """Create or update the contact of each (email, userId, changes) row in one transaction,
        finding it as `ContactService.update` does (by userId, then by address; a userId's contact
        takes the row's address): per row, True when created, False when updated. A row that breaks
        uniqueness rolls the whole batch back and raises ConflictError, or with `partial` is rolled
        back alone and answered with its ConflictError while the other rows are written."""
        try:
            with translate_errors("importing contacts"):
                async with self._engine.begin() as conn:
                    batch = MergedBatch(await Identities.read(conn, (e for e, _, _ in rows), (u for _, u, _ in rows)))
                    created: list[bool | ConflictError] = [batch.add(*row) for row in rows]
                    await batch.write(conn, now)
            return created
        except IntegrityError as exc:
            if not partial:
                raise _conflict(exc) from exc
        return await self._upsert_each(rows, now)

    async def _upsert_each(self, rows: Sequence[tuple[str, str | None, ContactChanges]],
                           now: float) -> list[bool | ConflictError]:  # fmt: skip
        """The batch again, row by row, each in a savepoint: the rows at fault are rolled back
        alone and answered with their conflict."""
        results: list[bool | ConflictError] = []
        with translate_errors("importing contacts"):
            async with self._engine.begin() as conn:
                known = await Identities.read(conn, (e for e, _, _ in rows), (u for _, u, _ in rows))
                for email, user_id, changes in rows:
                    before = known.find(email, user_id)
                    try:
                        async with conn.begin_nested():
                            after = await self._upsert(conn, email, before, changes, now)
                    except IntegrityError as exc:
                        results.append(_conflict(exc))
                        continue
                    known.replace(before, after)
                    results.append(before is None)
        return results

    async def _upsert(self, conn: AsyncConnection, email: str, found: Identity | None, changes: ContactChanges,
                      now: float) -> Identity:  # fmt: skip
        if found is None:
            contact_id = await self._insert(conn, email, changes, now, "API")
            return Identity(contact_id, email, user_id_after(changes, None), merged_properties({}, changes))
        new_email = email if email_key(email) != email_key(found.email) else None
        properties = await self._apply(conn, found.id, found.properties, changes, now, new_email)
        return Identity(found.id, new_email or found.email, user_id_after(changes, found.user_id), properties)

    async def _insert(self, conn: AsyncConnection, email: str, changes: ContactChanges, now: float, source: str) -> str:
        contact_id = new_contact_id()
        values = {"source": source, "subscribed": True, "user_group": "", **changes.fields}
        await add_properties(conn, changes.new_properties, now)
        await conn.execute(contacts.insert().values(
            id=contact_id, email=email, email_key=email_key(email), opt_in_status=None,
            properties=merged_properties({}, changes), created_at=now, updated_at=now, **not_null(values)))  # fmt: skip
        await self._set_lists(conn, contact_id, changes.lists, now, fresh=True)
        return contact_id

    async def _apply(self, conn: AsyncConnection, contact_id: str, current: Mapping[str, PropertyValue],
                     changes: ContactChanges, now: float, email: str | None) -> dict[str, PropertyValue]:  # fmt: skip
        """Write `changes` over a contact whose properties are `current`; the merged properties."""
        properties = merged_properties(current, changes)
        values: dict[str, Any] = {**changes.fields, "properties": properties, "updated_at": now}
        if email is not None:
            values.update(email=email, email_key=email_key(email))
        await add_properties(conn, changes.new_properties, now)
        await conn.execute(contacts.update().where(contacts.c.id == contact_id).values(**not_null(values)))
        await self._set_lists(conn, contact_id, changes.lists, now)
        return properties

    async def delete(self, contact_id: str) -> bool:
        with translate_errors("deleting a contact"):
            async with self._engine.begin() as conn:
                result = await conn.execute(contacts.delete().where(contacts.c.id == contact_id))
        return bool(result.rowcount)

    async def all(self, batch: int = 500) -> AsyncIterator[Contact]:
        """Every contact, in id order, read in batches (an export of millions holds one batch)."""
        after = ""
        while True:
            with translate_errors("reading contacts"):
                async with self._reads.connect() as conn:
                    rows = (await conn.execute(sa.select(contacts).where(contacts.c.id > after)
                                               .order_by(contacts.c.id).limit(batch))).all()  # fmt: skip
                    memberships = await self._memberships(conn, [r.id for r in rows])
            for row in rows:
                yield _contact(row, frozenset(memberships.get(row.id, ())))
            if len(rows) < batch:
                return
            after = rows[-1].id

    async def _memberships(self, conn: AsyncConnection, contact_ids: list[str]) -> dict[str, set[str]]:
        memberships: dict[str, set[str]] = {}
        if contact_ids:
            for contact_id, list_id in await conn.execute(
                sa.select(contact_lists.c.contact_id, contact_lists.c.list_id)
                .where(contact_lists.c.contact_id.in_(contact_ids))
            ):
                memberships.setdefault(contact_id, set()).add(list_id)
        return memberships

    async def count(self) -> int:
        with translate_errors("counting contacts"):
            async with self._reads.connect() as conn:
                return int(await conn.scalar(sa.select(sa.func.count()).select_from(contacts)) or 0)

    # -- events --------------------------------------------------------------------------------

    async def record_event(self, contact_id: str, name: str, properties: Mapping[str, Any], now: float,
                           idempotency_key: str | None = None) -> int:  # fmt: skip
        try:
            with translate_errors("recording an event"):
                async with self._engine.begin() as conn:
                    if idempotency_key is not None:
                        # A key older than the window is free again.
                        await conn.execute(contact_events.update().where(
                            contact_events.c.idempotency_key == idempotency_key,
                            contact_events.c.created_at <= now - IDEMPOTENCY_WINDOW,
                        ).values(idempotency_key=None))  # fmt: skip
                    result = await conn.execute(contact_events.insert().values(
                        contact_id=contact_id, event_name=name, properties=dict(properties),
                        idempotency_key=idempotency_key, created_at=now))  # fmt: skip
        except IntegrityError as exc:
            raise _conflict(exc) from exc
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    async def events(self, contact_id: str) -> list[tuple[str, dict[str, Any], float]]:
        with translate_errors("reading events"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(sa.select(contact_events).where(contact_events.c.contact_id == contact_id)
                                           .order_by(contact_events.c.id))).all()  # fmt: skip
        return [(r.event_name, dict(r.properties), float(r.created_at)) for r in rows]

    # -- erasure -------------------------------------------------------------------------------

    async def erase(self, address: str) -> tuple[bool, int]:
        """Remove the contact of `address` (its events and memberships go with it) and the bodies
        of the messages it was sent: their content, subject and headers' recipient are replaced
        and each delivery's recipient becomes the address's hash. (contact found, messages
        erased)."""
        key = email_key(address)
        hashed = "erased:" + address_hash(address)
        with translate_errors("erasing a contact"):
            async with self._engine.begin() as conn:
                deleted = await conn.execute(contacts.delete().where(contacts.c.email_key == key))
                message_ids = list((await conn.execute(
                    sa.select(deliveries.c.message_id).where(sa.func.lower(deliveries.c.recipient) == key).distinct()
                )).scalars())  # fmt: skip
                if message_ids:
                    await conn.execute(messages.update().where(messages.c.id.in_(message_ids))
                                       .values(content=b"", subject=None, signature=None))  # fmt: skip
                    await conn.execute(deliveries.update().where(sa.func.lower(deliveries.c.recipient) == key)
                                       .values(recipient=hashed[:512]))  # fmt: skip
        return bool(deleted.rowcount), len(message_ids)

    async def _set_lists(self, conn: AsyncConnection, contact_id: str, lists: Mapping[str, bool], now: float, *,
                         fresh: bool = False) -> None:  # fmt: skip
        """Set list memberships; a `fresh` contact (just inserted) has none to remove first."""
        for list_id, subscribed in lists.items():
            if not fresh:
                await conn.execute(contact_lists.delete().where(contact_lists.c.contact_id == contact_id,
                                                                contact_lists.c.list_id == list_id))  # fmt: skip
            if subscribed:
                await conn.execute(contact_lists.insert().values(contact_id=contact_id, list_id=list_id, created_at=now))


def _contact(row: Any, lists: frozenset[str]) -> Contact:
    properties: dict[str, PropertyValue] = dict(row.properties or {})
    return Contact(
        id=row.id, email=row.email, user_id=row.user_id, first_name=row.first_name, last_name=row.last_name,
        source=row.source, subscribed=bool(row.subscribed), user_group=row.user_group,
        opt_in_status=row.opt_in_status, properties=properties, mailing_lists=lists,
        created_at=float(row.created_at), updated_at=float(row.updated_at),
    )  # fmt: skip
