"""Revenue wired for the daemon: the billing store and applier, the MRR ledger and service, their
HTTP routes and the MRR gauges. `Daemon.run` builds one and runs its task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.billing.applier import BillingApplier
from postroom.billing.routes import BillingRoutes
from postroom.billing.settings import StripeSettings
from postroom.billing.store import SqlBillingStore
from postroom.billing.sync import StripeSource
from postroom.billing.webhook_routes import StripeWebhookRoutes
from postroom.config import Settings
from postroom.core.clock import Clock
from postroom.http.app import RouteGroup
from postroom.metrics import Metrics
from postroom.mrr.ledger import SqlLedger
from postroom.mrr.routes import MrrRoutes
from postroom.mrr.service import MrrService
from postroom.store.engine import WriteGate

if TYPE_CHECKING:
    from postroom.billing.stripe_api import StripeReader


@dataclass(frozen=True)
class Revenue:
    store: SqlBillingStore
    service: MrrService
    applier: BillingApplier
    routes: tuple[RouteGroup, ...]


def stripe_reader(settings: StripeSettings) -> StripeReader | None:
    """The API reader, or None without an api_key (webhooks only: no backfill, reconcile or re-fetch).
    The stripe SDK is imported here, so a daemon without an API key never loads it."""
    if not settings.api_key:
        return None
    from postroom.billing.stripe_api import StripeReader
    return StripeReader(settings.api_key, api_base=settings.api_base, max_network_retries=settings.max_network_retries,
                        timeout=settings.timeout)  # fmt: skip


def revenue(settings: Settings, engine: AsyncEngine, gate: WriteGate | None, clock: Clock, metrics: Metrics,
            reader: StripeSource | None, reconciles: bool = True) -> Revenue:  # fmt: skip
    store = SqlBillingStore(engine, settings.mrr.policies(), gate)
    service = MrrService(SqlLedger(engine, gate), settings.mrr)

    async def refresh_gauges() -> None:
        now = await service.current(clock.now())
        metrics.mrr_cents.labels(service.currency).set(now.cents)
        metrics.paying_customers.set(now.paying_customers)

    applier = BillingApplier(store, reader, clock, metrics, settings.stripe, refresh_gauges, reconciles)
    routes: tuple[RouteGroup, ...] = (
        StripeWebhookRoutes(applier, settings.stripe.webhook_secrets, settings.stripe.webhook_tolerance, metrics),
        MrrRoutes(service, clock),
        BillingRoutes(applier, store, reader is not None),
    )
    return Revenue(store, service, applier, routes)
