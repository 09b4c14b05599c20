"""Every Prometheus metric postroom exports, created on an injected registry (no globals).

Names start with `postroom_`. Counters carry the labels DESIGN.md names (stream, route, class,
reason); queue gauges are refreshed from the database by `QueueGauges` in `app`.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def scrape_registry(registry: CollectorRegistry) -> CollectorRegistry:
    """What /metrics exposes: this process's registry, or with several daemon processes
    (prometheus-client's multiprocess mode, set up by the supervisor), all of them summed."""
    if not os.environ.get(MULTIPROCESS_ENV):
        return registry
    combined = CollectorRegistry()
    multiprocess.MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
    return combined

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900,
    3600, 4 * 3600, 24 * 3600,
)  # fmt: skip


class Metrics:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.accepted = Counter(
            "postroom_messages_accepted",
            "Messages accepted and committed to the queue",
            ["source", "stream", "route"],
            registry=registry,
        )
        self.rejected = Counter(
            "postroom_messages_rejected",
            "Submissions refused, by ingress and reason",
            ["source", "reason"],
            registry=registry,
        )
        self.attempted = Counter(
            "postroom_delivery_attempts",
            "Delivery attempts per recipient, by result",
            ["result"],
            registry=registry,
        )
        self.delivered = Counter(
            "postroom_delivered",
            "Recipients delivered",
            ["stream", "route"],
            registry=registry,
        )
        self.deferred = Counter(
            "postroom_deferred",
            "Recipients deferred for a later attempt",
            ["stream", "route"],
            registry=registry,
        )
        self.bounced = Counter(
            "postroom_bounced",
            "Recipients bounced, by class (hard, soft) and reason",
            ["stream", "route", "bounce_class", "reason"],
            registry=registry,
        )
        self.suppressed = Counter(
            "postroom_suppressed",
            "Recipients skipped at submission because they are suppressed, by the entry's source",
            ["stream", "source"],
            registry=registry,
        )
        self.suppressions_added = Counter(
            "postroom_suppressions_added",
            "Suppression list entries added, by source (bounce, complaint, unsubscribe, manual, import)",
            ["source"],
            registry=registry,
        )
        self.suppressions_removed = Counter(
            "postroom_suppressions_removed",
            "Suppression list entries removed",
            ["source"],
            registry=registry,
        )
        self.sender_reputation_bounces = Counter(
            "postroom_sender_reputation_bounces",
            "Bounces whose reason blames the sender (blocked, badreputation, authfailure, ...): never "
            "suppress the recipient, alert the operator",
            ["reason"],
            registry=registry,
        )
        self.bounces_received = Counter(
            "postroom_bounces_received",
            "Mail received at the return path, per reported recipient, by kind and class",
            ["kind", "bounce_class"],
            registry=registry,
        )
        self.dsn_sent = Counter(
            "postroom_dsn_sent",
            "Recipients reported to the envelope sender of SMTP-submitted mail in a queued delivery "
            "status notification (RFC 3464), by the failure (bounced, expired)",
            ["failure"],
            registry=registry,
        )
        self.dsn_skipped = Counter(
            "postroom_dsn_skipped",
            "Failed SMTP-submitted messages that got no delivery status notification, by why "
            "(null_sender, automatic: a report or an auto-submitted message itself)",
            ["why"],
            registry=registry,
        )
        self.unsubscribed = Counter(
            "postroom_unsubscribed",
            "One-click unsubscribes, by stream",
            ["stream"],
            registry=registry,
        )
        self.dead = Counter(
            "postroom_dead",
            "Messages parked as dead after crashing the pipeline",
            registry=registry,
        )
        self.reaped = Counter(
            "postroom_leases_reaped",
            "Deliveries returned to the queue because their worker's lease ran out",
            registry=registry,
        )
        self.queue_depth = Gauge(
            "postroom_queue_depth",
            "Deliveries in the queue by state",
            ["state"],
            registry=registry,
            multiprocess_mode="mostrecent",  # every process reads the same shared queue
        )
        self.oldest_queued_age = Gauge(
            "postroom_queue_oldest_age_seconds",
            "Age of the oldest delivery not yet in a final state",
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.oldest_deferred_age = Gauge(
            "postroom_queue_oldest_deferred_age_seconds",
            "Age (since acceptance) of the oldest deferred delivery",
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.destination_suspended = Gauge(
            "postroom_destination_suspended",
            "1 while this process holds back a destination (throttled, unreachable, daily cap)",
            ["destination", "reason"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.destination_suspensions = Counter(
            "postroom_destination_suspensions",
            "Times a destination was suspended, by reason",
            ["reason"],
            registry=registry,
        )
        self.destination_slowdown = Gauge(
            "postroom_destination_speed_factor",
            "Share of its configured connections and rate a throttled destination may use now",
            ["destination"],
            registry=registry,
            multiprocess_mode="min",
        )
        self.outbound_sessions = Gauge(
            "postroom_outbound_transactions_in_progress",
            "SMTP transactions this process is running to destinations right now",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.mx_lookups = Counter(
            "postroom_mx_lookups",
            "MX resolutions that reached DNS, by outcome (route, permanent, temporary)",
            ["outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "postroom_accept_to_delivered_seconds",
            "Time from acceptance to delivery",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.smtp_sessions = Gauge(
            "postroom_smtp_sessions_active",
            "Open SMTP sessions by listener",
            ["listener"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.smtp_auth = Counter(
            "postroom_smtp_auth",
            "SMTP AUTH attempts by result (ok, failed, throttled)",
            ["result"],
            registry=registry,
        )
        self.http_requests = Counter(
            "postroom_http_requests",
            "HTTP API requests by route and status",
            ["route", "status"],
            registry=registry,
        )
        self.http_rate_limited = Counter(
            "postroom_http_rate_limited",
            "HTTP API requests refused with 429 because their API key was over its quota, by route class",
            ["route_class"],
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "postroom_queue_commit_seconds",
            "Time to write and fsync one group commit",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1, 5),
            registry=registry,
        )
        self.commit_batch = Histogram(
            "postroom_queue_commit_batch_size",
            "Messages written per group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=registry,
        )
        self.dkim_sign_seconds = Histogram(
            "postroom_dkim_sign_seconds",
            "Time to DKIM-sign one message with all its domain's keys (in the signing thread pool)",
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=registry,
        )
        self.dkim_signatures = Counter(
            "postroom_dkim_signatures",
            "Messages prepared for sending, by result (signed; reused: a retry sending the signature"
            " of its first attempt; unsigned: domain not signed here; failed)",
            ["result"],
            registry=registry,
        )
        self.domain_check = Gauge(
            "postroom_domain_check_ok",
            "Last `domains check` verdict per domain and record kind (1 ok, 0 not ok)",
            ["domain", "record"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.ready = Gauge(
            "postroom_ready",
            "1 when the daemon serves traffic (with several processes: all of them)",
            registry=registry,
            multiprocess_mode="livemin",
        )
        # The event outbox (postroom.events): one series per consumer.
        self.events_consumed = Counter(
            "postroom_events_consumed",
            "Events handed to an outbox consumer and committed with its cursor",
            ["consumer"],
            registry=registry,
        )
        self.event_consumer_failures = Counter(
            "postroom_event_consumer_failures",
            "Batches an outbox consumer failed (rolled back and retried later)",
            ["consumer"],
            registry=registry,
        )
        self.event_consumer_stuck = Gauge(
            "postroom_event_consumer_stuck",
            "1 while an outbox consumer has failed the same batch several times in a row",
            ["consumer"],
            registry=registry,
            multiprocess_mode="mostrecent",  # the latest outcome, whichever daemon had it
        )
        self.event_consumer_lag = Gauge(
            "postroom_event_consumer_lag_events",
            "Events committed but not yet consumed, per outbox consumer",
            ["consumer"],
            registry=registry,
            multiprocess_mode="mostrecent",  # every process reads the same cursors
        )
        self.event_consumer_lag_seconds = Gauge(
            "postroom_event_consumer_lag_seconds",
            "Age of the oldest event an outbox consumer has not consumed yet (0: caught up)",
            ["consumer"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        # Bytes of messages being received, against [limits] bytes_in_flight (submission.budget).
        self.ingress_bytes = Gauge(
            "postroom_ingress_bytes_in_flight",
            "Bytes of messages being received (SMTP DATA, HTTP bodies) held in memory now",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.ingress_busy = Counter(
            "postroom_ingress_busy_refusals",
            "Uploads refused for now because [limits] bytes_in_flight was spent, by ingress",
            ["ingress"],
            registry=registry,
        )
        # SMTP sessions whose TLS handshake (STARTTLS) failed; logged only up to a rate.
        self.smtp_tls_failures = Counter(
            "postroom_smtp_tls_failures",
            "Failed TLS handshakes after STARTTLS, by listener",
            ["listener"],
            registry=registry,
        )
        # HTTP connections closed by the server's limits (http.server), by reason.
        self.http_connections_closed = Counter(
            "postroom_http_connections_closed",
            "HTTP connections closed by a limit: too_many_connections (per client), header_timeout",
            ["reason"],
            registry=registry,
        )
        # Loops-compatible API (postroom.loops): events sent, by what they led to.
        self.loops_events = Counter(
            "postroom_loops_events",
            "Events received by POST /api/v1/events/send: recorded, sent (a rule mailed its template), "
            "unsubscribed (a rule's mail skipped for an unsubscribed contact)",
            ["result"],
            registry=registry,
        )
        # Loops as a delivery route (postroom.shadow): requests to Loops' transactional API.
        self.loops_requests = Counter(
            "postroom_loops_requests",
            "Requests to Loops' transactional API by outcome: sent (2xx), duplicate (409: the "
            "Idempotency-Key was used, sent before), retry (429, 5xx, timeout, no connection), "
            "failed (any other 4xx: final)",
            ["outcome"],
            registry=registry,
        )
        self.loops_request_seconds = Histogram(
            "postroom_loops_request_seconds",
            "Time of one request to Loops' transactional API, from sending it to its answer",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.loops_rate_limited = Counter(
            "postroom_loops_rate_limited",
            "Requests to Loops that waited for the rate limit shared by the daemon's processes",
            registry=registry,
        )
        # Outbound webhooks (postroom.webhooks).
        self.webhook_attempts = Counter(
            "postroom_webhook_deliveries",
            "Outbound webhook POSTs by result: delivered (2xx), retry (failed, due again), "
            "failed (failed its last attempt)",
            ["result"],
            registry=registry,
        )
        self.webhook_endpoints_disabled = Counter(
            "postroom_webhook_endpoints_disabled",
            "Webhook endpoints disabled after failing webhooks.disable_after attempts in a row",
            registry=registry,
        )
        self.webhook_queue_depth = Gauge(
            "postroom_webhook_queue_depth",
            "Outbound webhook deliveries by state",
            ["state"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.webhook_queue_oldest_age = Gauge(
            "postroom_webhook_queue_oldest_age_seconds",
            "Age of the oldest outbound webhook delivery not yet delivered or failed",
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        # Loops' webhooks in (postroom.shadow), during the migration.
        self.loops_webhook_events = Counter(
            "postroom_loops_webhook_events",
            "Loops webhooks received, by event (the Loops eventName it acts on, other, unknown: not "
            "verified or not read) and result: applied (matched to a loops delivery), unmatched "
            "(recorded; suppression still fed), duplicate (webhook id seen before), ignored (an event "
            "postroom does not act on), invalid_signature, malformed",
            ["event", "result"],
            registry=registry,
        )
        # The rates mailbox providers judge senders by (postroom.stats), over [stats] rate_window.
        self.bounce_rate = Gauge(
            "postroom_bounce_rate",
            "Bounced (hard and soft, expired included) / sent recipients over the rolling window, by stream",
            ["stream"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.complaint_rate = Gauge(
            "postroom_complaint_rate",
            "Complaints / delivered recipients over the rolling window, by stream",
            ["stream"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        # PostHog capture (postroom.sources.posthog).
        self.posthog_captured = Counter(
            "postroom_posthog_events",
            "Lifecycle events sent to PostHog by result (sent, skipped: not a configured type, failed)",
            ["result"],
            registry=registry,
        )
        self.posthog_alerts = Counter(
            "postroom_posthog_alerts",
            "PostHog alert webhooks received, by result: what the handler did (report, alert_email, ...), "
            "ignored (no [posthog.alerts] rule), invalid_secret, malformed",
            ["result"],
            registry=registry,
        )
        # On-demand exports (postroom.exports).
        self.exports = Counter(
            "postroom_exports",
            "On-demand exports begun, by kind, format (csv, jsonl) and surface (cli, http)",
            ["kind", "format", "surface"],
            registry=registry,
        )
        self.export_rows = Counter(
            "postroom_export_rows",
            "Rows written by on-demand exports, by kind",
            ["kind"],
            registry=registry,
        )
        # Shadow mode (postroom.shadow): routes between Loops and the in-house path.
        self.routed_recipients = Counter(
            "postroom_routed_recipients",
            "Recipients routed by shadow mode, by stream and route (loops, inhouse; shadow: copies to the sink)",
            ["stream", "route"],
            registry=registry,
        )
        self.route_inhouse_share = Gauge(
            "postroom_route_inhouse_share",
            "Percent of a route's recipients the in-house path delivers to, by stream and template "
            "('' for the whole stream): 0 legacy and shadow, N split, 100 inhouse",
            ["stream", "template"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.route_changes = Counter(
            "postroom_route_changes",
            "Route changes by source (manual, guard: a rollback, ramp: a step up)",
            ["source"],
            registry=registry,
        )
        self.route_guard_breaches = Counter(
            "postroom_route_guard_breaches",
            "Guard limits found breached by the in-house path against Loops, by stream and limit",
            ["stream", "limit"],
            registry=registry,
        )
        self.route_guard_state = Gauge(
            "postroom_route_guard_state",
            "1 while the guard's last check of a route found a breach, else 0",
            ["stream", "template"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.stripe_events = Counter(
            "postroom_stripe_events",
            "Stripe webhooks received, by result: applied, duplicate (event id seen before), ignored (a "
            "type that does not move MRR), stale (older than the state applied), flagged (malformed), "
            "refetched (applied from the subscription re-read from Stripe), invalid_signature, malformed",
            ["result"],
            registry=registry,
        )
        self.stripe_event_apply_seconds = Histogram(
            "postroom_stripe_event_apply_seconds",
            "From a Stripe webhook's arrival to its MRR change committed",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 5),
            registry=registry,
        )
        self.mrr_cents = Gauge(
            "postroom_mrr_cents",
            "Monthly recurring revenue now, in minor units of the reporting currency (MRR.md policies)",
            ["currency"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.paying_customers = Gauge(
            "postroom_paying_customers",
            "Customers with MRR above 0 now",
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.mrr_changes = Counter(
            "postroom_mrr_changes",
            "Changes written to the MRR ledger, by cause (event, opening, schedule, reconciliation)",
            ["cause"],
            registry=registry,
        )
        self.mrr_reconciliation_drift_cents = Counter(
            "postroom_mrr_reconciliation_drift_cents",
            "Absolute MRR drift found by reconciliations against Stripe, in native minor units",
            registry=registry,
        )
        self.posthog_queries = Counter(
            "postroom_posthog_queries",
            "PostHog queries of reports, by named query and outcome: ok, cached, shared (answered by one "
            "already running), unavailable (down, slow or rate limited past the budget), query_error, auth_failed",
            ["query", "outcome"],
            registry=registry,
        )
        self.posthog_query_seconds = Histogram(
            "postroom_posthog_query_seconds",
            "Time of PostHog queries that went to PostHog (retries included)",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=registry,
        )
        self.report_runs = Counter(
            "postroom_report_runs",
            "Report runs by report and outcome: sent, failed, missed (no daemon ran it within the grace "
            "window), previewed",
            ["report", "outcome"],
            registry=registry,
        )
        self.report_lateness_seconds = Histogram(
            "postroom_report_lateness_seconds",
            "From a report's scheduled time to the start of its run (catch-ups included)",
            ["report"],
            buckets=(1, 5, 15, 30, 60, 120, 300, 900, 3600, 6 * 3600, 24 * 3600),
            registry=registry,
        )
        self.report_render_seconds = Histogram(
            "postroom_report_render_seconds",
            "Time to build and render a report (figures, charts, templates)",
            ["report"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=registry,
        )
        self.report_sections_unavailable = Counter(
            "postroom_report_sections_unavailable",
            "Report sections sent marked unavailable (a source failed or timed out), by section",
            ["section"],
            registry=registry,
        )
        self.stripe_reconciliations = Counter(
            "postroom_stripe_reconciliations",
            "Reconciliations against Stripe's API, by outcome (ok, failed)",
            ["outcome"],
            registry=registry,
        )
