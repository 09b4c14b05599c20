"""SPF evaluation: would a receiver give `pass` to mail from this address? (RFC 7208 check_host).

A small, pure evaluator: the DNS answers come from an injected `DnsLookup`, and the result is a
value (`SpfOutcome`), never an exception. It implements the mechanisms `all`, `include`, `a`, `mx`,
`ip4`, `ip6` and `exists` with qualifiers and dual CIDR lengths, the `redirect` modifier, macros
(§7), and the processing limits of §4.6.4: at most 10 DNS-querying terms, 10 MX names per `mx`,
and 2 void lookups. `a` and `mx` ask for the client's address type only (A for IPv4, AAAA for
IPv6; §5.3, §5.4), so a resolver that fails the other type does not matter. Two deliberate gaps,
both documented in the outcome: `ptr` (§5.5, "SHOULD NOT be used") is counted as a DNS-querying
term but never matches, because `DnsLookup` has no PTR query, and `%{p}` expands to "unknown"
(§7.3 allows that). `exp=` is parsed and otherwise ignored: it only words the rejection text.
pyspf was not used: it queries DNS itself, synchronously, through a module-level function, so it
could neither take injected answers nor run on the event loop.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass
from typing import Literal, TypeAlias

from postroom.domains.lookup import AddressType, DnsLookup, DnsLookupError

SpfResult: TypeAlias = Literal[
    "pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"
]
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 7208 §4.6.4: limits that keep one evaluation from becoming a DNS flood.
MAX_DNS_TERMS = 10
MAX_MX_NAMES = 10
MAX_VOID_LOOKUPS = 2

_QUALIFIERS: dict[str, SpfResult] = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISMS = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
_DNS_MECHANISMS = frozenset({"include", "a", "mx", "ptr", "exists"})

_MODIFIER = re.compile(r"(?P<name>[A-Za-z][A-Za-z0-9_.-]*)=(?P<value>.*)")
_MECHANISM = re.compile(r"(?P<qualifier>[-+~?]?)(?P<name>[A-Za-z][A-Za-z0-9_.-]*)(?P<rest>.*)")
# a and mx: [":" domain-spec] [ip4-cidr-length] ["//" ip6-cidr-length] (§5.3, §5.4). A macro such
# as %{l/} may carry a "/" inside the braces, so braces are matched as a unit.
_A_OR_MX_ARGS = re.compile(
    r"(?::(?P<spec>(?:%\{[^}]*\}|[^/])+))?(?:/(?P<cidr4>\d+))?(?://(?P<cidr6>\d+))?"
)
# §7.1: macro-expand = ( "%{" macro-letter transformers *delimiter "}" ) / "%%" / "%_" / "%-"
_MACRO = re.compile(
    r"%(?:\{(?P<letter>[A-Za-z])(?P<digits>\d*)(?P<reverse>[rR]?)(?P<delims>[-.+,/_=]*)\}"
    r"|(?P<escape>[%_-]))"
)


@dataclass(frozen=True)
class SpfOutcome:
    """The result of one evaluation, why (the matching term and where, or the error), and how many
    DNS-querying terms it used."""

    result: SpfResult
    detail: str
    lookups: int = 0


def spf_records(txt_records: list[str]) -> list[str]:
    """The SPF version 1 records among a name's TXT records (RFC 7208 §4.5: "v=spf1" exactly,
    followed by a space or the end; case-insensitive like all ABNF literals)."""
    found = []
    for record in txt_records:
        head = record[:7].lower()
        if head == "v=spf1" or head == "v=spf1 ":
            found.append(record)
    return found


async def check_host(
    lookup: DnsLookup, ip: str, domain: str, *, sender: str = "", helo: str = ""
) -> SpfOutcome:
    """Evaluate the SPF policy of `domain` for mail from `ip` (RFC 7208 §4).

    `sender` is the envelope-from (default `postmaster@<domain>`, §4.3) and `helo` the client's HELO
    name (default `domain`); both only matter to records using the %{s}, %{l}, %{o} or %{h} macros.
    Raises ValueError only when `ip` is not an IP address (a caller error, not a DNS state).
    """
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    domain = domain.rstrip(".").lower()
    evaluation = _Evaluation(lookup, address, sender or f"postmaster@{domain}", helo or domain)
    try:
        result, detail = await evaluation.check_host(domain)
    except _PermError as exc:
        result, detail = "permerror", str(exc)
    except _TempError as exc:
        result, detail = "temperror", str(exc)
    if evaluation.skipped_ptr:
        detail += "; note: ptr mechanisms were not evaluated (treated as no match)"
    return SpfOutcome(result, detail, evaluation.terms)


class _PermError(Exception):
    """The policy cannot be interpreted (§2.6.7); unwinds the whole evaluation."""


class _TempError(Exception):
    """A DNS lookup failed transiently (§2.6.6); unwinds the whole evaluation."""


@dataclass(frozen=True)
class _Directive:
    text: str
    result: SpfResult
    mechanism: str
    spec: str | None = None
    cidr4: int = 32
    cidr6: int = 128
    network: IPNetwork | None = None


@dataclass(frozen=True)
class _Record:
    directives: list[_Directive]
    redirect: str | None


def _parse_record(record: str) -> _Record:
    """Parse a whole record before evaluating any of it: a syntax error anywhere is a permerror
    even when an earlier term would have matched (§4.6)."""
    directives: list[_Directive] = []
    modifiers: dict[str, str] = {}
    for term in record.split()[1:]:
        modifier = _MODIFIER.fullmatch(term)
        if modifier:
            name = modifier["name"].lower()
            # §6: redirect and exp MUST NOT appear more than once; unknown modifiers are ignored.
            if name in modifiers and name in ("redirect", "exp"):
                raise _PermError(f"{name}= appears more than once")
            _check_macro_string(modifier["value"], term)
            modifiers[name] = modifier["value"]
            continue
        directives.append(_parse_directive(term))
    redirect = modifiers.get("redirect")
    if redirect is not None and not redirect:
        raise _PermError("redirect= has no domain")
    return _Record(directives, redirect)


def _parse_directive(term: str) -> _Directive:
    match = _MECHANISM.fullmatch(term)
    if not match or match["name"].lower() not in _MECHANISMS:
        raise _PermError(f"unknown mechanism {term!r}")
    result = _QUALIFIERS[match["qualifier"] or "+"]
    name, rest = match["name"].lower(), match["rest"]
    if name == "all":
        if rest:
            raise _PermError(f"invalid term {term!r}")
        return _Directive(term, result, name)
    if name in ("include", "exists"):
        if not rest.startswith(":") or len(rest) < 2:
            raise _PermError(f"{name} needs a domain: {term!r}")
        _check_macro_string(rest[1:], term)
        return _Directive(term, result, name, spec=rest[1:])
    if name == "ptr":
        if rest and (not rest.startswith(":") or len(rest) < 2):
            raise _PermError(f"invalid term {term!r}")
        return _Directive(term, result, name, spec=rest[1:] or None)
    if name in ("ip4", "ip6"):
        return _Directive(term, result, name, network=_parse_network(name, rest, term))
    args = _A_OR_MX_ARGS.fullmatch(rest)
    if not args:
        raise _PermError(f"invalid term {term!r}")
    cidr4 = _cidr(args["cidr4"], 32, term) if args["cidr4"] is not None else 32
    cidr6 = _cidr(args["cidr6"], 128, term) if args["cidr6"] is not None else 128
    if args["spec"] is not None:
        _check_macro_string(args["spec"], term)
    return _Directive(term, result, name, spec=args["spec"], cidr4=cidr4, cidr6=cidr6)


def _parse_network(name: str, rest: str, term: str) -> IPNetwork:
    if not rest.startswith(":"):
        raise _PermError(f"{name} needs an address: {term!r}")
    text, _, length = rest[1:].partition("/")
    maximum = 32 if name == "ip4" else 128
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise _PermError(f"invalid address in {term!r}") from None
    if address.version != (4 if name == "ip4" else 6):
        raise _PermError(f"invalid address in {term!r}")
    prefix = _cidr(length, maximum, term) if "/" in rest else maximum
    return ipaddress.ip_network(f"{address}/{prefix}", strict=False)


def _cidr(text: str, maximum: int, term: str) -> int:
    # §5.6: ip4-cidr-length = "/" ("0" / %x31-39 0*1DIGIT), so no leading zeros.
    if not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > maximum:
        raise _PermError(f"invalid CIDR length in {term!r}")
    return int(text)


def _check_macro_string(text: str, term: str) -> None:
    """A "%" must start a valid macro (§7.1); catching it at parse time keeps §4.6 exact."""
    position = 0
    while (percent := text.find("%", position)) != -1:
        match = _MACRO.match(text, percent)
        if not match:
            raise _PermError(f"invalid macro in {term!r}")
        if match["letter"] and match["letter"].lower() not in "slodiphv":
            # c, r and t are only allowed in exp= text (§7.2), which this evaluator ignores.
            raise _PermError(f"macro %{{{match['letter']}}} not allowed in {term!r}")
        position = match.end()


@dataclass
class _Evaluation:
    """One `check_host()` run: the limits of §4.6.4 count across the whole include/redirect tree."""

    lookup: DnsLookup
    ip: IPAddress
    sender: str
    helo: str
    terms: int = 0
    voids: int = 0
    skipped_ptr: bool = False

    async def check_host(self, domain: str) -> tuple[SpfResult, str]:
        if not _valid_domain(domain):
            return "none", f"{domain!r} is not a domain name"
        records = spf_records(await self._txt(domain))
        if not records:
            return "none", f"no SPF record at {domain}"
        if len(records) > 1:
            raise _PermError(f"multiple SPF records at {domain} (RFC 7208 §4.5)")
        record = _parse_record(records[0])
        for directive in record.directives:
            why = await self._match(directive, domain)
            if why is not None:
                return directive.result, why
        if record.redirect is not None:
            # §6.1: used only when no mechanism matched (an "all" always matches, so it wins).
            self._count_term()
            target = self._expand(record.redirect, domain)
            result, detail = await self.check_host(target)
            if result == "none":
                raise _PermError(f"redirect={target} at {domain}: {detail}")
            return result, f"{detail}, redirected from {domain}"
        return "neutral", f"no mechanism matched at {domain} (default neutral, RFC 7208 §4.7)"

    async def _match(self, directive: _Directive, domain: str) -> str | None:
        """Why `directive` matches (the term and where), or None when it does not."""
        matched = f"matched '{directive.text}' at {domain}"
        if directive.mechanism == "all":
            return matched
        if directive.network is not None:
            return matched if self.ip in directive.network else None
        self._count_term()
        target = self._expand(directive.spec, domain) if directive.spec else domain
        if directive.mechanism == "include":
            result, detail = await self.check_host(target)
            # §5.2: the included policy's result only decides whether "include" matches.
            if result == "none":
                raise _PermError(f"'{directive.text}' at {domain}: {detail}")
            return f"{detail}, included from {domain}" if result == "pass" else None
        if not _valid_domain(target):
            raise _PermError(f"'{directive.text}' at {domain}: {target!r} is not a domain name")
        # §5.3, §5.4: `a` and `mx` look up the address type of the client's address only (A for
        # IPv4, AAAA for IPv6): the other type could never match, and asking for it anyway would
        # turn a resolver's failure on that type into a temperror.
        rdtype: AddressType = "A" if self.ip.version == 4 else "AAAA"
        if directive.mechanism == "a":
            addresses = await self._addresses(target, rdtype, void_counts=True)
            return matched if self._any_in(addresses, directive) else None
        if directive.mechanism == "mx":
            exchanges = await self._mx(target)
            if len(exchanges) > MAX_MX_NAMES:
                raise _PermError(
                    f"{target} has more than {MAX_MX_NAMES} MX records (RFC 7208 §4.6.4)"
                )
            for host in exchanges:
                if self._any_in(await self._addresses(host, rdtype, void_counts=False), directive):
                    return f"{matched} (MX host {host})"
            return None
        if directive.mechanism == "exists":
            # §5.7: an A query whatever the version of the client's address.
            return matched if await self._addresses(target, "A", void_counts=True) else None
        self.skipped_ptr = True  # ptr: see the module docstring
        return None

    def _count_term(self) -> None:
        self.terms += 1
        if self.terms > MAX_DNS_TERMS:
            raise _PermError(
                f"too many DNS lookups (more than {MAX_DNS_TERMS} DNS-querying terms, "
                "RFC 7208 §4.6.4)"
            )

    def _void(self, name: str) -> None:
        self.voids += 1
        if self.voids > MAX_VOID_LOOKUPS:
            raise _PermError(
                f"too many void lookups (more than {MAX_VOID_LOOKUPS} names with no answer, last "
                f"{name}; RFC 7208 §4.6.4)"
            )

    def _any_in(self, addresses: list[str], directive: _Directive) -> bool:
        for text in addresses:
            address = ipaddress.ip_address(text)
            if address.version != self.ip.version:
                continue
            prefix = directive.cidr4 if address.version == 4 else directive.cidr6
            if self.ip in ipaddress.ip_network(f"{address}/{prefix}", strict=False):
                return True
        return False

    async def _txt(self, name: str) -> list[str]:
        try:
            return await self.lookup.txt(name)
        except DnsLookupError as exc:
            raise _TempError(str(exc)) from exc

    async def _mx(self, name: str) -> list[str]:
        try:
            answers = await self.lookup.mx(name)
        except DnsLookupError as exc:
            raise _TempError(str(exc)) from exc
        if not answers:
            self._void(name)
        # RFC 7505: a null MX ("0 .") names no host to look up.
        return [host for _, host in sorted(answers) if host]

    async def _addresses(self, name: str, rdtype: AddressType, *, void_counts: bool) -> list[str]:
        try:
            answers = await self.lookup.addresses(name, rdtype)
        except DnsLookupError as exc:
            raise _TempError(str(exc)) from exc
        if not answers and void_counts:
            self._void(name)
        return answers

    def _expand(self, spec: str, domain: str) -> str:
        """Expand the macros of a domain-spec (§7.3) and cut it to 253 characters (§7.3 end)."""

        def replace(match: re.Match[str]) -> str:
            if match["escape"]:
                return {"%": "%", "_": " ", "-": "%20"}[match["escape"]]
            letter = match["letter"]
            value = self._macro_value(letter.lower(), domain)
            parts = re.split("[" + re.escape(match["delims"] or ".") + "]", value)
            if match["reverse"]:
                parts.reverse()
            if match["digits"]:
                if int(match["digits"]) == 0:
                    raise _PermError(f"macro %{{{match[0][2:-1]}}} keeps zero labels")
                parts = parts[-int(match["digits"]) :]
            expanded = ".".join(parts)
            return urllib.parse.quote(expanded, safe="") if letter.isupper() else expanded

        expanded = _MACRO.sub(replace, spec).rstrip(".")
        while len(expanded) > 253 and "." in expanded:
            expanded = expanded.split(".", 1)[1]
        return expanded.lower()

    def _macro_value(self, letter: str, domain: str) -> str:
        local, _, sender_domain = self.sender.rpartition("@")
        if letter == "i":
            if isinstance(self.ip, ipaddress.IPv6Address):
                # §7.3: IPv6 addresses are written as dot-separated nibbles.
                return ".".join(self.ip.exploded.replace(":", ""))
            return str(self.ip)
        values = {
            "s": self.sender,
            "l": local or "postmaster",
            "o": sender_domain,
            "d": domain,
            "p": "unknown",
            "v": "in-addr" if self.ip.version == 4 else "ip6",
            "h": self.helo,
        }
        return values[letter]


def _valid_domain(domain: str) -> bool:
    """§4.3: a multi-label name with no empty label and none over 63 octets. Any octet may appear in
    a label (macro expansions carry "@", "+" or "%"), so the characters are not checked."""
    labels = domain.split(".")
    return len(labels) > 1 and len(domain) <= 253 and all(0 < len(label) <= 63 for label in labels)
