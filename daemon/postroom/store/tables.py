"""The schema as SQLAlchemy Core tables. Times are float seconds since the epoch on both engines.

Alembic migrations under `migrations/versions` create exactly these; a test compares them.
"""

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only makes INTEGER PRIMARY KEY an alias of its rowid (autoincrementing) when the type is
# exactly INTEGER; PostgreSQL needs BIGINT for a queue that outlives 2^31 deliveries.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class CurrentTransaction(sa.sql.expression.ColumnElement[int]):
    """The server default of `events.xact`: the writing transaction's id on PostgreSQL, 0 on
    SQLite (whose writers are serialised, so id order is commit order already)."""

    type = sa.BigInteger()
    inherit_cache = True


@compiles(CurrentTransaction)
def _no_transaction_id(element: CurrentTransaction, compiler: Any, **kw: Any) -> str:
    return "0"


@compiles(CurrentTransaction, "postgresql")
def _current_transaction_id(element: CurrentTransaction, compiler: Any, **kw: Any) -> str:
    return "(pg_current_xact_id()::text::bigint)"

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("submitted_by", sa.String(255)),
    sa.Column("mail_from", sa.String(512), nullable=False),
    sa.Column("header_from", sa.String(998)),
    sa.Column("subject", sa.String(998)),
    sa.Column("stream", sa.String(64), nullable=False),
    sa.Column("route", sa.String(16), nullable=False),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("content", sa.LargeBinary, nullable=False),
    sa.Column("error", sa.Text),  # why the pipeline parked it, when it did
    # The DKIM-Signature fields of its first attempt, kept once an attempt was deferred, so
    # retries send the same bytes (NULL: not signed yet, or nothing to keep).
    sa.Column("signature", sa.LargeBinary),
    # The template and version it was rendered from (NULL: composed by its submitter).
    sa.Column("template_id", sa.String(64)),
    sa.Column("template_version", sa.Integer),
    # The data variables it was rendered with (NULL: none), for routes that render elsewhere.
    sa.Column("template_data", sa.JSON(none_as_null=True)),
    sa.Index(None, "created_at"),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column(
        "message_id", sa.String(26), sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("recipient", sa.String(512), nullable=False),
    # The recipient's domain, lower-cased: what destinations are grouped and held back by.
    sa.Column("domain", sa.String(253), nullable=False, server_default=""),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("lease_owner", sa.String(128)),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("last_reply", sa.Text),
    sa.Column("finished_at", sa.Float),
    # The transport that sends this copy ("inhouse": MX, smarthost or capture as configured);
    # recipients of one message may take different routes (shadow mode's split).
    sa.Column("route", sa.String(16), nullable=False, server_default="inhouse"),
    # The envelope sender of this copy when it is not the message's (VERP); NULL: the message's.
    sa.Column("mail_from", sa.String(512)),
    sa.Index(None, "state", "next_attempt_at"),
    sa.Index(None, "message_id"),
    sa.Index(None, "domain", "state"),
    sa.Index(None, "created_at"),  # recipients sent per period (postroom.stats)
)

# Read in commit order by the event outbox (postroom.events), cursored by (xact, id). On
# PostgreSQL a sequence value drawn by a transaction that commits later can be smaller than one
# already visible, so `id > cursor` alone would skip events: `xact` (the writing transaction's id,
# a server default, so the insert paths never name it) lets the reader take only events of
# transactions older than any still running. AUTOINCREMENT on SQLite: without it a new row reuses
# the largest rowid after it was deleted (`queue purge`), at or below a consumer's cursor.
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("message_id", sa.String(26), nullable=False),
    sa.Column("delivery_id", BigId),
    sa.Column("recipient", sa.String(512)),
    sa.Column("detail", sa.JSON, nullable=False),
    sa.Column("xact", sa.BigInteger, nullable=False, server_default=CurrentTransaction()),
    sa.Index(None, "message_id"),
    sa.Index(None, "at"),
    sa.Index(None, "xact", "id"),
    sa.Index(None, "type", "at"),  # delivery analytics (postroom.stats) read by type and period
    sqlite_autoincrement=True,
)

# One row per event outbox consumer: the (xact, id) of the last event it consumed, moved in the
# transaction its batch commits in. Locked for that transaction (SKIP LOCKED on PostgreSQL), so
# two daemons never hand one batch to the same consumer.
event_cursors = sa.Table(
    "event_cursors",
    metadata,
    sa.Column("consumer", sa.String(64), primary_key=True),
    sa.Column("xact", sa.BigInteger, nullable=False),
    sa.Column("event_id", sa.BigInteger, nullable=False),
    sa.Column("consumed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    # Failures of the batch after the cursor in a row (reset when it moves), for operators.
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failed_at", sa.Float),
    sa.Column("last_error", sa.Text),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("scope", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("message_id", sa.String(26), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),  # the public prefix of the key
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
)

smtp_users = sa.Table(
    "smtp_users",
    metadata,
    sa.Column("username", sa.String(255), primary_key=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    # Sender domains ("example.com") or addresses this login may use; NULL: any configured domain.
    sa.Column("allowed_senders", sa.JSON),
)

# Failed-login counters of the SMTP AUTH throttle (postroom.store.login_throttle), one row per key:
# "login:<network>|<username>", "net:<network>", "user:<username>". `failures` counts since
# `window_start`; `in_flight` and `in_flight_before` are reservations (attempts being checked) taken
# in reservation period `epoch` and the one before; `strikes` are blocks in a row.
login_throttle = sa.Table(
    "login_throttle",
    metadata,
    sa.Column("key", sa.String(320), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("window_start", sa.Float, nullable=False),
    sa.Column("in_flight", sa.Integer, nullable=False),
    sa.Column("in_flight_before", sa.Integer, nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("blocked_until", sa.Float, nullable=False),
    sa.Column("strikes", sa.Integer, nullable=False),
    sa.Column("trusted_until", sa.Float, nullable=False),  # a login succeeded from here until then
    sa.Column("updated_at", sa.Float, nullable=False),
)

# DKIM selectors and their life cycle: pending (record not yet seen in DNS) -> active (signing)
# -> retiring (replaced; its record must stay published until retire_at) -> retired.
dkim_keys = sa.Table(
    "dkim_keys",
    metadata,
    sa.Column("domain", sa.String(253), primary_key=True),
    sa.Column("selector", sa.String(63), primary_key=True),
    sa.Column("algorithm", sa.String(16), nullable=False),
    sa.Column("key_path", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("activated_at", sa.Float),
    sa.Column("retire_at", sa.Float),
)

# Templates (postroom.templates): a template's kind and published pointer, and its versions, each
# an immutable JSON document of its content (a `TemplateSource`).
templates = sa.Table(
    "templates",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("published_version", sa.Integer),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

template_versions = sa.Table(
    "template_versions",
    metadata,
    sa.Column("template_id", sa.String(64), sa.ForeignKey("templates.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("source", sa.JSON, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("created_by", sa.String(255), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)


# Contacts (postroom.contacts): the people the Loops-compatible API knows, unique by address (the
# normalised form in `email_key`) and by the application's user id; custom properties as one JSON
# object, typed by `contact_properties`; memberships of the configured mailing lists; events sent.
contacts = sa.Table(
    "contacts",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("email_key", sa.String(320), nullable=False, unique=True),
    sa.Column("user_id", sa.String(255), unique=True),
    sa.Column("first_name", sa.Text),
    sa.Column("last_name", sa.Text),
    sa.Column("source", sa.String(255), nullable=False),
    sa.Column("subscribed", sa.Boolean, nullable=False),
    sa.Column("user_group", sa.String(255), nullable=False),
    sa.Column("opt_in_status", sa.String(16)),
    sa.Column("properties", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

contact_properties = sa.Table(
    "contact_properties",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("label", sa.String(255), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

contact_lists = sa.Table(
    "contact_lists",
    metadata,
    sa.Column("contact_id", sa.String(32), sa.ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("list_id", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

contact_events = sa.Table(
    "contact_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("contact_id", sa.String(32), sa.ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False,
              index=True),  # fmt: skip
    sa.Column("event_name", sa.String(255), nullable=False),
    sa.Column("properties", sa.JSON, nullable=False),
    # "<api key id>:<Idempotency-Key>" while the key is live (24 hours), then cleared.
    sa.Column("idempotency_key", sa.String(200), unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

# Loops-compatible transactional emails (postroom.loops): the name and id the Loops API shows for a
# template, when they differ from the template's own id (created through the API, or imported).
loops_transactionals = sa.Table(
    "loops_transactionals",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("template_id", sa.String(64), sa.ForeignKey("templates.id", ondelete="CASCADE"), nullable=False,
              unique=True),  # fmt: skip
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("group_id", sa.String(64)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# Mail that reached the return path (postroom.bounces): one row per reported recipient (or one row
# for a message that names none), with what the parser read and the raw message (capped).
bounce_records = sa.Table(
    "bounce_records",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("delivery_id", BigId),  # the delivery its VERP token named (NULL: a feedback address)
    sa.Column("message_id", sa.String(26)),
    sa.Column("recipient", sa.String(512)),
    sa.Column("kind", sa.String(16), nullable=False),  # dsn, feedback, autoreply, not_bounce
    sa.Column("reason", sa.String(32)),
    sa.Column("bounce_class", sa.String(8)),
    sa.Column("status", sa.String(16)),
    sa.Column("reply_code", sa.Integer),
    sa.Column("diagnostic", sa.Text),
    sa.Column("feedback_type", sa.String(32)),
    sa.Column("raw_size", sa.Integer, nullable=False),
    sa.Column("raw", sa.LargeBinary, nullable=False),  # the first `max_stored_bounce` bytes
    sa.Index(None, "received_at"),
    sa.Index(None, "recipient"),
)

# The suppression list (postroom.suppression): one entry per address and scope ("global" or
# "stream:<name>"), with its provenance. `address_key` is the lower-cased address, or
# "sha256:<hex>" of it once erased on request (then `address` is NULL): the entry still blocks.
suppressions = sa.Table(
    "suppressions",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("address_key", sa.String(320), nullable=False),
    sa.Column("address", sa.String(512)),
    sa.Column("scope", sa.String(80), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),  # bounce, complaint, unsubscribe, manual, import
    sa.Column("reason", sa.String(255), nullable=False),
    sa.Column("bounce_record_id", BigId),
    sa.Column("created_by", sa.String(255)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float),  # NULL: until removed
    sa.UniqueConstraint("address_key", "scope"),
    sa.Index(None, "created_at"),
)

# Soft failures that count towards suppression (mailboxfull, suspend, filtered) within a window.
soft_failures = sa.Table(
    "soft_failures",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("address_key", sa.String(320), nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Index(None, "address_key", "at"),
)

# Outbound webhooks (postroom.webhooks): the endpoints operators subscribe, and one delivery row per
# (event, subscribed endpoint), written by the webhook consumer in the outbox transaction of the
# event (so exactly once), posted and retried by the sender. The secret is kept as given
# (`whsec_<base64>`): the sender signs with it, so it cannot be stored hashed.
webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("secret", sa.String(128), nullable=False),
    sa.Column("event_types", sa.JSON, nullable=False),  # subscribed webhook types, or ["*"]
    sa.Column("description", sa.String(255), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    # Failed attempts in a row (reset by a success); past `webhooks.disable_after` the endpoint is
    # disabled, with the time and the reason.
    sa.Column("failure_streak", sa.Integer, nullable=False, server_default="0"),
    sa.Column("disabled_at", sa.Float),
    sa.Column("disabled_reason", sa.Text),
    sa.Column("last_success_at", sa.Float),
    sa.Column("last_failure_at", sa.Float),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("endpoint_id", sa.String(32), sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
              nullable=False),  # fmt: skip
    sa.Column("event_id", sa.BigInteger, nullable=False),  # events.id (the event may be purged since)
    sa.Column("webhook_id", sa.String(64), nullable=False),  # the `webhook-id` header: same on retries
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending, sending, delivered, failed
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("delivered_at", sa.Float),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.Index(None, "state", "next_attempt_at"),
    sa.Index(None, "endpoint_id", "state"),
)

# Loops' webhooks in (postroom.shadow.loops_events_store), one row per event, unique by the
# `webhook-id` Loops sends (the same on its retries), so a replay changes nothing. `email` is the
# address key (lower-cased); `delivery_id` the `loops` delivery the event was matched to (NULL:
# none); `outcome` what came of it (applied, unmatched, ignored) and `effect` what it changed
# (confirmed, bounced, complained, unsubscribed, suppressed, none). Loops' `email.delivered` rows
# are where its delivered count and time to delivered come from (no second `delivered` event).
loops_events = sa.Table(
    "loops_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("webhook_id", sa.String(255), nullable=False, unique=True),
    sa.Column("event_name", sa.String(64), nullable=False),
    sa.Column("event_time", sa.Float, nullable=False),
    sa.Column("email", sa.String(320)),
    sa.Column("source_type", sa.String(16)),
    sa.Column("transactional_id", sa.String(64)),
    sa.Column("delivery_id", BigId),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("effect", sa.String(16), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Index(None, "event_name", "event_time"),
    sa.Index(None, "delivery_id"),
    sa.Index(None, "email"),
)

# Shadow mode (postroom.shadow): how each stream's mail (or one template's) is split between Loops
# and the in-house path. No row: in-house, as before shadow mode existed.
routes = sa.Table(
    "routes",
    metadata,
    sa.Column("stream", sa.String(64), primary_key=True),
    sa.Column("template", sa.String(64), primary_key=True),  # "": every template of the stream
    sa.Column("mode", sa.String(16), nullable=False),  # legacy, shadow, split, inhouse
    sa.Column("percent", sa.Integer, nullable=False),  # in-house share of `split` (0..100)
    sa.Column("fallback", sa.Boolean, nullable=False),  # inhouse: to Loops on a sender-side failure
    sa.Column("ramp", sa.Boolean, nullable=False),  # follows the ramp plan of [shadow.ramp]
    sa.Column("changed_at", sa.Float, nullable=False),
    sa.Column("changed_by", sa.String(255), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)

# Every change of a route: manual (API, CLI), guard (a rollback) or ramp (a step up).
route_changes = sa.Table(
    "route_changes",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("stream", sa.String(64), nullable=False),
    sa.Column("template", sa.String(64), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("percent", sa.Integer, nullable=False),
    sa.Column("fallback", sa.Boolean, nullable=False),
    sa.Column("ramp", sa.Boolean, nullable=False),
    sa.Column("previous_mode", sa.String(16)),
    sa.Column("previous_percent", sa.Integer),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("changed_by", sa.String(255), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Index(None, "stream", "template", "at"),
)

# Stripe billing state mirrored locally (postroom.billing) and the MRR ledger (postroom.mrr).
# Every Stripe event once, by its id, with the raw body as received: `status` pending (stored, not
# yet applied), applied, ignored (a type postroom does not read), stale (older than the state it
# would overwrite), flagged (malformed: `detail` says why).
stripe_events = sa.Table(
    "stripe_events",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("type", sa.String(128), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("object_id", sa.String(255)),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("applied_at", sa.Float),
    sa.Index(None, "status", "received_at"),
    sa.Index(None, "received_at"),
)

# `paid_before_at`: when a backfill learnt the customer had paid before the ledger began (so a
# return is a reactivation, not new business).
billing_customers = sa.Table(
    "billing_customers",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("email", sa.String(320)),
    sa.Column("name", sa.String(512)),
    sa.Column("currency", sa.String(3)),
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("discount", sa.JSON(none_as_null=True)),
    sa.Column("paid_before_at", sa.Float),
    sa.Column("created", sa.Float),
    sa.Column("last_event_created", sa.Float, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# A subscription as Stripe last described it (`snapshot`) and what it is worth under the
# configured policies (`mrr`, unrounded minor units as decimal text). `last_event_created` is the
# newest state applied (MRR.md 1.3): an older snapshot never overwrites it. `dunning_since` the
# first failed payment of the open invoice; `net_shares` net/gross of tax-inclusive items from the
# latest invoice; `next_change_at` when time alone changes its value (a discount ending).
billing_subscriptions = sa.Table(
    "billing_subscriptions",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("customer", sa.String(255), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("snapshot", sa.JSON, nullable=False),
    sa.Column("start_date", sa.Float),
    sa.Column("canceled_at", sa.Float),
    sa.Column("ended_at", sa.Float),
    sa.Column("cancel_at_period_end", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("trial_start", sa.Float),
    sa.Column("trial_end", sa.Float),
    sa.Column("mrr", sa.String(64), nullable=False, server_default="0"),
    sa.Column("scheduled_churn", sa.String(64), nullable=False, server_default="0"),
    sa.Column("dunning_since", sa.Float),
    sa.Column("dunning_invoice", sa.String(255)),
    sa.Column("net_shares", sa.JSON, nullable=False),
    sa.Column("next_change_at", sa.Float),
    sa.Column("last_event_created", sa.Float, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index(None, "customer"),
    sa.Index(None, "next_change_at"),
    sa.Index(None, "start_date"),
)

# Discount objects by id (webhook snapshots carry only their ids) and prices with their tiers
# (webhooks never carry tiers), kept from customer.discount.* events and expanded fetches.
billing_discounts = sa.Table(
    "billing_discounts",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("customer", sa.String(255)),
    sa.Column("subscription", sa.String(255)),
    sa.Column("discount", sa.JSON, nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# Coupons by id: a discount names its coupon by id since Stripe API 2025-09-30.clover.
billing_coupons = sa.Table(
    "billing_coupons",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("coupon", sa.JSON, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

billing_prices = sa.Table(
    "billing_prices",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("price", sa.JSON, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

billing_invoices = sa.Table(
    "billing_invoices",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("customer", sa.String(255)),
    sa.Column("subscription", sa.String(255)),
    sa.Column("status", sa.String(32)),
    sa.Column("billing_reason", sa.String(64)),
    sa.Column("currency", sa.String(3)),
    sa.Column("amount_due", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("amount_paid", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("total", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("attempt_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("paid_at", sa.Float),
    sa.Column("failed_at", sa.Float),
    sa.Column("last_event_created", sa.Float, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index(None, "created"),
    sa.Index(None, "subscription"),
)

# Each backfill or reconciliation against Stripe's API: when, what it read, and the drift it
# recorded per currency (reports print the last one as data freshness).
billing_syncs = sa.Table(
    "billing_syncs",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("finished_at", sa.Float, nullable=False),
    sa.Column("subscriptions", sa.Integer, nullable=False),
    sa.Column("opened_customers", sa.Integer, nullable=False),
    sa.Column("drift", sa.JSON, nullable=False),
)

# The MRR ledger, append-only: one row per change of a customer's MRR in one currency (integer
# minor units, rounded per customer), with what caused it (event, opening, schedule,
# reconciliation) and the event. Movements are read from it per period (postroom.mrr.movements).
# `mrr_positions` is the latest row's `after` per (customer, currency): the current state, and
# the row locked while a customer's MRR is recomputed.
mrr_ledger = sa.Table(
    "mrr_ledger",
    metadata,
    sa.Column("seq", BigId, primary_key=True, autoincrement=True),
    sa.Column("customer", sa.String(255), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("occurred_at", sa.Float, nullable=False),
    sa.Column("before_cents", sa.BigInteger, nullable=False),
    sa.Column("before_free", sa.Boolean, nullable=False),
    sa.Column("after_cents", sa.BigInteger, nullable=False),
    sa.Column("after_free", sa.Boolean, nullable=False),
    sa.Column("cause", sa.String(16), nullable=False),
    sa.Column("event_id", sa.String(255)),
    sa.Column("subscription", sa.String(255)),
    sa.Column("recorded_at", sa.Float, nullable=False),
    sa.Index(None, "occurred_at"),
    sa.Index(None, "customer", "occurred_at"),
)

mrr_positions = sa.Table(
    "mrr_positions",
    metadata,
    sa.Column("customer", sa.String(255), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("cents", sa.BigInteger, nullable=False),
    sa.Column("free", sa.Boolean, nullable=False),
    sa.Column("scheduled_churn_cents", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("occurred_at", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("customer", "currency"),
)

# Dated exchange rates to the reporting currency (`postroom fx set|import`); a day's rate is the
# latest on or before it, else the static `[mrr.fx_rates]`. `rate` is decimal text.
fx_rates = sa.Table(
    "fx_rates",
    metadata,
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("day", sa.String(10), nullable=False),  # ISO date
    sa.Column("rate", sa.String(40), nullable=False),
    sa.Column("set_at", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("currency", "day"),
)

# Report runs (postroom.reports): one row per (report, slot). A scheduled run's slot is its
# period's label, so the unique key makes every process of every daemon run it once; a run on
# demand has a slot of its own. `status` running, sent, failed, missed (no daemon ran it within
# the grace window); `figures` what the report said, `deliveries` the message ids it was sent as.
report_runs = sa.Table(
    "report_runs",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("report", sa.String(64), nullable=False),
    sa.Column("slot", sa.String(80), nullable=False),
    sa.Column("period", sa.String(40), nullable=False),
    sa.Column("trigger", sa.String(16), nullable=False),  # schedule, catchup, manual, alert
    sa.Column("scheduled_for", sa.Float),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("render_seconds", sa.Float),
    sa.Column("figures", sa.JSON),
    sa.Column("deliveries", sa.JSON),
    sa.Column("error", sa.Text),
    sa.UniqueConstraint("report", "slot"),
    sa.Index(None, "report", "started_at"),
)

# When the scheduler first watched each report: slots before it are never called missed.
report_watch = sa.Table(
    "report_watch",
    metadata,
    sa.Column("report", sa.String(64), primary_key=True),
    sa.Column("since", sa.Float, nullable=False),
)
