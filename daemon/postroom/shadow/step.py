"""`RoutingStep`: the submission door's step that routes each recipient by the route settings
(`shadow.routing`): Loops or in-house, plus a shadow copy in shadow mode. A message with no route
setting, or one Loops cannot send, goes in-house unchanged: the step costs nothing then."""

from __future__ import annotations

import dataclasses

from postroom.core.types import INHOUSE_ROUTE, LOOPS_ROUTE, SHADOW_ROUTE, Submission
from postroom.metrics import Metrics
from postroom.shadow.routing import Mode, choose
from postroom.shadow.service import RouteService
from postroom.submission.outcome import Caller, Refusal


class RoutingStep:
    name = "routing"

    def __init__(self, routes: RouteService, key: bytes, metrics: Metrics):
        self._routes = routes
        self._key = key
        self._metrics = metrics

    async def __call__(self, submission: Submission, caller: Caller) -> Submission | Refusal:
        template = submission.template[0] if submission.template else None
        setting = self._routes.setting(submission.stream, template)
        if setting is None or (setting.mode is Mode.INHOUSE) or not self._routes.can_go_to_loops(template):
            return submission
        choices = {recipient: choose(setting, recipient, self._key) for recipient in submission.recipients}
        to_loops = [recipient for recipient, choice in choices.items() if choice.route == LOOPS_ROUTE]
        shadow = tuple(recipient for recipient, choice in choices.items() if choice.shadow_copy)
        counted = self._metrics.routed_recipients
        counted.labels(submission.stream, LOOPS_ROUTE).inc(len(to_loops))
        counted.labels(submission.stream, INHOUSE_ROUTE).inc(len(choices) - len(to_loops))
        if shadow:
            counted.labels(submission.stream, SHADOW_ROUTE).inc(len(shadow))
        if not to_loops:
            return submission
        if len(to_loops) == len(choices):
            return dataclasses.replace(submission, route=LOOPS_ROUTE, shadow_copies=shadow)
        routes = {**submission.recipient_routes, **{recipient: LOOPS_ROUTE for recipient in to_loops}}
        return dataclasses.replace(submission, recipient_routes=routes, shadow_copies=shadow)
