"""MX resolution over real DNS: `delivery.mx.resolve` through `DnspythonLookup` against the local
server in `tests/dns_server.py`."""

from __future__ import annotations

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
