"""The shadow sink: where the in-house copies of shadow mode go, never to their recipients.

- `capture`: each copy written as it would go on the wire to a directory (`CaptureTransport`);
- `seeds`: each copy sent through the in-house transport to the configured seed mailboxes
  instead of the recipient, so the in-house path is exercised end to end (DNS, TLS, DKIM at the
  receiving side) against mailboxes the operator reads.

Either way the copy's outcome is recorded on its own delivery (route `shadow`) with `shadow_*`
events that no consumer takes for the recipient's (see `queue.statements.event_rows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from postroom.config import DestinationSettings
from postroom.core.types import RecipientResult, Verdict
from postroom.delivery.transport import Attempt, CaptureTransport, Route, RouteFailure, Transport
from postroom.queue.models import QueuedMessage

SHADOW_KEY = "shadow"  # the sink's destination: its lane and shaping, apart from in-house capture
_WORST = (Verdict.BOUNCED, Verdict.DEFERRED, Verdict.DELIVERED)


class CaptureSink(CaptureTransport):
    def __init__(self, directory: Path, concurrency: int = 20):
        super().__init__(directory, concurrency)
        self._route = Route(SHADOW_KEY, DestinationSettings(match="*", max_connections=concurrency))


class SeedSink:
    """Sends every copy to `seeds` through `inner`; a recipient's copy counts as delivered when
    every seed took it, else as the worst seed outcome."""

    def __init__(self, inner: Transport, seeds: Sequence[str], concurrency: int = 5):
        self._inner = inner
        self._seeds = tuple(seeds)
        self._route = Route(SHADOW_KEY, DestinationSettings(match="*", max_connections=concurrency))

    async def route(self, domain: str) -> Route:
        return self._route

    async def send(
        self, route: Route, message: QueuedMessage, content: bytes, recipients: Sequence[str], mail_from: str
    ) -> Attempt:
        outcomes: list[RecipientResult] = []
        for seed in self._seeds:
            seed_route = await self._inner.route(seed.rpartition("@")[2].lower())
            if isinstance(seed_route, RouteFailure):
                verdict = Verdict.BOUNCED if seed_route.permanent else Verdict.DEFERRED
                outcomes.append(RecipientResult(seed, verdict, f"seed {seed}: {seed_route.reason}"))
                continue
            attempt = await self._inner.send(seed_route, message, content, [seed], mail_from)
            outcomes.extend(attempt.results)
        worst = min(outcomes, key=lambda result: _WORST.index(result.verdict))
        reply = "; ".join(f"{result.recipient}: {result.reply}" for result in outcomes)[:2000]
        return Attempt([RecipientResult(recipient, worst.verdict, reply) for recipient in recipients])

    def sweep(self) -> None:
        self._inner.sweep()

    async def close(self) -> None:
        await self._inner.close()
