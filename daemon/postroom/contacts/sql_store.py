"""`SqlContactStore`: contacts, their property types, list memberships and events in the database.

Uniqueness (one contact per normalised address, one per user id, one event per live idempotency
key) is the database's to enforce: a write that would break it fails with ConflictError naming the
field, so two requests racing to create the same contact cannot both succeed.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from postroom.contacts.model import Contact, ContactChanges, ContactProperty, PropertyType, PropertyValue, label_of
from postroom.core.addresses import normalise_address
from postroom.core.errors import ConflictError
from postroom.store.engine import read_only, translate_errors
from postroom.store.tables import contact_events, contact_lists, contact_properties, contacts, deliveries, messages

IDEMPOTENCY_WINDOW = 24 * 3600.0
_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_contact_id() -> str:
    """A contact id in the form Loops uses (`c` and 24 lower-case letters and digits)."""
    return "c" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def email_key(address: str) -> str:
    """How contacts are told apart: the whole address case-folded, as Loops does (two contacts
    never differ only in the case of their address)."""
    return normalise_address(address).lower()


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

    async def create(self, email: str, changes: ContactChanges, now: float, *, source: str = "API") -> Contact:
        contact_id = new_contact_id()
        values = {"source": source, "subscribed": True, "user_group": "", **changes.fields}
        try:
            with translate_errors("creating a contact"):
                async with self._engine.begin() as conn:
                    await self._add_properties(conn, changes.new_properties, now)
                    await conn.execute(contacts.insert().values(
                        id=contact_id, email=email, email_key=email_key(email), opt_in_status=None,
                        properties={k: v for k, v in changes.properties.items() if v is not None},
                        created_at=now, updated_at=now, **_not_null(values)))  # fmt: skip
                    await self._set_lists(conn, contact_id, changes.lists, now)
                    found = await self._find(conn, contact_id=contact_id)
        except IntegrityError as exc:
            raise _conflict(exc) from exc
        assert found is not None
        return found

    async def update(self, contact: Contact, changes: ContactChanges, now: float, *, email: str | None = None) -> Contact:
        """Apply `changes` (and a new address) to a contact found before; properties merge, a
        null removes one."""
        properties = dict(contact.properties)
        for key, value in changes.properties.items():
            if value is None:
                properties.pop(key, None)
            else:
                properties[key] = value
        values: dict[str, Any] = {**changes.fields, "properties": properties, "updated_at": now}
        if email is not None:
            values.update(email=email, email_key=email_key(email))
        try:
            with translate_errors("updating a contact"):
                async with self._engine.begin() as conn:
                    await self._add_properties(conn, changes.new_properties, now)
                    await conn.execute(contacts.update().where(contacts.c.id == contact.id).values(**_not_null(values)))
                    await self._set_lists(conn, contact.id, changes.lists, now)
                    found = await self._find(conn, contact_id=contact.id)
        except IntegrityError as exc:
            raise _conflict(exc) from exc
        if found is None:
            raise ConflictError("the contact was deleted meanwhile")
        return found

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
                    memberships: dict[str, set[str]] = {}
                    if rows:
                        for contact_id, list_id in await conn.execute(
                            sa.select(contact_lists.c.contact_id, contact_lists.c.list_id)
                            .where(contact_lists.c.contact_id.in_([r.id for r in rows]))
                        ):
                            memberships.setdefault(contact_id, set()).add(list_id)
            for row in rows:
                yield _contact(row, frozenset(memberships.get(row.id, ())))
            if len(rows) < batch:
                return
            after = rows[-1].id

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

    async def _add_properties(self, conn: AsyncConnection, new: Mapping[str, PropertyType], now: float) -> None:
        if not new:
            return
        existing = set((await conn.execute(
            sa.select(contact_properties.c.key).where(contact_properties.c.key.in_(list(new)))
        )).scalars())  # fmt: skip
        for key, kind in new.items():
            if key not in existing:
                await conn.execute(contact_properties.insert().values(key=key, label=label_of(key), type=kind.value,
                                                                      created_at=now))  # fmt: skip

    async def _set_lists(self, conn: AsyncConnection, contact_id: str, lists: Mapping[str, bool], now: float) -> None:
        for list_id, subscribed in lists.items():
            await conn.execute(contact_lists.delete().where(contact_lists.c.contact_id == contact_id,
                                                            contact_lists.c.list_id == list_id))  # fmt: skip
            if subscribed:
                await conn.execute(contact_lists.insert().values(contact_id=contact_id, list_id=list_id, created_at=now))


def _not_null(values: Mapping[str, Any]) -> dict[str, Any]:
    """Columns that may not be NULL keep their value when a request resets them."""
    required = {"source": "API", "user_group": "", "subscribed": True}
    return {k: (required[k] if v is None and k in required else v) for k, v in values.items()}


def _contact(row: Any, lists: frozenset[str]) -> Contact:
    properties: dict[str, PropertyValue] = dict(row.properties or {})
    return Contact(
        id=row.id, email=row.email, user_id=row.user_id, first_name=row.first_name, last_name=row.last_name,
        source=row.source, subscribed=bool(row.subscribed), user_group=row.user_group,
        opt_in_status=row.opt_in_status, properties=properties, mailing_lists=lists,
        created_at=float(row.created_at), updated_at=float(row.updated_at),
    )  # fmt: skip
