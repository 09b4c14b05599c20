"""A route change made by the guard or the ramp, written to the event stream as a `route_changed`
event (no message: `message_id` is empty), so the outbound webhooks deliver it like any other."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.shadow.guard import Breach
from postroom.shadow.route_store import RouteChange
from postroom.store.engine import WriteGate, translate_errors
from postroom.store.tables import events


class RouteEvents:
    def __init__(self, engine: AsyncEngine, gate: WriteGate):
        self._engine = engine
        self._gate = gate

    async def __call__(self, change: RouteChange, found: Sequence[Breach]) -> None:
        setting, previous = change.setting, change.previous
        detail = {
            "stream": setting.stream, "template": setting.template, "source": change.source,
            "reason": change.reason, "to": setting.describe(),
            "from": previous.describe() if previous else "inhouse",
            "inhouse_percent": setting.inhouse_share,
            "breaches": [{"limit": b.limit, "inhouse_rate": b.inhouse_rate, "loops_rate": b.loops_rate,
                          "allowed_excess": b.allowed_excess} for b in found],
        }  # fmt: skip
        with translate_errors("recording a route change event"):
            async with self._gate.hold(), self._engine.begin() as conn:
                await conn.execute(events.insert().values(at=change.at, type="route_changed", message_id="",
                                                          delivery_id=None, recipient=None, detail=detail))  # fmt: skip
