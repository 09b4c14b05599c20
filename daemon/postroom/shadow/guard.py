"""The guard: limits on the in-house path against Loops, checked continuously, and the ramp.

`breaches` (pure) compares the in-house figures of a route with Loops' over the same window: each
rate may exceed Loops' by at most its limit, in percentage points, once the in-house path has sent
at least `min_messages` recipients (too few say nothing). `stepped_back` and `stepped_up` (pure)
say where a breach or a healthy ramp moves a route. `Guard` runs them every `check_interval`
seconds on every route that sends in-house: a breach steps the route back (recorded with its
reason, counted, logged at error, and announced as a `route_changed` event that the outbound
webhooks deliver); a ramp route that dwelt long enough at a healthy step goes up one step. Every
daemon runs the guard; a change names the setting it replaces, so a route moves once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from postroom.core.clock import Clock
from postroom.core.errors import StoreError
from postroom.core.types import INHOUSE_ROUTE, LOOPS_ROUTE
from postroom.metrics import Metrics
from postroom.shadow.compare import Figures, SqlComparison, merged
from postroom.shadow.route_store import RouteChange, StoredRoute
from postroom.shadow.routing import Mode, RouteSetting
from postroom.shadow.service import RouteRefused, RouteService
from postroom.shadow.settings import GuardSettings, RampSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Breach:
    limit: str  # hard_bounce, complaint, failed, deferral
    inhouse_rate: float
    loops_rate: float
    allowed_excess: float

    def describe(self) -> str:
        return (f"{self.limit} rate in-house {self.inhouse_rate:.2f}% vs Loops {self.loops_rate:.2f}% "
                f"(allowed excess {self.allowed_excess:g} points)")  # fmt: skip


def breaches(inhouse: Figures, loops: Figures, limits: GuardSettings) -> list[Breach]:
    if inhouse.sent < limits.min_messages:
        return []
    found = []
    checks = (
        ("hard_bounce", inhouse.bounced_hard, loops.bounced_hard, limits.max_hard_bounce_excess),
        ("complaint", inhouse.complained, loops.complained, limits.max_complaint_excess),
        ("failed", inhouse.failed, loops.failed, limits.max_failed_excess),
        ("deferral", inhouse.deferred, loops.deferred, limits.max_deferral_excess),
    )
    for name, ours, theirs, allowed in checks:
        our_rate, their_rate = inhouse.rate(ours), loops.rate(theirs)
        if our_rate > their_rate + allowed:
            found.append(Breach(name, our_rate, their_rate, allowed))
    return found


def stepped_back(setting: RouteSetting, ramp: RampSettings, guard: GuardSettings) -> RouteSetting:
    """Where a breach moves a route: the ramp step below its share (split 0 is legacy), or legacy."""
    if guard.step_back == "legacy":
        return dataclasses.replace(setting, mode=Mode.LEGACY, percent=0, fallback=False, ramp=False)
    share = setting.inhouse_share
    lower = [step for step in ramp.steps if step < share and step < 100]
    if not lower:
        return dataclasses.replace(setting, mode=Mode.LEGACY, percent=0, fallback=False, ramp=False)
    return dataclasses.replace(setting, mode=Mode.SPLIT, percent=lower[-1], fallback=False)


def stepped_up(setting: RouteSetting, ramp: RampSettings) -> RouteSetting | None:
    """The next ramp step of a ramp route, or None at the top."""
    if not setting.ramp or setting.mode is not Mode.SPLIT:
        return None
    higher = [step for step in ramp.steps if step > setting.percent]
    if not higher:
        return None
    if higher[0] >= 100:
        return dataclasses.replace(setting, mode=Mode.INHOUSE, percent=0, ramp=False)
    return dataclasses.replace(setting, percent=higher[0])


# Announces a change to the event stream (and so to the outbound webhooks).
Announce = Callable[[RouteChange, Sequence[Breach]], Awaitable[None]]


class Guard:
    def __init__(
        self, routes: RouteService, comparison: SqlComparison, clock: Clock, metrics: Metrics,
        guard: GuardSettings, ramp: RampSettings, announce: Announce,
    ):  # fmt: skip
        self._routes = routes
        self._comparison = comparison
        self._clock = clock
        self._metrics = metrics
        self._guard = guard
        self._ramp = ramp
        self._announce = announce

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.check()
            except StoreError as exc:
                logger.warning("route guard check failed: %s", exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self._guard.check_interval)

    async def check(self) -> list[RouteChange]:
        """Check every route that sends in-house once; the changes made."""
        await self._routes.refresh()
        made = []
        for route in self._routes.routes:
            if route.setting.inhouse_share == 0:
                continue
            change = await self._check(route)
            if change is not None:
                made.append(change)
        return made

    async def _check(self, route: StoredRoute) -> RouteChange | None:
        setting = route.setting
        now = self._clock.now()
        # Only mail sent since the route took its setting: the figures that tripped a step back
        # must not trip the next one too (50 -> 25 -> 5 -> 1 -> legacy, one step a check, on
        # failures from before the first), and a ramp step is judged on traffic at that step.
        since = max(now - self._guard.window, route.changed_at)
        groups = await self._comparison.figures(since, now, setting.stream, setting.template or None)
        inhouse, loops = merged(groups, INHOUSE_ROUTE), merged(groups, LOOPS_ROUTE)
        found = breaches(inhouse, loops, self._guard)
        self._metrics.route_guard_state.labels(setting.stream, setting.template).set(1 if found else 0)
        if found:
            for breach in found:
                self._metrics.route_guard_breaches.labels(setting.stream, breach.limit).inc()
            target = stepped_back(setting, self._ramp, self._guard)
            reason = "guard: " + "; ".join(breach.describe() for breach in found) + f" over {inhouse.sent} recipients"
            return await self._apply(setting, target, "guard", reason, found)
        up = stepped_up(setting, self._ramp)
        dwelt = now - route.changed_at >= self._ramp.min_dwell
        if up is not None and dwelt and inhouse.sent >= self._guard.min_messages:
            reason = (f"ramp: {inhouse.sent} in-house recipients healthy over the last "
                      f"{self._guard.window:g} s after {now - route.changed_at:.0f} s at {setting.describe()}")  # fmt: skip
            return await self._apply(setting, up, "ramp", reason, [])
        return None

    async def _apply(
        self, current: RouteSetting, target: RouteSetting, source: str, reason: str, found: Sequence[Breach]
    ) -> RouteChange | None:
        try:
            change = await self._routes.change(target, changed_by=source, reason=reason, source=source,
                                               expected=current, only_if_expected=True)  # fmt: skip
        except RouteRefused as exc:  # configuration changed under the route: say so, keep it
            logger.error("route guard could not move stream %s: %s", current.stream, exc)
            return None
        if change is not None:
            await self._announce(change, found)
        return change
