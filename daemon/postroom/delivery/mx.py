"""Where to send mail for a domain: MX resolution for direct delivery (RFC 5321 §5.1, RFC 7505).

`order_mx` is the pure part: MX records in, host names in the order to try them out.
`resolve` asks a `DnsLookup` for the MX records and each host's addresses and returns a
`Destination`: an `MxRoute` listing the hosts to try, or an `MxFailure` that says whether the
domain can never take mail (null MX, no mail host: bounce now) or DNS failed this time (defer).
`MxCache` keeps answers for a while, coalesces concurrent lookups of one domain into one, and
evicts least recently used domains past a bound.

Each host's A and AAAA records are asked separately. A lookup that fails (a resolver that refuses
AAAA, as dnsmasq without an upstream does; a timeout) costs only what it would have answered: the
route uses the addresses that were found and lists the failed lookups (`MxRoute.failed`). The
domain is deferred as a DNS failure only when no host has any address and some lookup failed.

A route is cached for the smallest TTL of the records it was built from (the MX records and the A
and AAAA records found) when the lookup can tell it (`RecordTtls`), within [`MIN_ROUTE_TTL`, the
cache's `ttl`]; otherwise for `ttl`. A route with failed lookups is kept at most
`PARTIAL_ROUTE_TTL` (60 s), so the missing answer is asked for again soon, though not per message,
and its failed lookups are logged once per host and cache period. Address literals in recipients
(`user@[192.0.2.1]`) are not handled here.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from postroom.core.addresses import normalise_domain
from postroom.core.clock import Clock
from postroom.domains.lookup import AddressType, DnsLookup, DnsLookupError, RecordTtls
from postroom.metrics import Metrics

logger = logging.getLogger(__name__)

# How long a temporary failure (DNS unreachable, SERVFAIL) may be served from the cache at most:
# long enough to absorb a burst of messages to one domain, short enough that recovery is seen soon.
TEMPORARY_FAILURE_TTL = 5.0
# A route is kept at least this long even if its records say less (TTL 0 would mean a lookup
# per message to the domain).
MIN_ROUTE_TTL = 5.0
# A route built while some address lookup failed is kept at most this long: the missing answer is
# asked for again soon, but not per message (a resolver that refuses AAAA refuses it every time).
PARTIAL_ROUTE_TTL = 60.0
# IPv4 first: the order in which a host's addresses are tried.
_ADDRESS_TYPES: tuple[AddressType, ...] = ("A", "AAAA")


@dataclass(frozen=True)
class MxHost:
    """One mail exchanger: its name, its addresses (IPv4 first) and its MX preference."""

    name: str
    addresses: tuple[str, ...]
    preference: int


@dataclass(frozen=True)
class FailedLookup:
    """An address question about a mail host that got no answer (timeout, SERVFAIL, refused)."""

    host: str
    rdtype: AddressType
    error: str


@dataclass(frozen=True)
class MxRoute:
    """The hosts to try for `domain`, in order (non-empty; every host has an address). `failed`
    lists the address lookups that got no answer: a host may then lack some of its addresses, or
    be missing altogether."""

    domain: str
    hosts: tuple[MxHost, ...]
    ttl: float | None = None  # the smallest TTL of the records behind it, when known
    failed: tuple[FailedLookup, ...] = ()


@dataclass(frozen=True)
class MxFailure:
    """No route to `domain`: `permanent` means bounce now, otherwise defer and try again."""

    domain: str
    reason: str
    permanent: bool


Destination = MxRoute | MxFailure
ResolveFn = Callable[[str], Coroutine[Any, Any, Destination]]


def order_mx(records: list[tuple[int, str]], draw: Callable[[], float]) -> list[str]:
    """Host names in the order to try them: lowest preference first, hosts of equal preference
    shuffled with `draw` (a source of floats in [0, 1), e.g. `random.random`), each host once.

    RFC 5321 §5.1: equal-preference MX hosts are tried in random order to spread load. A host
    listed twice keeps its lowest preference. `draw` is called only to break ties.
    """
    best: dict[str, int] = {}
    for preference, host in records:
        name = normalise_domain(host)
        if name not in best or preference < best[name]:
            best[name] = preference
    by_preference: dict[int, list[str]] = {}
    for name, preference in best.items():
        by_preference.setdefault(preference, []).append(name)
    ordered: list[str] = []
    for preference in sorted(by_preference):
        ordered += _shuffle(by_preference[preference], draw)
    return ordered


def _shuffle(names: list[str], draw: Callable[[], float]) -> list[str]:
    # Fisher-Yates; the clamp keeps a misbehaving draw (returning 1.0) inside the list.
    shuffled = list(names)
    for i in range(len(shuffled) - 1, 0, -1):
        j = min(int(draw() * (i + 1)), i)
        shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
    return shuffled


async def resolve(domain: str, lookup: DnsLookup, draw: Callable[[], float]) -> Destination:
    """The route for mail to `domain`, or why there is none. Never raises for DNS trouble.

    Each host's A and AAAA records are asked separately, and a failed lookup of one type (a
    resolver that refuses AAAA, a timeout) costs only the addresses it would have given: the route
    uses what was found and lists the failure (`MxRoute.failed`). Only when no host has an address
    and some lookup failed is the domain deferred as a DNS failure.
    """
    domain = normalise_domain(domain)
    try:
        records = await lookup.mx(domain)
    except DnsLookupError as exc:
        return MxFailure(domain, f"DNS temporarily unavailable: {exc}", permanent=False)

    # RFC 7505 §3: a null MX (exchange ".") says the domain accepts no mail; bounce at once.
    # A null MX mixed with real ones is a misconfiguration; the real ones are still tried.
    if records and all(host == "" for _, host in records):
        return MxFailure(domain, "domain does not accept mail (null MX)", permanent=True)
    records = [(preference, host) for preference, host in records if host != ""]

    if records:
        preferences: dict[str, int] = {}
        for preference, host in records:
            name = normalise_domain(host)
            preferences[name] = min(preference, preferences.get(name, preference))
        # RFC 5321 §5.1: an MX names a host, never an address, so an exchange such as "192.0.2.1"
        # is looked up as a name like any other (and normally has no address, so it is skipped).
        candidates = [(name, preferences[name]) for name in order_mx(records, draw)]
    else:
        # RFC 5321 §5.1: no MX records means the domain itself is the mail host, preference 0.
        candidates = [(domain, 0)]
    answers = await _address_answers(lookup, [name for name, _ in candidates])

    hosts: list[MxHost] = []
    failed: list[FailedLookup] = []
    found: list[tuple[str, AddressType]] = []
    for name, preference in candidates:
        addresses: list[str] = []
        for rdtype in _ADDRESS_TYPES:
            answer = answers[(name, rdtype)]
            if isinstance(answer, DnsLookupError):
                failed.append(FailedLookup(name, rdtype, str(answer)))
            elif answer:
                addresses += answer
                found.append((name, rdtype))
        if addresses:
            hosts.append(MxHost(name, _unique(addresses), preference))
    if hosts:
        ttl = _smallest_ttl(lookup, found, mx_of=domain if records else None)
        return MxRoute(domain, tuple(hosts), ttl, tuple(failed))
    if failed:
        # No address anywhere, and at least one question went unanswered: the missing answer may
        # be the address, so this is a DNS failure to retry, never a bounce.
        return MxFailure(domain, f"DNS temporarily unavailable: {failed[0].error}", permanent=False)
    if not records:
        return MxFailure(domain, "no mail host (no MX, A or AAAA records)", permanent=True)
    # Probably a transient mistake in the domain's zone (an MX published before its host); the
    # domain does want mail, so defer rather than bounce.
    return MxFailure(domain, "no MX host has an address", permanent=False)


async def _address_answers(
    lookup: DnsLookup, names: list[str]
) -> dict[tuple[str, AddressType], list[str] | DnsLookupError]:
    """Every (host, A or AAAA) question at once, each with its own answer or error."""
    questions = [(name, rdtype) for name in names for rdtype in _ADDRESS_TYPES]
    answers = await asyncio.gather(*(_addresses(lookup, *question) for question in questions))
    return dict(zip(questions, answers))


async def _addresses(
    lookup: DnsLookup, name: str, rdtype: AddressType
) -> list[str] | DnsLookupError:
    try:
        return await lookup.addresses(name, rdtype)
    except DnsLookupError as exc:
        return exc


def _smallest_ttl(
    lookup: DnsLookup, found: list[tuple[str, AddressType]], mx_of: str | None
) -> float | None:
    """The smallest TTL of the records the route was built from: the MX records and the address
    records found this time (a type whose lookup failed or came back empty is not part of it)."""
    if not isinstance(lookup, RecordTtls):
        return None
    known = [lookup.ttl(mx_of, "MX")] if mx_of else []
    known += [lookup.ttl(name, rdtype) for name, rdtype in found]
    ttls = [ttl for ttl in known if ttl is not None]
    return float(min(ttls)) if ttls else None


def _unique(addresses: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(addresses))


@dataclass(frozen=True)
class _Entry:
    destination: Destination
    expires_at: float


class MxCache:
    """Answers of `resolve_fn` per domain, kept for their records' TTL within [`MIN_ROUTE_TTL`,
    `ttl`] for routes (at most `PARTIAL_ROUTE_TTL` for one with failed lookups), `negative_ttl`
    for permanent failures and at most `TEMPORARY_FAILURE_TTL` for temporary ones.

    Concurrent calls for one domain share one lookup: the first starts a task, the others await
    it. The task is shielded, so a caller that is cancelled does not cancel the lookup for the
    others, and the finished answer is cached even if every caller has gone. Past `max_entries`
    the least recently used domain is dropped. The failed lookups of a new route are logged here,
    once per host and cache period: a host serving many domains is named once, not per domain or
    per message.
    """

    def __init__(
        self,
        resolve_fn: ResolveFn,
        clock: Clock,
        ttl: float = 300.0,
        negative_ttl: float = 60.0,
        max_entries: int = 10_000,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._resolve_fn = resolve_fn
        self._clock = clock
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._temporary_ttl = min(negative_ttl, TEMPORARY_FAILURE_TTL)
        self._max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._in_flight: dict[str, asyncio.Task[Destination]] = {}
        # Host name -> until when its failed lookups are not logged again.
        self._reported: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def resolve(self, domain: str) -> Destination:
        key = normalise_domain(domain)
        entry = self._entries.get(key)
        if entry is not None:
            if entry.expires_at > self._clock.now():
                self._entries.move_to_end(key)
                return entry.destination
            del self._entries[key]
        task = self._in_flight.get(key)
        if task is None:
            task = asyncio.create_task(self._resolve_fn(key), name=f"mx-resolve {key}")
            self._in_flight[key] = task
            task.add_done_callback(lambda done: self._finish(key, done))
        return await asyncio.shield(task)

    def _finish(self, key: str, task: asyncio.Task[Destination]) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        if task.cancelled() or task.exception() is not None:
            return  # the waiters see the error; nothing is cached
        destination = task.result()
        self._store(key, destination)

    def _store(self, key: str, destination: Destination) -> None:
        if isinstance(destination, MxRoute):
            ttl = self._ttl
            if destination.ttl is not None:
                ttl = min(self._ttl, max(MIN_ROUTE_TTL, destination.ttl))
            if destination.failed:
                ttl = min(ttl, PARTIAL_ROUTE_TTL)
                self._report_failed_lookups(destination, ttl)
        elif destination.permanent:
            ttl = self._negative_ttl
        else:
            ttl = self._temporary_ttl
        if ttl <= 0:
            return
        self._entries[key] = _Entry(destination, self._clock.now() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def _report_failed_lookups(self, route: MxRoute, period: float) -> None:
        now = self._clock.now()
        errors: dict[str, list[str]] = {}
        for failure in route.failed:
            errors.setdefault(failure.host, []).append(failure.error)
        addresses = {host.name: host.addresses for host in route.hosts}
        for host, texts in errors.items():
            if self._reported.get(host, now) > now:
                continue  # already said within this period
            self._reported[host] = now + period
            self._reported.move_to_end(host)
            if host in addresses:
                found = ", ".join(addresses[host])
                logger.warning("MX host %s of %s: %s; using the addresses found: %s",
                               host, route.domain, "; ".join(texts), found)  # fmt: skip
            else:
                logger.warning("MX host %s of %s skipped: %s", host, route.domain, "; ".join(texts))
        while len(self._reported) > self._max_entries:
            self._reported.popitem(last=False)


def counted_mx_cache(lookup: DnsLookup, clock: Clock, metrics: Metrics) -> MxCache:
    """The daemon's MX cache: MX order shuffled by `random`, lookups counted by outcome."""

    async def counted(domain: str) -> Destination:
        destination = await resolve(domain, lookup, random.random)
        if isinstance(destination, MxRoute):
            metrics.mx_lookups.labels("route").inc()
        else:
            metrics.mx_lookups.labels("permanent" if destination.permanent else "temporary").inc()
        return destination

    return MxCache(counted, clock)
