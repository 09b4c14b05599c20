"""Webhook-to-updated-MRR latency (issue 15, goal 2: p95 < 20 ms).

A real daemon (`postroom serve`, one process, `[stripe] webhook_secrets` and no API key: webhooks
only) on SQLite or PostgreSQL. Its state is seeded with `customer.subscription.created` events for
generated subscriptions (`tests/stripe_generate.py`); then events `customer.subscription.updated`
(a quantity change of an active subscription, `created` increasing) are posted one at a time,
signed as Stripe signs them. Each latency runs from just before the POST until
`GET /v1/stripe/events?status=pending&limit=1` answers empty: the event's MRR change commits in the
transaction that marks it applied. Beside it, the daemon's own histogram
`postroom_stripe_event_apply_seconds` (arrival to commit), read from `/metrics` before and after.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import stripe

from postroom.store import schema
from postroom.store.credentials import Role, SqlApiKeys
from postroom.store.engine import create_engine
from tests.stripe_generate import T0, generate_subscriptions
from tests.support import create_pg_database, drop_pg_database, make_settings, start_serving

logger = logging.getLogger(__name__)

SECRET = "whsec_postroom_bench_mrr"
HISTOGRAM = "postroom_stripe_event_apply_seconds"


@dataclass
class LatencyResult:
    database: str
    seed_events: int
    seed_seconds: float  # posting every seed event and waiting until none is pending
    events: int
    gap_seconds: float  # idle time after each event became visible, before the next POST
    latency_ms: dict[str, float]  # POST -> nothing pending: p50, p95, p99, max, mean
    post_ms: dict[str, float]  # POST -> its 200 (stored, not yet applied)
    daemon_histogram: dict[str, Any]  # postroom_stripe_event_apply_seconds over the measured events
    applied: int  # postroom_stripe_events_total{result="applied"} over the whole run
    not_applied: dict[str, int] = field(default_factory=dict)  # any other result, should be empty


def signed(body: bytes) -> dict[str, str]:
    """Stripe's signature scheme (v1: HMAC-SHA256 over "<t>.<body>"), computed by the stripe SDK."""
    timestamp = int(time.time())
    signature = stripe.WebhookSignature._compute_signature(f"{timestamp}.{body.decode()}", SECRET)
    return {"Stripe-Signature": f"t={timestamp},v1={signature}", "Content-Type": "application/json"}


def event(event_id: str, kind: str, created: int, subscription: dict[str, Any]) -> bytes:
    return json.dumps({"id": event_id, "object": "event", "type": kind, "created": created,
                       "data": {"object": subscription}}).encode()  # fmt: skip


def quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": ordered[-1],
            "mean": statistics.fmean(ordered)}  # fmt: skip


def histogram(exposition: str, name: str) -> dict[str, float]:
    """Cumulative buckets of a Prometheus histogram ({"0.01": n, ..., "+Inf": n}) and its _sum/_count."""
    out: dict[str, float] = {}
    for line in exposition.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[le] = float(line.rsplit(" ", 1)[1])
        elif line.startswith((name + "_sum ", name + "_count ")):
            key, number = line.split(" ", 1)
            out[key.removeprefix(name)] = float(number.split()[0])
    return out


def counter(exposition: str, name: str) -> dict[str, float]:
    """Samples of a labelled counter by their `result` label."""
    out: dict[str, float] = {}
    for line in exposition.splitlines():
        if line.startswith(name + "{") and 'result="' in line:
            out[line.split('result="', 1)[1].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
    return out


def histogram_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """The measured events' part of the histogram: count, mean, share within 20 ms, and each
    quantile as the bucket bound it falls under."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    count = delta.get("_count", 0.0)
    buckets = sorted(((float(k), v) for k, v in delta.items() if not k.startswith("_")), key=lambda kv: kv[0])
    bound = {}
    for q in (0.5, 0.95, 0.99):
        bound[f"p{round(q * 100)}_le_ms"] = next((le * 1000 for le, n in buckets if n >= q * count), float("inf"))
    within = next((n for le, n in buckets if le == 0.02), 0.0)
    return {"count": int(count), "mean_ms": 1000 * delta.get("_sum", 0.0) / count if count else None,
            "within_20ms": within / count if count else None, **bound,
            "buckets": {("+Inf" if le == float("inf") else f"{le:g}"): int(n) for le, n in buckets}}  # fmt: skip


def config_text(state_dir: Path, db_url: str) -> str:
    return f"""state_dir = "{state_dir}"
[database]
url = "{db_url}"
[http]
listen = "127.0.0.1:0"
[http.rate_limit]
enabled = false
[smtp]
hostname = "mail.bench.test"
submission_listen = "127.0.0.1:0"
mx_listen = "127.0.0.1:0"
[delivery]
mode = "capture"
capture_dir = "{state_dir / 'outbox'}"
[log]
format = "json"
level = "warning"
[processes]
count = 1
[stripe]
webhook_secrets = ["{SECRET}"]
reconcile_at = ""
[mrr]
fx_rates = {{ eur = "1.08", jpy = "0.0067" }}

[[domains]]
name = "bench.test"
dkim = "off"
"""


async def prepare(state_dir: Path, db_url: str) -> str:
    """Migrate the database and make a viewer API key; returns its token."""
    settings = make_settings(state_dir, db_url)
    engine = create_engine(settings.database)
    try:
        await schema.upgrade(engine)
        return (await SqlApiKeys(engine).create("bench-viewer", Role.VIEWER, time.time()))[1]
    finally:
        await engine.dispose()


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str, token: str, poll_interval: float):
        self.session, self.base, self.poll_interval = session, base, poll_interval
        self.auth = {"Authorization": f"Bearer {token}"}

    async def post(self, body: bytes) -> None:
        async with self.session.post(self.base + "/webhooks/stripe", data=body, headers=signed(body)) as response:
            answer = await response.json()
            if response.status != 200 or answer.get("duplicate"):
                raise RuntimeError(f"POST /webhooks/stripe answered {response.status}: {answer}")

    async def pending(self) -> bool:
        async with self.session.get(self.base + "/v1/stripe/events", params={"status": "pending", "limit": "1"},
                                    headers=self.auth) as response:  # fmt: skip
            if response.status != 200:
                raise RuntimeError(f"GET /v1/stripe/events answered {response.status}: {await response.text()}")
            return bool((await response.json())["events"])

    async def settled(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while await self.pending():
            if time.monotonic() > deadline:
                raise TimeoutError(f"events still pending after {timeout} s")
            if self.poll_interval:
                await asyncio.sleep(self.poll_interval)

    async def metrics(self) -> str:
        async with self.session.get(self.base + "/metrics") as response:
            return await response.text()


async def measure_latency(database: str, seed_count: int, events: int, base_dir: str | None,
                          poll_interval: float = 0.0005, gap: float = 0.0) -> LatencyResult:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="postroom-bench-mrr-", dir=base_dir) as tmp:
        state = Path(tmp)
        db_url = f"sqlite+aiosqlite:///{state / 'postroom.db'}" if database == "sqlite" else await create_pg_database()
        try:
            token = await prepare(state, db_url)
            config = state / "postroom.toml"
            config.write_text(config_text(state, db_url))
            serving = await start_serving(config, state / "serve.log")
            try:
                async with aiohttp.ClientSession() as session:
                    client = Client(session, serving.url(), token, poll_interval)
                    return await _run(client, database, seed_count, events, gap)
            finally:
                code = await serving.stop()
                if code != 0:
                    logger.warning("postroom serve exited %d: %s", code, serving.process.log_tail())
        finally:
            if database != "sqlite":
                await drop_pg_database(db_url)


async def _run(client: Client, database: str, seed_count: int, events: int, gap: float) -> LatencyResult:
    _, subscriptions = generate_subscriptions(seed_count, seed=15)
    started = time.perf_counter()
    for i, sub in enumerate(subscriptions):
        await client.post(event(f"evt_seed{i:06d}", "customer.subscription.created", T0 + i, sub))
    await client.settled()
    seed_seconds = time.perf_counter() - started
    logger.info("%s: %d seed events applied in %.1f s", database, seed_count, seed_seconds)

    # Updates of active subscriptions with a plain per-unit item: every one moves MRR.
    active = [copy.deepcopy(s) for s in subscriptions
              if s["status"] == "active" and not s.get("cancel_at_period_end") and not s.get("pause_collection")
              and s["items"]["data"][0]["price"].get("billing_scheme") == "per_unit"]  # fmt: skip
    before = await client.metrics()
    latencies, posts = [], []
    for k in range(events):
        sub = active[k % len(active)]
        item = sub["items"]["data"][0]
        item["quantity"] = int(item.get("quantity") or 1) % 50 + 1  # 1..50, never the same twice running
        body = event(f"evt_upd{k:06d}", "customer.subscription.updated", T0 + seed_count + k, sub)
        t0 = time.perf_counter()
        await client.post(body)
        t1 = time.perf_counter()
        await client.settled(timeout=30)
        latencies.append(1000 * (time.perf_counter() - t0))
        posts.append(1000 * (t1 - t0))
        if gap:  # let the applier finish what it does after a drain (gauges) before the next event
            await asyncio.sleep(gap)
    after = await client.metrics()
    logger.info("%s: %d updates, p50 %.1f ms, p95 %.1f ms", database, events,
                quantiles(latencies)["p50"], quantiles(latencies)["p95"])  # fmt: skip
    results = counter(after, "postroom_stripe_events_total")
    return LatencyResult(database, seed_count, seed_seconds, events, gap, quantiles(latencies), quantiles(posts),
                         histogram_delta(histogram(before, HISTOGRAM), histogram(after, HISTOGRAM)),
                         int(results.get("applied", 0)),
                         {k: int(v) for k, v in results.items() if k != "applied" and v})  # fmt: skip
