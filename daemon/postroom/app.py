"""The composition root: builds every component from the settings, runs them, handles signals.

Only this module wires. Resources open on one AsyncExitStack; components run in one TaskGroup with
named tasks; systemd hears READY=1 once every listener is bound. SIGTERM/SIGINT set `stop`: ingress
closes first, then the group committer flushes what was already acknowledged-in-progress, while the
delivery worker finishes its batch within its grace period. Correctness never depends on this
orderly path: leases and the reaper make `kill -9` safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping

import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from postroom.config import Settings
from postroom.core.clock import Clock, SystemClock
from postroom.core.errors import PostroomError
from postroom.core.types import INHOUSE_ROUTE, DeliveryState, Submission
from postroom.delivery.mx import Destination, MxCache, MxRoute, resolve
from postroom.delivery.transport import build_transport
from postroom.delivery.worker import DeliveryWorker, WorkerOptions
from postroom.dkim.keyring import Keyring, SigningKeys
from postroom.dkim.preparer import DkimPreparer
from postroom.dkim.rotation import KeyMonitor
from postroom.domains.lookup import DnsLookup
from postroom.domains.resolver import lookup_for
from postroom.domains.service import DomainChecker
from postroom.http.domains import DomainRoutes
from postroom.dkim.signing import Signer
from postroom.http.messages import MessageRoutes
from postroom.http.server import HttpServer, build_app
from postroom.metrics import Metrics
from postroom.queue.committer import GroupCommitter
from postroom.queue.retry import RetryPolicy
from postroom.queue.protocols import QueueStore, QueueViews
from postroom.queue.sql_store import SqlQueueStore
from postroom.queue.sqlite_store import SqliteQueueStore
from postroom.queue.views import SqlQueueViews
from postroom.service_notify import ServiceNotifier
from postroom.smtp.handlers import Authenticator, MxHandler, SubmissionHandler
from postroom.smtp.listeners import SmtpListeners, server_tls_context
from postroom.smtp.throttle import LoginThrottle
from postroom.store.credentials import SqlApiKeys, SqlSmtpUsers
from postroom.store.dkim_keys import SqlDkimKeys
from postroom.store.engine import WriteGate, create_engine, translate_errors
from postroom.store.sqlite_writer import SqliteBatchWriter
from postroom.store.schema import require_current
from postroom.submission.service import SubmissionService
from postroom.submission.steps import standard_steps

logger = logging.getLogger(__name__)

GAUGE_REFRESH_SECONDS = 5.0


def mx_cache(lookup: DnsLookup, clock: Clock, metrics: Metrics) -> MxCache:
    """MX answers for direct delivery, cached, with lookups counted by outcome."""

    async def counted(domain: str) -> Destination:
        destination = await resolve(domain, lookup, random.random)
        if isinstance(destination, MxRoute):
            metrics.mx_lookups.labels("route").inc()
        else:
            metrics.mx_lookups.labels("permanent" if destination.permanent else "temporary").inc()
        return destination

    return MxCache(counted, clock)


def worker_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


class QueueGauges:
    """Refreshes queue depth and oldest age from the database (shared by every daemon)."""

    def __init__(self, views: QueueViews, metrics: Metrics, clock: Clock):
        self._views = views
        self._metrics = metrics
        self._clock = clock

    async def refresh(self) -> None:
        depth = await self._views.depth_by_state()
        for state in DeliveryState:
            self._metrics.queue_depth.labels(state.value).set(depth.get(state.value, 0))
        now = self._clock.now()
        oldest = await self._views.oldest_active_created_at()
        self._metrics.oldest_queued_age.set(0.0 if oldest is None else max(0.0, now - oldest))
        deferred = await self._views.oldest_active_created_at(DeliveryState.DEFERRED)
        self._metrics.oldest_deferred_age.set(0.0 if deferred is None else max(0.0, now - deferred))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception as exc:  # a gauge refresh must never take the daemon down
                logger.warning("queue gauges not refreshed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=GAUGE_REFRESH_SECONDS)


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
        self.notifier = ServiceNotifier(os.environ if environ is None else environ)
        # Bound by `postroom serve` (postroom.listen); None: the listeners bind their own.
        self.listen_sockets = listen_sockets
        self.dns_lookup = dns_lookup
        self.ready = asyncio.Event()
        self._reload = asyncio.Event()
        self.smtp_bound: dict[str, tuple[str, int]] = {}
        self.http_bound: tuple[str, int] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        async with contextlib.AsyncExitStack() as stack:
            engine = create_engine(settings.database)
            stack.push_async_callback(engine.dispose)
            await require_current(engine)

            gate = WriteGate.for_database(settings.database)
            stack.callback(gate.close)
            writer = SqliteBatchWriter(settings.database) if settings.database.is_sqlite else None
            if writer is not None:
                stack.callback(writer.close)
            store: QueueStore = SqliteQueueStore(engine, writer, gate) if writer else SqlQueueStore(engine, gate)
            views = SqlQueueViews(engine)

            lookup = self.dns_lookup or lookup_for(settings.delivery.dns_resolver)
            signing_keys = SigningKeys(settings.domains, Keyring(Signer([])))
            signing_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dkim")
            stack.callback(signing_pool.shutdown, wait=True)
            key_monitor = KeyMonitor(
                SqlDkimKeys(engine),
                signing_keys,
                lookup,
                self.clock,
                interval=settings.dkim.rotation_check_interval,
                overlap=settings.dkim.rotation_overlap,
            )
            await key_monitor.reload()
            worker: DeliveryWorker | None = None
            if not settings.delivery.hold:
                transport = build_transport(
                    settings.delivery,
                    settings.smtp.hostname,
                    mx_cache(lookup, self.clock, self.metrics),
                )
                worker = DeliveryWorker(
                    store,
                    {INHOUSE_ROUTE: transport},
                    RetryPolicy(
                        base=settings.delivery.retry_base,
                        cap=settings.delivery.retry_max,
                        max_age=settings.delivery.max_age,
                    ),
                    self.clock,
                    self.metrics,
                    WorkerOptions(
                        owner=worker_owner(),
                        batch_size=settings.delivery.batch_size,
                        lease_seconds=settings.delivery.lease_seconds,
                        poll_interval=settings.delivery.poll_interval,
                        drain_grace=settings.delivery.drain_grace,
                        max_in_flight=settings.delivery.max_in_flight,
                        processes=settings.processes.resolved(os.cpu_count()),
                        throttle_backoff=settings.delivery.throttle_backoff,
                        throttle_backoff_max=settings.delivery.throttle_backoff_max,
                    ),
                    prepare=DkimPreparer(signing_keys, self.clock, self.metrics, signing_pool),
                )
            def committed(batch: list[Submission], seconds: float) -> None:
                self.metrics.commit_batch.observe(len(batch))
                self.metrics.commit_seconds.observe(seconds)

            # Mail this process accepts goes to its own worker in memory, leased to it in the
            # commit itself (or, while the worker is full, stays queued until it has room).
            committer = GroupCommitter(store, self.clock, on_commit=committed, handoff=worker)
            submissions = SubmissionService(
                standard_steps(signing_keys, settings.smtp.max_message_size),
                store, self.clock, self.metrics, committer,
            )  # fmt: skip

            tls: ssl.SSLContext | None = None
            if settings.smtp.tls_cert:
                tls = server_tls_context(settings.smtp.tls_cert, settings.smtp.tls_key)
            listeners = SmtpListeners(
                settings.smtp,
                SubmissionHandler(
                    submit=submissions.submit,
                    clock=self.clock,
                    metrics=self.metrics,
                    hostname=settings.smtp.hostname,
                    max_recipients=settings.smtp.max_recipients,
                    trusted_networks=settings.smtp.trusted_networks,
                ),
                MxHandler(self.metrics),
                Authenticator(
                    SqlSmtpUsers(engine),
                    LoginThrottle(
                        self.clock,
                        settings.smtp.login_failure_limit,
                        settings.smtp.login_failure_window,
                    ),
                    self.metrics,
                ),
                self.metrics,
                tls,
                sockets=self.listen_sockets,
            )

            async def readiness() -> str | None:
                if not self.ready.is_set():
                    return "starting or stopping"
                try:
                    with translate_errors("readiness check"):
                        async with engine.connect() as conn:
                            await conn.execute(sa.text("SELECT 1"))
                except Exception as exc:
                    return f"database unavailable: {exc}"
                return None

            http = HttpServer(
                settings.http,
                build_app(
                    settings.http,
                    SqlApiKeys(engine),
                    MessageRoutes(submissions, views, self.clock, self.metrics, settings.smtp.hostname),
                    self.metrics,
                    readiness,
                    DomainRoutes(
                        DomainChecker(
                            settings.domains,
                            SqlDkimKeys(engine),
                            lookup,
                            self.metrics,
                            sending_ips=settings.delivery.sending_ips,
                            mx_host=settings.smtp.hostname,
                        )
                    ),
                ),
                sockets=self.listen_sockets,
            )
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
                tasks.create_task(QueueGauges(views, self.metrics, self.clock).run(stop), name="gauges")
                tasks.create_task(key_monitor.run(stop), name="dkim-keys")
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
