"""Signing a queued message on its way out: the delivery worker's `prepare` step.

Signatures are made once per attempt of a message (every recipient of the claimed group shares
them) in a thread pool, so the event loop only waits (STYLE rule 9). The signing time t= is the
time of signing. A message whose From domain is not signed here goes out as stored.
"""

from __future__ import annotations

from concurrent.futures import Executor

from postroom.core.clock import Clock
from postroom.dkim.keyring import SendingPolicy
from postroom.dkim.signing import sign_in_thread
from postroom.queue.models import QueuedMessage


class DkimPreparer:
    def __init__(self, policy: SendingPolicy, clock: Clock, executor: Executor | None = None):
        self._policy = policy
        self._clock = clock
        self._executor = executor

    async def __call__(self, message: QueuedMessage) -> bytes:
        domain = self._policy.signing_domain(message.header_from)
        if domain is None:
            return message.content
        signer = self._policy.keyring.signer
        return await sign_in_thread(
            self._executor, signer, message.content, domain, int(self._clock.now())
        )
