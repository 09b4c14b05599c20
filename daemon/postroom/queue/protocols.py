"""The queue's contracts: what the submission door, the delivery worker and operators may ask of it
(`QueueStore`), and what the API and CLI read (`QueueViews`).

The shape is APScheduler's job store: acquire with a lease, extend, release with an outcome, reap.
Two implementations share one test suite (tests/integration/test_queue_store.py):
`SqlQueueStore` (SQLAlchemy's async engine: PostgreSQL, and SQLite in tools) and
`SqliteQueueStore` (the daemon on SQLite: hot paths on the writer thread). `SqlQueueViews` reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import sqlalchemy as sa

from postroom.core.types import DeliveryState, IdempotencyKey, Submission
from postroom.queue.models import (
    ClaimedDelivery,
    DestinationGroup,
    MessageDetail,
    MessageSummary,
    QueuedMessage,
    Release,
)
from postroom.queue.statements import Lease


class RecipientScreen(Protocol):
    """Takes recipients out of submissions inside the transaction that queues them (the
    suppression list): what it reads is decided with the batch in the same snapshot that writes
    it, and costs the write path no extra round trip. `reads` are Core SELECTs the store runs on
    its own connection, `apply` turns their rows into the submissions to write. Pure."""

    def reads(self, batch: Sequence[Submission], now: float) -> Sequence[sa.Select[Any]]: ...

    def apply(self, batch: Sequence[Submission], rows: Sequence[Sequence[Any]]) -> list[Submission]: ...


class Queued(NamedTuple):
    """A submission as the queue wrote it (screened), under its message id."""

    message_id: str
    created: bool  # False: an Idempotency-Key replay, nothing was written
    submission: Submission


class Inserted(NamedTuple):
    ids: list[str]
    claimed: list[ClaimedDelivery]  # the deliveries written leased (see `insert_leased`)
    submissions: list[Submission]  # as written, after the screen


class QueueStore(Protocol):
    # -- submit
    async def insert_many(self, batch: Sequence[Submission], now: float) -> list[str]: ...

    async def insert_leased(
        self, batch: Sequence[Submission], now: float, lease: Lease | None
    ) -> Inserted: ...

    async def insert_idempotent(self, submission: Submission, key: IdempotencyKey, now: float) -> Queued: ...

    # -- work
    async def claim_with_messages(
        self, owner: str, limit: int, now: float, lease_seconds: float,
        exclude_domains: Sequence[str] = (), load: bool = True,
    ) -> tuple[list[ClaimedDelivery], dict[str, QueuedMessage]]: ...  # fmt: skip

    async def load_messages(self, message_ids: Iterable[str]) -> dict[str, QueuedMessage]: ...

    async def extend(self, owner: str, delivery_ids: Sequence[int], until: float) -> int: ...

    async def release(
        self, owner: str, outcomes: Sequence[Release], now: float,
        signatures: Mapping[str, bytes] | None = None,
    ) -> int: ...  # fmt: skip

    async def park(self, message_id: str, error: str) -> None: ...

    async def reap(self, now: float) -> int: ...

    # -- operators
    async def retry(self, now: float, message_id: str | None = None) -> int: ...

    async def purge(self, message_id: str | None = None, state: str | None = None) -> int: ...


class QueueViews(Protocol):
    async def depth_by_state(self) -> dict[str, int]: ...

    async def oldest_active_created_at(self, state: DeliveryState | None = None) -> float | None: ...

    async def destinations(
        self, *, include_final: bool = False, limit: int = 100
    ) -> list[DestinationGroup]: ...

    async def list_messages(
        self, *, limit: int = 50, before: str | None = None, state: str | None = None,
        recipient: str | None = None, mail_from: str | None = None, stream: str | None = None,
        since: float | None = None, until: float | None = None,
    ) -> list[MessageSummary]: ...  # fmt: skip

    async def show(self, message_id: str) -> MessageDetail: ...

    async def content(self, message_id: str) -> bytes: ...
