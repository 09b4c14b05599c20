"""RFC 3464 delivery-status fields: the machine-readable part of a standard DSN.

A `message/delivery-status` body is one group of per-message fields, then one group per recipient,
the groups separated by blank lines (RFC 3464 §2.1). Many MTAs also print the same fields in a
`text/plain` part, so `read_status_fields` accepts any text and keeps only groups that name a
recipient. Values keep their type prefix stripped (`rfc822;`, `smtp;`, `dns;`, RFC 3464 §2.1.2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9-]{1,40})\s*:\s*(.*)$")
_TYPED_VALUE = re.compile(r"^\s*(?:rfc822|smtp|dns|x-[a-z0-9-]+|utf-8|x400|unknown)\s*;\s*", re.I)
RECIPIENT_FIELDS = ("final-recipient", "original-recipient", "x-actual-recipient")
_PLAIN_ADDRESS = re.compile(r"[^@\s<>()\[\]:;,\"]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")


@dataclass(frozen=True)
class RecipientFields:
    """One per-recipient group (RFC 3464 §2.3), names lower-cased, values with type prefixes off."""

    fields: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str:
        return self.fields.get(name, "")

    @property
    def address(self) -> str:
        for name in RECIPIENT_FIELDS:
            value = self.fields.get(name, "")
            if _PLAIN_ADDRESS.fullmatch(strip_address(value)):
                return value
        return self.fields.get("final-recipient", "")


@dataclass(frozen=True)
class DeliveryStatus:
    per_message: dict[str, str]
    recipients: tuple[RecipientFields, ...]


def read_status_fields(text: str) -> DeliveryStatus:
    """The field groups of a delivery-status body; groups without a recipient field merge into
    the per-message fields."""
    groups = _groups(text)
    per_message: dict[str, str] = {}
    recipients: list[RecipientFields] = []
    for group in groups:
        if any(name in group for name in RECIPIENT_FIELDS):
            recipients.append(RecipientFields(group))
        elif recipients and ("status" in group or "diagnostic-code" in group):
            # A blank line inside one recipient's group (seen in the wild): it continues it.
            recipients[-1] = RecipientFields({**group, **recipients[-1].fields})
        else:
            for name, value in group.items():
                per_message.setdefault(name, value)
    return DeliveryStatus(per_message, tuple(recipients))


def _groups(text: str) -> list[dict[str, str]]:
    groups: list[dict[str, str]] = []
    current: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                groups.append(current)
            current, name = {}, ""
            continue
        if line[:1] in (" ", "\t"):
            if name:
                current[name] = f"{current[name]} {line.strip()}".strip()
            continue
        match = _FIELD.match(line)
        if not match:
            name = ""
            continue
        name = match.group(1).lower()
        typed = _TYPED_VALUE.match(match.group(2))
        value = match.group(2)[typed.end() :].strip() if typed else match.group(2).strip()
        if name in current:
            # A field repeated without a blank line between: a new group starts (seen from AOL).
            groups.append(current)
            current = {}
        current[name] = value
        if typed and name == "diagnostic-code":
            current["diagnostic-type"] = typed.group(0).strip(" ;\t").lower()
    if current:
        groups.append(current)
    return groups


def strip_address(value: str) -> str:
    """`<User@Example.org>` or `"name" <x@y>` -> `user@example.org` (best effort, lower-cased)."""
    match = re.search(r"<([^<>\s]+@[^<>\s]+)>", value)
    if match:
        value = match.group(1)
    value = value.strip().strip("<>").strip().strip("'\"")
    value = re.sub(r"^(?:rfc822;\s*|smtp[=:])", "", value, flags=re.I)  # Exchange writes "SMTP=x@y"
    return value.split()[0].lower() if value.split() else ""
