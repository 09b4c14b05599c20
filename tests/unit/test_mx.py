"""`delivery.mx`: MX ordering, resolution against a dict of DNS answers, and the MX cache."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

import pytest

from postroom.core.clock import FakeClock
from postroom.delivery.mx import (
    PARTIAL_ROUTE_TTL,
    Destination,
    FailedLookup,
    MxCache,
    MxFailure,
    MxHost,
    MxRoute,
    order_mx,
    resolve,
)
from tests.dns_server import DictDnsLookup, Records

DOMAIN = "example.com"


def no_draw() -> float:
    raise AssertionError("draw called without a tie to break")


def constant(value: float) -> Callable[[], float]:
    return lambda: value


class CountingDraw:
    def __init__(self, value: float) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.value


# -- order_mx (RFC 5321 §5.1) ---------------------------------------------------------------------


def test_order_mx_sorts_by_preference_without_drawing() -> None:
    records = [(30, "c.example"), (10, "a.example"), (20, "b.example")]
    assert order_mx(records, no_draw) == ["a.example", "b.example", "c.example"]


def test_order_mx_shuffles_equal_preferences_with_the_draw() -> None:
    records = [(10, "a.example"), (10, "b.example"), (10, "c.example"), (5, "first.example")]
    high = CountingDraw(0.999)  # Fisher-Yates never swaps: input order
    assert order_mx(records, high) == ["first.example", "a.example", "b.example", "c.example"]
    assert high.calls == 2  # two draws for a tie of three; none for the lone preference 5
    low = CountingDraw(0.0)  # always swaps with the first: c, b, a -> b, c, a
    assert order_mx(records, low) == ["first.example", "b.example", "c.example", "a.example"]
    assert low.calls == 2


def test_order_mx_keeps_the_draw_in_range() -> None:
    records = [(10, "a.example"), (10, "b.example")]
    assert sorted(order_mx(records, constant(1.0))) == ["a.example", "b.example"]


def test_order_mx_lists_each_host_once_at_its_lowest_preference() -> None:
    records = [(20, "a.example"), (10, "b.example"), (5, "A.Example."), (10, "b.example")]
    assert order_mx(records, no_draw) == ["a.example", "b.example"]


def test_order_mx_of_nothing_is_empty() -> None:
    assert order_mx([], no_draw) == []


# -- resolve ------------------------------------------------------------------------------------------


async def route(
    records: Records,
    failing: set[str] | None = None,
    failing_queries: set[tuple[str, str]] | None = None,
) -> Destination:
    lookup = DictDnsLookup(records, failing, failing_queries)
    return await resolve(DOMAIN, lookup, constant(0.999))


async def test_resolve_lists_mx_hosts_in_preference_order_with_addresses() -> None:
    result = await route(
        {
            (DOMAIN, "MX"): ["20 mx2.example.com.", "10 mx1.example.com."],
            ("mx1.example.com", "A"): ["192.0.2.1"],
            ("mx1.example.com", "AAAA"): ["2001:db8::1"],
            ("mx2.example.com", "A"): ["192.0.2.2"],
        }
    )
    assert result == MxRoute(
        DOMAIN,
        (
            MxHost("mx1.example.com", ("192.0.2.1", "2001:db8::1"), 10),
            MxHost("mx2.example.com", ("192.0.2.2",), 20),
        ),
    )


async def test_resolve_normalises_the_domain() -> None:
    lookup = DictDnsLookup({(DOMAIN, "A"): ["192.0.2.9"]})
    result = await resolve("Example.COM.", lookup, no_draw)
    assert result == MxRoute(DOMAIN, (MxHost(DOMAIN, ("192.0.2.9",), 0),))


async def test_resolve_without_mx_falls_back_to_the_domains_addresses() -> None:
    result = await route({(DOMAIN, "A"): ["192.0.2.9"], (DOMAIN, "AAAA"): ["2001:db8::9"]})
    assert result == MxRoute(DOMAIN, (MxHost(DOMAIN, ("192.0.2.9", "2001:db8::9"), 0),))


async def test_resolve_null_mx_fails_permanently_without_address_lookups() -> None:
    lookup = DictDnsLookup({(DOMAIN, "MX"): ["0 ."], (DOMAIN, "A"): ["192.0.2.9"]})
    result = await resolve(DOMAIN, lookup, no_draw)
    assert result == MxFailure(DOMAIN, "domain does not accept mail (null MX)", permanent=True)
    assert lookup.queries == [(DOMAIN, "MX")]


async def test_resolve_ignores_a_null_mx_mixed_with_real_ones() -> None:
    result = await route(
        {(DOMAIN, "MX"): ["0 .", "10 mx1.example.com."], ("mx1.example.com", "A"): ["192.0.2.1"]}
    )
    assert result == MxRoute(DOMAIN, (MxHost("mx1.example.com", ("192.0.2.1",), 10),))


async def test_resolve_nonexistent_domain_fails_permanently() -> None:
    result = await route({})
    assert isinstance(result, MxFailure)
    assert result.permanent
    assert result.reason.startswith("no mail host")


async def test_resolve_dns_error_on_mx_is_temporary() -> None:
    result = await route({(DOMAIN, "MX"): ["10 mx1.example.com."]}, failing={DOMAIN})
    assert isinstance(result, MxFailure)
    assert not result.permanent
    assert result.reason.startswith("DNS temporarily unavailable: ")
    assert "SERVFAIL" in result.reason


async def test_resolve_skips_hosts_without_addresses() -> None:
    result = await route(
        {
            (DOMAIN, "MX"): ["10 gone.example.com.", "20 192.0.2.7", "30 mx3.example.com."],
            ("mx3.example.com", "A"): ["192.0.2.3"],
        }
    )
    # The IP literal exchange is looked up as a name (RFC 5321 §5.1), finds nothing, is skipped.
    assert result == MxRoute(DOMAIN, (MxHost("mx3.example.com", ("192.0.2.3",), 30),))


async def test_resolve_skips_hosts_whose_lookup_fails() -> None:
    result = await route(
        {
            (DOMAIN, "MX"): ["10 broken.example.com.", "20 mx2.example.com."],
            ("mx2.example.com", "A"): ["192.0.2.2"],
        },
        failing={"broken.example.com"},
    )
    assert isinstance(result, MxRoute)
    assert result.hosts == (MxHost("mx2.example.com", ("192.0.2.2",), 20),)
    assert [(f.host, f.rdtype) for f in result.failed] == [
        ("broken.example.com", "A"),
        ("broken.example.com", "AAAA"),
    ]


async def test_resolve_no_host_with_an_address_is_temporary() -> None:
    result = await route({(DOMAIN, "MX"): ["10 gone.example.com.", "20 gone2.example.com."]})
    assert result == MxFailure(DOMAIN, "no MX host has an address", permanent=False)


async def test_resolve_all_host_lookups_failing_is_a_temporary_dns_failure() -> None:
    result = await route(
        {(DOMAIN, "MX"): ["10 broken.example.com."]}, failing={"broken.example.com"}
    )
    assert isinstance(result, MxFailure)
    assert not result.permanent
    assert result.reason.startswith("DNS temporarily unavailable: ")


# -- resolve with partial answers (a resolver that refuses one address type) ----------------------

REFUSED_AAAA = FailedLookup(
    "mx1.example.com", "AAAA", "DNS query mx1.example.com AAAA: REFUSED (test)"
)


async def test_resolve_uses_the_ipv4_address_when_the_aaaa_query_is_refused() -> None:
    lookup = DictDnsLookup(
        {(DOMAIN, "MX"): ["10 mx1.example.com."], ("mx1.example.com", "A"): ["192.0.2.1"]},
        failing_queries={("mx1.example.com", "AAAA")},
    )
    result = await resolve(DOMAIN, lookup, no_draw)
    assert result == MxRoute(
        DOMAIN, (MxHost("mx1.example.com", ("192.0.2.1",), 10),), failed=(REFUSED_AAAA,)
    )
    assert ("mx1.example.com", "AAAA") in lookup.queries  # it was asked, and its failure kept


async def test_resolve_uses_the_ipv6_address_when_the_a_query_fails() -> None:
    result = await route(
        {(DOMAIN, "MX"): ["10 mx1.example.com."], ("mx1.example.com", "AAAA"): ["2001:db8::1"]},
        failing_queries={("mx1.example.com", "A")},
    )
    assert isinstance(result, MxRoute)
    assert result.hosts == (MxHost("mx1.example.com", ("2001:db8::1",), 10),)
    assert [(f.host, f.rdtype) for f in result.failed] == [("mx1.example.com", "A")]


async def test_resolve_keeps_preference_order_when_the_first_host_is_partial() -> None:
    result = await route(
        {
            (DOMAIN, "MX"): ["10 mx1.example.com.", "20 mx2.example.com."],
            ("mx1.example.com", "A"): ["192.0.2.1"],
            ("mx2.example.com", "A"): ["192.0.2.2"],
            ("mx2.example.com", "AAAA"): ["2001:db8::2"],
        },
        failing_queries={("mx1.example.com", "AAAA")},
    )
    assert result == MxRoute(
        DOMAIN,
        (
            MxHost("mx1.example.com", ("192.0.2.1",), 10),
            MxHost("mx2.example.com", ("192.0.2.2", "2001:db8::2"), 20),
        ),
        failed=(REFUSED_AAAA,),
    )


async def test_resolve_without_mx_uses_the_a_record_when_aaaa_is_refused() -> None:
    # RFC 5321 §5.1 implicit MX: the domain's own addresses, with the same tolerance.
    result = await route({(DOMAIN, "A"): ["192.0.2.9"]}, failing_queries={(DOMAIN, "AAAA")})
    assert isinstance(result, MxRoute)
    assert result.hosts == (MxHost(DOMAIN, ("192.0.2.9",), 0),)
    assert [(f.host, f.rdtype) for f in result.failed] == [(DOMAIN, "AAAA")]


async def test_resolve_without_mx_and_without_a_when_aaaa_fails_is_temporary() -> None:
    # No A record, and the AAAA question unanswered: the address may exist, so never a bounce.
    result = await route({(DOMAIN, "TXT"): ["v=spf1 -all"]}, failing_queries={(DOMAIN, "AAAA")})
    assert result == MxFailure(
        DOMAIN, "DNS temporarily unavailable: DNS query example.com AAAA: REFUSED (test)",
        permanent=False,
    )  # fmt: skip


async def test_resolve_defers_when_no_host_has_an_address_and_a_lookup_failed() -> None:
    result = await route(
        {(DOMAIN, "MX"): ["10 mx1.example.com.", "20 mx2.example.com."]},  # mx2: NODATA
        failing_queries={("mx1.example.com", "A"), ("mx1.example.com", "AAAA")},
    )
    assert result == MxFailure(
        DOMAIN, "DNS temporarily unavailable: DNS query mx1.example.com A: REFUSED (test)",
        permanent=False,
    )  # fmt: skip


async def test_a_partial_route_carries_the_smallest_ttl_of_what_was_found() -> None:
    # The lookup still remembers a TTL from an earlier AAAA answer; the refused AAAA is not part
    # of this route, so its stale TTL must not count.
    lookup = TtlDnsLookup(
        {(DOMAIN, "MX"): ["10 mx1.example.com."], ("mx1.example.com", "A"): ["192.0.2.1"]},
        {(DOMAIN, "MX"): 3600, ("mx1.example.com", "A"): 600, ("mx1.example.com", "AAAA"): 7},
        failing_queries={("mx1.example.com", "AAAA")},
    )
    result = await resolve(DOMAIN, lookup, no_draw)
    assert isinstance(result, MxRoute)
    assert result.ttl == 600.0
    assert result.failed == (REFUSED_AAAA,)


# -- MxCache --------------------------------------------------------------------------------------------

ROUTE = MxRoute(DOMAIN, (MxHost("mx1.example.com", ("192.0.2.1",), 10),))
BOUNCE = MxFailure(DOMAIN, "domain does not accept mail (null MX)", permanent=True)
DEFER = MxFailure(DOMAIN, "DNS temporarily unavailable: test", permanent=False)


class FakeResolve:
    """Answers from a dict, counting calls; with `gate` set, every call waits for it first."""

    def __init__(self, answers: dict[str, Destination], gate: asyncio.Event | None = None) -> None:
        self.answers = answers
        self.gate = gate
        self.calls: list[str] = []

    async def __call__(self, domain: str) -> Destination:
        self.calls.append(domain)
        if self.gate is not None:
            await self.gate.wait()
        return self.answers[domain]


async def test_cache_serves_a_route_until_its_ttl_passes() -> None:
    clock = FakeClock()
    fake = FakeResolve({DOMAIN: ROUTE})
    cache = MxCache(fake, clock, ttl=300.0)
    assert await cache.resolve(DOMAIN) == ROUTE
    clock.advance(299.0)
    assert await cache.resolve("EXAMPLE.com.") == ROUTE
    assert fake.calls == [DOMAIN]
    clock.advance(1.0)
    assert await cache.resolve(DOMAIN) == ROUTE
    assert fake.calls == [DOMAIN, DOMAIN]


async def test_cache_keeps_permanent_failures_for_the_negative_ttl() -> None:
    clock = FakeClock()
    fake = FakeResolve({DOMAIN: BOUNCE})
    cache = MxCache(fake, clock, negative_ttl=60.0)
    assert await cache.resolve(DOMAIN) == BOUNCE
    clock.advance(59.0)
    assert await cache.resolve(DOMAIN) == BOUNCE
    assert len(fake.calls) == 1
    clock.advance(1.0)
    await cache.resolve(DOMAIN)
    assert len(fake.calls) == 2


async def test_cache_keeps_temporary_failures_at_most_five_seconds() -> None:
    clock = FakeClock()
    fake = FakeResolve({DOMAIN: DEFER})
    cache = MxCache(fake, clock, negative_ttl=60.0)
    assert await cache.resolve(DOMAIN) == DEFER
    clock.advance(4.0)
    await cache.resolve(DOMAIN)
    assert len(fake.calls) == 1
    clock.advance(1.0)
    await cache.resolve(DOMAIN)
    assert len(fake.calls) == 2


async def test_cache_coalesces_concurrent_lookups_of_one_domain() -> None:
    gate = asyncio.Event()
    fake = FakeResolve({DOMAIN: ROUTE, "other.example": BOUNCE}, gate)
    cache = MxCache(fake, FakeClock())
    waiting = [asyncio.create_task(cache.resolve(DOMAIN)) for _ in range(10)]
    other = asyncio.create_task(cache.resolve("other.example"))
    async with asyncio.timeout(1):
        while len(fake.calls) < 2:  # until both lookups wait on the gate
            await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert sorted(fake.calls) == [DOMAIN, "other.example"]
    gate.set()
    assert await asyncio.gather(*waiting) == [ROUTE] * 10
    assert await other == BOUNCE
    assert sorted(fake.calls) == [DOMAIN, "other.example"]


async def test_cache_coalesces_real_resolutions_into_one_set_of_dns_queries() -> None:
    lookup = DictDnsLookup(
        {(DOMAIN, "MX"): ["10 mx1.example.com."], ("mx1.example.com", "A"): ["192.0.2.1"]}
    )
    cache = MxCache(functools.partial(resolve, lookup=lookup, draw=no_draw), FakeClock())
    results = await asyncio.gather(*(cache.resolve(DOMAIN) for _ in range(10)))
    assert results == [ROUTE] * 10
    assert lookup.queries == [(DOMAIN, "MX"), ("mx1.example.com", "A"), ("mx1.example.com", "AAAA")]


async def test_cancelled_caller_does_not_cancel_the_shared_lookup() -> None:
    gate = asyncio.Event()
    fake = FakeResolve({DOMAIN: ROUTE}, gate)
    cache = MxCache(fake, FakeClock())
    first = asyncio.create_task(cache.resolve(DOMAIN))
    second = asyncio.create_task(cache.resolve(DOMAIN))
    async with asyncio.timeout(1):
        while not fake.calls:  # until the shared lookup waits on the gate
            await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    assert await second == ROUTE
    assert len(fake.calls) == 1


async def test_cache_does_not_keep_errors_from_the_resolver() -> None:
    calls = 0

    async def broken(domain: str) -> Destination:
        nonlocal calls
        calls += 1
        raise RuntimeError("bug")

    cache = MxCache(broken, FakeClock())
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await cache.resolve(DOMAIN)
    assert calls == 2
    assert len(cache) == 0


async def test_cache_evicts_the_least_recently_used_domain() -> None:
    answers: dict[str, Destination] = {
        name: MxRoute(name, (MxHost(f"mx.{name}", ("192.0.2.1",), 0),))
        for name in ("a.example", "b.example", "c.example")
    }
    fake = FakeResolve(answers)
    cache = MxCache(fake, FakeClock(), max_entries=2)
    await cache.resolve("a.example")
    await cache.resolve("b.example")
    await cache.resolve("a.example")  # a is now more recent than b
    await cache.resolve("c.example")  # evicts b
    assert len(cache) == 2
    fake.calls.clear()
    await cache.resolve("a.example")
    await cache.resolve("c.example")
    assert fake.calls == []
    await cache.resolve("b.example")
    assert fake.calls == ["b.example"]


def test_cache_needs_room_for_one_entry() -> None:
    with pytest.raises(ValueError):
        MxCache(FakeResolve({}), FakeClock(), max_entries=0)


class TtlDnsLookup(DictDnsLookup):
    """A dict lookup that also reports record TTLs (`RecordTtls`), like DnspythonLookup."""

    def __init__(
        self,
        records: Records,
        ttls: dict[tuple[str, str], int],
        failing_queries: set[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(records, failing_queries=failing_queries)
        self.ttls = ttls

    def ttl(self, name: str, rdtype: str) -> int | None:
        return self.ttls.get((name, rdtype))


TTL_RECORDS: Records = {
    ("example.com", "MX"): ["10 mx1.example.com", "20 mx2.example.com"],
    ("mx1.example.com", "A"): ["192.0.2.1"],
    ("mx2.example.com", "A"): ["192.0.2.2"],
    ("bare.example", "A"): ["192.0.2.9"],
}


async def test_route_carries_the_smallest_ttl_of_its_records() -> None:
    ttls = {("example.com", "MX"): 3600, ("mx1.example.com", "A"): 120, ("mx2.example.com", "A"): 900,
            ("bare.example", "A"): 42}  # fmt: skip
    lookup = TtlDnsLookup(TTL_RECORDS, ttls)
    routed = await resolve("example.com", lookup, no_draw)
    assert isinstance(routed, MxRoute) and routed.ttl == 120.0
    bare = await resolve("bare.example", lookup, no_draw)
    assert isinstance(bare, MxRoute) and bare.ttl == 42.0
    unknown = await resolve("example.com", DictDnsLookup(TTL_RECORDS), no_draw)
    assert isinstance(unknown, MxRoute) and unknown.ttl is None


@pytest.mark.parametrize(("record_ttl", "kept"), [(30.0, 30.0), (0.0, 5.0), (86400.0, 300.0), (None, 300.0)])
async def test_cache_keeps_a_route_for_its_record_ttl_within_bounds(
    record_ttl: float | None, kept: float
) -> None:
    clock = FakeClock()
    route_with_ttl = MxRoute(DOMAIN, ROUTE.hosts, record_ttl)
    fake = FakeResolve({DOMAIN: route_with_ttl})
    cache = MxCache(fake, clock, ttl=300.0)
    await cache.resolve(DOMAIN)
    clock.advance(kept - 0.5)
    await cache.resolve(DOMAIN)
    assert len(fake.calls) == 1
    clock.advance(0.5)
    await cache.resolve(DOMAIN)
    assert len(fake.calls) == 2


@pytest.mark.parametrize(
    ("record_ttl", "kept"), [(None, PARTIAL_ROUTE_TTL), (3600.0, PARTIAL_ROUTE_TTL), (30.0, 30.0)]
)
async def test_cache_keeps_a_partial_route_at_most_the_partial_ttl(
    record_ttl: float | None, kept: float
) -> None:
    clock = FakeClock()
    partial = MxRoute(DOMAIN, ROUTE.hosts, record_ttl, (REFUSED_AAAA,))
    fake = FakeResolve({DOMAIN: partial})
    cache = MxCache(fake, clock, ttl=300.0)
    assert await cache.resolve(DOMAIN) == partial
    clock.advance(kept - 0.5)
    await cache.resolve(DOMAIN)
    assert len(fake.calls) == 1
    clock.advance(0.5)
    await cache.resolve(DOMAIN)
    assert len(fake.calls) == 2  # the missing address type is asked for again


async def test_cache_logs_failed_lookups_once_per_host_and_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    shared = FailedLookup("mx.shared.example", "AAAA", "DNS query mx.shared.example AAAA: REFUSED")
    gone = FailedLookup("gone.shared.example", "A", "DNS query gone.shared.example A: timed out")
    host = MxHost("mx.shared.example", ("192.0.2.1",), 10)
    answers: dict[str, Destination] = {
        name: MxRoute(name, (host,), None, (shared, gone)) for name in ("a.example", "b.example")
    }
    fake = FakeResolve(answers)
    clock = FakeClock()
    cache = MxCache(fake, clock)

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "postroom.delivery.mx"]

    with caplog.at_level(logging.WARNING, logger="postroom.delivery.mx"):
        for _ in range(3):  # messages to a.example: one resolution, one line per host
            await cache.resolve("a.example")
        await cache.resolve("b.example")  # the same hosts behind another domain: nothing new
        assert logged() == [
            "MX host mx.shared.example of a.example: DNS query mx.shared.example AAAA: REFUSED; "
            "using the addresses found: 192.0.2.1",
            "MX host gone.shared.example of a.example skipped: "
            "DNS query gone.shared.example A: timed out",
        ]
        clock.advance(PARTIAL_ROUTE_TTL)  # the next period: asked again, and said again
        await cache.resolve("b.example")
    assert fake.calls == ["a.example", "b.example", "b.example"]
    assert len(logged()) == 4
    assert "of b.example" in logged()[2]
