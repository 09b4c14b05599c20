"""MX resolution over real DNS: `delivery.mx.resolve` through `DnspythonLookup` against the local
server in `tests/dns_server.py`."""

from __future__ import annotations

import pytest

from postroom.core.clock import FakeClock
from postroom.delivery.mx import MxCache, MxFailure, MxHost, MxRoute, resolve
from postroom.domains.resolver import DnspythonLookup
from tests.dns_server import serve_dns

ZONE = {
    # two.example: two MX hosts of different preference, listed backup first.
    ("two.example", "MX"): ["20 backup.two.example.", "10 primary.two.example."],
    ("primary.two.example", "A"): ["127.0.0.2"],
    ("primary.two.example", "AAAA"): ["::1"],
    ("backup.two.example", "A"): ["127.0.0.3"],
    # nomail.example: RFC 7505 null MX, though it has an address.
    ("nomail.example", "MX"): ["0 ."],
    ("nomail.example", "A"): ["127.0.0.4"],
}


def never_drawn() -> float:
    raise AssertionError("no tie to break")


async def test_resolve_two_mx_hosts_in_preference_order() -> None:
    async with serve_dns(ZONE) as (server, port):
        lookup = DnspythonLookup(("127.0.0.1", port), timeout=2.0)
        result = await resolve("two.example", lookup, never_drawn)
    assert result == MxRoute(
        "two.example",
        (
            MxHost("primary.two.example", ("127.0.0.2", "::1"), 10),
            MxHost("backup.two.example", ("127.0.0.3",), 20),
        ),
        ttl=0.0,  # the local server's records have TTL 0
    )
    assert ("two.example", "MX") in server.queries


async def test_resolve_null_mx_fails_permanently() -> None:
    async with serve_dns(ZONE) as (server, port):
        lookup = DnspythonLookup(("127.0.0.1", port), timeout=2.0)
        result = await resolve("nomail.example", lookup, never_drawn)
    assert result == MxFailure(
        "nomail.example", "domain does not accept mail (null MX)", permanent=True
    )
    assert server.queries == [("nomail.example", "MX")]


async def test_cache_over_real_dns_asks_once() -> None:
    async with serve_dns(ZONE) as (server, port):
        lookup = DnspythonLookup(("127.0.0.1", port), timeout=2.0)
        cache = MxCache(lambda domain: resolve(domain, lookup, never_drawn), FakeClock())
        first = await cache.resolve("two.example")
        second = await cache.resolve("two.example")
    assert first == second
    assert server.queries.count(("two.example", "MX")) == 1


async def test_the_dnspython_lookup_reports_the_ttl_of_its_answers() -> None:
    # The local server answers with TTL 0; the MX cache then keeps the route MIN_ROUTE_TTL seconds.
    async with serve_dns({("ttl.example", "MX"): ["10 mx.ttl.example"],
                          ("mx.ttl.example", "A"): ["127.0.0.1"]}) as (_, port):  # fmt: skip
        lookup = DnspythonLookup(("127.0.0.1", port), timeout=2.0)
        assert lookup.ttl("ttl.example", "MX") is None
        destination = await resolve("ttl.example", lookup, lambda: 0.0)
        assert lookup.ttl("ttl.example", "MX") == 0 and lookup.ttl("MX.ttl.example", "A") == 0
        assert isinstance(destination, MxRoute) and destination.ttl == 0.0


@pytest.mark.parametrize("rcode", ["REFUSED", "SERVFAIL"])
async def test_resolve_uses_the_a_records_when_the_aaaa_queries_fail(rcode: str) -> None:
    # A resolver that answers A and refuses AAAA (dnsmasq without an upstream), for an MX host
    # and for a domain without MX (RFC 5321 §5.1: its own address is the mail host).
    zone = {
        ("v4.example", "MX"): ["10 mx.v4.example."],
        ("mx.v4.example", "A"): ["127.0.0.2"],
        ("bare.example", "A"): ["127.0.0.3"],
    }
    async with serve_dns(zone) as (server, port):
        server.fail("mx.v4.example", "AAAA", rcode)
        server.fail("bare.example", "AAAA", rcode)
        lookup = DnspythonLookup(("127.0.0.1", port), timeout=2.0)
        routed = await resolve("v4.example", lookup, never_drawn)
        bare = await resolve("bare.example", lookup, never_drawn)
    assert isinstance(routed, MxRoute) and isinstance(bare, MxRoute)
    assert routed.hosts == (MxHost("mx.v4.example", ("127.0.0.2",), 10),)
    assert [(f.host, f.rdtype) for f in routed.failed] == [("mx.v4.example", "AAAA")]
    assert "mx.v4.example AAAA" in routed.failed[0].error
    assert routed.ttl == 0.0  # the TTL of the MX and A records that were found
    assert bare.hosts == (MxHost("bare.example", ("127.0.0.3",), 0),)
    assert [(f.host, f.rdtype) for f in bare.failed] == [("bare.example", "AAAA")]


async def test_resolve_defers_when_every_address_query_fails() -> None:
    async with serve_dns({("dark.example", "MX"): ["10 mx.dark.example."],
                          ("mx.dark.example", "A"): ["127.0.0.2"]}) as (server, port):  # fmt: skip
        server.fail("mx.dark.example", "A", "REFUSED")
        server.fail("mx.dark.example", "AAAA", "REFUSED")
        lookup = DnspythonLookup(("127.0.0.1", port), timeout=2.0)
        result = await resolve("dark.example", lookup, never_drawn)
    assert isinstance(result, MxFailure) and not result.permanent
    assert result.reason.startswith("DNS temporarily unavailable: DNS query mx.dark.example A: ")
