"""WriteGate orders SQLite writers across processes (flock) with immediate hand-over."""

from __future__ import annotations

import asyncio
from pathlib import Path

from postroom.config import DatabaseSettings
from postroom.store.engine import WriteGate


async def test_a_second_gate_waits_for_the_first(tmp_path: Path) -> None:
    # Two gates on one file stand for two processes: flock locks belong to open file descriptions.
    first, second = WriteGate(tmp_path / "db.writelock"), WriteGate(tmp_path / "db.writelock")
    order: list[str] = []
    async with first.hold():
        waiter = asyncio.create_task(_enter(second, order))
        await asyncio.sleep(0.05)
        assert not waiter.done(), "the second writer must wait while the first holds the gate"
        order.append("first leaves")
    await asyncio.wait_for(waiter, 5)
    assert order == ["first leaves", "second enters"]
    first.close()
    second.close()


async def _enter(gate: WriteGate, order: list[str]) -> None:
    async with gate.hold():
        order.append("second enters")


async def test_cancelling_a_waiting_writer_leaves_the_gate_free(tmp_path: Path) -> None:
    first, second = WriteGate(tmp_path / "db.writelock"), WriteGate(tmp_path / "db.writelock")
    async with first.hold():
        waiter = asyncio.create_task(_enter(second, []))
        await asyncio.sleep(0.05)
        waiter.cancel()
        await asyncio.sleep(0)
    await asyncio.gather(waiter, return_exceptions=True)
    assert waiter.cancelled()
    async with asyncio.timeout(5):
        async with first.hold():  # neither gate holds the lock any more
            pass
        async with second.hold():
            pass
    first.close()
    second.close()


def test_only_file_databases_get_a_gate(tmp_path: Path) -> None:
    assert WriteGate.for_database(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/q.db"))._lock_path == (
        tmp_path / "q.db.writelock"
    )
    assert WriteGate.for_database(DatabaseSettings(url="postgresql+asyncpg://h/db"))._lock_path is None
