"""`SqlRouteStore`: route settings and their history in the database, one code path for SQLite
and PostgreSQL. A change is one transaction: the setting and its `route_changes` row together.
A change may name the setting it expects to replace (`expected`): the guard and the ramp of
several daemons then move a route once, not once per daemon."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from postroom.shadow.routing import Mode, RouteSetting
from postroom.store.engine import GatedStore, translate_errors
from postroom.store.tables import route_changes, routes

SOURCES = ("manual", "guard", "ramp")


@dataclass(frozen=True)
class RouteChange:
    id: int
    at: float
    setting: RouteSetting
    previous: RouteSetting | None
    source: str  # manual, guard, ramp
    changed_by: str
    reason: str


@dataclass(frozen=True)
class StoredRoute:
    setting: RouteSetting
    changed_at: float
    changed_by: str
    reason: str


def _setting(row: Any) -> RouteSetting:
    return RouteSetting(row.stream, row.template, Mode(row.mode), int(row.percent), bool(row.fallback),
                        bool(row.ramp))  # fmt: skip


def _values(setting: RouteSetting) -> dict[str, Any]:
    return {"mode": setting.mode.value, "percent": setting.percent, "fallback": setting.fallback,
            "ramp": setting.ramp}  # fmt: skip


class SqlRouteStore(GatedStore):
    async def load(self) -> list[StoredRoute]:
        with translate_errors("reading the routes"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(sa.select(routes).order_by(routes.c.stream, routes.c.template))).all()
        return [StoredRoute(_setting(row), float(row.changed_at), row.changed_by, row.reason) for row in rows]

    async def change(
        self, setting: RouteSetting, *, source: str, changed_by: str, reason: str, now: float,
        expected: RouteSetting | None = None, only_if_expected: bool = False,
    ) -> RouteChange | None:  # fmt: skip
        """Set the route and record the change; None when `only_if_expected` and the route is no
        longer `expected` (someone else moved it first), or when nothing would change."""
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}")
        key = (routes.c.stream == setting.stream, routes.c.template == setting.template)
        with translate_errors("changing a route"):
            async with self._write() as conn:
                row = (await conn.execute(sa.select(routes).where(*key).with_for_update())).first()
                previous = _setting(row) if row is not None else None
                if only_if_expected and previous != expected:
                    return None
                if previous == setting:
                    return None
                stamp = {"changed_at": now, "changed_by": changed_by, "reason": reason}
                if row is None:
                    await conn.execute(routes.insert().values(stream=setting.stream, template=setting.template,
                                                              **_values(setting), **stamp))  # fmt: skip
                else:
                    await conn.execute(routes.update().where(*key).values(**_values(setting), **stamp))
                result = await conn.execute(route_changes.insert().values(
                    at=now, stream=setting.stream, template=setting.template, **_values(setting),
                    previous_mode=previous.mode.value if previous else None,
                    previous_percent=previous.percent if previous else None,
                    source=source, changed_by=changed_by, reason=reason,
                ))  # fmt: skip
                change_id = int(result.inserted_primary_key[0]) if result.inserted_primary_key else 0
        return RouteChange(change_id, now, setting, previous, source, changed_by, reason)

    async def changes(
        self, stream: str | None = None, template: str | None = None, limit: int = 50
    ) -> list[RouteChange]:
        """The latest changes first."""
        query = sa.select(route_changes)
        if stream is not None:
            query = query.where(route_changes.c.stream == stream)
        if template is not None:
            query = query.where(route_changes.c.template == template)
        with translate_errors("reading route changes"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(query.order_by(route_changes.c.id.desc()).limit(limit))).all()
        found = []
        for row in rows:
            previous = None
            if row.previous_mode is not None:
                previous = RouteSetting(row.stream, row.template, Mode(row.previous_mode), int(row.previous_percent or 0))
            found.append(RouteChange(int(row.id), float(row.at), _setting(row), previous, row.source,
                                     row.changed_by, row.reason))  # fmt: skip
        return found
