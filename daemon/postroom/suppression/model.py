"""The values of the suppression list: an entry with its provenance, and how an address is keyed
(case-folded, or its SHA-256 once erased). Pure."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from postroom.core.addresses import normalise_address

SOURCES = ("bounce", "complaint", "unsubscribe", "manual", "import")
HASH_PREFIX = "sha256:"


def address_key(address: str) -> str:
    """How entries are told apart: the whole address case-folded (mailbox providers treat the
    local part's case as one mailbox, and so do the Loops-compatible contacts)."""
    return normalise_address(address.strip().strip("<>")).lower()


def hashed_key(address: str) -> str:
    """The key an entry keeps once erased (GDPR): it still blocks the address, without naming it."""
    return HASH_PREFIX + hashlib.sha256(address_key(address).encode()).hexdigest()


def lookup_keys(addresses: Iterable[str]) -> set[str]:
    """The keys under which entries for these addresses may be stored: plain and erased."""
    return {key for address in addresses for key in (address_key(address), hashed_key(address))}


@dataclass(frozen=True)
class Entry:
    id: int
    address: str | None  # None once erased
    scope: str  # "global" or "stream:<name>"
    source: str
    reason: str
    bounce_record_id: int | None
    created_by: str | None
    created_at: float
    expires_at: float | None

    @property
    def erased(self) -> bool:
        return self.address is None


@dataclass(frozen=True)
class NewEntry:
    """An entry to add (kept when one for the address and scope exists and lasts longer)."""

    address: str
    scope: str
    source: str
    reason: str
    bounce_record_id: int | None = None
    created_by: str | None = None
    expires_at: float | None = None


def first_matches(
    addresses: Iterable[str], scopes: Collection[str], entries: Iterable[tuple[str, Entry]]
) -> dict[str, Entry]:
    """The first of `entries` (key, entry; oldest first) that suppresses each address for one of
    `scopes`, by address as given."""
    by_key: dict[str, Entry] = {}
    for key, entry in entries:
        if entry.scope in scopes:
            by_key.setdefault(key, entry)
    found: dict[str, Entry] = {}
    for address in addresses:
        candidates = [by_key[key] for key in (address_key(address), hashed_key(address)) if key in by_key]
        if candidates:
            found[address] = min(candidates, key=lambda entry: entry.id)
    return found


def valid_scope(scope: str) -> bool:
    if scope == "global":
        return True
    kind, _, stream = scope.partition(":")
    return kind == "stream" and 0 < len(stream) <= 64
