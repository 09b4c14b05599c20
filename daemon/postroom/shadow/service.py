"""`RouteService`: the route settings as every process routes by them, and the one way to change
them (API, CLI, the guard and the ramp).

Each process keeps the settings in memory and reloads them every `refresh_interval` seconds, so a
change made anywhere (another process, another daemon on the same PostgreSQL) is followed within
seconds; the process that made the change follows it at once. A change is refused when it would
send mail through Loops that Loops cannot send: Loops not configured, or a template without a Loops
transactionalId.
"""

from __future__ import annotations

import asyncio
import dataclasses
import contextlib
import logging
from collections.abc import Mapping

from postroom.core.clock import Clock
from postroom.core.errors import StoreError
from postroom.metrics import Metrics
from postroom.shadow.route_store import RouteChange, SqlRouteStore, StoredRoute
from postroom.shadow.routing import Mode, RouteSetting, checked, setting_for

logger = logging.getLogger(__name__)


class RouteRefused(ValueError):
    """A route setting that cannot be applied, and why."""


class RouteService:
    def __init__(
        self, store: SqlRouteStore, clock: Clock, metrics: Metrics, *, loops_templates: Mapping[str, str],
        loops_configured: bool, refresh_interval: float = 2.0,
    ):  # fmt: skip
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._loops_templates = dict(loops_templates)
        self._loops_configured = loops_configured
        self._refresh_interval = refresh_interval
        self._routes: list[StoredRoute] = []
        self._settings: dict[tuple[str, str], RouteSetting] = {}

    # -- routing --------------------------------------------------------------------------

    def setting(self, stream: str, template: str | None) -> RouteSetting | None:
        return setting_for(self._settings, stream, template)

    def can_go_to_loops(self, template: str | None) -> bool:
        return self._loops_configured and template is not None and template in self._loops_templates

    @property
    def routes(self) -> list[StoredRoute]:
        return list(self._routes)

    async def refresh(self) -> None:
        routes = await self._store.load()
        for gone in set(self._settings) - {(r.setting.stream, r.setting.template) for r in routes}:
            with contextlib.suppress(KeyError):
                self._metrics.route_inhouse_share.remove(*gone)
        self._routes = routes
        self._settings = {(r.setting.stream, r.setting.template): r.setting for r in routes}
        for route in routes:
            setting = route.setting
            self._metrics.route_inhouse_share.labels(setting.stream, setting.template).set(setting.inhouse_share)

    async def run(self, stop: asyncio.Event) -> None:
        """Reload the settings every `refresh_interval` seconds until `stop` (the daemon loaded
        them once before serving)."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self._refresh_interval)
            if stop.is_set():
                return
            try:
                await self.refresh()
            except StoreError as exc:  # keep routing by the settings last read
                logger.warning("routes not reloaded: %s", exc)

    # -- changing -------------------------------------------------------------------------

    def refusal(self, setting: RouteSetting) -> str | None:
        """Why `setting` cannot be applied, or None."""
        try:
            checked(setting)
        except ValueError as exc:
            return str(exc)
        uses_loops = setting.mode is not Mode.INHOUSE or setting.fallback
        if uses_loops and not self._loops_configured:
            return "Loops is not configured: set [loops] api_key to route mail through Loops"
        if uses_loops and setting.template and setting.template not in self._loops_templates:
            return (f"template {setting.template!r} has no Loops transactionalId in [loops.templates]: "
                    "it cannot be routed to Loops")  # fmt: skip
        return None

    async def change(
        self, setting: RouteSetting, *, changed_by: str, reason: str, source: str = "manual",
        expected: RouteSetting | None = None, only_if_expected: bool = False,
    ) -> RouteChange | None:  # fmt: skip
        """Apply and record a change (RouteRefused if it cannot be applied); None when nothing
        changed (already so, or moved by someone else first when `only_if_expected`)."""
        refused = self.refusal(setting)
        if refused is not None:
            raise RouteRefused(refused)
        if setting.mode is not Mode.SPLIT:  # stored as 0: its share says itself
            setting = dataclasses.replace(setting, percent=0)
        change = await self._store.change(setting, source=source, changed_by=changed_by, reason=reason,
                                          now=self._clock.now(), expected=expected,
                                          only_if_expected=only_if_expected)  # fmt: skip
        if change is not None:
            self._metrics.route_changes.labels(source).inc()
            logger.log(logging.ERROR if source == "guard" else logging.INFO,
                       "route of stream %s%s changed by %s (%s): %s -> %s: %s", setting.stream,
                       f" template {setting.template}" if setting.template else "", changed_by, source,
                       change.previous.describe() if change.previous else "inhouse (unset)",
                       setting.describe(), reason)  # fmt: skip
        await self.refresh()
        return change

    async def changes(self, stream: str | None = None, template: str | None = None, limit: int = 50) -> list[RouteChange]:
        return await self._store.changes(stream, template, limit)
