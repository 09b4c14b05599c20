"""Acknowledged means on disk: every transaction that commits accepted mail on SQLite commits with
`synchronous=FULL` (the WAL is fsynced before the 250), on both write paths.

A `kill -9` cannot show a missing fsync (the page cache survives the process), so no crash test
catches `synchronous=OFF` or `NORMAL`. These tests look at the level in effect at the COMMIT of
each transaction that inserted messages, from inside that transaction: SQLite refuses to change the
safety level inside a transaction ("Safety level may not be changed inside a transaction"), so
`PRAGMA synchronous` read after the inserts is the level the COMMIT runs with.

- The writer-thread path (`SqliteBatchWriter.run`, the group commit of SMTP and plain API mail): the
  work function each caller hands to `run` is wrapped, so the wrapper runs in the very transaction,
  after the caller's statements, right before the writer's COMMIT.
- The SQLAlchemy path (aiosqlite connections of `store.engine`; the daemon uses it for API mail with
  an Idempotency-Key): SQLAlchemy's `commit` event fires on the connection right before the driver
  commits; a transaction that sent `INSERT INTO messages` reads the level there.

Delivery bookkeeping (claims, outcomes, lease upkeep) commits with NORMAL by design
(`SqliteBatchWriter.run(durable=False)`); the tests check that too, and that the accepting commit
after it is back at FULL.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import aiosmtplib
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from postroom.config import DatabaseSettings
from postroom.core.types import DeliveryState, IdempotencyKey, Submission
from postroom.queue.models import Release
from postroom.queue.sql_store import SqlQueueStore
from postroom.queue.sqlite_store import SqliteQueueStore
from postroom.queue.statements import Lease
from postroom.store import schema
from postroom.store.credentials import Role, SqlApiKeys
from postroom.store.engine import create_engine
from postroom.store.sqlite_writer import SqliteBatchWriter
from tests.conftest import running
from tests.support import make_settings, wait_until

T = TypeVar("T")

FULL, NORMAL = 2, 1  # what `PRAGMA synchronous` answers
LEVELS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


@dataclass(frozen=True)
class Commit:
    """One committed transaction as seen from inside it, right before its COMMIT."""

    path: str  # "writer" or "sqlalchemy"
    level: int  # PRAGMA synchronous in effect for the COMMIT
    messages: int  # messages the transaction inserted
    durable: bool | None = None  # what the caller asked `SqliteBatchWriter.run` for

    def __str__(self) -> str:
        return f"{self.path} commit at {LEVELS.get(self.level, self.level)} with {self.messages} messages"


def _message_count(connection: sqlite3.Connection) -> int:
    return int(connection.execute("SELECT count(*) FROM messages").fetchone()[0])


def _level(connection: sqlite3.Connection) -> int:
    return int(connection.execute("PRAGMA synchronous").fetchone()[0])


@dataclass
class CommitLog:
    commits: list[Commit] = field(default_factory=list)

    def accepting(self, path: str | None = None) -> list[Commit]:
        return [c for c in self.commits if c.messages and (path is None or c.path == path)]

    def bookkeeping(self) -> list[Commit]:
        return [c for c in self.commits if c.path == "writer" and not c.messages]

    def assert_accepting_commits_are_full(self, path: str, messages: int) -> None:
        accepting = self.accepting(path)
        assert sum(c.messages for c in accepting) == messages, (
            f"expected {messages} accepted messages in observed {path} commits, saw "
            f"{[str(c) for c in accepting]}"
        )
        weak = [str(c) for c in accepting if c.level != FULL]
        assert not weak, f"accepted mail committed without synchronous=FULL: {weak}"


@contextlib.contextmanager
def observe_writer(log: CommitLog, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Wrap every `SqliteBatchWriter.run` (any instance, the daemon's included) so the work runs
    with a look at the level and the messages inserted, inside the writer's transaction."""
    original = SqliteBatchWriter.run

    async def run(self: SqliteBatchWriter, work: Callable[[sqlite3.Connection], T], durable: bool = True) -> T:
        def observed(connection: sqlite3.Connection) -> T:
            before = _message_count(connection)
            result = work(connection)
            log.commits.append(Commit("writer", _level(connection), _message_count(connection) - before, durable))
            return result

        return await original(self, observed, durable)

    with monkeypatch.context() as patch:
        patch.setattr(SqliteBatchWriter, "run", run)
        yield


@contextlib.contextmanager
def observe_sqlalchemy(log: CommitLog) -> Iterator[None]:
    """Listen on every SQLAlchemy engine: a SQLite transaction that inserted into `messages` reads
    `PRAGMA synchronous` on its own driver connection when SQLAlchemy is about to commit it."""
    pending = "postroom_test_inserted_messages"

    def before_execute(conn: sa.Connection, cursor: Any, statement: str, parameters: Any, context: Any,
                       executemany: bool) -> None:  # fmt: skip
        if conn.dialect.name == "sqlite" and statement.lstrip().upper().startswith("INSERT INTO MESSAGES"):
            conn.info[pending] = conn.info.get(pending, 0) + (len(parameters) if executemany else 1)

    def on_commit(conn: sa.Connection) -> None:
        inserted = conn.info.pop(pending, 0)
        if not inserted:
            return
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute("PRAGMA synchronous")
            row = cursor.fetchone()
            assert row is not None
            level = int(row[0])
        finally:
            cursor.close()
        log.commits.append(Commit("sqlalchemy", level, inserted))

    def on_rollback(conn: sa.Connection) -> None:
        conn.info.pop(pending, None)

    listeners: list[tuple[str, Callable[..., None]]] = [
        ("before_cursor_execute", before_execute), ("commit", on_commit), ("rollback", on_rollback)
    ]
    for name, listener in listeners:
        event.listen(Engine, name, listener)
    try:
        yield
    finally:
        for name, listener in listeners:
            event.remove(Engine, name, listener)


def submission(n: int) -> Submission:
    content = f"From: app@postroom.test\r\nSubject: n{n}\r\n\r\nbody {n}\r\n".encode()
    return Submission("app@postroom.test", (f"r{n}@example.com",), content, "api")


@contextlib.asynccontextmanager
async def sqlite_stores(tmp_path: Path) -> AsyncIterator[tuple[SqliteQueueStore, SqlQueueStore]]:
    """The daemon's SQLite store (hot paths on the writer thread) and the plain SQLAlchemy store,
    on one migrated database."""
    settings = DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'queue.db'}")
    engine = create_engine(settings)
    writer = SqliteBatchWriter(settings)
    try:
        await schema.upgrade(engine)
        yield SqliteQueueStore(engine, writer), SqlQueueStore(engine)
    finally:
        writer.close()
        await engine.dispose()


async def test_the_writer_thread_commits_accepted_mail_with_synchronous_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = CommitLog()
    with observe_writer(log, monkeypatch):
        async with sqlite_stores(tmp_path) as (store, _):
            # The first transaction of the writer's connection accepts mail: the level it opened with.
            await store.insert_many([submission(1), submission(2)], now=1.0)
            claimed, _ = await store.claim_with_messages("w", 10, 2.0, 60.0)
            # After bookkeeping at NORMAL the writer must switch back for the next acceptance,
            # with and without a lease for the local worker (the committer's hand-off).
            await store.insert_many([submission(3)], now=3.0)
            await store.release("w", [Release(d.id, d.message_id, d.recipient, DeliveryState.DELIVERED, "250 ok")
                                      for d in claimed], 4.0)  # fmt: skip
            await store.insert_leased([submission(4), submission(5)], 5.0, Lease("w", 65.0))
            await store.reap(6.0)
            await store.insert_many([submission(6)], now=7.0)

    log.assert_accepting_commits_are_full("writer", messages=6)
    assert log.commits[0].messages == 2, "the first commit on the writer's connection accepts mail"
    assert all(c.durable for c in log.accepting("writer"))
    bookkeeping = log.bookkeeping()
    assert len(bookkeeping) == 3 and all(c.level == NORMAL and c.durable is False for c in bookkeeping), [
        str(c) for c in bookkeeping
    ]
    kinds = ["accept" if c.messages else "bookkeeping" for c in log.commits]
    assert kinds == ["accept", "bookkeeping", "accept", "bookkeeping", "accept", "bookkeeping", "accept"]


async def test_the_sqlalchemy_path_commits_accepted_mail_with_synchronous_full(tmp_path: Path) -> None:
    log = CommitLog()
    with observe_sqlalchemy(log):
        async with sqlite_stores(tmp_path) as (_, plain):
            await plain.insert_many([submission(1), submission(2)], now=1.0)
            await plain.claim_with_messages("w", 10, 2.0, 60.0)
            await plain.insert_leased([submission(3)], 3.0, Lease("w", 63.0))
            key = IdempotencyKey("k", "once", "hash")
            await plain.insert_idempotent(submission(4), key, 4.0)
            await plain.insert_idempotent(submission(4), key, 5.0)  # replayed: nothing inserted
    log.assert_accepting_commits_are_full("sqlalchemy", messages=4)


async def test_mail_accepted_by_the_daemon_is_committed_with_synchronous_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon as wired by `app.py`: SMTP and plain API mail through the group committer and
    the writer thread, API mail with an Idempotency-Key through SQLAlchemy, and the delivery
    worker's bookkeeping committing in between."""
    settings = make_settings(tmp_path, smtp={"trusted_networks": ["127.0.0.1/32"]})
    engine = create_engine(settings.database)
    try:
        await schema.upgrade(engine)
        _, token = await SqlApiKeys(engine).create("sender", Role.SENDER, time.time())
    finally:
        await engine.dispose()
    outbox = tmp_path / "outbox"
    log = CommitLog()

    def captured() -> int:
        return len(list(outbox.glob("*.eml"))) if outbox.exists() else 0

    def settled() -> bool:
        writer = [c for c in log.commits if c.path == "writer"]
        return bool(writer) and not writer[-1].messages

    with observe_writer(log, monkeypatch), observe_sqlalchemy(log):
        async with running(settings) as daemon, aiohttp.ClientSession(daemon.http) as http:
            host, port = daemon.submission
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            sent = 0
            for n in range(6):
                if n % 3 == 0:
                    async with aiosmtplib.SMTP(hostname=host, port=port, start_tls=False) as smtp:
                        await smtp.sendmail("app@postroom.test", [f"s{n}@example.com"],
                                            f"From: app@postroom.test\r\nSubject: {n}\r\n\r\nbody\r\n")  # fmt: skip
                else:
                    extra = {"Idempotency-Key": f"key-{n}"} if n % 3 == 2 else {}
                    body = {"from": "app@postroom.test", "to": f"a{n}@example.com", "subject": f"{n}",
                            "text": "body"}  # fmt: skip
                    async with http.post("/v1/messages", data=json.dumps(body),
                                         headers={**headers, **extra}) as response:  # fmt: skip
                        assert response.status == 202, await response.text()
                sent += 1
                # Let the worker deliver and record it (claims and outcomes commit at NORMAL)
                # before the next message, so every acceptance follows bookkeeping.
                await wait_until(lambda: captured() == sent and settled(), 20,
                                 what=f"{sent} deliveries captured and recorded")  # fmt: skip

    log.assert_accepting_commits_are_full("writer", messages=4)  # 2 over SMTP, 2 plain API
    log.assert_accepting_commits_are_full("sqlalchemy", messages=2)  # with an Idempotency-Key
    writer = [c for c in log.commits if c.path == "writer"]
    first_accept = next(i for i, c in enumerate(writer) if c.messages)
    assert any(not c.messages for c in writer[first_accept:-1]), "bookkeeping between acceptances"
    assert all(c.level == NORMAL for c in log.bookkeeping()), [str(c) for c in log.bookkeeping()]
