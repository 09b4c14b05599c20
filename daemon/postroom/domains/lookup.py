"""The DNS contract the domain checks and MX resolution depend on: three async questions and one
error.

Checks and the SPF evaluator never touch sockets; they ask a `DnsLookup`. The production adapter
is `resolver.DnspythonLookup`; tests pass a dictionary-backed fake or point the adapter at the local
server in `tests/dns_server.py`. The contract is deliberately small: a name with no such records
(NXDOMAIN or NODATA) is an empty list, not an error, because "missing" is a verdict; only a failure
to get an answer at all (timeout, SERVFAIL, refused) raises `DnsLookupError`. Addresses are asked
one type at a time: a resolver may answer A and refuse AAAA (dnsmasq without an upstream does),
and an answer of one type must not be lost to a failure of the other.
"""

from __future__ import annotations

from typing import Literal, Protocol, TypeAlias, runtime_checkable

from postroom.core.errors import PostroomError


AddressType: TypeAlias = Literal["A", "AAAA"]


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

    async def addresses(self, name: str, rdtype: AddressType) -> list[str]:
        """The records of one address type of `name` (A: IPv4, AAAA: IPv6) as address text.

        One type per question because callers need them apart: SPF's `a` and `mx` ask only for
        the type of the client's address (RFC 7208 §5.3, §5.4), and MX resolution uses a host's
        IPv4 addresses when its AAAA query fails.
        """
        ...


@runtime_checkable
class RecordTtls(Protocol):
    """Optionally, a `DnsLookup` also tells the TTL of the records it last returned."""

    def ttl(self, name: str, rdtype: str) -> int | None: ...
