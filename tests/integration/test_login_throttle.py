"""The failed-login throttle against real databases (SQLite and PostgreSQL): reservations taken
before the password check hold the limit under any concurrency, across processes sharing one
database; networks, logins and users are counted apart; blocks back off; crashed reservations and
stale rows go away.

The password check here is a stand-in that counts its calls and takes a little time, so parallel
attempts really overlap; tests/integration/test_smtp_auth_throttle.py drives the real daemon.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.config import DatabaseSettings
from postroom.core.clock import FakeClock
from postroom.metrics import Metrics
from postroom.smtp.handlers import Authenticator
from postroom.smtp.throttle import LoginLimits
from postroom.store import schema
from postroom.store.credentials import SmtpUser
from postroom.store.engine import WriteGate, create_engine
from postroom.store.login_throttle import Reservation, SqlLoginThrottle, Throttled, ThrottleKey
from postroom.store.tables import login_throttle

RIGHT = "right-password"
THROTTLED, BUSY = Authenticator.THROTTLED, Authenticator.BUSY


@dataclass
class FakeUsers:
    """Counts password checks; each takes `delay` seconds, like scrypt does."""

    delay: float = 0.03
    checked: list[tuple[str, str]] = field(default_factory=list)

    async def login(self, username: str, password: str) -> SmtpUser | None:
        self.checked.append((username, password))
        await asyncio.sleep(self.delay)
        return SmtpUser(username, 0.0) if password == RIGHT else None


@dataclass
class Process:
    """What one daemon process has: its own engine, write gate and authenticator."""

    engine: AsyncEngine
    gate: WriteGate
    throttle: SqlLoginThrottle
    auth: Authenticator
    registry: CollectorRegistry

    def count(self, result: str) -> float:
        return self.registry.get_sample_value("postroom_smtp_auth_total", {"result": result}) or 0.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def processes(db_url: str) -> AsyncIterator[list[Process]]:
    """A factory of processes on one migrated database (each call: one more process)."""
    settings = DatabaseSettings(url=db_url)
    made: list[Process] = []
    first = create_engine(settings)
    await schema.upgrade(first)
    await first.dispose()
    yield made
    for process in made:
        await process.engine.dispose()
        process.gate.close()


def start(
    made: list[Process],
    db_url: str,
    clock: FakeClock,
    users: FakeUsers,
    *,
    limit: int = 5,
    network_limit: int = 20,
    user_limit: int = 20,
    window: float = 300.0,
    backoff_max: float = 3600.0,
    trust_period: float = 86400.0,
    **options: Any,
) -> Process:
    settings = DatabaseSettings(url=db_url)
    engine, gate = create_engine(settings), WriteGate.for_database(settings)
    limits = LoginLimits(limit, network_limit, user_limit, window, backoff_max, trust_period)
    throttle = SqlLoginThrottle(engine, gate, window=window, blocks=limits.blocks,
                                trust_period=trust_period)  # fmt: skip
    registry = CollectorRegistry()
    auth = Authenticator(users, throttle, limits, clock, Metrics(registry), **options)  # type: ignore[arg-type]
    made.append(Process(engine, gate, throttle, auth, registry))
    return made[-1]


async def row(engine: AsyncEngine, key: str) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(sa.select(login_throttle).where(login_throttle.c.key == key))).first()


async def settled(process: Process) -> None:
    """Wait until attempts whose sessions went away have finished."""
    while process.auth._running:
        await asyncio.sleep(0.01)


# -- (a) and (b): the limit holds under concurrency, in one process and across processes ---------


async def test_parallel_attempts_get_no_more_checks_than_the_limit(
    processes: list[Process], db_url: str, clock: FakeClock
) -> None:
    users = FakeUsers()
    process = start(processes, db_url, clock, users)
    results = await asyncio.gather(*(process.auth("192.0.2.7", "app", f"guess-{i}") for i in range(50)))
    assert len(users.checked) == 5
    assert sum(1 for r in results if r.message is None and not r.success) == 5  # 535
    assert sum(1 for r in results if r.message == THROTTLED) == 45
    assert process.count("failed") == 5 and process.count("throttled") == 45
    # Refused before any check: even the right password, until the block ends.
    assert (await process.auth("192.0.2.7", "app", RIGHT)).message == THROTTLED
    assert len(users.checked) == 5
    clock.advance(300.0)
    assert (await process.auth("192.0.2.7", "app", RIGHT)).success


async def test_two_processes_on_one_database_share_the_limit(
    processes: list[Process], db_url: str, clock: FakeClock
) -> None:
    users = FakeUsers()
    one = start(processes, db_url, clock, users)
    two = start(processes, db_url, clock, users)
    attempts = [(one, two)[i % 2].auth("192.0.2.7", "app", f"guess-{i}") for i in range(40)]
    results = await asyncio.gather(*attempts)
    assert len(users.checked) == 5  # not 5 per process
    assert sum(1 for r in results if r.message == THROTTLED) == 35
    assert one.count("failed") + two.count("failed") == 5
    for process in (one, two):
        assert (await process.auth("192.0.2.7", "app", RIGHT)).message == THROTTLED


async def test_sequential_failures_in_two_processes_add_up(
    processes: list[Process], db_url: str, clock: FakeClock
) -> None:
    users = FakeUsers(delay=0)
    one = start(processes, db_url, clock, users, limit=3)
    two = start(processes, db_url, clock, users, limit=3)
    assert not (await one.auth("192.0.2.7", "app", "a")).success
    assert not (await two.auth("192.0.2.7", "app", "b")).success
    assert not (await one.auth("192.0.2.7", "app", "c")).success
    assert (await two.auth("192.0.2.7", "app", RIGHT)).message == THROTTLED
    assert len(users.checked) == 3


async def test_a_reservation_race_lets_exactly_the_limit_through(
    processes: list[Process], db_url: str, clock: FakeClock
) -> None:
    """The bare counters, many engines against one row: conditional updates, not read-then-write."""
    throttles = [start(processes, db_url, clock, FakeUsers()).throttle for _ in range(4)]
    keys = [ThrottleKey("net:192.0.2.7", 3)]
    now = clock.now()
    taken = await asyncio.gather(*(throttles[i % 4].reserve(keys, now) for i in range(40)))
    assert sum(1 for t in taken if isinstance(t, Reservation)) == 3
    assert sum(1 for t in taken if t is Throttled.FULL) == 37
    assert (await row(processes[0].engine, "net:192.0.2.7")).in_flight == 3


# -- (c): networks, logins and users are counted apart ---------------------------------------------


async def test_ipv6_addresses_in_one_64_share_a_limit(
    processes: list[Process], db_url: str, clock: FakeClock
) -> None:
    users = FakeUsers(delay=0)
    process = start(processes, db_url, clock, users, limit=2)
    assert not (await process.auth("2001:db8::1", "app", "a")).success
    assert not (await process.auth("2001:db8::beef:2", "app", "b")).success
    assert (await process.auth("2001:db8::ffff:ffff:ffff:3", "app", RIGHT)).message == THROTTLED
    assert (await process.auth("2001:db8:0:1::1", "app", RIGHT)).success  # the next /64
    assert (await row(process.engine, "login:2001:db8::/64|app")).blocked_until > clock.now()


async def test_one_network_trying_many_logins_hits_the_network_limit(
    processes: list[Process], db_url: str, clock: FakeClock
) -> None:
    users = FakeUsers(delay=0)
    process = start(processes, db_url, clock, users, limit=5, network_limit=4)
    for name in ("a", "b", "c", "d"):
        assert (await process.auth("192.0.2.7", name, "guess")).message is None
    assert (await process.auth("192.0.2.7", "e", "guess")).message == THROTTLED
    assert (await process.auth("192.0.2.8", "e", RIGHT)).success


async def test_many_networks_guessing_one_login_hit_the_user_limit_but_not_its_trusted_network(
    processes: list[Process], db_url: str, clock: FakeClock
) -> None:
    users = FakeUsers(delay=0)
    process = start(processes, db_url, clock, users, limit=5, user_limit=3)
    assert (await process.auth("192.0.2.1", "app", RIGHT)).success  # where the app logs in
    for n in range(2, 5):
        assert (await process.auth(f"198.51.100.{n}", "app", "guess")).message is None
    assert (await process.auth("198.51.100.9", "app", "guess")).message == THROTTLED
    assert (await process.auth("198.51.100.10", "app", RIGHT)).message == THROTTLED
    assert (await process.auth("192.0.2.1", "app", RIGHT)).success  # trusted: not locked out
    assert (await process.auth("192.0.2.2", "other", RIGHT)).success  # other logins unaffected
    clock.advance(86400.0)  # trust lapses (and the user block is over: the app logs in anew)
    assert (await process.auth("192.0.2.1", "app", RIGHT)).success


async def test_a_success_clears_its_login_key_but_not_the_network_key(
    processes: list[Process], db_url: str, clock: FakeClock
) -> None:
    users = FakeUsers(delay=0)
    process = start(processes, db_url, clock, users, limit=3, network_limit=4)
    for _ in range(2):
        assert (await process.auth("192.0.2.7", "app", "guess")).message is None
    assert (await process.auth("192.0.2.7", "app", RIGHT)).success
    pair = await row(process.engine, "login:192.0.2.7|app")
    assert (pair.failures, pair.strikes) == (0, 0)
    assert (await row(process.engine, "net:192.0.2.7")).failures == 2
    for _ in range(2):  # the pair's 3rd and 4th failure without the clearing; the network's
        assert (await process.auth("192.0.2.7", "app", "guess")).message is None
    assert (await row(process.engine, "login:192.0.2.7|app")).failures == 2
    assert (await row(process.engine, "net:192.0.2.7")).blocked_until > clock.now()
    assert (await process.auth("192.0.2.7", "app", RIGHT)).message == THROTTLED


# -- (d): blocks back off ---------------------------------------------------------------------------


async def fail_until_blocked(process: Process, clock: FakeClock, limit: int) -> float:
    """Fail `limit` times; return how long the login key is then blocked for."""
    for _ in range(limit):
        assert (await process.auth("192.0.2.7", "app", "guess")).message is None
    assert (await process.auth("192.0.2.7", "app", RIGHT)).message == THROTTLED
    return float((await row(process.engine, "login:192.0.2.7|app")).blocked_until) - clock.now()


async def test_blocks_double_while_the_failures_go_on_up_to_the_maximum(
    processes: list[Process], db_url: str, clock: FakeClock
) -> None:
    users = FakeUsers(delay=0)
    process = start(processes, db_url, clock, users, limit=2, window=10.0, backoff_max=35.0)
    blocks = []
    for _ in range(5):
        block = await fail_until_blocked(process, clock, 2)
        blocks.append(block)
        clock.advance(block - 0.5)
        assert (await process.auth("192.0.2.7", "app", RIGHT)).message == THROTTLED
        clock.advance(0.5)  # the block is over: the next attempt is checked again
    assert blocks == [10.0, 20.0, 35.0, 35.0, 35.0]
    # Quiet for backoff_max after the last block: forgotten, the next block is short again.
    clock.advance(35.0)
    assert await fail_until_blocked(process, clock, 2) == 10.0


async def test_a_success_forgets_the_backoff(
    processes: list[Process], db_url: str, clock: FakeClock
) -> None:
    users = FakeUsers(delay=0)
    process = start(processes, db_url, clock, users, limit=2, window=10.0, network_limit=100)
    assert await fail_until_blocked(process, clock, 2) == 10.0
    clock.advance(10.0)
    assert await fail_until_blocked(process, clock, 2) == 20.0
    clock.advance(20.0)
    assert (await process.auth("192.0.2.7", "app", RIGHT)).success
    assert await fail_until_blocked(process, clock, 2) == 10.0


# -- (e): crashed reservations and stale rows go away -----------------------------------------------


async def test_a_reservation_of_a_crashed_process_expires(
    processes: list[Process], db_url: str, clock: FakeClock
) -> None:
    users = FakeUsers(delay=0)
    crashed = start(processes, db_url, clock, users, limit=1)
    alive = start(processes, db_url, clock, users, limit=1, wait=0.2)
    keys = crashed.auth._limits.keys("192.0.2.7", "app")
    assert isinstance(await crashed.throttle.reserve(keys, clock.now()), Reservation)  # never settled
    assert (await alive.auth("192.0.2.7", "app", RIGHT)).message == BUSY  # it waited for the slot
    assert users.checked == []
    clock.advance(30.0)  # the next reservation period: still counted
    assert await alive.throttle.reserve(keys, clock.now()) is Throttled.FULL
    clock.advance(30.0)  # two periods on: no longer
    assert (await alive.auth("192.0.2.7", "app", RIGHT)).success


async def test_a_session_that_goes_away_mid_check_still_settles_its_attempt(
    processes: list[Process], db_url: str, clock: FakeClock
) -> None:
    users = FakeUsers(delay=1.0)
    process = start(processes, db_url, clock, users)
    session = asyncio.ensure_future(process.auth("192.0.2.7", "app", "guess"))
    while not users.checked:
        await asyncio.sleep(0.01)
    session.cancel()  # what aiosmtpd does when the client disconnects
    with pytest.raises(asyncio.CancelledError):
        await session
    await settled(process)
    pair = await row(process.engine, "login:192.0.2.7|app")
    assert (pair.failures, pair.in_flight) == (1, 0)
    assert process.count("failed") == 1


async def test_stale_rows_are_pruned_and_live_ones_kept(
    processes: list[Process], db_url: str, clock: FakeClock
) -> None:
    users = FakeUsers(delay=0)
    process = start(processes, db_url, clock, users, limit=1, window=10.0, backoff_max=100.0,
                    trust_period=100.0)  # fmt: skip
    assert (await process.auth("192.0.2.1", "app", RIGHT)).success  # trusted for 100 s
    assert (await process.auth("192.0.2.2", "bob", "guess")).message is None  # blocked 10 s
    clock.advance(61.0)  # two reservation periods on; bob's block is remembered for 100 s
    assert await process.throttle.prune(clock.now()) == 4
    async with process.engine.connect() as conn:
        keys = set((await conn.scalars(sa.select(login_throttle.c.key))).all())
    assert keys == {"login:192.0.2.1|app", "login:192.0.2.2|bob"}
    clock.advance(50.0)
    assert await process.throttle.prune(clock.now()) == 2


# -- load shedding ----------------------------------------------------------------------------------


async def test_checks_beyond_the_process_bound_are_refused_without_hashing(
    processes: list[Process], db_url: str, clock: FakeClock
) -> None:
    users = FakeUsers(delay=1.0)
    process = start(processes, db_url, clock, users, max_checks=2)
    results = await asyncio.gather(*(process.auth(f"192.0.2.{n}", f"u{n}", RIGHT) for n in range(1, 6)))
    assert sum(1 for r in results if r.success) == 2
    assert sum(1 for r in results if r.message == BUSY) == 3
    assert len(users.checked) == 2
    for n in range(1, 6):  # the refused ones left no reservation behind
        assert (await row(process.engine, f"net:192.0.2.{n}")).in_flight == 0
