"""What a PostHog alert does (`[posthog.alerts.<name>]`): run a report now, or mail an alert to
the rule's addresses. PostHog waits for the answer, so a report run is started in the background
and the webhook answered at once."""

from __future__ import annotations

import asyncio
import json
import logging

from postroom.core.clock import Clock
from postroom.core.compose import Draft, compose
from postroom.core.ids import new_message_id
from postroom.core.types import Submission
from postroom.reports.service import ReportService
from postroom.sources.posthog.alerts import PostHogAlert
from postroom.submission.outcome import Accepted, Caller
from postroom.submission.service import SubmissionService

logger = logging.getLogger(__name__)


class ReportAlerts:
    def __init__(self, service: ReportService, submissions: SubmissionService, clock: Clock, *, sender: str,
                 hostname: str):  # fmt: skip
        self._service = service
        self._submissions = submissions
        self._clock = clock
        self._sender = sender
        self._hostname = hostname
        self._running: set[asyncio.Task[object]] = set()

    async def aclose(self) -> None:
        """Let the report runs alerts started finish (the daemon is stopping)."""
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def handle(self, alert: PostHogAlert) -> str:
        rule = alert.rule
        if rule is None:
            return "ignored"
        if rule.action == "report":
            task: asyncio.Task[object] = asyncio.create_task(self._report(rule.report, alert.name))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            return f"report:{rule.report}"
        return await self._email(alert, rule.to)

    async def _report(self, name: str, alert: str) -> object:
        try:
            return await self._service.run_now(name, trigger="alert")
        except Exception:  # noqa: BLE001 - recorded in the run row; logged here with the alert that asked
            logger.exception("report %s asked for by PostHog alert %s failed", name, alert)
            return None

    async def _email(self, alert: PostHogAlert, to: tuple[str, ...]) -> str:
        now = self._clock.now()
        message_id = new_message_id(now)
        subject = f"PostHog alert: {alert.name}"
        details = json.dumps(dict(alert.body), indent=2, ensure_ascii=False, default=str)[:20_000]
        text = (f"PostHog sent the alert {alert.name!r}"
                + (f" about the insight {alert.insight_name!r}" if alert.insight_name else "")
                + f".\n\nWhat it sent:\n{details}\n")  # fmt: skip
        content = compose(Draft(sender=self._sender, to=to, subject=subject, text=text),
                          message_id=message_id, hostname=self._hostname, now=now)  # fmt: skip
        bare = self._sender.rpartition("<")[2].rstrip(">").strip()
        outcome = await self._submissions.submit(
            Submission(mail_from=bare, recipients=to, content=content, source="report", submitted_by="posthog-alert",
                       header_from=self._sender, subject=subject, stream="reports", tags=("posthog-alert",),
                       message_id=message_id),
            Caller("report", f"posthog-alert:{alert.name}"),
        )  # fmt: skip
        if not isinstance(outcome, Accepted):
            logger.error("PostHog alert %s: the alert email was refused: %s", alert.name, outcome.reason)
            return "refused"
        return "alert_email"
