"""`KeyMonitor`: the daemon side of key rotation, and reloading keys without a restart.

Every `rotation_check_interval` (and on demand), it looks up each pending selector's record in DNS;
once the published key is ours (`records.compare_published_key`, the judgement `postroom domains
check` reports), that selector becomes active and the one it replaces starts
retiring (its record must stay published for `rotation_overlap`, for mail signed with it that is
still in flight). Retiring selectors past their overlap are retired. Then the signing keys are
reloaded into the signing keys (`SigningKeys`) that submission and delivery read. With several daemons on PostgreSQL, each runs this; activation
is idempotent (a selector no longer pending is skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import KW_ONLY, dataclass
from typing import Protocol

from postroom.core.clock import Clock
from postroom.core.errors import ConflictError, PostroomError
from postroom.dkim.errors import DkimKeyError
from postroom.dkim.keyring import SigningKeys, load_keyring
from postroom.dkim.keys import dns_record_name, dns_record_value, load_key
from postroom.dkim.records import compare_published_key
from postroom.store.dkim_keys import SelectorState, SqlDkimKeys

logger = logging.getLogger(__name__)


class TxtLookup(Protocol):
    async def txt(self, name: str) -> list[str]: ...


@dataclass(frozen=True)
class KeyMonitor:
    keys: SqlDkimKeys  # the selectors and their states
    keys_in_use: SigningKeys  # what signing reads; replaced on every reload
    lookup: TxtLookup | None  # None: no DNS (pending selectors wait)
    clock: Clock
    _: KW_ONLY
    interval: float  # seconds between checks
    overlap: float  # how long a replaced selector stays published

    async def reload(self) -> None:
        keyring = await asyncio.to_thread(load_keyring, await self.keys.list())
        for domain, reasons in keyring.problems.items():
            for reason in reasons:
                logger.error("DKIM key for %s unusable: %s", domain, reason)
        for name in keyring.weak:
            logger.warning("DKIM key %s is RSA shorter than 2048 bits; rotate it", name)
        self.keys_in_use.replace_keyring(keyring)

    async def check_once(self) -> list[str]:
        """Activate pending selectors seen in DNS, retire old ones, reload; return activations."""
        activated = []
        if self.lookup is not None:
            for record in await self.keys.list():
                if record.state is not SelectorState.PENDING:
                    continue
                name = dns_record_name(record.domain, record.selector)
                try:
                    key = await asyncio.to_thread(load_key, record.key_path, record.domain, record.selector)
                    found = await self.lookup.txt(name)
                except DkimKeyError as exc:
                    logger.error("pending DKIM selector %s unusable: %s", name, exc)
                    continue
                except PostroomError as exc:
                    logger.warning("could not look up %s: %s", name, exc)
                    continue
                # The judgement `postroom domains check` reports, so a selector starts signing
                # exactly when that check would call its record ok.
                published = compare_published_key(name, found, dns_record_value(key.private_key))
                if not published.ok:
                    logger.debug("pending DKIM selector %s not usable yet: %s", name, published.detail)
                    continue
                with contextlib.suppress(ConflictError):  # another daemon was first
                    await self.keys.activate(record.domain, record.selector,
                                              self.clock.now(), self.overlap)  # fmt: skip
                    activated.append(name)
                    logger.info("DKIM selector %s seen in DNS: now signing with it", name)
        retired = await self.keys.retire_due(self.clock.now())
        if retired:
            logger.info("retired %d DKIM selectors past their overlap", retired)
        await self.reload()
        return activated

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
            if stop.is_set():
                return
            try:
                await self.check_once()
            except PostroomError as exc:
                logger.warning("DKIM key check failed: %s", exc)
