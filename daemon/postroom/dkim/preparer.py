"""Signing a queued message on its way out: the delivery worker's `prepare` step.

Signatures are made once per message (every recipient of the claimed group shares them; a retry
reuses the fields the worker kept from the first attempt) in a thread pool, so the event loop only
waits (STYLE rule 9). The signing time t= is the time of the first signing. A message whose From domain is not signed here goes out as stored.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor

from postroom.core.addresses import domain_of, mailboxes
from postroom.core.clock import Clock
from postroom.core.errors import InvalidMessageError, PostroomError
from postroom.dkim.keyring import SigningKeys
from postroom.dkim.signing import Signer
from postroom.metrics import Metrics
from postroom.queue.models import QueuedMessage


class DkimPreparer:
    def __init__(
        self,
        keys: SigningKeys,
        clock: Clock,
        metrics: Metrics,
        executor: Executor | None = None,
    ):
        self._keys = keys
        self._clock = clock
        self._metrics = metrics
        self._executor = executor

    def _sign_timed(self, signer: Signer, content: bytes, domain: str, now: int) -> bytes:
        started = time.perf_counter()
        signed = signer.sign(content, domain, now)
        self._metrics.dkim_sign_seconds.observe(time.perf_counter() - started)
        return signed

    async def __call__(self, message: QueuedMessage) -> bytes:
        if message.signature is not None:
            # Signed at its first attempt (the worker kept the fields when it deferred): send the
            # same bytes. The selector stays published for rotation_overlap, longer than max_age.
            self._metrics.dkim_signatures.labels("reused").inc()
            return message.signature + message.content
        domain = self._keys.signing_domain(from_domain(message.header_from))
        if domain is None:
            self._metrics.dkim_signatures.labels("unsigned").inc()
            return message.content
        signer = self._keys.keyring.signer
        loop = asyncio.get_running_loop()
        try:
            signed = await loop.run_in_executor(
                self._executor, self._sign_timed, signer, message.content, domain,
                int(self._clock.now()),
            )  # fmt: skip
        except PostroomError:
            self._metrics.dkim_signatures.labels("failed").inc()
            raise
        self._metrics.dkim_signatures.labels("signed").inc()
        return signed


def from_domain(header_from: str | None) -> str | None:
    """The domain of a stored message's (first) From address: the domain it is signed for."""
    try:
        found = mailboxes(header_from or "")
    except InvalidMessageError:  # accepted before the strict check existed: not signed here
        return None
    return domain_of(found[0]) if found else None
