"""The DNS adapter: `DnspythonLookup` answers `DnsLookup` questions with dnspython's async resolver.

It asks one configured server (`[delivery] dns_resolver`, which is how tests aim it at a local
server) or the system's resolvers, without search domains and without a cache, so a check run just
after publishing a record, or during a key rotation, sees what the servers say now. dnspython's
exceptions stop here: "no such name" and "no such record" become an empty list, and everything
else (timeout, SERVFAIL or refusal from every server, a malformed name) a `DnsLookupError` naming
the query.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdata
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.TXT import TXT
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA

from postroom.domains.lookup import AddressType, DnsLookupError

# Largest UDP answer we ask for (EDNS0): the DNS Flag Day 2020 value, which fits a 4096-bit DKIM
# key without falling back to TCP.
_EDNS_PAYLOAD = 1232
# One attempt waits at most this long before dnspython asks again, within the overall timeout.
_ATTEMPT_TIMEOUT = 2.0
# TTLs of positive answers kept for `ttl` (the MX cache asks right after its lookups).
_MAX_TTLS = 4096


class DnspythonLookup:
    """A `DnsLookup` over dnspython. `nameserver` is (IP address, port), or None for the system's
    resolvers (/etc/resolv.conf); `timeout` bounds each question, retries included."""

    def __init__(self, nameserver: tuple[str, int] | None, timeout: float) -> None:
        if nameserver is None:
            try:
                resolver = dns.asyncresolver.Resolver(configure=True)
            except dns.exception.DNSException as exc:
                raise DnsLookupError(f"no usable system DNS configuration: {exc}") from exc
            self._server = "the system resolver"
        else:
            host, port = nameserver
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise DnsLookupError(f"DNS server {host!r} is not an IP address") from None
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [host]
            resolver.port = port
            self._server = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        resolver.search = []
        resolver.use_search_by_default = False
        resolver.cache = None
        resolver.lifetime = timeout
        resolver.timeout = min(_ATTEMPT_TIMEOUT, timeout)
        resolver.use_edns(0, 0, _EDNS_PAYLOAD)
        self._resolver = resolver
        self._ttls: OrderedDict[tuple[str, str], int] = OrderedDict()

    def ttl(self, name: str, rdtype: str) -> int | None:
        """The TTL of the last positive answer for (name, type), when one was seen."""
        return self._ttls.get((name.lower(), rdtype))

    async def txt(self, name: str) -> list[str]:
        answer = await self._query(name, dns.rdatatype.TXT)
        # A record's character-strings are one value cut at 255 bytes (RFC 7208 §3.3, RFC 6376
        # §3.6.2.2): join them with nothing in between.
        return [
            b"".join(rdata.strings).decode("utf-8", "replace")
            for rdata in answer
            if isinstance(rdata, TXT)
        ]

    async def mx(self, name: str) -> list[tuple[int, str]]:
        answer = await self._query(name, dns.rdatatype.MX)
        return [
            (rdata.preference, _exchange(rdata.exchange))
            for rdata in answer
            if isinstance(rdata, MX)
        ]

    async def addresses(self, name: str, rdtype: AddressType) -> list[str]:
        answer = await self._query(name, dns.rdatatype.A if rdtype == "A" else dns.rdatatype.AAAA)
        return [rdata.address for rdata in answer if isinstance(rdata, (A, AAAA))]

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> list[dns.rdata.Rdata]:
        query = f"{name} {rdtype.name}"
        try:
            qname = dns.name.from_text(name)
            answer = await self._resolver.resolve(qname, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.Timeout as exc:
            raise DnsLookupError(
                f"DNS query {query}: no answer from {self._server} "
                f"within {self._resolver.lifetime:g}s"
            ) from exc
        except dns.resolver.NoNameservers as exc:
            raise DnsLookupError(
                f"DNS query {query}: {self._server} failed (SERVFAIL, REFUSED or unreachable)"
            ) from exc
        except (dns.exception.DNSException, OSError) as exc:
            raise DnsLookupError(f"DNS query {query} via {self._server}: {exc}") from exc
        if answer.rrset is not None:
            self._remember_ttl((name.lower(), rdtype.name), answer.rrset.ttl)
        return list(answer)

    def _remember_ttl(self, key: tuple[str, str], ttl: int) -> None:
        self._ttls[key] = ttl
        self._ttls.move_to_end(key)
        while len(self._ttls) > _MAX_TTLS:
            self._ttls.popitem(last=False)


def _exchange(name: dns.name.Name) -> str:
    # RFC 7505: a null MX names the root, meaning "this domain accepts no mail".
    if name == dns.name.root:
        return ""
    return name.to_text(omit_final_dot=True).lower()


def lookup_for(resolver: str, timeout: float = 5.0) -> DnspythonLookup:
    """The lookup for a `[delivery] dns_resolver` setting: "host:port", or "" for the system's."""
    from postroom.config import parse_hostport

    return DnspythonLookup(parse_hostport(resolver, default_port=53) if resolver else None, timeout)
