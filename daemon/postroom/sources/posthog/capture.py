"""`PostHogCapture`: sends postroom's lifecycle events (delivered, bounced, complained, ...) to
PostHog with the official `posthog` SDK, batched, off the delivery path.

It reads the event stream through a durable cursor of its own in `event_cursors`
("posthog-capture"), but it is not an outbox consumer: an outbox consumer runs inside a write
transaction and must make no network call. Here a round reads a batch after the cursor without
locking anything, hands it to the SDK (whose worker thread posts it to `/batch/`, retrying
`max_retries` times), waits for the flush in a thread, and only then moves the cursor forward in
a short write. Capture is therefore at-least-once: a crash or a failed flush sends the batch
again, with the same event `uuid` (derived from the event id) so PostHog can drop the copy. An
unreachable PostHog costs this task alone: a failed round waits (doubling up to `retry_max`) and
the outbox, delivery and webhooks go on. Starts at the end of the stream when first enabled
(history is not backfilled).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.core.clock import Clock
from postroom.core.errors import PostroomError, StoreError
from postroom.events import cursors
from postroom.events.models import Event, Position, StartAt
from postroom.metrics import Metrics
from postroom.sources.posthog.settings import PostHogCaptureSettings
from postroom.store.engine import WriteGate, read_only, translate_errors
from postroom.store.tables import event_cursors, messages

logger = logging.getLogger(__name__)

CURSOR_NAME = "posthog-capture"
EVENT_PREFIX = "email "  # PostHog event names: "email delivered", "email bounced", ...
UUID_NAMESPACE = uuid.UUID("6f1c2b8e-3c52-4d7a-9a51-70a0f3f0b7a1")  # postroom capture uuids


class CaptureFailed(PostroomError):
    """PostHog did not take a batch (after the SDK's retries)."""


class CaptureClient(Protocol):
    """The part of `posthog.Client` used here."""

    def capture(self, event: str, **kwargs: Any) -> str | None: ...

    def flush(self, timeout_seconds: float | None = ...) -> None: ...

    def shutdown(self) -> None: ...


def event_uuid(event_id: int) -> str:
    """The same uuid every time an event is sent, so PostHog deduplicates a resend."""
    return str(uuid.uuid5(UUID_NAMESPACE, f"postroom-event-{event_id}"))


def capture_of(event: Event, stream: str | None, template: str | None) -> dict[str, Any]:
    """The keyword arguments of `Client.capture` for an event (pure)."""
    recipient = event.recipient
    properties: dict[str, Any] = {
        "message_id": event.message_id,
        "event_id": event.id,
        "stream": stream,
        "template": template,
        "recipient_domain": recipient.rpartition("@")[2].lower() if recipient else None,
        "$process_person_profile": recipient is not None,
    }
    for key in ("reason", "bounce_class", "status", "code", "feedback_type", "source", "recipients"):
        if key in event.detail:
            properties[key] = event.detail[key]
    return {
        "distinct_id": recipient or f"message:{event.message_id}",
        "properties": properties,
        "timestamp": datetime.datetime.fromtimestamp(event.at, datetime.UTC),
        "uuid": event_uuid(event.id),
    }


def posthog_client(settings: PostHogCaptureSettings, on_error: Callable[[Exception, list[Any]], None]) -> CaptureClient:
    """The SDK's client: legacy `/batch/` capture, gzip, no feature flags, no exception autocapture."""
    from posthog.client import Client

    client: CaptureClient = Client(
        settings.api_key, host=settings.host, on_error=on_error, flush_at=settings.batch_size,
        flush_interval=0.5, max_queue_size=settings.batch_size * 10, max_retries=settings.max_retries,
        timeout=settings.timeout, gzip=True, capture_mode="v0", enable_exception_autocapture=False,
    )  # fmt: skip
    return client


class PostHogCapture:
    def __init__(
        self,
        engine: AsyncEngine,
        gate: WriteGate,
        clock: Clock,
        metrics: Metrics,
        settings: PostHogCaptureSettings,
        client_factory: Callable[[PostHogCaptureSettings, Callable[[Exception, list[Any]], None]], CaptureClient]
        = posthog_client,
    ):  # fmt: skip
        self._engine = engine
        self._reads = read_only(engine)
        self._gate = gate
        self._clock = clock
        self._metrics = metrics
        self._settings = settings
        self._errors = 0  # batches the SDK reported failed (its worker thread calls on_error)
        self._last_error = ""
        self._client = client_factory(settings, self._on_error)
        self._failures = 0
        for result in ("sent", "skipped", "failed"):
            metrics.posthog_captured.labels(result)

    def _on_error(self, error: Exception, batch: list[Any]) -> None:
        self._errors += 1
        self._last_error = f"{type(error).__name__}: {error}"

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                delay = self._settings.poll_interval
                try:
                    if await self.run_once():
                        delay = 0
                    self._failures = 0
                except (CaptureFailed, StoreError) as exc:
                    self._failures += 1
                    delay = min(self._settings.retry_max, self._settings.poll_interval * 2 ** min(self._failures, 16))
                    logger.warning("PostHog capture failed (%d in a row), retrying in %.0f s: %s",
                                   self._failures, delay, exc)  # fmt: skip
                if delay:
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=delay)
                    except TimeoutError:
                        pass
        finally:
            await asyncio.to_thread(self._client.shutdown)

    async def run_once(self) -> int:
        """Send the next batch of events after the cursor; return how many were read (0: none).
        CaptureFailed when PostHog did not take them: the cursor stays, they are sent again."""
        position, batch, about = await self._read()
        if not batch:
            return 0
        wanted = set(self._settings.event_types)
        chosen = [e for e in batch if e.type in wanted]
        if chosen:
            errors_before = self._errors
            for event in chosen:
                stream, template = about.get(event.message_id, (None, None))
                self._client.capture(EVENT_PREFIX + event.type, **capture_of(event, stream, template))
            # The SDK's worker posts in its thread; wait for it there (bounded by its retries).
            budget = (self._settings.timeout + 2 ** self._settings.max_retries) * (self._settings.max_retries + 1)
            started = time.monotonic()
            await asyncio.to_thread(self._client.flush, budget)
            if time.monotonic() - started >= budget:  # still queued in the SDK: not known sent
                self._metrics.posthog_captured.labels("failed").inc(len(chosen))
                raise CaptureFailed(f"PostHog did not take {len(chosen)} events within {budget:.0f} s")
            if self._errors != errors_before:
                self._metrics.posthog_captured.labels("failed").inc(len(chosen))
                raise CaptureFailed(f"PostHog did not take {len(chosen)} events: {self._last_error}")
            self._metrics.posthog_captured.labels("sent").inc(len(chosen))
        self._metrics.posthog_captured.labels("skipped").inc(len(batch) - len(chosen))
        await self._advance(position, batch[-1].position, len(batch))
        return len(batch)

    async def _read(self) -> tuple[Position, list[Event], dict[str, tuple[str | None, str | None]]]:
        with translate_errors("reading events for PostHog capture"):
            async with self._reads.connect() as conn:
                position = await cursors.read_cursor(conn, CURSOR_NAME)
            if position is None:
                async with self._gate.hold(), self._engine.begin() as tx:
                    await cursors.create_cursor(tx, CURSOR_NAME, StartAt.END, self._clock.now())
                    position = await cursors.read_cursor(tx, CURSOR_NAME)
                assert position is not None
            async with self._reads.connect() as conn:
                batch = await cursors.read_batch(conn, position, self._settings.batch_size)
                ids = sorted({e.message_id for e in batch})
                rows = (await conn.execute(sa.select(messages.c.id, messages.c.stream, messages.c.template_id)
                                           .where(messages.c.id.in_(ids)))).all() if ids else []  # fmt: skip
        return position, batch, {r.id: (r.stream, r.template_id) for r in rows}

    async def _advance(self, start: Position, last: Position, count: int) -> None:
        """Move the cursor from `start` to `last`, unless it moved meanwhile (another daemon sent
        the same batch: it never goes backwards)."""
        with translate_errors("moving the PostHog capture cursor"):
            async with self._gate.hold(), self._engine.begin() as tx:
                await tx.execute(
                    event_cursors.update()
                    .where(event_cursors.c.consumer == CURSOR_NAME, event_cursors.c.xact == start.xact,
                           event_cursors.c.event_id == start.event_id)
                    .values(xact=last.xact, event_id=last.event_id, consumed=event_cursors.c.consumed + count,
                            updated_at=self._clock.now(), failures=0)
                )  # fmt: skip

