"""The failed-login counters of the SMTP AUTH throttle: the `login_throttle` table, one row per key,
shared by every process and every daemon on the database. Which keys an attempt has, their limits
and the backoff are `smtp.throttle`'s rules; this module keeps the counts.

An attempt *reserves* a slot on its keys before its password is checked. A reservation passes only
while the key is not blocked and its failures in the window plus the reservations in flight stay
under its limit, so N parallel connections get at most `limit` password checks, not N. Each change
is one conditional statement on one row; a reservation is `INSERT ... ON CONFLICT (key) DO UPDATE
SET in_flight = in_flight + 1 ... WHERE <admits> RETURNING`, which returns nothing when the key
does not admit it, and the keys of an attempt are taken in one transaction, all or none. Two
reservations racing for the last slot never both pass: PostgreSQL locks the conflicting row and
evaluates the WHERE on its newest version; SQLite runs one writer at a time (the write gate,
BEGIN IMMEDIATE). The keys of an attempt are always taken in the same order (login, network,
user), so attempts sharing keys cannot deadlock.

A reservation counts in the slot of its reservation period (`epoch`: `reservation_ttl` seconds; a
row keeps the counts of the newest period and of the one before), so reservations a crashed process
never settled stop counting within two periods, however busy the key stays meanwhile.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from postroom.store.engine import WriteGate, read_only, translate_errors
from postroom.store.tables import login_throttle as rows

_c = rows.c


@dataclass(frozen=True)
class ThrottleKey:
    name: str
    limit: int
    # A success clears its failures and backoff, and trusts it for `trust_period`.
    clears_on_success: bool = False
    # Not reserved (a failure is still charged to it) while the attempt's clearing key is trusted.
    waived_when_trusted: bool = False


@dataclass(frozen=True)
class Reservation:
    keys: tuple[ThrottleKey, ...]
    held: tuple[tuple[str, int], ...]  # (key, reservation period) of every slot taken


class Throttled(enum.Enum):
    OVER_LIMIT = "over_limit"  # blocked, or its failures in the window reached its limit
    FULL = "full"  # under its limit, but as many attempts are in flight as it has guesses left


class _LostRace(Exception):
    """Another attempt took the slot between the look and the reservation: undo the others."""


class SqlLoginThrottle:
    def __init__(
        self,
        engine: AsyncEngine,
        gate: WriteGate,
        *,
        window: float,
        blocks: Sequence[float],
        trust_period: float,
        reservation_ttl: float = 30.0,
    ):
        """`blocks`: how long the 1st, 2nd, ... block in a row lasts; the last one repeats, and a
        block is remembered (for the next one to be longer) until that long after it ended."""
        assert blocks and reservation_ttl > 0
        self._engine = engine
        self._reads = read_only(engine)
        self._gate = gate
        self._window = window
        self._blocks = tuple(blocks)
        self._trust_period = trust_period
        self._ttl = reservation_ttl
        # Attempts of this process reserving or holding a slot, by key.
        self._local: Counter[str] = Counter()

    def period(self, now: float) -> int:
        return int(now // self._ttl)

    # -- the conditions and changes, as SQL expressions on the row ------------------------------

    def _live_failures(self, now: float) -> sa.ColumnElement[Any]:
        return sa.case((_c.window_start > now - self._window, _c.failures), else_=0)

    @staticmethod
    def _live_in_flight(period: int) -> sa.ColumnElement[Any]:
        # `>=`: a daemon whose clock runs a little ahead may have moved the row to a later period.
        return sa.case(
            (_c.epoch >= period, _c.in_flight + _c.in_flight_before),
            (_c.epoch == period - 1, _c.in_flight),
            else_=0,
        )

    def _admits(self, limit: int, now: float, period: int) -> sa.ColumnElement[bool]:
        return sa.and_(
            _c.blocked_until <= now,
            self._live_failures(now) + self._live_in_flight(period) < limit,
        )

    @staticmethod
    def _reserve(period: int, now: float) -> dict[str, Any]:
        return {
            "in_flight_before": sa.case(
                (_c.epoch >= period, _c.in_flight_before),
                (_c.epoch == period - 1, _c.in_flight),
                else_=0,
            ),
            "in_flight": sa.case((_c.epoch >= period, _c.in_flight), else_=0) + 1,
            "epoch": sa.case((_c.epoch > period, _c.epoch), else_=period),
            "updated_at": now,
        }

    @staticmethod
    def _release(period: int) -> dict[str, Any]:
        return {
            "in_flight": sa.case(
                (sa.and_(_c.epoch == period, _c.in_flight > 0), _c.in_flight - 1),
                else_=_c.in_flight,
            ),
            "in_flight_before": sa.case(
                (sa.and_(_c.epoch == period + 1, _c.in_flight_before > 0), _c.in_flight_before - 1),
                else_=_c.in_flight_before,
            ),
        }

    def _failure(self, limit: int, now: float) -> dict[str, Any]:
        counting = _c.window_start > now - self._window
        failures = sa.case((counting, _c.failures), else_=0) + 1
        hit = failures >= limit
        strikes = sa.case((_c.blocked_until + self._blocks[-1] > now, _c.strikes), else_=0)
        block: sa.ColumnElement[Any] = sa.literal(self._blocks[-1], sa.Float)
        if len(self._blocks) > 1:
            earlier = dict(enumerate(self._blocks[:-1]))
            block = sa.case(earlier, value=strikes, else_=self._blocks[-1])
        return {
            # A key that reaches its limit is blocked; after the block it starts a new window.
            "failures": sa.case((hit, 0), else_=failures),
            "window_start": sa.case((sa.and_(counting, sa.not_(hit)), _c.window_start), else_=now),
            "blocked_until": sa.case((hit, block + now), else_=_c.blocked_until),
            "strikes": sa.case((hit, strikes + 1), else_=strikes),
        }

    def _success(self, now: float) -> dict[str, Any]:
        return {"failures": 0, "strikes": 0, "trusted_until": now + self._trust_period}

    @staticmethod
    def _row(key: str, now: float) -> dict[str, Any]:
        return {"key": key, "failures": 0, "window_start": 0.0, "in_flight": 0, "in_flight_before": 0,
                "epoch": 0, "blocked_until": 0.0, "strikes": 0, "trusted_until": 0.0, "updated_at": now}  # fmt: skip

    def _ensure(self, conn: AsyncConnection, names: Sequence[str], now: float) -> sa.Insert:
        values = [self._row(name, now) for name in names]
        if conn.dialect.name == "postgresql":
            return postgresql.insert(rows).values(values).on_conflict_do_nothing(index_elements=["key"])
        return sqlite.insert(rows).values(values).on_conflict_do_nothing(index_elements=["key"])

    @staticmethod
    def _upsert(
        conn: AsyncConnection, first: dict[str, Any], change: dict[str, Any], where: sa.ColumnElement[bool]
    ) -> sa.Insert:
        """Insert `first`, or apply `change` to the row there if `where` holds (else nothing)."""
        if conn.dialect.name == "postgresql":
            pg = postgresql.insert(rows).values(first)
            return pg.on_conflict_do_update(index_elements=["key"], set_=change, where=where)
        lite = sqlite.insert(rows).values(first)
        return lite.on_conflict_do_update(index_elements=["key"], set_=change, where=where)

    # -- operations -----------------------------------------------------------------------------

    async def reserve(self, keys: Sequence[ThrottleKey], now: float) -> Reservation | Throttled:
        """Take a slot on every key that applies, or none.

        This process's own attempts under way count first: a key with as many of them as its limit
        has no slot for one more, whatever the database says, so a burst of connections from one
        source costs the database `limit` attempts at a time, not one each. Then a look without
        the write lock: a source over its limit is refused without a write. Once the write gate is
        ours, a second look sees what the transactions queued before ours took.
        """
        if any(self._local[key.name] >= key.limit for key in keys if not key.waived_when_trusted):
            return Throttled.FULL
        names = [key.name for key in keys]
        self._local.update(names)
        taken: Reservation | Throttled = Throttled.FULL
        try:
            taken = await self._reserve_shared(keys, now)
        finally:
            if not isinstance(taken, Reservation):
                self._forget_local(names)
        return taken

    def _forget_local(self, names: Sequence[str]) -> None:
        for name in names:
            self._local[name] -= 1
            if self._local[name] <= 0:
                del self._local[name]

    async def _reserve_shared(self, keys: Sequence[ThrottleKey], now: float) -> Reservation | Throttled:
        period = self.period(now)
        refusal = await self._look(keys, now, period)
        if refusal is not None:
            return refusal
        try:
            with translate_errors("reserving a login attempt"):
                async with self._gate.hold():
                    refusal = await self._look(keys, now, period)
                    if refusal is not None:
                        return refusal
                    async with self._engine.begin() as conn:
                        held = await self._take(conn, keys, now, period)
        except _LostRace:
            return Throttled.FULL  # the next look tells whether it is over its limit now
        return Reservation(tuple(keys), held)

    async def _look(self, keys: Sequence[ThrottleKey], now: float, period: int) -> Throttled | None:
        limit = sa.case({key.name: key.limit for key in keys}, value=_c.key)
        failures = self._live_failures(now)
        query = sa.select(
            _c.key,
            _c.trusted_until,
            sa.or_(_c.blocked_until > now, failures >= limit).label("over"),
            (failures + self._live_in_flight(period) >= limit).label("full"),
        ).where(_c.key.in_([key.name for key in keys]))
        with translate_errors("reading login throttle counters"):
            async with self._reads.connect() as conn:
                found = {row.key: row for row in (await conn.execute(query)).all()}
        trusted = any(
            key.clears_on_success and key.name in found and found[key.name].trusted_until > now
            for key in keys
        )
        applying = [
            found[key.name] for key in keys
            if key.name in found and not (key.waived_when_trusted and trusted)
        ]  # fmt: skip
        if any(row.over for row in applying):
            return Throttled.OVER_LIMIT
        if any(row.full for row in applying):
            return Throttled.FULL
        return None

    async def _take(
        self, conn: AsyncConnection, keys: Sequence[ThrottleKey], now: float, period: int
    ) -> tuple[tuple[str, int], ...]:
        held: list[tuple[str, int]] = []
        trusted = False
        for key in keys:
            if key.waived_when_trusted and trusted:
                continue
            first = self._row(key.name, now) | {"in_flight": 1, "epoch": period}
            taken = (
                await conn.execute(
                    self._upsert(conn, first, self._reserve(period, now),
                                 self._admits(key.limit, now, period))
                    .returning(_c.epoch, _c.trusted_until)
                )  # fmt: skip
            ).first()
            if taken is None:
                raise _LostRace
            trusted = trusted or (key.clears_on_success and taken.trusted_until > now)
            held.append((key.name, int(taken.epoch)))
        return tuple(held)

    async def settle(self, reservation: Reservation, succeeded: bool | None, now: float) -> None:
        """Release the attempt's slots and record its verdict: a failure is charged to every key
        (a waived one too); a success clears the keys that clear; None (the password could not be
        checked at all) only releases."""
        held = dict(reservation.held)
        try:
            await self._record(reservation, held, succeeded, now)
        finally:
            self._forget_local([key.name for key in reservation.keys])

    async def _record(
        self, reservation: Reservation, held: dict[str, int], succeeded: bool | None, now: float
    ) -> None:
        with translate_errors("recording a login attempt"):
            async with self._gate.hold(), self._engine.begin() as conn:
                if succeeded is False:  # a waived key may have no row; a slow one may be pruned
                    await conn.execute(self._ensure(conn, [key.name for key in reservation.keys], now))
                for key in reservation.keys:
                    values: dict[str, Any] = {}
                    if key.name in held:
                        values.update(self._release(held[key.name]))
                    if succeeded is False:
                        values.update(self._failure(key.limit, now))
                    elif succeeded and key.clears_on_success:
                        values.update(self._success(now))
                    if values:
                        values["updated_at"] = now
                        await conn.execute(rows.update().where(_c.key == key.name).values(values))

    async def prune(self, now: float) -> int:
        """Delete the rows that hold nothing any more: no failures in the window, no reservation
        in flight, no block remembered, no trust. Returns how many."""
        stale = sa.and_(
            _c.window_start <= now - self._window,
            _c.epoch < self.period(now) - 1,
            _c.blocked_until + self._blocks[-1] <= now,
            _c.trusted_until <= now,
        )
        with translate_errors("pruning login throttle counters"):
            async with self._gate.hold(), self._engine.begin() as conn:
                result = await conn.execute(rows.delete().where(stale))
        return int(result.rowcount)
