"""Reports wired: the service (sources, templates, runs, the submission door), the scheduler and
the API. Built by the daemon (`Daemon.run`) and by the command line."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.billing.figures import SqlBillingFigures
from postroom.config import Settings
from postroom.core.clock import Clock
from postroom.metrics import Metrics
from postroom.mrr.ledger import SqlLedger
from postroom.mrr.service import MrrService
from postroom.reports.runs import SqlReportRuns
from postroom.reports.schedule import ReportScheduler
from postroom.reports.sections import ProductSource, SectionBuilder, Sources
from postroom.reports.service import ReportService
from postroom.stats.sql_stats import SqlStats
from postroom.store.engine import WriteGate
from postroom.submission.service import SubmissionService


@dataclass(frozen=True)
class Reports:
    service: ReportService
    scheduler: ReportScheduler


def default_sender(settings: Settings) -> str:
    domain = settings.domains[0].name if settings.domains else settings.smtp.hostname
    return f"postroom reports <reports@{domain}>"


def reports(settings: Settings, engine: AsyncEngine, gate: WriteGate | None, clock: Clock, metrics: Metrics,
            submissions: SubmissionService | None, product: ProductSource | None) -> Reports:  # fmt: skip
    mrr = MrrService(SqlLedger(engine, gate), settings.mrr)
    sources = Sources(mrr, SqlBillingFigures(engine), SqlStats(engine), product, settings.reports.locale)
    runs = SqlReportRuns(engine, gate)
    owner = f"{socket.gethostname()}:{os.getpid()}"
    service = ReportService(settings.reports, lambda: SectionBuilder(sources), runs, submissions, clock, metrics,
                            hostname=settings.smtp.hostname, sender=default_sender(settings), owner=owner,
                            policies=mrr.policies)  # fmt: skip
    scheduler = ReportScheduler(settings.reports, runs, service, clock, owner=owner, metrics=metrics)
    return Reports(service, scheduler)
