"""The composition root: builds every component from the settings, runs them, handles signals.

Only this module wires. Resources open on one AsyncExitStack; components run in one TaskGroup with
named tasks; systemd hears READY=1 once every listener is bound. SIGTERM/SIGINT set `stop`: ingress
closes first, then the group committer flushes what was already acknowledged-in-progress, while the
delivery worker finishes its batch within its grace period. Correctness never depends on this
orderly path: leases and the reaper make `kill -9` safe.

Every ingress reaches the queue through the one `SubmissionService`; every delivery goes through
the transport its route names; features that follow what happened read the event outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import sqlalchemy as sa
from aiohttp import web
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom import __version__
from postroom.config import Settings
from postroom.core.clock import Clock, SystemClock
from postroom.core.errors import PostroomError
from postroom.core.types import INHOUSE_ROUTE, LOOPS_ROUTE, SHADOW_ROUTE, Submission
from postroom.bounces.classify import reason_of_reply
from postroom.bounces.dsn_notify import DsnConsumer
from postroom.bounces.intake import SqlBounceIntake
from postroom.bounces.parser import parse_bounce
from postroom.bounces.records import SqlBounceRecords
from postroom.bounces.return_path import VerpReturnPaths
from postroom.contacts.service import ContactService
from postroom.contacts.sql_store import SqlContactStore
from postroom.delivery.mx import counted_mx_cache
from postroom.delivery.transport import Transport, build_transport
from postroom.delivery.worker import DeliveryWorker, WorkerOptions
from postroom.dkim.keyring import Keyring, SigningKeys
from postroom.dkim.preparer import DkimPreparer
from postroom.dkim.rotation import KeyMonitor
from postroom.dkim.signing import Signer
from postroom.domains.lookup import DnsLookup
from postroom.domains.resolver import lookup_for
from postroom.domains.service import DomainChecker
from postroom.events.models import EventConsumer, StartAt, Subscription
from postroom.events.outbox import EventOutbox
from postroom.exports.model import ExportRegistry
from postroom.exports.sql_kinds import standard_kinds
from postroom.http.app import Mount, RouteGroup, build_app
from postroom.billing.export_kinds import revenue_kinds
from postroom.reports.alerts import ReportAlerts
from postroom.reports.feature import Reports, default_sender
from postroom.reports.feature import reports as reports_feature
from postroom.reports.product import PostHogObserver, product_source
from postroom.reports.routes import ReportRoutes
from postroom.sources.posthog.alerts import PostHogAlertRoutes
from postroom.billing.feature import Revenue, revenue, stripe_reader
from postroom.mrr.ledger import SqlLedger
from postroom.mrr.service import MrrService
from postroom.supervisor import CHILD_ENV
from postroom.http.domains import DomainRoutes
from postroom.http.exports import ExportRoutes
from postroom.http.loops_webhooks import LoopsWebhookRoutes
from postroom.http.routes import RouteRoutes
from postroom.http.messages import MessageRoutes
from postroom.http.ratelimit import rate_limit
from postroom.http.openapi_routes import OpenApiRoutes
from postroom.http.operations import OperationsRoutes
from postroom.http.server import HttpServer
from postroom.http.suppressions import SuppressionRoutes, UnsubscribeRoutes
from postroom.http.stats import StatsRoutes
from postroom.http.templates import TemplateRoutes
from postroom.http.webhooks import WebhookRoutes
from postroom.loops.app import loops_api
from postroom.loops.errors import over_quota as loops_over_quota
from postroom.loops.sql_store import SqlTransactionalNames
from postroom.metrics import Metrics
from postroom.queue.committer import GroupCommitter
from postroom.ratelimit.policy import RateLimiter, RatePolicy
from postroom.ratelimit.table import RATE_LIMIT_FILE_ENV, RateTable
from postroom.queue.gauges import QueueGauges
from postroom.queue.protocols import QueueStore
from postroom.queue.retry import RetryPolicy
from postroom.queue.sql_store import SqlQueueStore
from postroom.queue.sqlite_store import SqliteQueueStore
from postroom.queue.views import SqlQueueViews
from postroom.service_notify import ServiceNotifier
from postroom.shadow.announce import RouteEvents
from postroom.shadow.compare import SqlComparison
from postroom.shadow.fallback import FallbackConsumer
from postroom.shadow.guard import Guard
from postroom.shadow.loops_events_store import SqlLoopsEvents
from postroom.shadow.loops_transport import LoopsTransport, build_loops_transport
from postroom.shadow.route_store import SqlRouteStore
from postroom.shadow.service import RouteService
from postroom.shadow.settings import ShadowSettings
from postroom.shadow.sink import CaptureSink, SeedSink
from postroom.shadow.step import RoutingStep
from postroom.stats.gauges import RateGauges
from postroom.stats.sql_stats import SqlStats
from postroom.sources.posthog.capture import PostHogCapture
from postroom.smtp.handlers import Authenticator, MxHandler, SubmissionHandler
from postroom.smtp.listeners import SmtpListeners, server_tls_context
from postroom.smtp.postmaster import PostmasterForward, PostmasterMail, PostmasterMaildir
from postroom.smtp.throttle import LoginLimits
from postroom.store.credentials import SqlApiKeys, SqlSmtpUsers
from postroom.store.dkim_keys import SqlDkimKeys
from postroom.store.engine import WriteGate, create_engine, translate_errors
from postroom.store.login_throttle import SqlLoginThrottle
from postroom.store.schema import require_current
from postroom.store.sqlite_writer import SqliteBatchWriter
from postroom.submission.budget import ByteBudget
from postroom.submission.service import SubmissionService
from postroom.submission.steps import Step, standard_steps
from postroom.suppression.rules import SoftPolicy
from postroom.suppression.service import SuppressionConsumer, SuppressionScreen, SuppressionService
from postroom.suppression.sql_store import SqlSuppressionStore
from postroom.suppression.unsubscribe import ListUnsubscribeHeaders
from postroom.templates.service import TemplateService
from postroom.templates.sql_store import SqlTemplateStore
from postroom.webhooks.consumer import WebhookConsumer
from postroom.webhooks.sender import WebhookSender, http_session
from postroom.webhooks.service import WebhookService
from postroom.webhooks.store import SqlWebhookStore

logger = logging.getLogger(__name__)


def submission_steps(
    settings: Settings, signing_keys: SigningKeys, clock: Clock, routing: Step | None = None
) -> list[Step]:
    """The steps of the submission door, the same for the daemon and `postroom send`: policy and
    size, then (on non-transactional streams) the one-click unsubscribe header, which must be in
    place before the message is stored and signed, then shadow mode's routing (Loops or in-house
    per recipient). The suppression list is the queue's screen (`SuppressionScreen`): it is
    applied in the transaction that queues the message."""
    steps = standard_steps(signing_keys, settings.smtp.max_message_size)
    if settings.http.public_url and settings.bounces.verp_keys:
        steps.append(ListUnsubscribeHeaders(settings.http.public_url, settings.bounces.verp_keys, clock))
    if routing is not None:
        steps.append(routing)
    return steps


def route_service(settings: Settings, engine: AsyncEngine, gate: WriteGate | None, clock: Clock,
                  metrics: Metrics) -> RouteService:  # fmt: skip
    return RouteService(SqlRouteStore(engine, gate), clock, metrics, loops_templates=settings.loops.templates,
                        loops_configured=bool(settings.loops.api_key),
                        refresh_interval=settings.shadow.refresh_interval)  # fmt: skip


def export_registry(engine: AsyncEngine, clock: Clock, settings: Settings) -> ExportRegistry:
    """The kinds `postroom export` and `GET /v1/exports/{kind}` offer; a package adds its own here."""
    mrr = MrrService(SqlLedger(engine), settings.mrr)
    return ExportRegistry([*standard_kinds(engine, clock), *revenue_kinds(engine, mrr)])


def routing_key(settings: ShadowSettings) -> bytes:
    """The key of the split's hash; unset, a fixed one (anyone could then compute who goes where)."""
    return (settings.routing_key or "postroom routing key (unset)").encode()


def shadow_capture_dir(settings: Settings) -> Path:
    return Path(settings.shadow.capture_dir or Path(settings.state_dir) / "shadow")


def worker_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


@dataclass(frozen=True)
class ReportWiring:
    reports: Reports
    routes: tuple[RouteGroup, ...]


@dataclass(frozen=True)
class Storage:
    engine: AsyncEngine
    gate: WriteGate
    store: QueueStore
    views: SqlQueueViews
    suppressions: SuppressionService


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
        environ: Mapping[str, str] | None = None,
        listen_sockets: Mapping[str, list[socket.socket]] | None = None,
        dns_lookup: DnsLookup | None = None,
    ):
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = Metrics(registry or CollectorRegistry())
        self.environ = os.environ if environ is None else environ
        self.notifier = ServiceNotifier(self.environ)
        # Bound by `postroom serve` (postroom.listen); None: the listeners bind their own.
        self.listen_sockets = listen_sockets
        self.dns_lookup = dns_lookup
        self.ready = asyncio.Event()
        self._reload = asyncio.Event()
        # Template renders (validation, Jinja, CSS inlining) run here, off the event loop.
        self._render_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="render")
        # Bytes of messages being received, shared by both ingresses of this process.
        self.budget = ByteBudget(settings.limits.bytes_in_flight, self.metrics.ingress_bytes)
        self.smtp_bound: dict[str, tuple[str, int]] = {}
        self.http_bound: tuple[str, int] | None = None
        self.http_app: web.Application | None = None  # the HTTP API as served, once built
        self.reports: Reports | None = None  # the report service and scheduler, once built

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self._render_pool.shutdown, wait=False, cancel_futures=True)
            storage = await self._open_storage(stack)
            lookup = self.dns_lookup or lookup_for(settings.delivery.dns_resolver)
            signing_keys = SigningKeys(settings.domains, Keyring(Signer([])))
            key_monitor = KeyMonitor(
                SqlDkimKeys(storage.engine), signing_keys, lookup, self.clock,
                interval=settings.dkim.rotation_check_interval, overlap=settings.dkim.rotation_overlap,
            )  # fmt: skip
            await key_monitor.reload()
            return_paths = VerpReturnPaths(settings.domains, settings.bounces, self.clock)
            routes = route_service(settings, storage.engine, storage.gate, self.clock, self.metrics)
            await routes.refresh()
            worker = self._delivery_worker(stack, storage, signing_keys, lookup, return_paths)
            # Mail this process accepts goes to its own worker in memory, leased to it in the
            # commit itself (or, while the worker is full, stays queued until it has room).
            committer = GroupCommitter(storage.store, self.clock, on_commit=self._committed, handoff=worker)
            submissions = SubmissionService(
                submission_steps(settings, signing_keys, self.clock,
                                 RoutingStep(routes, routing_key(settings.shadow), self.metrics)),
                storage.store, self.clock, self.metrics, committer,
            )  # fmt: skip
            # Features that follow what happened (webhooks, suppression, capture, reports)
            # subscribe here; each reads the event stream through its own durable cursor.
            bounces = settings.bounces
            soft = SoftPolicy(bounces.soft_failure_limit, bounces.soft_failure_window,
                              bounces.soft_suppression_days * 86400.0)  # fmt: skip
            consumers: list[EventConsumer | Subscription] = [
                SuppressionConsumer(soft, self.metrics, reason_of_reply),
                # From the end: fallbacks only for failures after it is first turned on.
                Subscription(FallbackConsumer(routes, self.metrics), StartAt.END),
            ]
            if settings.smtp.dsn == "failures":
                # From the end when first turned on: no reports about failures from before.
                dsn = DsnConsumer(settings.smtp.hostname, self.clock, self.metrics)
                consumers.append(Subscription(dsn, StartAt.END))
            webhook_store = SqlWebhookStore(storage.engine, storage.gate)
            # The webhook sender's own HTTP session: its connection limits are its alone.
            webhook_session = http_session(settings.webhooks)
            stack.push_async_callback(webhook_session.close)
            sender: WebhookSender | None = None
            if settings.webhooks.enabled:
                consumers.append(WebhookConsumer(self.clock))
                sender = WebhookSender(webhook_store, webhook_session, settings.webhooks, self.clock, self.metrics)
            outbox = EventOutbox(storage.engine, storage.gate, self.clock, self.metrics, consumers)
            listeners = self._smtp_listeners(stack, storage, submissions, return_paths)
            webhooks = WebhookService(webhook_store, self.clock)
            revenue = self._revenue(storage, stack)
            report_groups = self._reports(storage, submissions, stack)
            http = self._http_server(storage, submissions, lookup, stack, webhooks, webhook_session, routes,
                                     (*revenue.routes, *report_groups.routes))  # fmt: skip

            stack.push_async_callback(listeners.close)
            await listeners.start()
            stack.push_async_callback(http.close)
            await http.start()
            self.smtp_bound, self.http_bound = listeners.bound, http.bound

            backend_stop = asyncio.Event()
            async with asyncio.TaskGroup() as tasks:
                committer_task = tasks.create_task(committer.run(backend_stop), name="committer")
                ingress = [
                    tasks.create_task(listeners.run(stop), name="smtp"),
                    tasks.create_task(http.run(stop), name="http"),
                ]
                if worker is not None:
                    tasks.create_task(worker.run(stop), name="delivery")
                if outbox.consumers:
                    tasks.create_task(outbox.run(stop), name="event-outbox")
                if sender is not None:
                    tasks.create_task(sender.run(stop), name="webhook-sender")
                if settings.posthog_capture.enabled:
                    capture = PostHogCapture(storage.engine, storage.gate, self.clock, self.metrics,
                                             settings.posthog_capture)  # fmt: skip
                    tasks.create_task(capture.run(stop), name="posthog-capture")
                tasks.create_task(QueueGauges(storage.views, self.metrics, self.clock).run(stop), name="gauges")
                tasks.create_task(key_monitor.run(stop), name="dkim-keys")
                rates = RateGauges(SqlStats(storage.engine), settings.stats, self.clock, self.metrics)
                tasks.create_task(rates.run(stop), name="rate-gauges")
                tasks.create_task(routes.run(stop), name="routes")
                tasks.create_task(revenue.applier.run(stop), name="billing")
                if settings.reports.enabled:
                    tasks.create_task(report_groups.reports.scheduler.run(stop), name="reports")
                if settings.shadow.guard.enabled:
                    guard = Guard(routes, SqlComparison(storage.engine), self.clock, self.metrics, settings.shadow.guard,
                                  settings.shadow.ramp, RouteEvents(storage.engine, storage.gate))  # fmt: skip
                    tasks.create_task(guard.run(stop), name="route-guard")
                tasks.create_task(self._reload_on_request(key_monitor, stop), name="reload")
                tasks.create_task(self.notifier.run_watchdog(stop), name="watchdog")
                await asyncio.sleep(0)  # let the committer start accepting before READY
                self.ready.set()
                self.metrics.ready.set(1)
                self.notifier.ready(self._status_line())
                logger.info("postroom ready: %s", self._status_line())

                await stop.wait()
                self.ready.clear()
                self.metrics.ready.set(0)
                self.notifier.stopping()
                logger.info("stopping: closing ingress, then flushing the queue")
                await asyncio.wait(ingress)
                backend_stop.set()
                await committer_task

    async def _open_storage(self, stack: contextlib.AsyncExitStack) -> Storage:
        """The engine (schema checked), the write gate and the queue: on SQLite its hot paths on
        the writer thread."""
        settings = self.settings.database
        engine = create_engine(settings)
        stack.push_async_callback(engine.dispose)
        await require_current(engine)
        gate = WriteGate.for_database(settings)
        stack.callback(gate.close)
        screen = SuppressionScreen()
        store: QueueStore = SqlQueueStore(engine, gate, screen)
        if settings.is_sqlite:
            writer = SqliteBatchWriter(settings)
            stack.callback(writer.close)
            store = SqliteQueueStore(engine, writer, gate, screen)
        suppressions = SuppressionService(SqlSuppressionStore(engine, gate), self.clock, self.metrics)
        return Storage(engine, gate, store, SqlQueueViews(engine), suppressions)


    def _delivery_worker(
        self,
        stack: contextlib.AsyncExitStack,
        storage: Storage,
        signing_keys: SigningKeys,
        lookup: DnsLookup,
        return_paths: VerpReturnPaths,
    ) -> DeliveryWorker | None:
        delivery = self.settings.delivery
        if delivery.hold:
            return None
        signing_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dkim")
        stack.callback(signing_pool.shutdown, wait=True)
        inhouse = build_transport(delivery, self.settings.smtp.hostname,
                                  counted_mx_cache(lookup, self.clock, self.metrics))  # fmt: skip
        transports: dict[str, Transport] = {INHOUSE_ROUTE: inhouse}
        if self.settings.loops.api_key:
            transports[LOOPS_ROUTE] = self._loops_transport(stack)
        sink = self._shadow_sink(lookup)
        if sink is not None:
            transports[SHADOW_ROUTE] = sink
        return DeliveryWorker(
            storage.store,
            transports,
            RetryPolicy(base=delivery.retry_base, cap=delivery.retry_max, max_age=delivery.max_age),
            self.clock,
            self.metrics,
            WorkerOptions(
                owner=worker_owner(),
                batch_size=delivery.batch_size,
                lease_seconds=delivery.lease_seconds,
                poll_interval=delivery.poll_interval,
                drain_grace=delivery.drain_grace,
                max_in_flight=delivery.max_in_flight,
                processes=self.settings.processes.resolved(os.cpu_count()),
                throttle_backoff=delivery.throttle_backoff,
                throttle_backoff_max=delivery.throttle_backoff_max,
            ),
            prepare=DkimPreparer(signing_keys, self.clock, self.metrics, signing_pool),
            return_path=return_paths if return_paths.enabled else None,
        )

    def _shadow_sink(self, lookup: DnsLookup) -> Transport | None:
        """Where shadow copies go (docs/shadow-mode.md); None (copies wait, deferred, and the
        reason is logged) when the capture directory cannot be made."""
        shadow = self.settings.shadow
        if shadow.sink == "seeds":
            # Its own transport (connections, lanes): copies never share a session with real mail.
            seeds_via = build_transport(self.settings.delivery, self.settings.smtp.hostname,
                                        counted_mx_cache(lookup, self.clock, self.metrics))  # fmt: skip
            return SeedSink(seeds_via, shadow.seeds)
        directory = shadow_capture_dir(self.settings)
        try:
            return CaptureSink(directory)
        except OSError as exc:
            logger.error("shadow copies cannot be captured to %s (%s): set [shadow] capture_dir", directory, exc)
            return None

    def _loops_transport(self, stack: contextlib.AsyncExitStack) -> LoopsTransport:
        """Loops as a delivery route: its own HTTP session, and its rate limit in the table every
        process of the daemon shares (this process's own when it runs alone)."""
        loops = self.settings.loops
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20))
        stack.push_async_callback(session.close)
        shared = self.environ.get(RATE_LIMIT_FILE_ENV)
        table = (RateTable.shared(Path(shared), self.clock.now) if shared
                 else RateTable.in_memory(self.clock.now))  # fmt: skip
        stack.callback(table.close)
        return build_loops_transport(loops, session, table, self.clock, self.metrics)

    def _committed(self, batch: list[Submission], seconds: float) -> None:
        self.metrics.commit_batch.observe(len(batch))
        self.metrics.commit_seconds.observe(seconds)

    def _smtp_listeners(
        self, stack: contextlib.AsyncExitStack, storage: Storage, submissions: SubmissionService,
        return_paths: VerpReturnPaths,
    ) -> SmtpListeners:
        smtp = self.settings.smtp
        tls: ssl.SSLContext | None = None
        if smtp.tls_cert:
            tls = server_tls_context(smtp.tls_cert, smtp.tls_key)
        handler = SubmissionHandler(
            submit=submissions.submit, clock=self.clock, metrics=self.metrics, hostname=smtp.hostname,
            max_recipients=smtp.max_recipients, trusted_networks=smtp.trusted_networks,
        )  # fmt: skip
        # Password checks (scrypt) get their own two threads: they neither starve nor wait behind
        # the rest of the process's thread work.
        hashing = ThreadPoolExecutor(max_workers=2, thread_name_prefix="smtp-auth")
        stack.callback(hashing.shutdown, wait=False, cancel_futures=True)
        limits = LoginLimits(
            limit=smtp.login_failure_limit, network_limit=smtp.login_network_failure_limit,
            user_limit=smtp.login_user_failure_limit, window=smtp.login_failure_window,
            backoff_max=smtp.login_backoff_max, trust_period=smtp.login_trust_period,
        )  # fmt: skip
        throttle = SqlLoginThrottle(storage.engine, storage.gate, window=limits.window,
                                    blocks=limits.blocks, trust_period=limits.trust_period)  # fmt: skip
        authenticator = Authenticator(SqlSmtpUsers(storage.engine, hashing), throttle, limits,
                                      self.clock, self.metrics)  # fmt: skip
        # Until the full parser of issue 13 (`bounces.parse`) lands, bounces are read by the small
        # RFC 3464 / RFC 5965 reader.
        intake = SqlBounceIntake(storage.engine, storage.gate, parse_bounce, self.clock, self.metrics,
                                 max_stored=self.settings.bounces.max_stored_bounce)  # fmt: skip
        mx = MxHandler(self.metrics, self.clock, postmaster=self._postmaster(submissions),
                       postmaster_domains=self.settings.postmaster_domains, bounces=intake,
                       return_paths=return_paths if return_paths.enabled else None,
                       feedback_addresses=frozenset(self.settings.bounces.feedback_addresses))  # fmt: skip
        return SmtpListeners(smtp, handler, mx, authenticator, self.metrics, tls,
                             sockets=self.listen_sockets, budget=self.budget)  # fmt: skip

    def _postmaster(self, submissions: SubmissionService) -> PostmasterMail:
        """Mail to postmaster at the MX: forwarded to the operator, or kept in a Maildir."""
        settings = self.settings
        if settings.smtp.postmaster_forward:
            return PostmasterForward(submissions.submit, forward_to=settings.smtp.postmaster_forward,
                                     from_domain=settings.domains[0].name, hostname=settings.smtp.hostname)  # fmt: skip
        return PostmasterMaildir(Path(settings.state_dir) / "postmaster", settings.smtp.hostname)

    def _http_server(self, storage: Storage, submissions: SubmissionService, lookup: DnsLookup,
                     stack: contextlib.AsyncExitStack, webhooks: WebhookService,
                     webhook_session: aiohttp.ClientSession, routes: RouteService,
                     feature_routes: Sequence[RouteGroup] = ()) -> HttpServer:  # fmt: skip
        settings = self.settings
        checker = DomainChecker(
            settings.domains, SqlDkimKeys(storage.engine), lookup, self.metrics,
            sending_ips=settings.delivery.sending_ips, mx_host=settings.smtp.hostname,
        )  # fmt: skip
        templates = TemplateService(SqlTemplateStore(storage.engine), self.clock, self._render_pool)
        groups: list[RouteGroup] = [
            OperationsRoutes(self.metrics, lambda: self._readiness(storage.engine)),
            OpenApiRoutes(__version__),
            MessageRoutes(submissions, storage.views, self.clock, self.metrics, settings.smtp.hostname,
                          templates),  # fmt: skip
            TemplateRoutes(templates, submissions, self.clock, settings.smtp.hostname),
            DomainRoutes(checker),
            SuppressionRoutes(storage.suppressions, SqlBounceRecords(storage.engine)),
            WebhookRoutes(webhooks, webhook_session),
            StatsRoutes(SqlStats(storage.engine)),
            RouteRoutes(routes, SqlComparison(storage.engine), self.clock),
            ExportRoutes(export_registry(storage.engine, self.clock, settings), self.metrics, self.clock),
            *feature_routes,
        ]
        loops_events = SqlLoopsEvents(storage.engine, storage.gate, settings.loops.templates,
                                      settings.loops.webhook_match_window, self.clock, self.metrics)  # fmt: skip
        groups.append(LoopsWebhookRoutes(loops_events, settings.loops.webhook_signing_secrets, self.clock,
                                         self.metrics))  # fmt: skip
        if settings.bounces.verp_keys:
            groups.append(UnsubscribeRoutes(storage.suppressions, settings.bounces.verp_keys, self.clock, self.metrics))
        api_keys = SqlApiKeys(storage.engine)
        limiter = self._rate_limiter(stack)
        loops = loops_api(
            api_keys=api_keys, templates=templates, names=SqlTransactionalNames(storage.engine),
            contacts=ContactService(SqlContactStore(storage.engine),
                                    [item.mailing_list() for item in settings.contacts.lists], self.clock,
                                    erase_suppression=storage.suppressions.erase),
            suppressions=storage.suppressions,
            submissions=submissions, settings=settings.loops, rules=settings.events, clock=self.clock,
            metrics=self.metrics, hostname=settings.smtp.hostname, sending_ips=settings.delivery.sending_ips,
            extra_middlewares=[rate_limit(limiter, loops_over_quota, self.metrics)] if limiter else [],
        )  # fmt: skip
        app = build_app(settings.http, api_keys, self.metrics, groups, [Mount("/api", loops)],
                        budget=self.budget, limiter=limiter)  # fmt: skip
        self.http_app = app
        return HttpServer(settings.http, app, sockets=self.listen_sockets, metrics=self.metrics)

    def _revenue(self, storage: Storage, stack: contextlib.AsyncExitStack) -> Revenue:
        """Stripe in and MRR out; only the first process of a daemon runs the nightly reconciliation."""
        reader = stripe_reader(self.settings.stripe)
        if reader is not None:
            stack.push_async_callback(reader.aclose)
        first = self.environ.get(CHILD_ENV, "0") == "0"
        return revenue(self.settings, storage.engine, storage.gate, self.clock, self.metrics, reader, reconciles=first)

    def _reports(self, storage: Storage, submissions: SubmissionService, stack: contextlib.AsyncExitStack) -> ReportWiring:
        """Reports (their scheduler runs in every process: each run is claimed once for all), their
        API, and PostHog's alert webhooks."""
        settings = self.settings
        product = product_source(settings, observer=PostHogObserver(self.metrics))
        if product is not None:
            stack.push_async_callback(product.aclose)
        made = reports_feature(settings, storage.engine, storage.gate, self.clock, self.metrics, submissions, product)
        self.reports = made
        alerts = ReportAlerts(made.service, submissions, self.clock, sender=default_sender(settings),
                              hostname=settings.smtp.hostname)  # fmt: skip
        stack.push_async_callback(alerts.aclose)
        routes: tuple[RouteGroup, ...] = (
            ReportRoutes(made.service),
            PostHogAlertRoutes(alerts, settings.posthog.webhook_secret, settings.posthog.alerts, self.metrics),
        )
        return ReportWiring(made, routes)

    def _rate_limiter(self, stack: contextlib.AsyncExitStack) -> RateLimiter | None:
        """The HTTP API's per-key quotas, in the table the supervisor shares between this daemon's
        processes (or this process's own when it runs alone)."""
        settings = self.settings.http.rate_limit
        if not settings.enabled:
            return None
        shared = self.environ.get(RATE_LIMIT_FILE_ENV)
        table = (RateTable.shared(Path(shared), self.clock.now) if shared
                 else RateTable.in_memory(self.clock.now))  # fmt: skip
        stack.callback(table.close)
        return RateLimiter(RatePolicy(settings), table)

    async def _readiness(self, engine: AsyncEngine) -> str | None:
        if not self.ready.is_set():
            return "starting or stopping"
        try:
            with translate_errors("readiness check"):
                async with engine.connect() as conn:
                    await conn.execute(sa.text("SELECT 1"))
        except Exception as exc:
            return f"database unavailable: {exc}"
        return None

    def request_reload(self) -> None:
        """SIGHUP: reload what can change without a restart (today: DKIM keys and rotation)."""
        self._reload.set()

    async def _reload_on_request(self, monitor: KeyMonitor, stop: asyncio.Event) -> None:
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                requested = asyncio.ensure_future(self._reload.wait())
                await asyncio.wait({requested, stopping}, return_when=asyncio.FIRST_COMPLETED)
                requested.cancel()
                if stop.is_set():
                    return
                self._reload.clear()
                logger.info("SIGHUP: reloading DKIM keys")
                try:
                    await monitor.check_once()
                except PostroomError as exc:
                    logger.error("reload failed: %s", exc)
        finally:
            stopping.cancel()

    def _status_line(self) -> str:
        parts = [f"{name} {host}:{port}" for name, (host, port) in self.smtp_bound.items()]
        if self.http_bound:
            parts.append(f"http {self.http_bound[0]}:{self.http_bound[1]}")
        mode = "hold" if self.settings.delivery.hold else self.settings.delivery.mode
        return ", ".join(parts) + f"; delivery {mode}"
