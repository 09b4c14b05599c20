"""`domains.spf`: the RFC 7208 evaluator, against DNS answers from a dict (no sockets)."""

from __future__ import annotations

import pytest

from postroom.domains.spf import SpfOutcome, check_host, spf_records
from tests.dns_server import DictDnsLookup, Records

DOMAIN = "example.com"


async def evaluate(
    records: Records,
    ip: str,
    domain: str = DOMAIN,
    failing: set[str] | None = None,
    failing_queries: set[tuple[str, str]] | None = None,
    **kw: str,
) -> SpfOutcome:
    return await check_host(DictDnsLookup(records, failing, failing_queries), ip, domain, **kw)


def spf(record: str, domain: str = DOMAIN) -> Records:
    return {(domain, "TXT"): [record]}


# -- record selection (§4.5) ---------------------------------------------------------------------------


def test_spf_records_picks_version_1_records_only() -> None:
    txts = ["v=spf1 -all", "V=SPF1 mx -all", "v=spf10 -all", "v=spf1", "google-site-verification=x"]
    assert spf_records(txts) == ["v=spf1 -all", "V=SPF1 mx -all", "v=spf1"]


async def test_no_spf_record_is_none() -> None:
    outcome = await evaluate({(DOMAIN, "TXT"): ["something else"]}, "192.0.2.1")
    assert outcome.result == "none"
    assert "no SPF record at example.com" in outcome.detail


async def test_no_such_domain_is_none() -> None:
    assert (await evaluate({}, "192.0.2.1")).result == "none"


async def test_two_spf_records_are_a_permerror() -> None:
    records: Records = {(DOMAIN, "TXT"): ["v=spf1 ip4:192.0.2.1 -all", "v=spf1 -all"]}
    outcome = await evaluate(records, "192.0.2.1")
    assert outcome.result == "permerror"
    assert "multiple SPF records" in outcome.detail


async def test_empty_record_is_neutral() -> None:
    assert (await evaluate(spf("v=spf1"), "192.0.2.1")).result == "neutral"


async def test_dns_failure_is_a_temperror() -> None:
    outcome = await evaluate(spf("v=spf1 -all"), "192.0.2.1", failing={DOMAIN})
    assert outcome.result == "temperror"
    assert "example.com TXT" in outcome.detail


# -- qualifiers and ip4/ip6 -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("all_term", "result"),
    [("-all", "fail"), ("~all", "softfail"), ("?all", "neutral"), ("+all", "pass"), ("all", "pass")],
)
async def test_all_qualifiers(all_term: str, result: str) -> None:
    outcome = await evaluate(spf(f"v=spf1 ip4:198.51.100.1 {all_term}"), "192.0.2.1")
    assert outcome.result == result
    assert f"matched '{all_term}' at example.com" in outcome.detail


@pytest.mark.parametrize(
    ("term", "result"), [("ip4:192.0.2.1", "pass"), ("-ip4:192.0.2.1", "fail"),
                         ("~ip4:192.0.2.1", "softfail"), ("?ip4:192.0.2.1", "neutral")]
)
async def test_qualifier_of_the_matching_mechanism_decides(term: str, result: str) -> None:
    assert (await evaluate(spf(f"v=spf1 {term} +all"), "192.0.2.1")).result == result


async def test_no_match_without_all_is_neutral() -> None:
    outcome = await evaluate(spf("v=spf1 ip4:198.51.100.1"), "192.0.2.1")
    assert outcome.result == "neutral"
    assert "no mechanism matched" in outcome.detail


@pytest.mark.parametrize(
    ("network", "ip", "result"),
    [
        ("192.0.2.0/24", "192.0.2.200", "pass"),
        ("192.0.2.0/24", "192.0.3.1", "fail"),
        ("192.0.2.77/24", "192.0.2.1", "pass"),  # host bits in the network are ignored
        ("0.0.0.0/0", "203.0.113.9", "pass"),
        ("192.0.2.1/32", "192.0.2.2", "fail"),
    ],
)
async def test_ip4_cidr(network: str, ip: str, result: str) -> None:
    assert (await evaluate(spf(f"v=spf1 ip4:{network} -all"), ip)).result == result


@pytest.mark.parametrize(
    ("network", "ip", "result"),
    [
        ("2001:db8::/32", "2001:db8:1234::1", "pass"),
        ("2001:db8::1", "2001:db8::1", "pass"),
        ("2001:db8::1", "2001:db8::2", "fail"),
        ("2001:db8:1::/48", "2001:db8:2::1", "fail"),
    ],
)
async def test_ip6_cidr(network: str, ip: str, result: str) -> None:
    assert (await evaluate(spf(f"v=spf1 ip6:{network} -all"), ip)).result == result


async def test_ip4_never_matches_an_ipv6_client_and_vice_versa() -> None:
    record = spf("v=spf1 ip4:0.0.0.0/0 ?all")
    assert (await evaluate(record, "2001:db8::1")).result == "neutral"
    record = spf("v=spf1 ip6:::/0 ?all")
    assert (await evaluate(record, "192.0.2.1")).result == "neutral"


async def test_ipv4_mapped_ipv6_client_is_treated_as_ipv4() -> None:
    assert (await evaluate(spf("v=spf1 ip4:192.0.2.1 -all"), "::ffff:192.0.2.1")).result == "pass"


async def test_terms_are_case_insensitive_and_spacing_free() -> None:
    record = spf("V=SPF1   IP4:192.0.2.1    -ALL ")
    assert (await evaluate(record, "192.0.2.1")).result == "pass"


# -- a, mx, exists ------------------------------------------------------------------------------------


async def test_a_uses_the_current_domain_by_default() -> None:
    records: Records = {**spf("v=spf1 a -all"), (DOMAIN, "A"): ["192.0.2.1"]}
    outcome = await evaluate(records, "192.0.2.1")
    assert outcome.result == "pass"
    assert outcome.lookups == 1
    assert (await evaluate(records, "192.0.2.2")).result == "fail"


async def test_a_with_domain_and_dual_cidr() -> None:
    records: Records = {
        **spf("v=spf1 a:mail.example.net/24//64 -all"),
        ("mail.example.net", "A"): ["192.0.2.1"],
        ("mail.example.net", "AAAA"): ["2001:db8::1"],
    }
    assert (await evaluate(records, "192.0.2.254")).result == "pass"
    assert (await evaluate(records, "192.0.3.1")).result == "fail"
    assert (await evaluate(records, "2001:db8::ffff:1")).result == "pass"
    assert (await evaluate(records, "2001:db8:0:1::1")).result == "fail"


async def test_a_with_ipv6_cidr_only() -> None:
    records: Records = {**spf("v=spf1 a//64 -all"), (DOMAIN, "AAAA"): ["2001:db8::1"]}
    assert (await evaluate(records, "2001:db8::abcd")).result == "pass"


async def test_mx_matches_the_addresses_of_the_exchanges() -> None:
    records: Records = {
        **spf("v=spf1 mx -all"),
        (DOMAIN, "MX"): ["10 mx1.example.com", "20 mx2.example.com"],
        ("mx1.example.com", "A"): ["198.51.100.1"],
        ("mx2.example.com", "A"): ["192.0.2.1"],
    }
    outcome = await evaluate(records, "192.0.2.1")
    assert outcome.result == "pass"
    assert "MX host mx2.example.com" in outcome.detail
    assert outcome.lookups == 1  # address lookups of the exchanges are not terms
    assert (await evaluate(records, "203.0.113.1")).result == "fail"


async def test_mx_with_domain_and_cidr() -> None:
    records: Records = {
        **spf("v=spf1 mx:example.net/24 -all"),
        ("example.net", "MX"): ["10 mx.example.net"],
        ("mx.example.net", "A"): ["192.0.2.1"],
    }
    assert (await evaluate(records, "192.0.2.99")).result == "pass"


async def test_mx_with_more_than_ten_exchanges_is_a_permerror() -> None:
    records: Records = {
        **spf("v=spf1 mx -all"),
        (DOMAIN, "MX"): [f"{n} mx{n}.example.com" for n in range(11)],
    }
    outcome = await evaluate(records, "192.0.2.1")
    assert outcome.result == "permerror"
    assert "more than 10 MX records" in outcome.detail


async def test_mx_skips_a_null_mx() -> None:
    records: Records = {**spf("v=spf1 mx ~all"), (DOMAIN, "MX"): ["0 ."]}
    assert (await evaluate(records, "192.0.2.1")).result == "softfail"


async def test_exists_matches_when_the_name_has_an_a_record() -> None:
    records: Records = {
        **spf("v=spf1 exists:%{i}._spf.example.com -all"),
        ("192.0.2.1._spf.example.com", "A"): ["127.0.0.2"],
    }
    assert (await evaluate(records, "192.0.2.1")).result == "pass"
    assert (await evaluate(records, "192.0.2.2")).result == "fail"


async def test_exists_ignores_aaaa_records() -> None:
    records: Records = {**spf("v=spf1 exists:x.example.com -all"), ("x.example.com", "AAAA"): ["::1"]}
    assert (await evaluate(records, "192.0.2.1")).result == "fail"


async def test_a_and_mx_ask_only_for_the_address_type_of_the_client() -> None:
    # RFC 7208 §5.3, §5.4: A records for an IPv4 client, AAAA records for an IPv6 one.
    records: Records = {
        **spf("v=spf1 a mx:example.net -all"),
        (DOMAIN, "A"): ["198.51.100.1"],
        (DOMAIN, "AAAA"): ["2001:db8::99"],
        ("example.net", "MX"): ["10 mx.example.net"],
        ("mx.example.net", "A"): ["192.0.2.1"],
        ("mx.example.net", "AAAA"): ["2001:db8::1"],
    }
    four = DictDnsLookup(records)
    assert (await check_host(four, "192.0.2.1", DOMAIN)).result == "pass"
    assert [query for query in four.queries if query[1] == "AAAA"] == []
    six = DictDnsLookup(records)
    assert (await check_host(six, "2001:db8::1", DOMAIN)).result == "pass"
    assert [query for query in six.queries if query[1] == "A"] == []


@pytest.mark.parametrize("record", ["v=spf1 mx ~all", "v=spf1 a:mx.example.com ~all"])
async def test_a_refused_aaaa_query_does_not_matter_to_an_ipv4_client(record: str) -> None:
    # A resolver that answers A and refuses AAAA (dnsmasq without an upstream).
    records: Records = {
        **spf(record),
        (DOMAIN, "MX"): ["10 mx.example.com"],
        ("mx.example.com", "A"): ["192.0.2.1"],
    }
    refused = {("mx.example.com", "AAAA")}
    outcome = await evaluate(records, "192.0.2.1", failing_queries=refused)
    assert outcome.result == "pass", outcome.detail
    # For an IPv6 client the refused type is the one that could match: that is a temperror.
    six = await evaluate(records, "2001:db8::1", failing_queries=refused)
    assert six.result == "temperror"
    assert "mx.example.com AAAA" in six.detail


async def test_a_name_without_records_of_the_clients_type_is_a_void_lookup() -> None:
    # §4.6.4: the A query of an IPv6-only name answers nothing, so for an IPv4 client it is void.
    record = spf("v=spf1 a:v1.example a:v2.example a:v3.example ip4:192.0.2.1 -all")
    records: Records = {**record, **{(f"v{n}.example", "AAAA"): ["2001:db8::1"] for n in (1, 2, 3)}}
    outcome = await evaluate(records, "192.0.2.1")
    assert outcome.result == "permerror"
    assert "too many void lookups" in outcome.detail
    assert (await evaluate(records, "2001:db8::1")).result == "pass"


async def test_ptr_is_not_evaluated_and_says_so() -> None:
    outcome = await evaluate(spf("v=spf1 ptr ~all"), "192.0.2.1")
    assert outcome.result == "softfail"
    assert outcome.lookups == 1
    assert "ptr mechanisms were not evaluated" in outcome.detail


async def test_a_dns_failure_inside_a_mechanism_is_a_temperror() -> None:
    records: Records = {**spf("v=spf1 a:down.example.net -all")}
    outcome = await evaluate(records, "192.0.2.1", failing={"down.example.net"})
    assert outcome.result == "temperror"


# -- include and redirect --------------------------------------------------------------------------


def include_chain() -> Records:
    return {
        **spf("v=spf1 include:_spf.example.com -all"),
        **spf("v=spf1 ip4:198.51.100.0/24 include:_spf.provider.net ~all", "_spf.example.com"),
        **spf("v=spf1 ip4:192.0.2.0/24 -all", "_spf.provider.net"),
    }


async def test_include_chain_passes() -> None:
    outcome = await evaluate(include_chain(), "192.0.2.10")
    assert outcome.result == "pass"
    assert outcome.lookups == 2
    assert "matched 'ip4:192.0.2.0/24' at _spf.provider.net" in outcome.detail
    assert "included from _spf.example.com" in outcome.detail


async def test_include_that_does_not_pass_does_not_match() -> None:
    # The inner policies end in ~all and -all, yet the outer -all decides (§5.2).
    outcome = await evaluate(include_chain(), "203.0.113.1")
    assert outcome.result == "fail"
    assert "matched '-all' at example.com" in outcome.detail


async def test_include_fail_falls_through_to_later_terms() -> None:
    records: Records = {
        **spf("v=spf1 include:other.example ip4:192.0.2.1 -all"),
        **spf("v=spf1 -all", "other.example"),
    }
    assert (await evaluate(records, "192.0.2.1")).result == "pass"


async def test_include_of_a_domain_without_spf_is_a_permerror() -> None:
    outcome = await evaluate(spf("v=spf1 include:nothing.example -all"), "192.0.2.1")
    assert outcome.result == "permerror"
    assert "no SPF record at nothing.example" in outcome.detail


async def test_include_temperror_propagates() -> None:
    records = include_chain()
    outcome = await evaluate(records, "192.0.2.10", failing={"_spf.provider.net"})
    assert outcome.result == "temperror"


async def test_include_permerror_propagates() -> None:
    records: Records = {
        **spf("v=spf1 include:broken.example ip4:192.0.2.1 -all"),
        **spf("v=spf1 bogus -all", "broken.example"),
    }
    outcome = await evaluate(records, "192.0.2.1")
    assert outcome.result == "permerror"
    assert "unknown mechanism 'bogus'" in outcome.detail


async def test_redirect_applies_when_nothing_matched() -> None:
    records: Records = {
        **spf("v=spf1 ip4:198.51.100.1 redirect=_spf.example.net"),
        **spf("v=spf1 ip4:192.0.2.0/24 -all", "_spf.example.net"),
    }
    outcome = await evaluate(records, "192.0.2.1")
    assert outcome.result == "pass"
    assert "redirected from example.com" in outcome.detail
    assert (await evaluate(records, "203.0.113.1")).result == "fail"
    assert (await evaluate(records, "198.51.100.1")).lookups == 0


async def test_redirect_is_ignored_when_all_matches() -> None:
    records: Records = {
        **spf("v=spf1 redirect=_spf.example.net ~all"),
        **spf("v=spf1 +all", "_spf.example.net"),
    }
    assert (await evaluate(records, "192.0.2.1")).result == "softfail"


async def test_redirect_to_a_domain_without_spf_is_a_permerror() -> None:
    outcome = await evaluate(spf("v=spf1 redirect=nothing.example"), "192.0.2.1")
    assert outcome.result == "permerror"
    assert "redirect=nothing.example" in outcome.detail


# -- processing limits (§4.6.4) -----------------------------------------------------------------------


def includes(count: int) -> Records:
    records: Records = {
        **spf("v=spf1 " + " ".join(f"include:i{n}.example.net" for n in range(count)) + " -all")
    }
    for n in range(count):
        records = {**records, **spf(f"v=spf1 ip4:198.51.100.{n} -all", f"i{n}.example.net")}
    return records


async def test_ten_dns_terms_are_allowed() -> None:
    outcome = await evaluate(includes(10), "192.0.2.1")
    assert outcome.result == "fail"
    assert outcome.lookups == 10


async def test_eleven_dns_terms_are_a_permerror() -> None:
    outcome = await evaluate(includes(11), "192.0.2.1")
    assert outcome.result == "permerror"
    assert outcome.detail.startswith("too many DNS lookups")


async def test_lookup_limit_counts_across_nested_includes_and_redirect() -> None:
    # 1 include at the top, 5 "a" terms inside, a redirect and 4 "mx" terms behind it: 11 terms.
    records: Records = {
        **spf("v=spf1 include:inner.example redirect=last.example"),
        **spf("v=spf1 " + " ".join(f"a:h{n}.example" for n in range(5)) + " -all", "inner.example"),
        **spf("v=spf1 " + " ".join(f"mx:m{n}.example" for n in range(4)) + " -all", "last.example"),
    }
    for n in range(5):
        records = {**records, (f"h{n}.example", "A"): ["198.51.100.1"]}
    for n in range(4):
        records = {**records, (f"m{n}.example", "MX"): ["10 mx.example"]}
    outcome = await evaluate(records, "192.0.2.1")
    assert outcome.result == "permerror"
    assert "too many DNS lookups" in outcome.detail


async def test_limit_is_only_reached_if_evaluation_gets_there() -> None:
    # check_host() stops at the first match: an early ip4 passes before the limit is hit (§4.6.4).
    records = includes(11)
    records = {**records, **spf("v=spf1 ip4:192.0.2.1 " + records[(DOMAIN, "TXT")][0][7:])}
    outcome = await evaluate(records, "192.0.2.1")
    assert outcome.result == "pass"
    assert outcome.lookups == 0


async def test_include_loop_ends_in_permerror() -> None:
    records: Records = {**spf("v=spf1 include:example.com -all")}
    outcome = await evaluate(records, "192.0.2.1")
    assert outcome.result == "permerror"
    assert "too many DNS lookups" in outcome.detail


async def test_more_than_two_void_lookups_are_a_permerror() -> None:
    record = spf("v=spf1 a:v1.example a:v2.example a:v3.example ip4:192.0.2.1 -all")
    outcome = await evaluate(record, "192.0.2.1")
    assert outcome.result == "permerror"
    assert "too many void lookups" in outcome.detail
    two = spf("v=spf1 a:v1.example a:v2.example ip4:192.0.2.1 -all")
    assert (await evaluate(two, "192.0.2.1")).result == "pass"


# -- syntax (§4.6: an error anywhere is a permerror, even after a match) --------------------------------


@pytest.mark.parametrize(
    "record",
    [
        "v=spf1 ip4:192.0.2.1 foo -all",
        "v=spf1 ip4:192.0.2.1 ip4:192.0.2.0/33",
        "v=spf1 ip4:192.0.2.1 ip4:192.0.2.0/024",
        "v=spf1 ip4:192.0.2.1 ip4:2001:db8::1",
        "v=spf1 ip4:192.0.2.1 ip6:192.0.2.1",
        "v=spf1 ip4:192.0.2.1 ip6:2001:db8::/129",
        "v=spf1 ip4:192.0.2.1 ip4",
        "v=spf1 ip4:192.0.2.1 include",
        "v=spf1 ip4:192.0.2.1 include:",
        "v=spf1 ip4:192.0.2.1 exists",
        "v=spf1 ip4:192.0.2.1 all:example.com",
        "v=spf1 ip4:192.0.2.1 a/33",
        "v=spf1 ip4:192.0.2.1 mx//129",
        "v=spf1 ip4:192.0.2.1 a:example.com/24/",
        "v=spf1 ip4:192.0.2.1 redirect=a.example redirect=b.example",
        "v=spf1 ip4:192.0.2.1 redirect=",
        "v=spf1 ip4:192.0.2.1 exists:%x.example.com",
        "v=spf1 ip4:192.0.2.1 exists:%{z}.example.com",
        "v=spf1 ip4:192.0.2.1 exists:%{c}.example.com",
        "v=spf1 ip4:192.0.2.1 *all",
    ],
)
async def test_syntax_errors_are_permerrors(record: str) -> None:
    outcome = await evaluate(spf(record), "192.0.2.1")
    assert outcome.result == "permerror", outcome.detail


async def test_unknown_modifiers_are_ignored() -> None:
    record = spf("v=spf1 moo=cow exp=explain.example.com ip4:192.0.2.1 -all")
    assert (await evaluate(record, "192.0.2.1")).result == "pass"


# -- macros (§7) -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "ip", "name"),
    [
        ("%{i}.%{d}", "192.0.2.1", "192.0.2.1.example.com"),
        ("%{ir}.%{v}._spf.%{d2}", "192.0.2.1", "1.2.0.192.in-addr._spf.example.com"),
        ("%{d1}.x.example.net", "192.0.2.1", "com.x.example.net"),
        ("%{dr}.x.example.net", "192.0.2.1", "com.example.x.example.net"),
        ("%{l}.%{o}.x.example.net", "192.0.2.1", "bounce.sender.example.x.example.net"),
        ("%{s}.x.example.net", "192.0.2.1", "bounce@sender.example.x.example.net"),
        ("%{h}.x.example.net", "192.0.2.1", "mail.example.org.x.example.net"),
        ("%{p}.x.example.net", "192.0.2.1", "unknown.x.example.net"),
        ("%{l-}.x.example.net", "192.0.2.1", "bounce.x.example.net"),
        ("%{i}._ip.example.com", "2001:db8::1",
         "2.0.0.1.0.d.b.8.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1._ip.example.com"),
        ("%{v}.%{d}", "2001:db8::1", "ip6.example.com"),
        ("%%%-%_x.example.net", "192.0.2.1", "%%20 x.example.net"),
    ],
)
async def test_macro_expansion(spec: str, ip: str, name: str) -> None:
    lookup = DictDnsLookup({**spf(f"v=spf1 exists:{spec} -all"), (name, "A"): ["127.0.0.2"]})
    outcome = await check_host(
        lookup, ip, DOMAIN, sender="bounce@sender.example", helo="mail.example.org"
    )
    assert outcome.result == "pass", (outcome, lookup.queries)
    assert (name, "A") in lookup.queries


async def test_uppercase_macro_is_url_escaped() -> None:
    lookup = DictDnsLookup(spf("v=spf1 exists:%{S}.x.example.net -all"))
    await check_host(lookup, "192.0.2.1", DOMAIN, sender="a+b@sender.example")
    assert ("a%2bb%40sender.example.x.example.net", "A") in lookup.queries


async def test_default_sender_is_postmaster_at_the_domain() -> None:
    lookup = DictDnsLookup(spf("v=spf1 exists:%{l}.%{o}.x.example.net -all"))
    await check_host(lookup, "192.0.2.1", DOMAIN)
    assert ("postmaster.example.com.x.example.net", "A") in lookup.queries


async def test_macro_keeping_zero_labels_is_a_permerror() -> None:
    outcome = await evaluate(spf("v=spf1 exists:%{d0}.x.example.net -all"), "192.0.2.1")
    assert outcome.result == "permerror"


async def test_long_expansion_is_cut_from_the_left_to_253_characters() -> None:
    lookup = DictDnsLookup(spf("v=spf1 exists:%{s}.x.example.net -all"))
    sender = ".".join(["label"] * 60) + "@example.com"
    await check_host(lookup, "192.0.2.1", DOMAIN, sender=sender)
    queried = [name for name, rtype in lookup.queries if rtype == "A"][0]
    assert len(queried) <= 253
    assert queried.endswith("example.com.x.example.net")
