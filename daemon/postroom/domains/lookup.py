"""The DNS contract the domain checks depend on: three async questions and one error.

Checks and the SPF evaluator never touch sockets; they ask a `DnsLookup`. The production adapter
is `resolver.DnspythonLookup`; tests pass a dictionary-backed fake or point the adapter at the local
server in `tests/dns_server.py`. The contract is deliberately small: a name with no such records
(NXDOMAIN or NODATA) is an empty list, not an error, because "missing" is a verdict; only a failure
to get an answer at all (timeout, SERVFAIL, refused) raises `DnsLookupError`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from postroom.core.errors import PostroomError


class DnsLookupError(PostroomError):
    """DNS gave no usable answer (timeout, SERVFAIL, no server); the text names the query."""


class DnsLookup(Protocol):
    """Answers from DNS as plain values. Names are given without a trailing dot."""

    async def txt(self, name: str) -> list[str]:
        """One string per TXT record, its character-strings concatenated (RFC 7208 §3.3)."""
        ...

    async def mx(self, name: str) -> list[tuple[int, str]]:
        """(preference, exchange) pairs; the exchange is lower case without a trailing dot."""
        ...

    async def addresses(self, name: str) -> list[str]:
        """The A and AAAA records of `name` as address text, IPv4 first."""
        ...


@runtime_checkable
class RecordTtls(Protocol):
    """Optionally, a `DnsLookup` also tells the TTL of the records it last returned."""

    def ttl(self, name: str, rdtype: str) -> int | None: ...
