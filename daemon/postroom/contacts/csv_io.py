"""Audience files: the contact CSV Loops imports and exports, read into checked payloads and written
from contacts. No file is opened and no database touched here.

A header row names the columns: `email` (required), the other built-in fields (`firstName`,
`lastName`, `userId`, `userGroup`, `source`, `subscribed`), one column per mailing list (its id in
`[contacts] lists`, valued true or false) and one per custom property, typed by the property's
definition (a column that is not a property yet is a string one unless declared otherwise). An empty
cell leaves the contact's value as it is: a CSV cannot tell "cleared" from "not given", and a file
with fewer columns must not wipe the rest.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from postroom.contacts.model import (
    BUILTIN_FIELDS,
    RESERVED_NAMES,
    Contact,
    ContactError,
    MailingList,
    PropertyType,
    PropertyValue,
    changes_from,
    valid_property_name,
)
from postroom.contacts.service import checked_email, checked_user_id, coerce_import_value
from postroom.core.errors import PostroomError

# The built-in columns, in the order an export writes them.
BUILTIN_COLUMNS = ("email", "firstName", "lastName", "userId", "userGroup", "source", "subscribed")
# Loops' dashboard names the same columns as people read them ("First Name"); a file exported from
# Loops' audience page, or its sample upload file, imports as it is.
_TITLED = {"email": "email", "email address": "email", "first name": "firstName", "last name": "lastName",
           "user id": "userId", "userid": "userId", "user group": "userGroup", "source": "source",
           "subscribed": "subscribed"}  # fmt: skip
# Columns an export from Loops carries that Loops itself sets: read past, never imported.
_SET_BY_LOOPS = frozenset({"id", "contact id", "created at", "createdat", "updated at", "updatedat",
                           "opt in status", "optinstatus", "last activity", "lastactivity"})  # fmt: skip


def canonical_column(name: str) -> str:
    """A header cell as the field it names: "First Name" and "firstName" are both `firstName`."""
    folded = " ".join(name.strip().split()).lower()
    return _TITLED.get(folded, name.strip())


def set_by_loops(name: str) -> bool:
    return " ".join(name.strip().split()).lower() in _SET_BY_LOOPS


class AudienceFileError(PostroomError):
    """The file as a whole cannot be imported: not CSV or not UTF-8, no header, no `email`
    column, a column twice, or a column that cannot be a property."""


@dataclass(frozen=True)
class RowProblem:
    """Why one row cannot be imported; `column` is "" when the row as a whole is wrong."""

    line: int
    column: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}, column {self.column}" if self.column else f"line {self.line}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class AudienceColumns:
    """A checked header: the column names in file order, which are mailing lists, and the type of
    every custom property column (its definition's, the declared one, or string)."""

    names: tuple[str, ...]
    lists: Mapping[str, MailingList]
    types: Mapping[str, PropertyType]
    new: Mapping[str, PropertyType]  # property columns with no definition yet
    ignored: frozenset[str] = frozenset()  # columns Loops sets itself (createdAt, ...): not imported

    @property
    def list_columns(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if n in self.lists)


def utf8_lines(raw: Iterable[bytes]) -> Iterator[str]:
    """The lines of a UTF-8 file (its byte order mark dropped, as spreadsheets write one), decoded
    one by one so that bytes that are not UTF-8 are reported on their own line (a line break is
    never part of a multi-byte character)."""
    for number, line in enumerate(raw, start=1):
        try:
            yield (line.removeprefix(codecs.BOM_UTF8) if number == 1 else line).decode("utf-8")
        except UnicodeDecodeError:
            raise AudienceFileError(f"line {number}: not UTF-8 text") from None


def read_records(lines: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    """(line the record starts on, its fields) for each record, the header included; blank lines
    are skipped. A record may span lines (a quoted field with line breaks, RFC 4180 §2.6)."""
    reader = csv.reader(lines, strict=True)
    while True:
        line = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise AudienceFileError(f"line {reader.line_num}: not valid CSV: {exc}") from None
        if values:
            yield line, values


def read_header(
    header: Sequence[str],
    known: Mapping[str, PropertyType],
    lists: Sequence[MailingList],
    declared: Mapping[str, PropertyType] | None = None,
) -> AudienceColumns:
    """The columns of a header row. `known` are the existing custom properties and their types;
    `declared` gives the types of columns that are no property yet (default string)."""
    declared = declared or {}
    names = tuple(canonical_column(name) for name in header)
    by_id = {item.id: item for item in lists}
    seen: set[str] = set()
    for position, name in enumerate(names, start=1):
        if not name:
            raise AudienceFileError(f"column {position} of the header has no name")
        if name in seen:
            raise AudienceFileError(f"column {name!r} appears twice in the header")
        seen.add(name)
    if "email" not in seen:
        raise AudienceFileError("the header has no 'email' column (the first row must name the columns)")
    types: dict[str, PropertyType] = {}
    new: dict[str, PropertyType] = {}
    ignored = frozenset(name for name in names if set_by_loops(name) and name not in known)
    for name in names:
        if name in BUILTIN_FIELDS or name in by_id or name in ignored:
            continue
        if name in known:
            types[name] = known[name]
        elif name in RESERVED_NAMES:
            raise AudienceFileError(f"column {name!r}: a reserved name, neither a field nor a property")
        elif not valid_property_name(name):
            raise AudienceFileError(f"column {name!r}: not a mailing list in [contacts] lists nor a valid property "
                                    "name (letters, digits and _, starting with a letter, at most 64)")  # fmt: skip
        else:
            types[name] = new[name] = declared.get(name, PropertyType.STRING)
    for name, kind in declared.items():
        if name not in seen:
            raise AudienceFileError(f"--type {name}: the file has no such column")
        if name not in types:
            raise AudienceFileError(f"--type {name}: a built-in field or mailing list, not a custom property")
        if types[name] is not kind:
            raise AudienceFileError(f"--type {name}: the property exists as {types[name]}, not {kind}")
    return AudienceColumns(names, by_id, types, new, ignored)


def parse_row(columns: AudienceColumns, values: Sequence[str], line: int) -> tuple[str, dict[str, Any]] | RowProblem:
    """A record as (email, the fields `ContactService.update` takes), or the first problem with
    it. The checks are those the service makes, so a row that passes here is written."""
    if len(values) != len(columns.names):
        return RowProblem(line, "", f"{len(values)} fields where the header has {len(columns.names)}")
    try:
        email = checked_email(values[columns.names.index("email")])
        payload: dict[str, Any] = {}
        memberships: dict[str, bool] = {}
        for name, text in zip(columns.names, values, strict=True):
            if name == "email" or text == "" or name in columns.ignored:
                continue
            if name in BUILTIN_FIELDS:
                payload[name] = coerce_import_value(BUILTIN_FIELDS[name], text, name)
            elif name in columns.lists:
                memberships[name] = coerce_import_value(PropertyType.BOOLEAN, text, name)
            else:
                payload[name] = coerce_import_value(columns.types[name], text, name)
        checked_user_id(payload.get("userId"))
        if memberships:
            payload["mailingLists"] = memberships
        changes_from(payload, columns.types, columns.lists)
    except ContactError as exc:
        return RowProblem(line, exc.path.removeprefix("mailingLists."), exc.message)
    return email, payload


def export_header(lists: Sequence[str], properties: Sequence[str]) -> list[str]:
    return [*BUILTIN_COLUMNS, *lists, *properties]


def contact_row(contact: Contact, lists: Sequence[str], properties: Sequence[str]) -> list[str]:
    """A contact as a row under `export_header(lists, properties)`; `import` reads it back."""
    builtin: dict[str, PropertyValue] = {
        "email": contact.email, "firstName": contact.first_name, "lastName": contact.last_name,
        "userId": contact.user_id, "userGroup": contact.user_group, "source": contact.source,
        "subscribed": contact.subscribed,
    }  # fmt: skip
    return ([cell(builtin[name]) for name in BUILTIN_COLUMNS]
            + [cell(list_id in contact.mailing_lists) for list_id in lists]
            + [cell(contact.properties.get(key)) for key in properties])  # fmt: skip


def cell(value: PropertyValue) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same float
    return str(value)
