"""Creating and rotating a domain's DKIM selectors: what `postroom dkim keygen|rotate|dns` do.

Keys are written under the key directory as `<domain>/<selector>.pem` (0600) and registered in
the database; the first key of an algorithm signs at once, later ones wait (pending) until the
daemon sees their record in DNS.
"""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass
from pathlib import Path

from postroom.core.errors import ConflictError, NotFoundError
from postroom.dkim.keys import (
    RECOMMENDED_RSA_BITS,
    Algorithm,
    dns_record_name,
    dns_record_value,
    generate_key,
    load_key,
    write_private_key,
)
from postroom.store.dkim_keys import SelectorRecord, SelectorState, SqlDkimKeys

SELECTOR_SUFFIX: dict[str, str] = {"rsa": "r", "ed25519": "e"}


@dataclass(frozen=True)
class PublishedRecord:
    name: str
    type: str
    value: str
    note: str = ""

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "type": self.type, "value": self.value}


async def create_selector(
    keys: SqlDkimKeys, key_dir: Path, domain: str, selector: str, algorithm: Algorithm,
    bits: int, now: float,
) -> tuple[SelectorRecord, PublishedRecord]:  # fmt: skip
    path = key_dir / domain / f"{selector}.pem"
    existing = {r.selector for r in await keys.list(domain, include_retired=True)}
    if selector in existing:
        raise ConflictError(f"selector {selector} already exists for {domain}")
    key = await asyncio.to_thread(generate_key, algorithm, bits)
    await asyncio.to_thread(write_private_key, path, key)
    record = await keys.add(domain, selector, algorithm, str(path), now)
    return record, PublishedRecord(dns_record_name(domain, selector), "TXT", dns_record_value(key))


def rotation_selector(algorithm: str, today: datetime.date, taken: set[str]) -> str:
    """`20261125r` (or `...r2`, `...r3` when taken): dated, so operators can tell keys apart."""
    base = f"{today:%Y%m%d}{SELECTOR_SUFFIX[algorithm]}"
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}{n}"
    return candidate


async def published_dkim_records(keys: SqlDkimKeys, domain: str) -> list[PublishedRecord]:
    """The DKIM records the domain must publish now: every pending, active or retiring selector."""
    records = []
    for row in await keys.list(domain):
        key = await asyncio.to_thread(load_key, row.key_path, row.domain, row.selector)
        note = {
            SelectorState.ACTIVE: "signing now",
            SelectorState.PENDING: "publish this; postroom switches to it once DNS has it",
            SelectorState.RETIRING: "replaced; keep it published until its overlap ends",
        }.get(row.state, "")
        records.append(PublishedRecord(dns_record_name(domain, row.selector), "TXT",
                                       dns_record_value(key.private_key), note))  # fmt: skip
    return records


async def rotate_selectors(
    keys: SqlDkimKeys, key_dir: Path, domain: str, algorithms: set[str], today: datetime.date, now: float
) -> list[PublishedRecord]:
    """Add a pending selector for each algorithm (default: each one the domain signs with now);
    signing switches once the daemon sees its record in DNS. Return the records to publish."""
    rows = await keys.list(domain, include_retired=True)
    wanted = algorithms or {r.algorithm for r in rows if r.state is SelectorState.ACTIVE}
    if not wanted:
        raise NotFoundError(f"{domain} has no active DKIM key to rotate: create one with `postroom dkim keygen`")
    taken = {r.selector for r in rows}
    made = []
    for algorithm in sorted(wanted):
        selector = rotation_selector(algorithm, today, taken)
        taken.add(selector)
        _, published = await create_selector(keys, key_dir, domain, selector, algorithm,  # type: ignore[arg-type]
                                             RECOMMENDED_RSA_BITS, now)  # fmt: skip
        made.append(published)
    return made
