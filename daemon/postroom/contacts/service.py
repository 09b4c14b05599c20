"""`ContactService`: what the Loops-compatible API and the command line ask of contacts.

Contacts are found by address or by the application's user id. `update` creates the contact when
there is none (as Loops does); when both an address and a user id are given, the user id finds the
contact and the address is its new one. An event finds or creates its contact the same way, applies
the contact properties that came with it and is recorded; what it triggers is the caller's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from postroom.contacts.model import (
    BUILTIN_FIELDS,
    Contact,
    ContactChanges,
    ContactError,
    ContactProperty,
    MailingList,
    PropertyType,
    changes_from,
    coerce,
    label_of,
    valid_property_name,
)
from postroom.contacts.sql_store import SqlContactStore
from postroom.core.addresses import valid_mailbox
from postroom.core.clock import Clock
from postroom.core.errors import ConflictError

EVENT_KEYS = frozenset({"eventName", "eventProperties", "email", "userId"})
MAX_EVENT_NAME = 255


@dataclass(frozen=True)
class RecordedEvent:
    contact: Contact
    name: str
    properties: Mapping[str, Any]
    created: bool  # the event created its contact


class ContactStore(Protocol):
    async def properties(self) -> dict[str, ContactProperty]: ...
    async def create_property(self, key: str, kind: PropertyType, now: float) -> ContactProperty: ...
    async def find(self, *, email: str | None = None, user_id: str | None = None,
                   contact_id: str | None = None) -> Contact | None: ...  # fmt: skip
    async def find_many(self, *, emails: Collection[str] = (), user_ids: Collection[str] = ()) -> list[Contact]: ...
    async def create(self, email: str, changes: ContactChanges, now: float, *, source: str = "API") -> Contact: ...
    async def update(self, contact: Contact, changes: ContactChanges, now: float, *, email: str | None = None) -> Contact: ...
    async def delete(self, contact_id: str) -> bool: ...
    def all(self, batch: int = 500) -> AsyncIterator[Contact]: ...
    async def count(self) -> int: ...
    async def upsert_many(self, rows: Sequence[tuple[str, str | None, ContactChanges]], now: float, *,
                          partial: bool = False) -> list[bool | ConflictError]: ...  # fmt: skip
    async def record_event(self, contact_id: str, name: str, properties: Mapping[str, Any], now: float,
                           idempotency_key: str | None = None) -> int: ...  # fmt: skip
    async def erase(self, address: str) -> tuple[bool, int]: ...


def _conflict_error(exc: ConflictError) -> ContactError:
    return ContactError("conflict", str(exc), "userId" if "userId" in str(exc) else "email")


def checked_email(value: Any, path: str = "email") -> str:
    if not isinstance(value, str) or not valid_mailbox(value.strip()):
        raise ContactError("invalid", "Invalid email address." if value else "An email address is required.", path)
    return value.strip()


def checked_user_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 255:
        raise ContactError("invalid", "userId must be a non-empty string of at most 255 characters", "userId")
    return value


class ContactService:
    def __init__(
        self, store: ContactStore | SqlContactStore, lists: Sequence[MailingList], clock: Clock,
        erase_suppression: Callable[[str], Awaitable[int]] | None = None,
    ):  # fmt: skip
        self._store = store
        self._lists = {item.id: item for item in lists}
        self._clock = clock
        # Erasure reaches the suppression list too: its entries are kept only as the address's hash.
        self._erase_suppression = erase_suppression

    @property
    def mailing_lists(self) -> list[MailingList]:
        return list(self._lists.values())

    async def properties(self, which: str = "all") -> list[ContactProperty]:
        if which not in ("all", "custom"):
            raise ContactError("invalid", "list must be 'all' or 'custom'", "list")
        custom = list((await self._store.properties()).values())
        if which == "custom":
            return custom
        builtin = [ContactProperty(k, label_of(k), t, custom=False) for k, t in BUILTIN_FIELDS.items()]
        return builtin + custom

    async def create_property(self, name: Any, kind: Any) -> ContactProperty:
        if not isinstance(name, str) or not valid_property_name(name):
            raise ContactError("invalid", "name must be camelCase letters and digits, start with a letter, "
                               "at most 64 characters, and not a built-in or reserved name", "name")  # fmt: skip
        try:
            chosen = PropertyType(kind)
        except ValueError:
            raise ContactError("invalid", "type must be one of string, number, boolean, date", "type") from None
        try:
            return await self._store.create_property(name, chosen, self._clock.now())
        except ConflictError as exc:
            raise ContactError("conflict", str(exc), "name") from None

    async def find(self, *, email: str | None = None, user_id: str | None = None) -> Contact | None:
        return await self._store.find(email=email, user_id=user_id)

    async def find_many(self, *, emails: Collection[str] = (), user_ids: Collection[str] = ()) -> list[Contact]:
        """The contacts of any of `emails` or `user_ids`, in one query."""
        return await self._store.find_many(emails=emails, user_ids=user_ids)

    async def create(self, payload: Mapping[str, Any], *, source: str = "API") -> Contact:
        email = checked_email(payload.get("email"))
        checked_user_id(payload.get("userId"))
        changes = await self._changes(payload)
        if "source" not in changes.fields:
            changes = ContactChanges({**changes.fields, "source": source}, changes.properties,
                                     changes.new_properties, changes.lists)  # fmt: skip
        try:
            return await self._store.create(email, changes, self._clock.now(), source=source)
        except ConflictError as exc:
            raise ContactError("conflict", str(exc), "userId" if "userId" in str(exc) else "email") from None

    async def update(self, payload: Mapping[str, Any]) -> tuple[Contact, bool]:
        """The contact updated, or created when there was none: (contact, created)."""
        email_value = payload.get("email")
        user_id = checked_user_id(payload.get("userId"))
        if email_value is None and user_id is None:
            raise ContactError("invalid", "You must provide an email or userId value.", "email")
        email = checked_email(email_value) if email_value is not None else None
        changes = await self._changes(payload)
        found = None
        if user_id is not None:
            found = await self._store.find(user_id=user_id)
        if found is None and email is not None:
            found = await self._store.find(email=email)
        try:
            if found is None:
                if email is None:
                    raise ContactError("invalid", "No contact has this userId; an email is needed to create one.", "email")
                return await self._store.create(email, changes, self._clock.now()), True
            new_email = email if email is not None and email.lower() != found.email.lower() else None
            return await self._store.update(found, changes, self._clock.now(), email=new_email), False
        except ConflictError as exc:
            raise ContactError("conflict", str(exc), "userId" if "userId" in str(exc) else "email") from None

    async def delete(self, *, email: str | None = None, user_id: str | None = None) -> None:
        found = await self._located(email, user_id)
        if found is None or not await self._store.delete(found.id):
            raise ContactError("not_found", "Contact not found.", "email" if email else "userId")

    async def record_event(self, payload: Mapping[str, Any], idempotency_key: str | None = None) -> RecordedEvent:
        """Record an event of a contact (found by address or user id, created when missing), after
        applying the contact properties sent with it."""
        name = payload.get("eventName")
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_EVENT_NAME:
            raise ContactError("invalid", "eventName is required (a string of at most 255 characters)", "eventName")
        properties = payload.get("eventProperties") or {}
        if not isinstance(properties, Mapping):
            raise ContactError("invalid", "eventProperties must be an object", "eventProperties")
        for key, value in properties.items():
            if not isinstance(value, (str, int, float, bool)):
                raise ContactError("invalid", f"eventProperties.{key} must be a string, number, boolean or date",
                                   f"eventProperties.{key}")  # fmt: skip
        contact_fields = {k: v for k, v in payload.items() if k not in ("eventName", "eventProperties")}
        contact, created = await self.update(contact_fields)
        try:
            await self._store.record_event(contact.id, name, properties, self._clock.now(), idempotency_key)
        except ConflictError as exc:
            raise ContactError("conflict", str(exc), "Idempotency-Key") from None
        return RecordedEvent(contact, name, dict(properties), created)

    async def ensure(self, email: str, *, source: str) -> Contact:
        """The contact of `email`, created (subscribed, from `source`) when there is none:
        `addToAudience` of a transactional send."""
        found = await self._store.find(email=email)
        if found is not None:
            return found
        try:
            return await self._store.create(email, ContactChanges(fields={"source": source}), self._clock.now(), source=source)
        except ConflictError:
            again = await self._store.find(email=email)  # created meanwhile by another request
            if again is None:
                raise
            return again

    async def import_rows(
        self,
        rows: Sequence[tuple[str, Mapping[str, Any]]],
        on_error: Callable[[int, ContactError], None] | None = None,
    ) -> tuple[int, int]:
        """Create or update each (email, fields) row as `update` does, all in one transaction:
        (created, updated). A row that is invalid or conflicts with another contact is raised and
        nothing is written; with `on_error`, it goes there with the row's index instead, and the
        other rows are written."""
        known = {k: p.type for k, p in (await self._store.properties()).items()}
        prepared: list[tuple[str, str | None, ContactChanges]] = []
        indexes: list[int] = []
        for index, (email, fields) in enumerate(rows):
            try:
                address = checked_email(email)
                user_id = checked_user_id(fields.get("userId"))
                changes = changes_from(fields, known, self._lists)
            except ContactError as exc:
                if on_error is None:
                    raise
                on_error(index, exc)
                continue
            known.update(changes.new_properties)  # a later row's value must fit the type this one set
            prepared.append((address, user_id, changes))
            indexes.append(index)
        try:
            results = await self._store.upsert_many(prepared, self._clock.now(), partial=on_error is not None)
        except ConflictError as exc:
            raise _conflict_error(exc) from None
        created = updated = 0
        for index, result in zip(indexes, results, strict=True):
            if isinstance(result, ConflictError):
                assert on_error is not None  # without it, upsert_many raised
                on_error(index, _conflict_error(result))
            elif result:
                created += 1
            else:
                updated += 1
        return created, updated

    def all(self) -> AsyncIterator[Contact]:
        return self._store.all()

    async def count(self) -> int:
        return await self._store.count()

    async def erase(self, address: str) -> tuple[bool, int]:
        """Erase the contact; its suppression entries (if any) are kept only as a hash, so the
        address stays blocked without being named."""
        checked = checked_email(address, "address")
        erased = await self._store.erase(checked)
        if self._erase_suppression is not None:
            await self._erase_suppression(checked)
        return erased

    async def _located(self, email: str | None, user_id: str | None) -> Contact | None:
        if (email is None) == (user_id is None):
            raise ContactError("invalid", "Provide exactly one of email or userId.", "email")
        return await self._store.find(email=email, user_id=user_id)

    async def _changes(self, payload: Mapping[str, Any]) -> ContactChanges:
        known = {k: p.type for k, p in (await self._store.properties()).items()}
        return changes_from(payload, known, self._lists)


def coerce_import_value(kind: PropertyType, text: str, path: str) -> Any:
    """A CSV cell as a value of a property's type (CSV has only text)."""
    if text == "":
        return None
    if kind is PropertyType.NUMBER:
        try:
            number = float(text)
        except ValueError:
            raise ContactError("invalid", f"{path} must be a number", path) from None
        return int(number) if number.is_integer() and "." not in text else number
    if kind is PropertyType.BOOLEAN:
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "1"):
            return True
        if lowered in ("false", "no", "0"):
            return False
        raise ContactError("invalid", f"{path} must be true or false", path)
    return coerce(kind, text, path)
