"""`SqlReportRuns`: the `report_runs` table, one row per (report, slot), and `report_watch`, when
each report was first scheduled. The unique (report, slot) key is what makes a scheduled report go
out once however many processes and daemons share the database: each claims the slot with an insert
that does nothing on conflict, and only the one whose row went in runs it. A runner that died
mid-run leaves its row `running`; after `lease` seconds another may take it over, with one
conditional UPDATE that a single claimant wins. One code path for SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from postroom.core.ids import new_message_id
from postroom.store.engine import GatedStore, translate_errors
from postroom.store.tables import report_runs, report_watch

logger = logging.getLogger(__name__)

RUNNING = "running"
MISSED = "missed"
FINISHED = ("sent", "recorded", "failed")  # sent: mailed; recorded: no recipients; failed: see `error`
TRIGGERS = ("schedule", "catchup", "manual", "alert")


@dataclass(frozen=True)
class Run:
    id: int
    report: str
    slot: str  # the period label for scheduled runs; `<trigger>:<ulid>` for the others
    period: str
    trigger: str  # schedule, catchup, manual, alert
    scheduled_for: float | None  # the fire time, for schedule and catchup
    status: str  # running, missed, sent, recorded, failed
    owner: str
    started_at: float
    finished_at: float | None
    render_seconds: float | None
    figures: Any  # JSON, as the runner recorded it
    deliveries: Any  # JSON: the ids of what was queued
    error: str | None


def _run(row: Any) -> Run:
    return Run(int(row.id), row.report, row.slot, row.period, row.trigger,
               None if row.scheduled_for is None else float(row.scheduled_for), row.status, row.owner,
               float(row.started_at), None if row.finished_at is None else float(row.finished_at),
               None if row.render_seconds is None else float(row.render_seconds), row.figures, row.deliveries,
               row.error)  # fmt: skip


def _insert_new(conn: AsyncConnection, table: sa.Table, values: dict[str, Any], keys: list[str]) -> Any:
    """INSERT that does nothing when a row with the same `keys` exists (no error, no row returned)."""
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table).values(**values)
    return insert.on_conflict_do_nothing(index_elements=keys)


def _check_trigger(trigger: str) -> None:
    if trigger not in TRIGGERS:
        raise ValueError(f"trigger must be one of {', '.join(TRIGGERS)}")


class SqlReportRuns(GatedStore):
    async def watch(self, report: str, now: float) -> float:
        """When the scheduler first watched `report` (now, if never): no slot before it is missed."""
        with translate_errors("recording when a report is watched"):
            async with self._write() as conn:
                await conn.execute(_insert_new(conn, report_watch, {"report": report, "since": now}, ["report"]))
                since = (await conn.execute(sa.select(report_watch.c.since)
                                            .where(report_watch.c.report == report))).scalar_one()  # fmt: skip
        return float(since)

    async def claim(
        self, report: str, slot: str, period_label: str, trigger: str, scheduled_for: float, owner: str,
        now: float, lease: float,
    ) -> Run | None:  # fmt: skip
        """The new `running` row when this caller is the one to run `slot`; None when someone else has
        it (running within its lease, finished or missed). A row `running` since before `now - lease`
        is a runner that died: it is taken over, by exactly one caller."""
        _check_trigger(trigger)
        values = {"report": report, "slot": slot, "period": period_label, "trigger": trigger,
                  "scheduled_for": scheduled_for, "status": RUNNING, "owner": owner, "started_at": now}  # fmt: skip
        with translate_errors("claiming a report run"):
            async with self._write() as conn:
                inserted = (await conn.execute(_insert_new(conn, report_runs, values, ["report", "slot"])
                                               .returning(*report_runs.c))).first()  # fmt: skip
                if inserted is not None:
                    return _run(inserted)
                return await self._take_over(conn, report, slot, trigger, owner, now, lease)

    async def _take_over(
        self, conn: AsyncConnection, report: str, slot: str, trigger: str, owner: str, now: float, lease: float
    ) -> Run | None:
        key = (report_runs.c.report == report, report_runs.c.slot == slot)
        stuck = (await conn.execute(sa.select(report_runs.c.owner, report_runs.c.started_at).where(*key))).first()
        # The WHERE is the lock: on PostgreSQL a second UPDATE waits for the first, then re-reads the
        # row, finds started_at fresh and changes nothing; SQLite runs one writer at a time anyway.
        taken = (await conn.execute(
            report_runs.update()
            .where(*key, report_runs.c.status == RUNNING, report_runs.c.started_at < now - lease)
            .values(owner=owner, started_at=now, trigger=trigger, finished_at=None, error=None)
            .returning(*report_runs.c)
        )).first()  # fmt: skip
        if taken is None:
            return None
        if stuck is not None:
            logger.warning("report %s slot %s: taking over from %s, running since %.0f, past the lease of %.0f s",
                           report, slot, stuck.owner, stuck.started_at, lease)  # fmt: skip
        return _run(taken)

    async def record_missed(
        self, report: str, slot: str, period_label: str, scheduled_for: float, owner: str, now: float
    ) -> bool:
        """Record `slot` as missed; False when it already has a row (run, running or missed)."""
        values = {"report": report, "slot": slot, "period": period_label, "trigger": "schedule",
                  "scheduled_for": scheduled_for, "status": MISSED, "owner": owner, "started_at": now,
                  "finished_at": now}  # fmt: skip
        with translate_errors("recording a missed report run"):
            async with self._write() as conn:
                inserted = (await conn.execute(_insert_new(conn, report_runs, values, ["report", "slot"])
                                               .returning(report_runs.c.id))).first()  # fmt: skip
        return inserted is not None

    async def finish(
        self, run_id: int, status: str, *, figures: Any = None, deliveries: Any = None,
        render_seconds: float | None = None, error: str | None = None, now: float, owner: str | None = None,
    ) -> bool:  # fmt: skip
        """Close a `running` run; False when it is not running any more (or, with `owner`, no longer
        that owner's: another took it over past its lease)."""
        if status not in FINISHED:
            raise ValueError(f"status must be one of {', '.join(FINISHED)}")
        conditions = [report_runs.c.id == run_id, report_runs.c.status == RUNNING]
        if owner is not None:
            conditions.append(report_runs.c.owner == owner)
        with translate_errors("finishing a report run"):
            async with self._write() as conn:
                result = await conn.execute(report_runs.update().where(*conditions).values(
                    status=status, finished_at=now, figures=figures, deliveries=deliveries,
                    render_seconds=render_seconds, error=error))  # fmt: skip
        return bool(result.rowcount)

    async def manual(self, report: str, period_label: str, trigger: str, owner: str, now: float) -> Run:
        """A `running` run outside the schedule (on demand, or an alert's): its own slot, never a
        conflict, so it neither blocks nor counts as the scheduled run of that period."""
        _check_trigger(trigger)
        values = {"report": report, "slot": f"{trigger}:{new_message_id(now)}", "period": period_label,
                  "trigger": trigger, "scheduled_for": None, "status": RUNNING, "owner": owner, "started_at": now}  # fmt: skip
        with translate_errors("starting a report run"):
            async with self._write() as conn:
                row = (await conn.execute(report_runs.insert().values(**values).returning(*report_runs.c))).one()
        return _run(row)

    async def history(self, report: str, limit: int = 50) -> list[Run]:
        """The runs of `report`, newest first."""
        query = (sa.select(report_runs).where(report_runs.c.report == report)
                 .order_by(report_runs.c.started_at.desc(), report_runs.c.id.desc()).limit(limit))  # fmt: skip
        with translate_errors("reading report runs"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(query)).all()
        return [_run(row) for row in rows]

    async def get(self, run_id: int) -> Run | None:
        with translate_errors("reading report runs"):
            async with self._reads.connect() as conn:
                row = (await conn.execute(sa.select(report_runs).where(report_runs.c.id == run_id))).first()
        return _run(row) if row is not None else None

    async def last(self, report: str) -> Run | None:
        runs = await self.history(report, 1)
        return runs[0] if runs else None

    async def latest_scheduled(self, report: str) -> float | None:
        """The latest fire time that has a row (run, running or missed): every earlier fire time since
        the report was watched has been dealt with by whichever scheduler wrote it."""
        query = sa.select(sa.func.max(report_runs.c.scheduled_for)).where(report_runs.c.report == report)
        with translate_errors("reading report runs"):
            async with self._reads.connect() as conn:
                latest = (await conn.execute(query)).scalar()
        return None if latest is None else float(latest)
