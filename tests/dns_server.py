"""A local authoritative DNS server for tests, and a UDP port where no DNS server answers.

`serve_dns(records)` runs an asyncio UDP server on 127.0.0.1 (a free port) that answers from an
in-memory dict `{(name, type): [value, ...]}` the test may change while it runs (`server.set`,
`server.remove`). Values are zone-file text: `"10 mx.example.net"` for MX, `"192.0.2.1"` for A,
`"2001:db8::1"` for AAAA; a TXT value is one string, sent cut into 255-byte character-strings as a
zone file would (RFC 1035 §3.3), so the client has to join them. A name with no records at all gets
NXDOMAIN, a name with records of other types an empty NOERROR (NODATA). Names in `servfail` get
SERVFAIL and names in `silent` no answer at all; `server.fail(name, type, "REFUSED")` makes one
question fail with that rcode (REFUSED or SERVFAIL) while the name's other types still answer, as
a dnsmasq without an upstream refuses AAAA and answers A from its hosts file. Answers are sized
like a real server's: at most 512 bytes, or the EDNS payload the query offers, else a truncated
(TC) reply; there is no TCP.

    async with serve_dns({("example.com", "TXT"): ["v=spf1 -all"]}) as (server, port):
        lookup = DnspythonLookup(("127.0.0.1", port), timeout=2.0)

`DictDnsLookup(records)` answers the same dict directly, without sockets, for unit tests of code
that takes a `DnsLookup`; it records queries too, and raises `DnsLookupError` for names in `failing`
and for the (name, type) questions in `failing_queries`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.TXT import TXT

from postroom.domains.lookup import AddressType, DnsLookupError

Records = Mapping[tuple[str, str], list[str]]


class LocalDnsServer(asyncio.DatagramProtocol):
    """The protocol object; `queries` records every (name, type) asked, in order."""

    def __init__(self, records: Records) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        for (name, rtype), values in records.items():
            self.set(name, rtype, values)
        self.queries: list[tuple[str, str]] = []
        self.servfail: set[str] = set()
        self.silent: set[str] = set()
        # (name, type) -> the rcode that question gets; delete an entry to answer it again.
        self.failures: dict[tuple[str, str], dns.rcode.Rcode] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def set(self, name: str, rtype: str, values: list[str]) -> None:
        """Replace the records of one name and type (an empty list keeps the name, with no data).
        A value that is not valid zone-file text for `rtype` raises here, in the test."""
        rdtype = dns.rdatatype.from_text(rtype.upper())
        for value in values:
            _rdata(rdtype, value)
        self.records[(_name(name), rtype.upper())] = list(values)

    def fail(self, name: str, rtype: str, rcode: str = "REFUSED") -> None:
        """Answer the question (name, type) with `rcode` ("REFUSED", "SERVFAIL") from now on,
        whatever records it has; other types of the name answer as before."""
        self.failures[(_name(name), rtype.upper())] = dns.rcode.from_text(rcode)

    def remove(self, name: str, rtype: str | None = None) -> None:
        """Remove one type of record from `name`, or the whole name (NXDOMAIN from now on)."""
        for key in list(self.records):
            if key[0] == _name(name) and (rtype is None or key[1] == rtype.upper()):
                del self.records[key]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport in 3.11.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return  # not DNS: a real server drops it too
        reply = self.answer(query)
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)

    def answer(self, query: dns.message.Message) -> bytes | None:
        """The wire-format reply to `query`, or None to stay silent."""
        if len(query.question) != 1:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        name = _name(question.name.to_text())
        rtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rtype))
        if name in self.silent:
            return None
        response = dns.message.make_response(query)
        if (name, rtype) in self.failures:
            response.set_rcode(self.failures[(name, rtype)])
            return response.to_wire()
        response.flags |= dns.flags.AA
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        values = self.records.get((name, rtype))
        if values:
            rdatas = [_rdata(question.rdtype, value) for value in values]
            response.answer.append(dns.rrset.from_rdata_list(question.name, 0, rdatas))
        elif not any(key[0] == name for key in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        # RFC 6891 §6.2.5: an answer may be as large as the query's EDNS payload, else 512 bytes
        # (RFC 1035 §4.2.1); a larger one is cut and flagged truncated.
        limit = max(query.payload, 512) if query.edns >= 0 else 512
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer.clear()
            response.flags |= dns.flags.TC
            return response.to_wire()


class DictDnsLookup:
    """A `DnsLookup` answering from a records dict in memory (same format as `serve_dns`)."""

    def __init__(
        self,
        records: Records,
        failing: set[str] | None = None,
        failing_queries: set[tuple[str, str]] | None = None,
    ) -> None:
        self.records = {(_name(name), rtype.upper()): v for (name, rtype), v in records.items()}
        self.failing = failing or set()
        self.failing_queries = {(_name(n), rtype.upper()) for n, rtype in failing_queries or ()}
        self.queries: list[tuple[str, str]] = []

    async def txt(self, name: str) -> list[str]:
        return self._get(name, "TXT")

    async def mx(self, name: str) -> list[tuple[int, str]]:
        answers = []
        for value in self._get(name, "MX"):
            preference, host = value.split()
            answers.append((int(preference), _name(host)))
        return answers

    async def addresses(self, name: str, rdtype: AddressType) -> list[str]:
        return self._get(name, rdtype)

    def _get(self, name: str, rtype: str) -> list[str]:
        self.queries.append((_name(name), rtype))
        if _name(name) in self.failing:
            raise DnsLookupError(f"DNS query {name} {rtype}: SERVFAIL (test)")
        if (_name(name), rtype) in self.failing_queries:
            raise DnsLookupError(f"DNS query {name} {rtype}: REFUSED (test)")
        return list(self.records.get((_name(name), rtype), []))


@contextlib.asynccontextmanager
async def serve_dns(records: Records | None = None) -> AsyncIterator[tuple[LocalDnsServer, int]]:
    """Run a `LocalDnsServer` on 127.0.0.1 and a free UDP port; yields (server, port)."""
    loop = asyncio.get_running_loop()
    server = LocalDnsServer(records or {})
    transport, _ = await loop.create_datagram_endpoint(
        lambda: server, local_addr=("127.0.0.1", 0)
    )
    try:
        yield server, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()
        await server.closed  # the socket is really closed before the loop is


@contextlib.contextmanager
def silent_udp_port() -> Iterator[int]:
    """A bound UDP port on 127.0.0.1 that never replies: queries sent there time out (nothing
    else can take the port meanwhile, and the kernel sends no "port unreachable")."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _name(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _rdata(rdtype: dns.rdatatype.RdataType, value: str) -> dns.rdata.Rdata:
    if rdtype == dns.rdatatype.TXT:
        data = value.encode("utf-8")
        strings = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
        return TXT(dns.rdataclass.IN, dns.rdatatype.TXT, strings)
    # Names in values are absolute, with or without the final dot.
    return dns.rdata.from_text(
        dns.rdataclass.IN, rdtype, value, origin=dns.name.root, relativize=False
    )
