"""Running a report: build its sections, render it, mail it through postroom's own door, and
record the run with its figures, render time and message ids. What the scheduler, the CLI and the
API call."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from postroom.core.clock import Clock
from postroom.core.compose import Draft, compose
from postroom.core.ids import new_message_id
from postroom.core.memory import release_after_burst
from postroom.core.types import IdempotencyKey, Submission
from postroom.metrics import Metrics
from postroom.reports.model import Report
from postroom.reports.periods import Period, last_complete
from postroom.reports.render import RenderedReport, compile_templates, load_templates, render
from postroom.reports.runs import Run, SqlReportRuns
from postroom.reports.schedule import trigger
from postroom.reports.sections import SectionBuilder, build_section
from postroom.reports.settings import ReportDefinition, ReportsSettings
from postroom.submission.outcome import Accepted, Caller
from postroom.submission.service import SubmissionService

logger = logging.getLogger(__name__)


class UnknownReport(LookupError):
    def __init__(self, name: str, known: list[str]):
        super().__init__(f"no report {name!r}; defined: {', '.join(known)}")


class ReportNotSent(RuntimeError):
    """The report was built but its mail was refused (the reason says why)."""


@dataclass(frozen=True)
class RunOutcome:
    run: Run
    report: Report
    message_ids: tuple[str, ...]
    render_seconds: float


class ReportService:
    def __init__(self, settings: ReportsSettings, builder: Callable[[], SectionBuilder], runs: SqlReportRuns,
                 submissions: SubmissionService | None, clock: Clock, metrics: Metrics, *, hostname: str,
                 sender: str, owner: str, policies: dict[str, Any]):  # fmt: skip
        self._settings = settings
        self._builder = builder
        self._runs = runs
        self._submissions = submissions
        self._clock = clock
        self._metrics = metrics
        self._hostname = hostname
        self._sender = settings.sender or sender
        self._owner = owner
        self._policies = policies
        self._template = compile_templates(load_templates(settings.template_dir), "report")

    @property
    def runs(self) -> SqlReportRuns:
        return self._runs

    def definitions(self) -> dict[str, ReportDefinition]:
        return dict(self._settings.definitions)

    @property
    def timezone(self) -> str:
        return self._settings.timezone

    def next_run(self, name: str) -> float | None:
        """When the schedule runs the report next (None: on demand only, or reports are off)."""
        definition = self.definition(name)
        if not (definition.cron and definition.enabled and self._settings.enabled):
            return None
        moment = dt.datetime.fromtimestamp(self._clock.now(), dt.UTC)
        following = trigger(definition.cron, self._settings.zone(definition)).get_next_fire_time(None, moment)
        return following.timestamp() if following else None

    def definition(self, name: str) -> ReportDefinition:
        found = self._settings.definitions.get(name)
        if found is None:
            raise UnknownReport(name, sorted(self._settings.definitions))
        return found

    def default_period(self, name: str) -> Period:
        definition = self.definition(name)
        today = dt.datetime.fromtimestamp(self._clock.now(), self._settings.zone(definition)).date()
        return last_complete(definition.period, today)

    async def build(self, name: str, period: Period) -> Report:
        definition = self.definition(name)
        builder = self._builder()
        sections = []
        for section in definition.sections:
            built = await build_section(builder, section, period, definition.hogql, self._settings.section_timeout)
            if not built.available:
                self._metrics.report_sections_unavailable.labels(section).inc()
            sections.append(built)
        freshness = next((s for s in sections if s.name == "data-freshness" and s.available), None)
        if freshness is None:
            freshness = await build_section(builder, "data-freshness", period, "", self._settings.section_timeout)
        footer: dict[str, Any] = ({f.label: f.value for f in freshness.figures} if freshness.available
                                  else {"Data freshness": freshness.unavailable})  # fmt: skip
        return Report(name, definition.title or name, period, builder.currency, self._settings.locale, sections,
                      self._policies, footer, self._clock.now())

    async def preview(self, name: str, period: Period | None = None) -> tuple[Report, RenderedReport, float]:
        """Build and render without sending or recording (`reports preview`)."""
        period = period or self.default_period(name)
        started = time.perf_counter()
        report = await self.build(name, period)
        rendered = await asyncio.to_thread(render, report, self._template,
                                           with_csv="csv" in self.definition(name).formats)  # fmt: skip
        return report, rendered, time.perf_counter() - started

    async def run_now(self, name: str, period: Period | None = None, to: tuple[str, ...] = (),
                      trigger: str = "manual") -> RunOutcome:  # fmt: skip
        """A run on demand: recorded with a slot of its own, sent to `to` (default: the report's
        recipients)."""
        period = period or self.default_period(name)
        run = await self._runs.manual(name, period.label, trigger, self._owner, self._clock.now())
        return await self._execute(name, period, run, to or self.definition(name).recipients, None)

    async def run(self, name: str, period: Period, trigger: str, scheduled_for: float, run: Run) -> None:
        """The scheduler's runner: `run` is claimed already (once for every daemon)."""
        try:
            await self._execute(name, period, run, self.definition(name).recipients, scheduled_for)
        except Exception:  # noqa: BLE001 - recorded in the run row and counted; the scheduler goes on
            logger.exception("report %s for %s failed", name, period.label)

    async def _execute(self, name: str, period: Period, run: Run, to: tuple[str, ...],
                       scheduled_for: float | None) -> RunOutcome:  # fmt: skip
        try:
            report, rendered, seconds = await self.preview(name, period)
            self._metrics.report_render_seconds.labels(name).observe(seconds)
            message_ids = await self._send(name, run.slot, rendered, to) if to else ()
        except Exception as exc:
            await asyncio.to_thread(release_after_burst)
            self._metrics.report_runs.labels(name, "failed").inc()
            await self._runs.finish(run.id, "failed", figures=None, deliveries=None, render_seconds=None,
                                    error=f"{type(exc).__name__}: {exc}", now=self._clock.now())  # fmt: skip
            raise
        del rendered  # the charts' bytes: gone before the heap is trimmed
        await asyncio.to_thread(release_after_burst)
        status = "sent" if message_ids else "recorded"
        await self._runs.finish(run.id, status, figures=report.figures(), deliveries=list(message_ids),
                                render_seconds=round(seconds, 4), error=None, now=self._clock.now())  # fmt: skip
        self._metrics.report_runs.labels(name, status).inc()
        logger.info("report %s for %s %s to %d recipients in %.2f s", name, period.label, status, len(to), seconds)
        return RunOutcome(run, report, message_ids, seconds)

    async def _send(self, name: str, slot: str, rendered: RenderedReport, to: tuple[str, ...]) -> tuple[str, ...]:
        if self._submissions is None:
            raise ReportNotSent("this process cannot send mail")
        now = self._clock.now()
        message_id = new_message_id(now)
        draft = Draft(sender=self._sender, to=to, subject=rendered.subject, text=rendered.text, html=rendered.html,
                      attachments=rendered.attachments)  # fmt: skip
        try:
            content = compose(draft, message_id=message_id, hostname=self._hostname, now=now)
        except (ValueError, UnicodeError, LookupError) as exc:
            raise ReportNotSent(f"the report could not be composed: {exc}") from None
        bare = self._sender.rpartition("<")[2].rstrip(">").strip()
        submission = Submission(mail_from=bare, recipients=tuple(dict.fromkeys(to)), content=content, source="report",
                                submitted_by=f"report:{name}", header_from=self._sender, subject=rendered.subject,
                                stream="reports", tags=("report", name), message_id=message_id)  # fmt: skip
        # Keyed by the run's slot: a run taken over after a crash never mails the period twice.
        key = IdempotencyKey("report", f"{name}:{slot}", hashlib.sha256(",".join(sorted(to)).encode()).hexdigest())
        outcome = await self._submissions.submit(submission, Caller("report", f"report:{name}"), key)
        if not isinstance(outcome, Accepted):
            raise ReportNotSent(f"{outcome.code}: {outcome.reason}")
        return (outcome.message_id,)

