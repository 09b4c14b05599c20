"""`DomainChecker`: runs the DNS checks for one configured sending domain with what postroom knows
about it (its published DKIM selectors, sending addresses, MX host and bounce domain), and records
the verdicts as metrics. Used by `postroom domains check` and `GET /v1/domains/{name}`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from postroom.config import DomainSettings
from postroom.core.addresses import normalise_domain
from postroom.core.errors import NotFoundError
from postroom.dkim.keys import dns_record_value, load_key
from postroom.dkim.management import PublishedRecord
from postroom.domains.checks import DomainExpectation, DomainReport, check_domain, suggested_records
from postroom.domains.lookup import DnsLookup
from postroom.metrics import Metrics
from postroom.store.dkim_keys import SqlDkimKeys


class DomainChecker:
    def __init__(
        self,
        domains: Sequence[DomainSettings],
        keys: SqlDkimKeys,
        lookup: DnsLookup,
        metrics: Metrics,
        *,
        sending_ips: tuple[str, ...],
        mx_host: str,
    ):
        self._domains = {d.name: d for d in domains}
        self._keys = keys
        self._lookup = lookup
        self._metrics = metrics
        self._sending_ips = sending_ips
        self._mx_host = mx_host

    async def expectation(self, name: str) -> DomainExpectation:
        domain = self._domains.get(normalise_domain(name))
        if domain is None:
            raise NotFoundError(f"{name} is not a sending domain of this server")
        dkim = []
        for record in await self._keys.list(domain.name):  # every selector that must be published
            key = await asyncio.to_thread(load_key, record.key_path, record.domain, record.selector)
            dkim.append((record.selector, dns_record_value(key.private_key)))
        return DomainExpectation(
            domain=domain.name,
            dkim=tuple(dkim),
            sending_ips=self._sending_ips,
            mx_host=self._mx_host,
            bounce_domain=domain.return_path_domain,
        )

    async def check(self, name: str) -> DomainReport:
        expectation = await self.expectation(name)
        report = await check_domain(expectation, self._lookup)
        for kind in {check.kind for check in report.checks}:
            ok = all(c.verdict in ("ok", "unchecked") for c in report.checks if c.kind == kind)
            self._metrics.domain_check.labels(report.domain, kind).set(1 if ok else 0)
        return report


def records_besides_dkim(
    domain: DomainSettings, *, sending_ips: tuple[str, ...], mx_host: str, now: float
) -> list[PublishedRecord]:
    """The SPF, DMARC, MX and MTA-STS / TLS-RPT records a sending domain needs (the DKIM ones
    come with their selectors' states from `dkim.management.published_dkim_records`)."""
    expectation = DomainExpectation(domain=domain.name, dkim=(), sending_ips=sending_ips,
                                    mx_host=mx_host, bounce_domain=domain.return_path_domain)  # fmt: skip
    return [
        PublishedRecord(r["name"], r["type"], r["value"])
        for r in suggested_records(expectation, now)
        if r["type"] != "TXT" or "._domainkey." not in r["name"]
    ]
