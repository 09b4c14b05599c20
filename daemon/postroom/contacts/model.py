"""Plain values and pure rules of contacts: the built-in fields, typed custom properties, and how a
request's loose JSON becomes checked changes. No database, no clock.

Property values follow Loops' types: a string, a number, a boolean, or a date (an ISO 8601 date or
date-time, or a Unix timestamp in milliseconds, stored as ISO 8601 UTC). `null` resets a value. A
value of the wrong type for an existing property is refused, naming the property; a property never
seen before is created with the type of its first value, as Loops does.
"""

from __future__ import annotations

import datetime
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from postroom.core.addresses import normalise_address
from postroom.core.errors import PostroomError

PropertyValue = str | int | float | bool | None


class PropertyType(enum.StrEnum):
    STRING = "string"
    NUMBER = "number"
    BOOLEAN = "boolean"
    DATE = "date"


class ContactError(PostroomError):
    """A request about contacts that cannot be done: `kind` says which way (invalid, not_found,
    conflict), `path` names the field at fault."""

    def __init__(self, kind: str, message: str, path: str = ""):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.path = path


# The fields every contact has, by their API names, with their types; Loops lists these first.
BUILTIN_FIELDS: Mapping[str, PropertyType] = {
    "email": PropertyType.STRING,
    "firstName": PropertyType.STRING,
    "lastName": PropertyType.STRING,
    "source": PropertyType.STRING,
    "subscribed": PropertyType.BOOLEAN,
    "userGroup": PropertyType.STRING,
    "userId": PropertyType.STRING,
}
# Keys of a contact request that are not properties.
REQUEST_KEYS = frozenset({"mailingLists"})
# Names Loops reserves; a custom property may not take them.
RESERVED_NAMES = frozenset({"id", "createdAt", "updatedAt", "optInStatus", "mailingLists", "eventName",
                            "eventProperties", "contactProperties", "listId", "emailMessageId"})  # fmt: skip
_PROPERTY_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
MAX_STRING = 10_000


@dataclass(frozen=True)
class ContactProperty:
    key: str
    label: str
    type: PropertyType
    custom: bool = True


@dataclass(frozen=True)
class MailingList:
    id: str
    name: str
    description: str | None = None
    public: bool = False


@dataclass(frozen=True)
class Contact:
    id: str
    email: str
    user_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    source: str = "API"
    subscribed: bool = True
    user_group: str = ""
    opt_in_status: str | None = None
    properties: Mapping[str, PropertyValue] = field(default_factory=dict)
    mailing_lists: frozenset[str] = frozenset()
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class ContactChanges:
    """What one request sets: built-in fields by their column names, custom properties, new
    properties to create (key -> type) and list memberships (list id -> subscribed)."""

    fields: Mapping[str, PropertyValue] = field(default_factory=dict)
    properties: Mapping[str, PropertyValue] = field(default_factory=dict)
    new_properties: Mapping[str, PropertyType] = field(default_factory=dict)
    lists: Mapping[str, bool] = field(default_factory=dict)


_COLUMNS = {"email": "email", "firstName": "first_name", "lastName": "last_name", "source": "source",
            "subscribed": "subscribed", "userGroup": "user_group", "userId": "user_id"}  # fmt: skip


def email_key(address: str) -> str:
    """How contacts are told apart: the whole address case-folded, as Loops does (two contacts
    never differ only in the case of their address)."""
    return normalise_address(address).lower()


def label_of(key: str) -> str:
    """`planName` -> `Plan Name`, as Loops labels properties."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", key).replace("_", " ")
    return spaced[:1].upper() + spaced[1:]


def valid_property_name(name: str) -> bool:
    return bool(_PROPERTY_NAME.match(name)) and name not in RESERVED_NAMES and name not in BUILTIN_FIELDS


def type_of(value: Any) -> PropertyType:
    """The type a new property takes from its first value."""
    if isinstance(value, bool):
        return PropertyType.BOOLEAN
    if isinstance(value, (int, float)):
        return PropertyType.NUMBER
    return PropertyType.STRING


def coerce(kind: PropertyType, value: Any, path: str) -> PropertyValue:
    """`value` as a stored value of type `kind`; ContactError naming `path` when it is not one."""
    if value is None:
        return None
    if kind is PropertyType.STRING:
        if not isinstance(value, str):
            raise ContactError("invalid", f"{path} must be a string", path)
        if len(value) > MAX_STRING:
            raise ContactError("invalid", f"{path} is longer than {MAX_STRING} characters", path)
        return value
    if kind is PropertyType.NUMBER:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ContactError("invalid", f"{path} must be a number", path)
        return value
    if kind is PropertyType.BOOLEAN:
        if not isinstance(value, bool):
            raise ContactError("invalid", f"{path} must be a boolean (true or false)", path)
        return value
    return _date(value, path)


def _date(value: Any, path: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            moment = datetime.datetime.fromtimestamp(value / 1000, tz=datetime.UTC)
        except (OverflowError, OSError, ValueError):
            raise ContactError("invalid", f"{path} is out of range as a timestamp in milliseconds", path) from None
        return moment.isoformat().replace("+00:00", "Z")
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                return datetime.date.fromisoformat(text).isoformat()
            parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=datetime.UTC)
            return parsed.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")
    raise ContactError("invalid", f"{path} must be a date (ISO 8601, or a Unix timestamp in milliseconds)", path)


def changes_from(
    payload: Mapping[str, Any],
    known: Mapping[str, PropertyType],
    lists: Mapping[str, MailingList],
    *,
    ignore: frozenset[str] = frozenset(),
) -> ContactChanges:
    """The checked changes of a contact request: built-in fields, custom properties (`known` are
    the existing custom properties and their types) and `mailingLists`. Keys in `ignore` belong to
    the caller (an event's name, for instance)."""
    fields: dict[str, PropertyValue] = {}
    properties: dict[str, PropertyValue] = {}
    new: dict[str, PropertyType] = {}
    for key, value in payload.items():
        if key in ignore or key in REQUEST_KEYS:
            continue
        if key in BUILTIN_FIELDS:
            if key == "email":
                continue  # the contact's identity: the caller reads it
            coerced = coerce(BUILTIN_FIELDS[key], value, key)
            if key == "subscribed" and coerced is None:
                raise ContactError("invalid", "subscribed must be a boolean (true or false)", key)
            fields[_COLUMNS[key]] = coerced
        elif key in known:
            properties[key] = coerce(known[key], value, key)
        elif key in RESERVED_NAMES:
            raise ContactError("invalid", f"{key} is a reserved name and cannot be set", key)
        elif not valid_property_name(key):
            raise ContactError("invalid", f"{key!r} is not a valid property name (letters, digits and _; "
                               "starting with a letter; at most 64)", key)  # fmt: skip
        elif value is not None:
            new[key] = type_of(value)
            properties[key] = coerce(new[key], value, key)
    return ContactChanges(fields, properties, new, lists_from(payload.get("mailingLists"), lists))


def lists_from(value: Any, lists: Mapping[str, MailingList]) -> dict[str, bool]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ContactError("invalid", "mailingLists must be an object of list ids and booleans", "mailingLists")
    memberships: dict[str, bool] = {}
    for list_id, subscribed in value.items():
        if list_id not in lists:
            raise ContactError("invalid", f"mailing list {list_id!r} does not exist", f"mailingLists.{list_id}")
        if not isinstance(subscribed, bool):
            raise ContactError("invalid", f"mailingLists.{list_id} must be true or false", f"mailingLists.{list_id}")
        memberships[list_id] = subscribed
    return memberships


def contact_json(contact: Contact) -> dict[str, Any]:
    """A contact as Loops shows one (`findContact`): the built-in fields, then custom properties."""
    return {
        "id": contact.id,
        "email": contact.email,
        "firstName": contact.first_name,
        "lastName": contact.last_name,
        "source": contact.source,
        "subscribed": contact.subscribed,
        "userGroup": contact.user_group,
        "userId": contact.user_id,
        "mailingLists": {list_id: True for list_id in sorted(contact.mailing_lists)},
        "optInStatus": contact.opt_in_status,
        **dict(contact.properties),
    }
