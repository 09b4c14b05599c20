"""Domain checks: does a sending domain's DNS publish what postroom needs, and what should it?

`check_domain` compares the live records of one domain with a `DomainExpectation` (the DKIM
records of its active selectors, the addresses mail leaves from, our MX host, the bounce domain)
and returns a `DomainReport` with one `RecordCheck` per record: ok, missing, wrong, error (DNS gave
no answer) or unchecked (nothing to compare with). `suggested_records` lists the records a domain
needs, for `postroom dkim dns`. Everything here is pure: DNS answers come through an injected
`DnsLookup`, the time through an argument.

Two choices worth knowing. SPF is checked at the bounce domain, not the From domain: receivers
evaluate SPF for the envelope-from (MAIL FROM) identity (RFC 7208 §2.4), which is
`<anything>@<bounce_domain>`; the two are the same name unless a bounce domain is configured. And
the organisational domain (RFC 7489 §3.2), where a subdomain's DMARC policy may live and by which
relaxed alignment is judged, is the public suffix plus one label, by the ICANN section of the
Public Suffix List that the `publicsuffixlist` package bundles (no network; a release of the
package brings a newer list): `shop.example.co.uk` belongs to `example.co.uk`, not `co.uk`.
Private-section entries (`github.io`, `blogspot.com`) are not suffixes here, so every site under
one of them shares that name's organisational domain, and its `_dmarc` policy as the fallback.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, TypeAlias

from publicsuffixlist import PublicSuffixList

from postroom.dkim.records import compare_published_key, parse_key_record, parse_tag_specs
from postroom.domains.lookup import DnsLookup, DnsLookupError
from postroom.domains.spf import check_host, spf_records

Verdict: TypeAlias = Literal["ok", "missing", "wrong", "error", "unchecked"]
CheckKind: TypeAlias = Literal["dkim", "spf", "dmarc", "mx"]
RecordType: TypeAlias = Literal["TXT", "MX"]

# When no sending address is configured the SPF record is still evaluated, for an address from the
# documentation range (RFC 5737) that no real policy lists, to catch syntax errors and lookup
# overflows (RFC 7208 §4.6.4) that a receiver would turn into permerror for every address.
_SPF_PROBE_ADDRESS = "192.0.2.1"
_DMARC_VERSION = re.compile(r"v\s*=\s*DMARC1\s*(;|$)", re.IGNORECASE)
_DMARC_POLICIES = ("none", "quarantine", "reject")


@dataclass(frozen=True)
class DomainExpectation:
    """What a domain's DNS should say for postroom to send as it.

    `dkim` pairs each active selector with the TXT value we expect there (`dkim.keys.
    dns_record_value`); `sending_ips` are the addresses mail leaves from (empty: SPF is not
    checked against any); `mx_host` is our inbound MX; `bounce_domain` is the envelope-from domain
    ("" means `domain`). Names are lower-cased and lose a trailing dot. Raises ValueError for an
    address that is not one or an expected DKIM value without p=.
    """

    domain: str
    dkim: tuple[tuple[str, str], ...]
    sending_ips: tuple[str, ...]
    mx_host: str
    bounce_domain: str = ""

    def __post_init__(self) -> None:
        domain = _normal_name(self.domain)
        object.__setattr__(self, "domain", domain)
        object.__setattr__(self, "mx_host", _normal_name(self.mx_host))
        object.__setattr__(self, "bounce_domain", _normal_name(self.bounce_domain) or domain)
        for address in self.sending_ips:
            ipaddress.ip_address(address)  # raises ValueError naming the address
        for selector, expected in self.dkim:
            if not selector or not _publishes_a_key(expected):
                raise ValueError(f"DKIM record for selector {selector!r} has no public key (p=)")


@dataclass(frozen=True)
class RecordCheck:
    """One record's verdict, with what we expected there and every value found at the name."""

    name: str
    type: RecordType
    kind: CheckKind
    verdict: Verdict
    expected: str
    found: list[str] = field(default_factory=list)
    detail: str = ""


@dataclass(frozen=True)
class DomainReport:
    domain: str
    checks: list[RecordCheck]

    @property
    def ok(self) -> bool:
        """No check is missing, wrong or failed; "unchecked" (nothing to compare with) passes."""
        return all(check.verdict in ("ok", "unchecked") for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        """Plain values for JSON: the domain, `ok`, and each check's fields."""
        return {"domain": self.domain, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}


async def check_domain(expectation: DomainExpectation, lookup: DnsLookup) -> DomainReport:
    """Every check for one domain: DKIM per selector, then SPF, DMARC and MX, run concurrently."""
    pending: list[Awaitable[RecordCheck]] = [
        check_dkim(lookup, expectation.domain, selector, expected)
        for selector, expected in expectation.dkim
    ]
    if not expectation.dkim:
        pending.append(_no_dkim_selector(expectation.domain))
    pending += [
        check_spf(lookup, expectation),
        check_dmarc(lookup, expectation),
        check_mx(lookup, expectation),
    ]
    return DomainReport(expectation.domain, list(await asyncio.gather(*pending)))


async def check_dkim(lookup: DnsLookup, domain: str, selector: str, expected: str) -> RecordCheck:
    """Is the key published at `selector._domainkey.domain` the public half of ours?

    The comparison is `dkim.records.compare_published_key`, the one the key monitor activates a
    pending selector on: k= and p= with whitespace removed, so tag order, spacing and how the
    record was cut into strings do not matter (RFC 6376 §3.6.2.2).
    """
    name = f"{selector}._domainkey.{_normal_name(domain)}"
    if not _publishes_a_key(expected):
        raise ValueError(f"expected DKIM record for {name} has no public key (p=)")
    try:
        found = await lookup.txt(name)
    except DnsLookupError as exc:
        return RecordCheck(name, "TXT", "dkim", "error", expected, [], str(exc))
    published = compare_published_key(name, found, expected)
    return RecordCheck(name, "TXT", "dkim", published.verdict, expected, found, published.detail)


async def check_spf(lookup: DnsLookup, expectation: DomainExpectation) -> RecordCheck:
    """Does the one SPF record of the bounce domain give `pass` to every sending address?"""
    name = expectation.bounce_domain
    expected = _spf_value(expectation.sending_ips)

    def verdict(verdict: Verdict, found: list[str], detail: str) -> RecordCheck:
        return RecordCheck(name, "TXT", "spf", verdict, expected, found, detail)

    try:
        found = spf_records(await lookup.txt(name))
    except DnsLookupError as exc:
        return verdict("error", [], str(exc))
    if not found:
        return verdict("missing", [], f"no v=spf1 TXT record at {name}")
    if len(found) > 1:
        return verdict("wrong", found, "multiple SPF records (RFC 7208 §4.5: permerror)")
    addresses = expectation.sending_ips or (_SPF_PROBE_ADDRESS,)
    outcomes = [
        (address, await check_host(lookup, address, name, helo=expectation.mx_host))
        for address in addresses
    ]
    if any(outcome.result == "temperror" for _, outcome in outcomes):
        failed = [f"{a}: {o.detail}" for a, o in outcomes if o.result == "temperror"]
        return verdict("error", found, "temperror: " + "; ".join(failed))
    if any(outcome.result == "permerror" for _, outcome in outcomes):
        failed = [o.detail for _, o in outcomes if o.result == "permerror"]
        return verdict("wrong", found, "permerror: " + failed[0])
    if not expectation.sending_ips:
        return verdict("unchecked", found, "cannot check: no sending_ips configured")
    refused = [f"{a}: {o.result}: {o.detail}" for a, o in outcomes if o.result != "pass"]
    if refused:
        return verdict("wrong", found, "; ".join(refused))
    return verdict("ok", found, "; ".join(f"{a}: pass ({o.detail})" for a, o in outcomes))


async def check_dmarc(lookup: DnsLookup, expectation: DomainExpectation) -> RecordCheck:
    """Is there a DMARC policy for the domain (its own, or its organisational domain's), and does
    our mail align with it?

    We sign with d=<domain>, the From domain, so DKIM aligns in relaxed and strict mode whenever a
    selector is active. SPF aligns when the envelope-from (bounce) domain is the domain, or, in
    relaxed mode (aspf=r, the default), when both have the same organisational domain (RFC 7489
    §3.1.2). The verdict is ok when a record exists and at least one of the two aligns.
    """
    domain = expectation.domain
    name = f"_dmarc.{domain}"
    suggestion = _dmarc_value(domain)
    await asyncio.to_thread(_icann_suffixes)  # the first call parses the list: ~40 ms of CPU
    org = organisational_domain(domain)

    def verdict(verdict: Verdict, found: list[str], detail: str) -> RecordCheck:
        return RecordCheck(name, "TXT", "dmarc", verdict, suggestion, found, detail)

    try:
        found, source = dmarc_records(await lookup.txt(name)), name
        if not found and org != domain:
            # RFC 7489 §6.6.3: with no record for the From domain, the organisational domain's
            # record applies, with its sp= policy if it has one.
            found, source = dmarc_records(await lookup.txt(f"_dmarc.{org}")), f"_dmarc.{org}"
    except DnsLookupError as exc:
        return verdict("error", [], str(exc))
    if not found:
        where = name if org == domain else f"{name} or _dmarc.{org}"
        return verdict("missing", [], f"no v=DMARC1 record at {where}")
    if len(found) > 1:
        return verdict("wrong", found, "multiple DMARC records: receivers ignore all of them "
                       "(RFC 7489 §6.6.3)")
    # Tag names and values are lower-cased, and the first of a repeated tag wins; unknown and
    # malformed tags are ignored (RFC 7489 §6.3).
    tags: dict[str, str] = {}
    for tag, value in parse_tag_specs(found[0]):
        tags.setdefault(tag.lower(), value.lower())
    policy = tags.get("sp", tags.get("p")) if source != name else tags.get("p")
    if policy not in _DMARC_POLICIES:
        return verdict("wrong", found, "no valid p= policy (none, quarantine or reject)")
    adkim, aspf = tags.get("adkim", "r"), tags.get("aspf", "r")
    parts = [f"p={policy}" + (f" (inherited from {source})" if source != name else "")]
    dkim_aligned = bool(expectation.dkim)
    if dkim_aligned:
        parts.append(f"DKIM aligned (adkim={adkim}: we sign with d={domain})")
    else:
        parts.append("DKIM not aligned: no active DKIM selector")
    spf_aligned = _spf_aligned(domain, expectation.bounce_domain, aspf)
    bounce = expectation.bounce_domain
    if spf_aligned:
        parts.append(f"SPF aligned (aspf={aspf}: envelope-from domain {bounce})")
    else:
        parts.append(f"SPF not aligned (aspf={aspf}: envelope-from domain {bounce})")
    return verdict("ok" if dkim_aligned or spf_aligned else "wrong", found, "; ".join(parts))


async def check_mx(lookup: DnsLookup, expectation: DomainExpectation) -> RecordCheck:
    """Does the bounce domain's MX set include our MX host, so that bounces reach us?"""
    name, ours = expectation.bounce_domain, expectation.mx_host
    expected = f"10 {ours}"

    def verdict(verdict: Verdict, found: list[str], detail: str) -> RecordCheck:
        return RecordCheck(name, "MX", "mx", verdict, expected, found, detail)

    try:
        answers = sorted((pref, _normal_name(host)) for pref, host in await lookup.mx(name))
    except DnsLookupError as exc:
        return verdict("error", [], str(exc))
    if not answers:
        return verdict("missing", [], f"no MX record at {name}; bounces cannot reach us")
    found = [f"{pref} {host or '.'}" for pref, host in answers]
    hosts = [host for _, host in answers]
    if ours in hosts:
        others = [host for host in hosts if host != ours]
        also = f" (also {', '.join(others)})" if others else ""
        return verdict("ok", found, f"lists {ours}{also}")
    if hosts == [""]:
        return verdict("wrong", found, "null MX (RFC 7505): the domain accepts no mail")
    return verdict("wrong", found, f"MX points to {', '.join(hosts)}, not {ours}")


def suggested_records(expectation: DomainExpectation, now: float) -> list[dict[str, str]]:
    """The records the domain needs, as {"name", "type", "value"}. `now` (seconds since the epoch,
    from the injected `Clock`) dates the MTA-STS policy id as its UTC day.

    SPF and MX go at the bounce domain (the envelope-from identity, where bounces arrive); DKIM,
    DMARC, MTA-STS and TLS-RPT at the domain. TXT values are whole strings: a zone file needs
    long ones cut into 255-byte strings (`dkim.keys.split_txt`).
    """
    domain, bounce = expectation.domain, expectation.bounce_domain
    today = datetime.fromtimestamp(now, timezone.utc)
    records = [
        {"name": f"{selector}._domainkey.{domain}", "type": "TXT", "value": expected}
        for selector, expected in expectation.dkim
    ]
    records += [
        {"name": bounce, "type": "TXT", "value": _spf_value(expectation.sending_ips)},
        {"name": f"_dmarc.{domain}", "type": "TXT", "value": _dmarc_value(domain)},
        {"name": bounce, "type": "MX", "value": f"10 {expectation.mx_host}"},
        {"name": f"_mta-sts.{domain}", "type": "TXT", "value": f"v=STSv1; id={today:%Y%m%d}"},
        {
            "name": f"_smtp._tls.{domain}",
            "type": "TXT",
            "value": f"v=TLSRPTv1; rua=mailto:tls-reports@{domain}",
        },
    ]
    return records


def organisational_domain(domain: str) -> str:
    """The organisational domain of `domain` (RFC 7489 §3.2): its public suffix plus one label,
    by the ICANN section of the bundled Public Suffix List, lower case without a trailing dot.

    `shop.example.co.uk` -> `example.co.uk`. A TLD not on the list is a one-label suffix (the
    list's implicit `*` rule). IDNs work in either form and keep it (`mail.example.xn--55qx5d.cn`
    -> `example.xn--55qx5d.cn`, `mail.example.公司.cn` -> `example.公司.cn`). A name that is itself a
    public suffix, or one label, has no such domain and stands for itself.
    """
    name = _normal_name(domain)
    return _icann_suffixes().privatesuffix(name) or name


def dmarc_records(txt_records: list[str]) -> list[str]:
    """The TXT records that are DMARC records: v=DMARC1 must be the first tag (RFC 7489 §6.4)."""
    return [record for record in txt_records if _DMARC_VERSION.match(record.strip())]


def _spf_aligned(domain: str, bounce: str, aspf: str) -> bool:
    # RFC 7489 §3.1.2: strict mode needs the same name, relaxed mode the same organisational domain.
    if bounce == domain:
        return True
    if aspf == "s":
        return False
    return organisational_domain(bounce) == organisational_domain(domain)


@functools.cache
def _icann_suffixes() -> PublicSuffixList:
    # Parsed once, on first use, from the list file inside the package (no network access);
    # `check_dmarc` does that first call in a thread. It is an immutable table, like a compiled
    # pattern, so it is kept rather than injected.
    return PublicSuffixList(only_icann=True)


def _spf_value(sending_ips: tuple[str, ...]) -> str:
    if not sending_ips:
        return "v=spf1 mx ~all"
    terms = [f"ip{ipaddress.ip_address(address).version}:{address}" for address in sending_ips]
    return f"v=spf1 {' '.join(terms)} ~all"


def _dmarc_value(domain: str) -> str:
    return f"v=DMARC1; p=none; rua=mailto:dmarc@{domain}"


async def _no_dkim_selector(domain: str) -> RecordCheck:
    return RecordCheck(
        f"_domainkey.{domain}", "TXT", "dkim", "unchecked", "", [], "no active DKIM selector"
    )


def _publishes_a_key(record: str) -> bool:
    try:
        parse_key_record(record)
    except ValueError:  # malformed, or no p=
        return False
    return True


def _normal_name(name: str) -> str:
    return name.strip().rstrip(".").lower()
