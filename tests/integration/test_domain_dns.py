"""Domain checks over real DNS: `DnspythonLookup` against the local server in `tests/dns_server.py`."""

from __future__ import annotations

import time

import pytest

from postroom.dkim.keys import dns_record_value, generate_key
from postroom.domains.checks import DomainExpectation, check_domain
from postroom.domains.lookup import DnsLookupError
from postroom.domains.resolver import DnspythonLookup
from tests.dns_server import serve_dns, silent_udp_port

MX_HOST = "mx.postroom.test"


@pytest.fixture(scope="module")
def dkim_value() -> str:
    return dns_record_value(generate_key("rsa"))


@pytest.fixture(scope="module")
def other_dkim_value() -> str:
    return dns_record_value(generate_key("rsa"))


def expectation(domain: str, dkim_value: str) -> DomainExpectation:
    return DomainExpectation(
        domain=domain,
        dkim=(("pr2026a", dkim_value),),
        sending_ips=("192.0.2.1", "2001:db8::1"),
        mx_host=MX_HOST,
        bounce_domain=f"bounces.{domain}",
    )


def zone(dkim_value: str, other_dkim_value: str) -> dict[tuple[str, str], list[str]]:
    return {
        # good.example: everything right, the SPF policy through an include and an mx mechanism.
        ("pr2026a._domainkey.good.example", "TXT"): [dkim_value],
        ("_dmarc.good.example", "TXT"): ["v=DMARC1; p=reject; rua=mailto:dmarc@good.example"],
        ("bounces.good.example", "TXT"): ["v=spf1 mx include:_spf.good.example -all"],
        ("bounces.good.example", "MX"): [f"10 {MX_HOST}."],
        (MX_HOST, "A"): ["192.0.2.1"],
        ("_spf.good.example", "TXT"): ["v=spf1 ip6:2001:db8::/32 -all"],
        # broken.example: another key, an SPF policy for someone else, no DMARC, MX elsewhere.
        ("pr2026a._domainkey.broken.example", "TXT"): [other_dkim_value],
        ("bounces.broken.example", "TXT"): ["v=spf1 ip4:198.51.100.0/24 ~all"],
        ("bounces.broken.example", "MX"): ["10 mail.elsewhere.example"],
    }


async def test_good_domain_is_ok(dkim_value: str, other_dkim_value: str) -> None:
    assert len(dkim_value) > 255  # so the server sends it as several strings, which must be joined
    async with serve_dns(zone(dkim_value, other_dkim_value)) as (server, port):
        lookup = DnspythonLookup(("127.0.0.1", port), timeout=2.0)
        report = await check_domain(expectation("good.example", dkim_value), lookup)
    assert [(c.kind, c.name, c.verdict) for c in report.checks] == [
        ("dkim", "pr2026a._domainkey.good.example", "ok"),
        ("spf", "bounces.good.example", "ok"),
        ("dmarc", "_dmarc.good.example", "ok"),
        ("mx", "bounces.good.example", "ok"),
    ], report.checks
    assert report.ok
    assert report.checks[0].found == [dkim_value]
    spf = report.checks[1]
    assert "192.0.2.1: pass (matched 'mx' at bounces.good.example (MX host mx.postroom.test))" in (
        spf.detail
    )
    assert "2001:db8::1: pass (matched 'ip6:2001:db8::/32' at _spf.good.example" in spf.detail
    assert "SPF aligned (aspf=r" in report.checks[2].detail
    assert ("_spf.good.example", "TXT") in server.queries


async def test_broken_domain(dkim_value: str, other_dkim_value: str) -> None:
    async with serve_dns(zone(dkim_value, other_dkim_value)) as (_, port):
        lookup = DnspythonLookup(("127.0.0.1", port), timeout=2.0)
        report = await check_domain(expectation("broken.example", dkim_value), lookup)
    dkim, spf, dmarc, mx = report.checks
    assert not report.ok
    assert (dkim.verdict, dkim.found, dkim.expected) == ("wrong", [other_dkim_value], dkim_value)
    assert "not the public half of our key" in dkim.detail
    assert spf.verdict == "wrong"
    assert "192.0.2.1: softfail: matched '~all' at bounces.broken.example" in spf.detail
    assert "2001:db8::1: softfail" in spf.detail
    assert (dmarc.verdict, dmarc.expected) == (
        "missing",
        "v=DMARC1; p=none; rua=mailto:dmarc@broken.example",
    )
    assert (mx.verdict, mx.found) == ("wrong", ["10 mail.elsewhere.example"])


async def test_checks_see_records_changed_while_running(dkim_value: str) -> None:
    # No cache in the resolver: a check right after publishing (a key rotation) sees the new record.
    name = "pr2026b._domainkey.good.example"
    async with serve_dns({}) as (server, port):
        lookup = DnspythonLookup(("127.0.0.1", port), timeout=2.0)
        e = DomainExpectation("good.example", (("pr2026b", dkim_value),), (), MX_HOST)
        assert (await check_domain(e, lookup)).checks[0].verdict == "missing"
        server.set(name, "TXT", [dkim_value])
        assert (await check_domain(e, lookup)).checks[0].verdict == "ok"
        server.remove(name)
        assert (await check_domain(e, lookup)).checks[0].verdict == "missing"


async def test_lookup_answers(dkim_value: str) -> None:
    records = {
        ("example.test", "TXT"): ["v=spf1 -all", "x" * 900],  # beyond 512 bytes: EDNS is used
        ("example.test", "MX"): ["20 MX2.Example.Test.", "10 mx1.example.test"],
        ("host.example.test", "A"): ["192.0.2.7"],
        ("host.example.test", "AAAA"): ["2001:db8::7"],
        ("null.example.test", "MX"): ["0 ."],
    }
    async with serve_dns(records) as (_, port):
        lookup = DnspythonLookup(("127.0.0.1", port), timeout=2.0)
        assert sorted(await lookup.txt("example.test")) == sorted(["v=spf1 -all", "x" * 900])
        assert sorted(await lookup.mx("example.test")) == [
            (10, "mx1.example.test"),
            (20, "mx2.example.test"),
        ]
        assert await lookup.mx("null.example.test") == [(0, "")]
        assert await lookup.addresses("host.example.test", "A") == ["192.0.2.7"]
        assert await lookup.addresses("host.example.test", "AAAA") == ["2001:db8::7"]
        assert await lookup.addresses("example.test", "A") == []  # NODATA
        assert await lookup.txt("host.example.test") == []  # NODATA
        assert await lookup.txt("nowhere.example.test") == []  # NXDOMAIN
        assert await lookup.addresses("nowhere.example.test", "AAAA") == []


async def test_servfail_is_a_lookup_error(dkim_value: str) -> None:
    async with serve_dns({("example.test", "TXT"): ["v=spf1 -all"]}) as (server, port):
        server.servfail.add("example.test")
        lookup = DnspythonLookup(("127.0.0.1", port), timeout=2.0)
        with pytest.raises(DnsLookupError, match=r"example\.test TXT: 127\.0\.0\.1:\d+ failed"):
            await lookup.txt("example.test")


@pytest.mark.parametrize("rcode", ["REFUSED", "SERVFAIL"])
async def test_one_failing_question_leaves_the_other_types_of_the_name(rcode: str) -> None:
    records = {("host.example.test", "A"): ["192.0.2.7"], ("host.example.test", "AAAA"): ["::7"]}
    async with serve_dns(records) as (server, port):
        server.fail("host.example.test", "AAAA", rcode)
        lookup = DnspythonLookup(("127.0.0.1", port), timeout=2.0)
        assert await lookup.addresses("host.example.test", "A") == ["192.0.2.7"]
        with pytest.raises(DnsLookupError, match=r"host\.example\.test AAAA: .* failed"):
            await lookup.addresses("host.example.test", "AAAA")
        del server.failures[("host.example.test", "AAAA")]
        assert await lookup.addresses("host.example.test", "AAAA") == ["::7"]


async def test_resolver_timeout_is_a_lookup_error_and_error_verdicts(dkim_value: str) -> None:
    with silent_udp_port() as port:
        lookup = DnspythonLookup(("127.0.0.1", port), timeout=0.3)
        started = time.monotonic()
        with pytest.raises(DnsLookupError, match=r"example\.test MX: no answer from 127\.0\.0\.1"):
            await lookup.mx("example.test")
        assert time.monotonic() - started < 2.0
        report = await check_domain(expectation("good.example", dkim_value), lookup)
    assert [c.verdict for c in report.checks] == ["error"] * 4
    assert all("within 0.3s" in c.detail for c in report.checks)
    assert not report.ok


async def test_silent_name_times_out_while_others_answer(dkim_value: str) -> None:
    async with serve_dns(zone(dkim_value, dkim_value)) as (server, port):
        server.silent.add("_dmarc.good.example")
        lookup = DnspythonLookup(("127.0.0.1", port), timeout=0.3)
        report = await check_domain(expectation("good.example", dkim_value), lookup)
    assert [c.verdict for c in report.checks] == ["ok", "ok", "error", "ok"]


def test_resolver_must_be_an_ip_address() -> None:
    with pytest.raises(DnsLookupError, match="not an IP address"):
        DnspythonLookup(("dns.example.net", 53), timeout=1.0)
