"""`domains.checks`: every verdict of every record kind, against DNS answers from a dict."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from postroom.domains.checks import (
    DomainExpectation,
    DomainReport,
    RecordCheck,
    check_dkim,
    check_dmarc,
    check_domain,
    check_mx,
    check_spf,
    dmarc_records,
    organisational_domain,
    suggested_records,
)
from tests.dns_server import DictDnsLookup, Records

MARCH_7_2026 = datetime(2026, 3, 7, 23, 59, tzinfo=timezone.utc).timestamp()
KEY = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAwXyz+/0123456789abcdefABCDEF=="
OTHER_KEY = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAzzzz+/9876543210abcdefABCDEF=="
DKIM_VALUE = f"v=DKIM1; k=rsa; p={KEY}"
SELECTOR_NAME = "pr2026a._domainkey.example.com"


def expectation(**changes: object) -> DomainExpectation:
    fields: dict[str, object] = {
        "domain": "example.com",
        "dkim": (("pr2026a", DKIM_VALUE),),
        "sending_ips": ("192.0.2.1", "2001:db8::1"),
        "mx_host": "mx.postroom.test",
        "bounce_domain": "example.com",
    }
    fields.update(changes)
    return DomainExpectation(**fields)  # type: ignore[arg-type]


def good_records() -> dict[tuple[str, str], list[str]]:
    return {
        (SELECTOR_NAME, "TXT"): [DKIM_VALUE],
        ("example.com", "TXT"): ["v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all", "other=1"],
        ("example.com", "MX"): ["10 mx.postroom.test"],
        ("_dmarc.example.com", "TXT"): ["v=DMARC1; p=quarantine; rua=mailto:d@example.com"],
    }


def lookup(records: Records, failing: set[str] | None = None) -> DictDnsLookup:
    return DictDnsLookup(records, failing)


# -- the whole domain ---------------------------------------------------------------------------------


async def test_good_domain_is_ok() -> None:
    report = await check_domain(expectation(), lookup(good_records()))
    assert report.ok
    assert report.domain == "example.com"
    assert [(c.kind, c.name, c.type, c.verdict) for c in report.checks] == [
        ("dkim", SELECTOR_NAME, "TXT", "ok"),
        ("spf", "example.com", "TXT", "ok"),
        ("dmarc", "_dmarc.example.com", "TXT", "ok"),
        ("mx", "example.com", "MX", "ok"),
    ]


async def test_one_dkim_check_per_selector() -> None:
    records = good_records()
    records[("pr2026b._domainkey.example.com", "TXT")] = [f"v=DKIM1; k=rsa; p={OTHER_KEY}"]
    dkim = (("pr2026a", DKIM_VALUE), ("pr2026b", f"v=DKIM1; p={OTHER_KEY}"))
    report = await check_domain(expectation(dkim=dkim), lookup(records))
    assert [(c.name, c.verdict) for c in report.checks if c.kind == "dkim"] == [
        (SELECTOR_NAME, "ok"),
        ("pr2026b._domainkey.example.com", "ok"),
    ]


async def test_broken_domain_is_not_ok_and_as_dict_is_plain() -> None:
    records = good_records()
    del records[("_dmarc.example.com", "TXT")]
    report = await check_domain(expectation(), lookup(records))
    assert not report.ok
    data = report.as_dict()
    assert data["ok"] is False
    assert data["domain"] == "example.com"
    assert data["checks"][2] == {
        "name": "_dmarc.example.com",
        "type": "TXT",
        "kind": "dmarc",
        "verdict": "missing",
        "expected": "v=DMARC1; p=none; rua=mailto:dmarc@example.com",
        "found": [],
        "detail": "no v=DMARC1 record at _dmarc.example.com",
    }


def test_report_ok_ignores_unchecked_but_not_errors() -> None:
    def check(verdict: str) -> RecordCheck:
        return RecordCheck("n", "TXT", "spf", verdict, "", [], "")  # type: ignore[arg-type]

    assert DomainReport("d", [check("ok"), check("unchecked")]).ok
    for bad in ("missing", "wrong", "error"):
        assert not DomainReport("d", [check("ok"), check(bad)]).ok


async def test_domain_without_dkim_selector_reports_dkim_unchecked() -> None:
    report = await check_domain(expectation(dkim=()), lookup(good_records()))
    dkim = [c for c in report.checks if c.kind == "dkim"]
    assert [(c.name, c.verdict, c.detail) for c in dkim] == [
        ("_domainkey.example.com", "unchecked", "no active DKIM selector")
    ]


async def test_dns_failure_makes_every_check_an_error() -> None:
    failing = {SELECTOR_NAME, "example.com", "_dmarc.example.com"}
    report = await check_domain(expectation(), lookup(good_records(), failing))
    assert [c.verdict for c in report.checks] == ["error"] * 4
    assert all("SERVFAIL" in c.detail for c in report.checks)
    assert not report.ok


def test_expectation_normalises_names_and_defaults_the_bounce_domain() -> None:
    e = expectation(domain="Example.COM.", mx_host="MX.Postroom.Test.", bounce_domain="")
    assert (e.domain, e.mx_host, e.bounce_domain) == ("example.com", "mx.postroom.test", "example.com")


@pytest.mark.parametrize(
    "changes",
    [
        {"sending_ips": ("192.0.2.300",)},
        {"dkim": (("sel", "v=DKIM1; k=rsa"),)},
        {"dkim": (("sel", "v=DKIM1; p="),)},
        {"dkim": (("", DKIM_VALUE),)},
    ],
)
def test_expectation_refuses_bad_values(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        expectation(**changes)


# -- DKIM ----------------------------------------------------------------------------------------------


async def dkim(published: list[str], expected: str = DKIM_VALUE) -> RecordCheck:
    records: Records = {(SELECTOR_NAME, "TXT"): published} if published else {}
    return await check_dkim(lookup(records), "example.com", "pr2026a", expected)


async def test_dkim_ok_ignores_whitespace_tag_order_and_defaults() -> None:
    spaced = " ".join(KEY[i : i + 20] for i in range(0, len(KEY), 20))
    check = await dkim([f"p={spaced} ;k=rsa;  v=DKIM1;"])
    assert check.verdict == "ok"
    assert check.detail == "key matches"
    assert check.found == [f"p={spaced} ;k=rsa;  v=DKIM1;"]
    assert check.expected == DKIM_VALUE
    assert (await dkim([f"p={KEY}"])).verdict == "ok"  # k= defaults to rsa on both sides
    assert (await dkim([f";v=DKIM1;; k=RSA; p={KEY}; ;"])).verdict == "ok"  # empty specs skipped


async def test_dkim_testing_flag_is_reported() -> None:
    check = await dkim([f"v=DKIM1; t=y:s; p={KEY}"])
    assert check.verdict == "ok"
    assert "testing mode (t=y)" in check.detail


async def test_dkim_missing() -> None:
    check = await dkim([])
    assert (check.verdict, check.found) == ("missing", [])
    assert check.detail == f"no TXT record at {SELECTOR_NAME}"


@pytest.mark.parametrize(
    ("published", "detail"),
    [
        (f"v=DKIM1; k=rsa; p={OTHER_KEY}", "not the public half of our key"),
        (f"v=DKIM1; k=ed25519; p={KEY}", "key type k=ed25519, expected k=rsa"),
        ("v=DKIM1; k=rsa; p=", "empty p= means revoked"),
        ("v=DKIM1; k=rsa", "no public key"),
        (f"v=DKIM2; p={KEY}", "v=DKIM2, expected v=DKIM1"),
        (f"v=DKIM1; p={KEY}; p={KEY}", "malformed"),
        ("just some text", "malformed"),
        (f"v=DKIM1; x-y=1; p={KEY}", "malformed"),  # RFC 6376 §3.2: tag-name = ALPHA *ALNUMPUNC
        (f"V=DKIM1; K=rsa; P={KEY}", "no public key"),  # tag names are case-sensitive
    ],
)
async def test_dkim_wrong(published: str, detail: str) -> None:
    check = await dkim([published])
    assert check.verdict == "wrong"
    assert detail in check.detail
    assert check.found == [published]


async def test_dkim_two_records_at_a_selector_are_wrong() -> None:
    check = await dkim([DKIM_VALUE, f"v=DKIM1; p={OTHER_KEY}"])
    assert check.verdict == "wrong"
    assert "2 TXT records" in check.detail


async def test_dkim_error() -> None:
    check = await check_dkim(lookup({}, {SELECTOR_NAME}), "example.com", "pr2026a", DKIM_VALUE)
    assert (check.verdict, check.found) == ("error", [])
    assert SELECTOR_NAME in check.detail


async def test_dkim_ed25519_key_compares_k() -> None:
    value = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
    check = await dkim([value.replace("k=ed25519; ", "")], expected=value)
    assert check.verdict == "wrong"
    assert "key type k=rsa, expected k=ed25519" in check.detail
    assert (await dkim([value.upper().replace("P=", "p=").replace("K=ED25519", "k=ed25519")],
                       expected=value)).verdict == "wrong"  # p= is case-sensitive base64
    assert (await dkim([value], expected=value)).verdict == "ok"


# -- SPF -----------------------------------------------------------------------------------------------


async def spf(records: Records, **changes: object) -> RecordCheck:
    return await check_spf(lookup(records), expectation(**changes))


async def test_spf_ok_lists_each_address() -> None:
    check = await spf(good_records())
    assert check.verdict == "ok"
    assert check.found == ["v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all"]
    assert check.expected == "v=spf1 ip4:192.0.2.1 ip6:2001:db8::1 ~all"
    assert "192.0.2.1: pass (matched 'ip4:192.0.2.0/24' at example.com)" in check.detail
    assert "2001:db8::1: pass" in check.detail


async def test_spf_missing() -> None:
    check = await spf({("example.com", "TXT"): ["google-site-verification=abc"]})
    assert (check.verdict, check.found) == ("missing", [])
    assert check.detail == "no v=spf1 TXT record at example.com"


async def test_spf_two_records_are_wrong() -> None:
    records: Records = {("example.com", "TXT"): ["v=spf1 ip4:192.0.2.1 -all", "v=spf1 mx -all"]}
    check = await spf(records)
    assert check.verdict == "wrong"
    assert check.detail == "multiple SPF records (RFC 7208 §4.5: permerror)"
    assert len(check.found) == 2


@pytest.mark.parametrize(
    ("record", "result"),
    [
        ("v=spf1 ip6:2001:db8::/32 -all", "fail"),
        ("v=spf1 ip6:2001:db8::/32 ~all", "softfail"),
        ("v=spf1 ip6:2001:db8::/32 ?all", "neutral"),
        ("v=spf1 ip6:2001:db8::/32", "neutral"),
    ],
)
async def test_spf_address_not_passing_is_wrong_with_the_result(record: str, result: str) -> None:
    check = await spf({("example.com", "TXT"): [record]})
    assert check.verdict == "wrong"
    assert check.detail.startswith(f"192.0.2.1: {result}: ")
    assert "2001:db8::1" not in check.detail  # that one passes


async def test_spf_too_many_lookups_is_wrong_permerror() -> None:
    record = "v=spf1 " + " ".join(f"a:h{n}.example.net" for n in range(11)) + " -all"
    records: Records = {("example.com", "TXT"): [record]}
    records = {**records, **{(f"h{n}.example.net", "A"): ["198.51.100.1"] for n in range(11)}}
    check = await spf(records)
    assert check.verdict == "wrong"
    assert check.detail.startswith("permerror: too many DNS lookups")


async def test_spf_dns_failure_during_evaluation_is_an_error() -> None:
    records: Records = {("example.com", "TXT"): ["v=spf1 include:_spf.provider.net -all"]}
    check = await check_spf(lookup(records, {"_spf.provider.net"}), expectation())
    assert check.verdict == "error"
    assert check.detail.startswith("temperror: 192.0.2.1: ")
    assert check.found == ["v=spf1 include:_spf.provider.net -all"]


async def test_spf_error_when_the_record_cannot_be_fetched() -> None:
    check = await check_spf(lookup({}, {"example.com"}), expectation())
    assert (check.verdict, check.found) == ("error", [])


async def test_spf_without_sending_ips_is_unchecked() -> None:
    check = await spf(good_records(), sending_ips=())
    assert check.verdict == "unchecked"
    assert check.detail == "cannot check: no sending_ips configured"
    assert check.expected == "v=spf1 mx ~all"


async def test_spf_without_sending_ips_still_reports_a_broken_record() -> None:
    check = await spf({("example.com", "TXT"): ["v=spf1 include:nowhere.example -all"]},
                      sending_ips=())
    assert check.verdict == "wrong"
    assert check.detail.startswith("permerror: ")
    missing = await spf({}, sending_ips=())
    assert missing.verdict == "missing"


async def test_spf_is_checked_at_the_bounce_domain() -> None:
    records: Records = {
        ("example.com", "TXT"): ["v=spf1 -all"],
        ("bounces.example.com", "TXT"): ["v=spf1 ip4:192.0.2.1 ip6:2001:db8::1 -all"],
    }
    check = await spf(records, bounce_domain="bounces.example.com")
    assert (check.name, check.verdict) == ("bounces.example.com", "ok")


async def test_spf_evaluates_mx_and_a_through_the_lookup() -> None:
    records: Records = {
        ("example.com", "TXT"): ["v=spf1 mx a:out.example.com -all"],
        ("example.com", "MX"): ["10 mx.postroom.test"],
        ("mx.postroom.test", "A"): ["192.0.2.1"],
        ("out.example.com", "AAAA"): ["2001:db8::1"],
    }
    check = await spf(records)
    assert check.verdict == "ok", check.detail
    assert "MX host mx.postroom.test" in check.detail
    assert "matched 'a:out.example.com'" in check.detail


async def test_spf_mx_passes_an_ipv4_address_when_the_mx_hosts_aaaa_is_refused() -> None:
    records: Records = {
        ("example.com", "TXT"): ["v=spf1 mx ~all"],
        ("example.com", "MX"): ["10 mx.postroom.test"],
        ("mx.postroom.test", "A"): ["192.0.2.1"],
    }
    refused = DictDnsLookup(records, failing_queries={("mx.postroom.test", "AAAA")})
    check = await check_spf(refused, expectation(sending_ips=("192.0.2.1",)))
    assert check.verdict == "ok", check.detail
    assert ("mx.postroom.test", "AAAA") not in refused.queries


# -- DMARC ---------------------------------------------------------------------------------------------


async def dmarc(records: Records, failing: set[str] | None = None, **changes: object) -> RecordCheck:
    return await check_dmarc(lookup(records, failing), expectation(**changes))


async def test_dmarc_ok_reports_policy_and_alignment() -> None:
    check = await dmarc(good_records())
    assert check.verdict == "ok"
    assert check.found == ["v=DMARC1; p=quarantine; rua=mailto:d@example.com"]
    assert check.detail == (
        "p=quarantine; DKIM aligned (adkim=r: we sign with d=example.com); "
        "SPF aligned (aspf=r: envelope-from domain example.com)"
    )


async def test_dmarc_missing_suggests_a_record() -> None:
    check = await dmarc({("_dmarc.example.com", "TXT"): ["not dmarc"]})
    assert (check.verdict, check.found) == ("missing", [])
    assert check.expected == "v=DMARC1; p=none; rua=mailto:dmarc@example.com"


@pytest.mark.parametrize(
    ("bounce", "aspf", "spf_aligned"),
    [
        ("example.com", "s", True),
        ("bounces.example.com", "r", True),
        ("bounces.example.com", "s", False),
        ("a.b.example.com", "r", True),
        ("example.net", "r", False),
        ("notexample.com", "r", False),
    ],
)
async def test_dmarc_spf_alignment(bounce: str, aspf: str, spf_aligned: bool) -> None:
    records: Records = {("_dmarc.example.com", "TXT"): [f"v=DMARC1; p=reject; aspf={aspf}; adkim=s"]}
    check = await dmarc(records, bounce_domain=bounce)
    assert check.verdict == "ok"  # DKIM aligns regardless
    assert "DKIM aligned (adkim=s" in check.detail
    wanted = "SPF aligned" if spf_aligned else "SPF not aligned"
    assert f"{wanted} (aspf={aspf}: envelope-from domain {bounce})" in check.detail


async def test_dmarc_subdomain_aligned_with_parent_bounce_domain() -> None:
    records: Records = {("_dmarc.news.example.com", "TXT"): ["v=DMARC1; p=none"]}
    check = await dmarc(records, domain="news.example.com", bounce_domain="example.com")
    assert "SPF aligned (aspf=r" in check.detail


async def test_dmarc_without_dkim_needs_spf_alignment() -> None:
    records: Records = {("_dmarc.example.com", "TXT"): ["v=DMARC1; p=reject; aspf=s"]}
    wrong = await dmarc(records, dkim=(), bounce_domain="bounces.example.com")
    assert wrong.verdict == "wrong"
    assert "DKIM not aligned: no active DKIM selector" in wrong.detail
    ok = await dmarc(records, dkim=(), bounce_domain="example.com")
    assert ok.verdict == "ok"


async def test_dmarc_falls_back_to_the_organisational_domain() -> None:
    records: Records = {("_dmarc.example.com", "TXT"): ["v=DMARC1; p=none; sp=reject"]}
    check = await dmarc(records, domain="mail.example.com", bounce_domain="mail.example.com")
    assert check.verdict == "ok"
    assert check.name == "_dmarc.mail.example.com"
    assert check.found == ["v=DMARC1; p=none; sp=reject"]
    assert check.detail.startswith("p=reject (inherited from _dmarc.example.com)")
    without_sp = {("_dmarc.example.com", "TXT"): ["v=DMARC1; p=quarantine"]}
    check = await dmarc(without_sp, domain="mail.example.com")
    assert check.detail.startswith("p=quarantine (inherited from _dmarc.example.com)")


async def test_dmarc_own_record_wins_over_the_organisational_domain() -> None:
    records: Records = {
        ("_dmarc.mail.example.com", "TXT"): ["v=DMARC1; p=none"],
        ("_dmarc.example.com", "TXT"): ["v=DMARC1; p=reject; sp=reject"],
    }
    check = await dmarc(records, domain="mail.example.com")
    assert check.detail.startswith("p=none;")


async def test_dmarc_missing_at_both_names() -> None:
    check = await dmarc({}, domain="mail.example.com")
    assert check.verdict == "missing"
    assert check.detail == "no v=DMARC1 record at _dmarc.mail.example.com or _dmarc.example.com"
    assert check.expected == "v=DMARC1; p=none; rua=mailto:dmarc@mail.example.com"


@pytest.mark.parametrize(
    ("published", "detail"),
    [
        (["v=DMARC1; p=none", "v=DMARC1; p=reject"], "multiple DMARC records"),
        (["v=DMARC1; rua=mailto:d@example.com"], "no valid p= policy"),
        (["v=DMARC1; p=block"], "no valid p= policy"),
    ],
)
async def test_dmarc_wrong(published: list[str], detail: str) -> None:
    check = await dmarc({("_dmarc.example.com", "TXT"): published})
    assert check.verdict == "wrong"
    assert detail in check.detail
    assert check.found == published


async def test_dmarc_tags_are_lower_cased_first_wins_and_junk_is_ignored() -> None:
    record = "v=DMARC1; junk;; P = Reject; p=none; 1x=2; ASPF=S"
    check = await dmarc({("_dmarc.example.com", "TXT"): [record]}, bounce_domain="bounces.example.com")
    assert check.verdict == "ok"
    assert check.detail.startswith("p=reject; DKIM aligned (adkim=r")
    assert "SPF not aligned (aspf=s: envelope-from domain bounces.example.com)" in check.detail


async def test_dmarc_error() -> None:
    check = await dmarc({}, failing={"_dmarc.example.com"})
    assert check.verdict == "error"
    assert "_dmarc.example.com TXT" in check.detail


def test_dmarc_records_need_the_version_tag_first() -> None:
    txts = ["v=DMARC1; p=none", "V = dmarc1 ;p=reject", "p=none; v=DMARC1", "v=DMARC10; p=none"]
    assert dmarc_records(txts) == ["v=DMARC1; p=none", "V = dmarc1 ;p=reject"]


@pytest.mark.parametrize(
    ("domain", "org"),
    [
        ("example.com", "example.com"),
        ("a.b.example.com", "example.com"),
        ("shop.example.co.uk", "example.co.uk"),  # a multi-label public suffix
        ("example.co.uk", "example.co.uk"),
        ("a.b.c.example.kawasaki.jp", "c.example.kawasaki.jp"),  # wildcard rule *.kawasaki.jp
        ("mail.city.kawasaki.jp", "city.kawasaki.jp"),  # exception rule !city.kawasaki.jp
        # Private-section entries are not suffixes (ICANN section only): sites under github.io
        # share github.io's organisational domain.
        ("alice.github.io", "github.io"),
        ("www.alice.github.io", "github.io"),
        ("mail.example.unknowntld", "example.unknowntld"),  # not on the list: the "*" rule
        ("mail.example.xn--55qx5d.cn", "example.xn--55qx5d.cn"),  # IDN suffix (公司.cn), A-labels
        ("mail.example.公司.cn", "example.公司.cn"),  # ... and as U-labels
        ("www.xn--bcher-kva.de", "xn--bcher-kva.de"),  # IDN registered label (bücher.de)
        ("Mail.Example.COM.", "example.com"),  # upper case and a trailing dot
        ("SHOP.Example.CO.UK.", "example.co.uk"),
        ("co.uk", "co.uk"),  # a public suffix has none: it stands for itself
        ("localhost", "localhost"),
    ],
)
def test_organisational_domain_is_the_public_suffix_plus_one_label(domain: str, org: str) -> None:
    assert organisational_domain(domain) == org


async def test_dmarc_under_a_multi_label_suffix_falls_back_to_the_registered_domain() -> None:
    records: Records = {
        ("_dmarc.example.co.uk", "TXT"): ["v=DMARC1; p=none; sp=quarantine"],
        ("_dmarc.co.uk", "TXT"): ["v=DMARC1; p=reject"],  # must never be consulted
    }
    lookup = DictDnsLookup(records)
    e = expectation(domain="shop.example.co.uk", bounce_domain="bounces.example.co.uk")
    check = await check_dmarc(lookup, e)
    assert check.verdict == "ok"
    assert check.detail.startswith("p=quarantine (inherited from _dmarc.example.co.uk)")
    assert "SPF aligned (aspf=r: envelope-from domain bounces.example.co.uk)" in check.detail
    assert ("_dmarc.co.uk", "TXT") not in lookup.queries


@pytest.mark.parametrize(
    ("domain", "bounce", "aligned"),
    [
        ("news.example.com", "bounces.example.com", True),  # siblings: one organisational domain
        ("shop.example.co.uk", "example.co.uk", True),
        ("shop.example.co.uk", "bounces.other.co.uk", False),  # only the suffix in common
        ("alice.github.io", "bob.github.io", True),  # private entries are not suffixes here
    ],
)
async def test_relaxed_spf_alignment_compares_organisational_domains(
    domain: str, bounce: str, aligned: bool
) -> None:
    records: Records = {(f"_dmarc.{domain}", "TXT"): ["v=DMARC1; p=reject"]}
    check = await dmarc(records, dkim=(), domain=domain, bounce_domain=bounce)
    assert check.verdict == ("ok" if aligned else "wrong")
    wanted = "SPF aligned" if aligned else "SPF not aligned"
    assert f"{wanted} (aspf=r: envelope-from domain {bounce})" in check.detail


# -- MX ------------------------------------------------------------------------------------------------


async def mx(records: Records, failing: set[str] | None = None, **changes: object) -> RecordCheck:
    return await check_mx(lookup(records, failing), expectation(**changes))


async def test_mx_ok_is_case_insensitive_and_ignores_the_final_dot() -> None:
    records: Records = {("example.com", "MX"): ["20 MX.Postroom.Test.", "5 backup.example.net"]}
    check = await mx(records)
    assert check.verdict == "ok"
    assert check.found == ["5 backup.example.net", "20 mx.postroom.test"]
    assert check.expected == "10 mx.postroom.test"
    assert check.detail == "lists mx.postroom.test (also backup.example.net)"


async def test_mx_is_checked_at_the_bounce_domain() -> None:
    records: Records = {("bounces.example.com", "MX"): ["10 mx.postroom.test"]}
    check = await mx(records, bounce_domain="bounces.example.com")
    assert (check.name, check.verdict) == ("bounces.example.com", "ok")


async def test_mx_missing() -> None:
    check = await mx({("example.com", "TXT"): ["v=spf1 -all"]})
    assert (check.verdict, check.found) == ("missing", [])


async def test_mx_pointing_elsewhere_is_wrong() -> None:
    check = await mx({("example.com", "MX"): ["10 aspmx.l.google.com", "20 alt1.aspmx.l.google.com"]})
    assert check.verdict == "wrong"
    assert check.found == ["10 aspmx.l.google.com", "20 alt1.aspmx.l.google.com"]
    assert check.detail == "MX points to aspmx.l.google.com, alt1.aspmx.l.google.com, not mx.postroom.test"


async def test_null_mx_is_wrong() -> None:
    check = await mx({("example.com", "MX"): ["0 ."]})
    assert check.verdict == "wrong"
    assert check.found == ["0 ."]
    assert "null MX" in check.detail


async def test_mx_error() -> None:
    check = await mx({}, failing={"example.com"})
    assert (check.verdict, check.found) == ("error", [])


# -- suggested records ------------------------------------------------------------------------------


def test_suggested_records() -> None:
    records = suggested_records(expectation(), MARCH_7_2026)
    assert records == [
        {"name": SELECTOR_NAME, "type": "TXT", "value": DKIM_VALUE},
        {"name": "example.com", "type": "TXT", "value": "v=spf1 ip4:192.0.2.1 ip6:2001:db8::1 ~all"},
        {
            "name": "_dmarc.example.com",
            "type": "TXT",
            "value": "v=DMARC1; p=none; rua=mailto:dmarc@example.com",
        },
        {"name": "example.com", "type": "MX", "value": "10 mx.postroom.test"},
        {"name": "_mta-sts.example.com", "type": "TXT", "value": "v=STSv1; id=20260307"},
        {
            "name": "_smtp._tls.example.com",
            "type": "TXT",
            "value": "v=TLSRPTv1; rua=mailto:tls-reports@example.com",
        },
    ]


def test_suggested_records_without_sending_ips_and_with_a_bounce_domain() -> None:
    dkim = (("a", DKIM_VALUE), ("b", f"v=DKIM1; p={OTHER_KEY}"))
    e = expectation(sending_ips=(), bounce_domain="bounces.example.com", dkim=dkim)
    records = suggested_records(e, MARCH_7_2026)
    by_type = [(r["name"], r["type"], r["value"]) for r in records]
    assert by_type[:2] == [
        ("a._domainkey.example.com", "TXT", DKIM_VALUE),
        ("b._domainkey.example.com", "TXT", f"v=DKIM1; p={OTHER_KEY}"),
    ]
    assert ("bounces.example.com", "TXT", "v=spf1 mx ~all") in by_type
    assert ("bounces.example.com", "MX", "10 mx.postroom.test") in by_type


async def test_suggested_records_pass_the_checks() -> None:
    e = expectation(bounce_domain="bounces.example.com")
    records: dict[tuple[str, str], list[str]] = {}
    for record in suggested_records(e, MARCH_7_2026):
        records.setdefault((record["name"], record["type"]), []).append(record["value"])
    report = await check_domain(e, lookup(records))
    assert report.ok, report.checks
    assert [c.verdict for c in report.checks] == ["ok"] * 4
