"""Writing a batch of imported contacts as a handful of statements (`SqlContactStore.upsert_many`).

The rows are applied in memory first, in order and by `ContactService.update`'s rules (a row's
userId finds its contact, then its address does; later rows see what earlier ones did), so that each
contact the batch touches gets one final write: one multi-row INSERT of the new contacts, one
UPDATE per set of changed columns, and the list memberships. Writing row by row cost several
statements per row, each a thread hop on aiosqlite, and an import of a million rows took hours.
When the database refuses the batch (a uniqueness conflict) the store replays it row by row to find
the row at fault, with the identity map kept here.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from postroom.contacts.model import ContactChanges, PropertyType, PropertyValue, email_key, label_of
from postroom.store.tables import contact_lists, contact_properties, contacts

_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
# Columns that may not be NULL, and what they keep when a request resets them.
REQUIRED = {"source": "API", "user_group": "", "subscribed": True}
_NULLABLE = ("user_id", "first_name", "last_name", "opt_in_status")


def new_contact_id() -> str:
    """A contact id in the form Loops uses (`c` and 24 lower-case letters and digits)."""
    return "c" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def not_null(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (REQUIRED[k] if v is None and k in REQUIRED else v) for k, v in values.items()}


def merged_properties(current: Mapping[str, PropertyValue], changes: ContactChanges) -> dict[str, PropertyValue]:
    """Properties merge; a null removes one."""
    properties = dict(current)
    for key, value in changes.properties.items():
        if value is None:
            properties.pop(key, None)
        else:
            properties[key] = value
    return properties


def user_id_after(changes: ContactChanges, current: str | None) -> str | None:
    value = changes.fields.get("user_id", current)
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Identity:
    """What a batch needs to know of a contact: how it is found, and the properties a row's
    changes merge into."""

    id: str
    email: str
    user_id: str | None
    properties: Mapping[str, PropertyValue]


class Identities:
    """The contacts of a batch by address key and by user id, as its rows create and change them."""

    def __init__(self, rows: Iterable[Any]):
        self._by_key: dict[str, Identity] = {}
        self._by_user_id: dict[str, Identity] = {}
        for row in rows:
            self._add(Identity(row.id, row.email, row.user_id, dict(row.properties or {})))

    @classmethod
    async def read(cls, conn: AsyncConnection, emails: Iterable[str], user_ids: Iterable[str | None]) -> Identities:
        keys = list({email_key(e) for e in emails})
        ids = list({u for u in user_ids if u is not None})
        return cls(await conn.execute(
            sa.select(contacts.c.id, contacts.c.email, contacts.c.user_id, contacts.c.properties)
            .where(sa.or_(contacts.c.email_key.in_(keys), contacts.c.user_id.in_(ids)))))  # fmt: skip

    def find(self, email: str, user_id: str | None) -> Identity | None:
        found = self._by_user_id.get(user_id) if user_id is not None else None
        return found or self._by_key.get(email_key(email))

    def replace(self, before: Identity | None, after: Identity) -> None:
        if before is not None:
            self._by_key.pop(email_key(before.email), None)
            if before.user_id is not None:
                self._by_user_id.pop(before.user_id, None)
        self._add(after)

    def _add(self, identity: Identity) -> None:
        self._by_key[email_key(identity.email)] = identity
        if identity.user_id is not None:
            self._by_user_id[identity.user_id] = identity


@dataclass
class _Write:
    """One contact's final write: its fields, whole properties, and list memberships to set."""

    created: bool
    email: str | None  # a new contact's address, or an existing one's new address
    fields: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, PropertyValue] = field(default_factory=dict)
    lists: dict[str, bool] = field(default_factory=dict)


class MergedBatch:
    def __init__(self, known: Identities):
        self._known = known
        self._writes: dict[str, _Write] = {}
        self._new_properties: dict[str, PropertyType] = {}

    def add(self, email: str, user_id: str | None, changes: ContactChanges) -> bool:
        """Apply one row in memory; True when it creates its contact."""
        for key, kind in changes.new_properties.items():
            self._new_properties.setdefault(key, kind)
        before = self._known.find(email, user_id)
        if before is None:
            properties = merged_properties({}, changes)
            after = Identity(new_contact_id(), email, user_id_after(changes, None), properties)
            self._writes[after.id] = _Write(True, email, dict(changes.fields), properties, dict(changes.lists))
            self._known.replace(None, after)
            return True
        write = self._writes.setdefault(before.id, _Write(False, None))
        new_email = email if email_key(email) != email_key(before.email) else None
        write.email = new_email or write.email
        write.fields.update(changes.fields)
        write.properties = merged_properties(before.properties, changes)
        write.lists.update(changes.lists)
        after = Identity(before.id, new_email or before.email, user_id_after(changes, before.user_id), write.properties)
        self._known.replace(before, after)
        return False

    async def write(self, conn: AsyncConnection, now: float) -> None:
        await add_properties(conn, self._new_properties, now)
        updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        inserts: list[dict[str, Any]] = []
        for contact_id, write in self._writes.items():
            if write.created:
                assert write.email is not None
                values = not_null({**REQUIRED, **dict.fromkeys(_NULLABLE), **write.fields})
                inserts.append({**values, "id": contact_id, "email": write.email, "email_key": email_key(write.email),
                                "properties": write.properties, "created_at": now, "updated_at": now})  # fmt: skip
                continue
            values = not_null({**write.fields, "properties": write.properties, "updated_at": now})
            if write.email is not None:
                values.update(email=write.email, email_key=email_key(write.email))
            updates.setdefault(tuple(sorted(values)), []).append({"b_id": contact_id,
                                                                  **{f"b_{k}": v for k, v in values.items()}})  # fmt: skip
        for columns, params in updates.items():
            await conn.execute(contacts.update().where(contacts.c.id == sa.bindparam("b_id")).values(
                {c: sa.bindparam(f"b_{c}", type_=contacts.c[c].type) for c in columns}), params)  # fmt: skip
        if inserts:
            await conn.execute(contacts.insert(), inserts)
        await self._write_lists(conn, now)

    async def _write_lists(self, conn: AsyncConnection, now: float) -> None:
        removed = [{"b_contact": i, "b_list": lst} for i, w in self._writes.items() if not w.created for lst in w.lists]
        added = [{"contact_id": i, "list_id": lst, "created_at": now}
                 for i, w in self._writes.items() for lst, on in w.lists.items() if on]  # fmt: skip
        if removed:
            await conn.execute(contact_lists.delete().where(contact_lists.c.contact_id == sa.bindparam("b_contact"),
                                                            contact_lists.c.list_id == sa.bindparam("b_list")), removed)  # fmt: skip
        if added:
            await conn.execute(contact_lists.insert(), added)


async def add_properties(conn: AsyncConnection, new: Mapping[str, PropertyType], now: float) -> None:
    """Define the properties in `new` that are not defined yet."""
    if not new:
        return
    existing = set((await conn.execute(
        sa.select(contact_properties.c.key).where(contact_properties.c.key.in_(list(new)))
    )).scalars())  # fmt: skip
    missing = [{"key": k, "label": label_of(k), "type": t.value, "created_at": now} for k, t in new.items()
               if k not in existing]  # fmt: skip
    if missing:
        await conn.execute(contact_properties.insert(), missing)
