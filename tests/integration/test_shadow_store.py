"""Shadow mode's database side on both databases: route changes recorded with who and why (and
moved once when several daemons race), the comparison of the paths from real queue rows, the
guard stepping a route back with its reason and a `route_changed` event, and the in-house
fallback to Loops on sender-side failures."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.core.clock import FakeClock
from postroom.core.types import INHOUSE_ROUTE, LOOPS_ROUTE, SHADOW_ROUTE, DeliveryState, Submission
from postroom.events.outbox import EventOutbox
from postroom.metrics import Metrics
from postroom.queue.models import Release
from postroom.queue.sql_store import SqlQueueStore
from postroom.shadow.announce import RouteEvents
from postroom.shadow.compare import SqlComparison
from postroom.shadow.fallback import FallbackConsumer
from postroom.shadow.guard import Guard
from postroom.shadow.route_store import SqlRouteStore
from postroom.shadow.routing import Mode, RouteSetting
from postroom.shadow.service import RouteRefused, RouteService
from postroom.shadow.settings import GuardSettings, RampSettings
from postroom.store.engine import WriteGate
from postroom.store.tables import deliveries, events, loops_events
from tests.support import claim

TEMPLATES = {"welcome": "tx-welcome"}


def routes(engine: AsyncEngine, clock: FakeClock, metrics: Metrics, loops: bool = True) -> RouteService:
    return RouteService(SqlRouteStore(engine), clock, metrics, loops_templates=TEMPLATES, loops_configured=loops)


async def test_changes_are_recorded_refused_with_reasons_and_moved_once(engine: AsyncEngine) -> None:
    clock, metrics = FakeClock(), Metrics(CollectorRegistry())
    service = routes(engine, clock, metrics)
    first = await service.change(RouteSetting("news", "", Mode.SHADOW), changed_by="cli:ada", reason="start")
    assert first is not None and first.previous is None
    assert service.setting("news", "welcome") == RouteSetting("news", "", Mode.SHADOW)
    clock.advance(60)
    second = await service.change(RouteSetting("news", "welcome", Mode.SPLIT, 30), changed_by="apikey:k1", reason="ramp")
    assert second is not None and service.setting("news", "welcome") == RouteSetting("news", "welcome", Mode.SPLIT, 30)
    assert service.setting("news", "digest") == RouteSetting("news", "", Mode.SHADOW)
    assert await service.change(RouteSetting("news", "", Mode.SHADOW), changed_by="x", reason="again") is None
    with pytest.raises(RouteRefused, match="no Loops transactionalId"):
        await service.change(RouteSetting("news", "receipt", Mode.LEGACY), changed_by="x", reason="y")
    with pytest.raises(RouteRefused, match="not configured"):
        await routes(engine, clock, metrics, loops=False).change(RouteSetting("ops", "", Mode.LEGACY),
                                                                   changed_by="x", reason="y")  # fmt: skip
    # Two daemons' guards racing to step the same route back: one moves it.
    current = RouteSetting("news", "welcome", Mode.SPLIT, 30)
    target = RouteSetting("news", "welcome", Mode.SPLIT, 25)
    other = routes(engine, clock, metrics)
    results = await asyncio.gather(*(s.change(target, changed_by="guard", reason="breach", source="guard",
                                              expected=current, only_if_expected=True)
                                     for s in (service, other)))  # fmt: skip
    assert sum(r is not None for r in results) == 1
    history = await service.changes()
    assert [(c.source, c.changed_by, c.setting.describe()) for c in history] == [
        ("guard", "guard", "split 25%"), ("manual", "apikey:k1", "split 30%"), ("manual", "cli:ada", "shadow")]
    assert history[0].previous == current


async def delivered(store: SqlQueueStore, clock: FakeClock, recipients: list[str], route: str,
                    outcomes: dict[str, tuple[DeliveryState, str, dict[str, Any]]] | None = None,
                    template: str = "welcome", shadow: bool = False) -> None:  # fmt: skip
    """Messages to `recipients` on `route`, sent and released with `outcomes` (else delivered)."""
    routes_of = {r: route for r in recipients}
    submission = Submission("app@postroom.test", tuple(recipients), b"Subject: x\r\n\r\nhello\r\n", "api",
                            stream="news", template=(template, 1), recipient_routes=routes_of,
                            shadow_copies=tuple(recipients) if shadow else ())  # fmt: skip
    await store.insert_many([submission], clock.now())
    clock.advance(2)
    released = []
    for d in await claim(store, "w", 1000, clock.now(), 60):
        state, reply, detail = (outcomes or {}).get(d.recipient, (DeliveryState.DELIVERED, "250 ok", {}))
        if d.route == SHADOW_ROUTE:
            state, reply, detail = DeliveryState.DELIVERED, "250 captured", {}
        released.append(Release(d.id, d.message_id, d.recipient, state, reply, detail=detail, route=d.route))
    await store.release("w", released, clock.now())


async def test_the_comparison_counts_each_path_from_the_queue(engine: AsyncEngine) -> None:
    clock, store = FakeClock(), SqlQueueStore(engine)
    start = clock.now()
    hard = (DeliveryState.BOUNCED, "550 5.1.1 no such user", {"reason": "userunknown", "bounce_class": "hard"})
    soft = (DeliveryState.BOUNCED, "552 5.2.2 full", {"reason": "mailboxfull", "bounce_class": "soft"})
    await delivered(store, clock, [f"in{n}@example.com" for n in range(10)], INHOUSE_ROUTE,
                    {"in0@example.com": hard, "in1@example.com": hard, "in2@example.com": soft})  # fmt: skip
    await delivered(store, clock, [f"lo{n}@example.com" for n in range(20)], LOOPS_ROUTE,
                    {"lo0@example.com": hard}, shadow=True)  # fmt: skip
    async with engine.begin() as conn:  # Loops reported one delivered 30 s after acceptance
        [loops_id] = (await conn.execute(sa.select(deliveries.c.id).where(
            deliveries.c.recipient == "lo5@example.com", deliveries.c.route == LOOPS_ROUTE))).scalars().all()  # fmt: skip
        created = (await conn.execute(sa.select(deliveries.c.created_at).where(deliveries.c.id == loops_id))).scalar_one()
        await conn.execute(loops_events.insert().values(
            webhook_id="msg_1", event_name="email.delivered", event_time=created + 30, email="lo5@example.com",
            source_type="transactional", transactional_id="tx-welcome", delivery_id=loops_id, outcome="applied",
            effect="confirmed", received_at=created + 31, payload={}))  # fmt: skip
    groups = {g.route: g for g in await SqlComparison(engine).figures(start, clock.now() + 1, "news")}
    assert set(groups) == {INHOUSE_ROUTE, LOOPS_ROUTE, SHADOW_ROUTE}
    inhouse, loops, shadow = groups[INHOUSE_ROUTE], groups[LOOPS_ROUTE], groups[SHADOW_ROUTE]
    assert (inhouse.sent, inhouse.delivered, inhouse.bounced_hard, inhouse.bounced_soft) == (10, 7, 2, 1)
    assert (inhouse.rate(inhouse.bounced_hard), inhouse.p50) == (20.0, 2.0)
    assert (loops.sent, loops.delivered, loops.bounced_hard, loops.confirmed, loops.p50) == (20, 19, 1, 1, 30.0)
    assert (shadow.sent, shadow.delivered, shadow.bounced_hard) == (20, 20, 0)
    assert shadow.size_bytes > 0
    async with engine.connect() as conn:
        types = set((await conn.execute(sa.select(events.c.type).where(events.c.delivery_id.in_(
            sa.select(deliveries.c.id).where(deliveries.c.route == SHADOW_ROUTE))))).scalars())  # fmt: skip
    assert types == {"shadow_delivered"}  # never `delivered`: no consumer takes it for the recipient's


async def test_the_guard_steps_a_breaching_route_back_and_says_why(engine: AsyncEngine) -> None:
    clock, metrics, store = FakeClock(), Metrics(CollectorRegistry()), SqlQueueStore(engine)
    service = routes(engine, clock, metrics)
    await service.change(RouteSetting("news", "", Mode.SPLIT, 50, ramp=True), changed_by="cli:ada", reason="ramp")
    clock.advance(10)
    guard = Guard(service, SqlComparison(engine), clock, metrics, GuardSettings(min_messages=20, window=3600),
                  RampSettings(min_dwell=5), RouteEvents(engine, WriteGate(None)))  # fmt: skip
    # Healthy: as good as Loops -> the ramp moves it up one step, not back.
    await delivered(store, clock, [f"a{n}@example.com" for n in range(30)], INHOUSE_ROUTE)
    await delivered(store, clock, [f"b{n}@example.com" for n in range(30)], LOOPS_ROUTE)
    [up] = await guard.check()
    assert (up.source, up.setting.mode) == ("ramp", Mode.INHOUSE)
    assert await guard.check() == []  # nothing new to judge at inhouse that breaches
    # Then the in-house path starts bouncing 40 % as unknown users.
    hard = (DeliveryState.BOUNCED, "550 5.1.1 user unknown", {"reason": "userunknown", "bounce_class": "hard"})
    bad = [f"c{n}@example.com" for n in range(50)]
    await delivered(store, clock, bad, INHOUSE_ROUTE, {r: hard for r in bad[:20]})
    [back] = await guard.check()
    assert back.source == "guard" and back.setting == RouteSetting("news", "", Mode.SPLIT, 50)
    assert "hard_bounce" in back.reason and "Loops 0.00%" in back.reason
    assert metrics.route_guard_breaches.labels("news", "hard_bounce")._value.get() == 1
    async with engine.connect() as conn:
        [detail] = (await conn.execute(sa.select(events.c.detail).where(events.c.type == "route_changed",
                                                                        events.c.detail["source"].as_string() == "guard"))).scalars().all()  # fmt: skip
    assert detail["to"] == "split 50%" and detail["from"] == "inhouse" and detail["breaches"][0]["limit"] == "hard_bounce"


async def test_inhouse_with_fallback_hands_sender_side_failures_to_loops(engine: AsyncEngine) -> None:
    clock, metrics, store = FakeClock(), Metrics(CollectorRegistry()), SqlQueueStore(engine)
    service = routes(engine, clock, metrics)
    await service.change(RouteSetting("news", "", Mode.INHOUSE, fallback=True), changed_by="t", reason="t")
    outbox = EventOutbox(engine, WriteGate(None), clock, metrics, [FallbackConsumer(service, metrics)])
    blocked = (DeliveryState.BOUNCED, "554 5.7.1 blocked", {"reason": "blocked", "bounce_class": "soft"})
    unknown = (DeliveryState.BOUNCED, "550 5.1.1 unknown", {"reason": "userunknown", "bounce_class": "hard"})
    await delivered(store, clock, ["a@example.com", "b@example.com", "c@example.com"], INHOUSE_ROUTE,
                    {"a@example.com": blocked, "b@example.com": unknown})  # fmt: skip
    await outbox.drain()
    async with engine.connect() as conn:
        loops_rows = (await conn.execute(sa.select(deliveries.c.recipient, deliveries.c.state).where(
            deliveries.c.route == LOOPS_ROUTE))).all()  # fmt: skip
        rerouted = (await conn.execute(sa.select(events.c.recipient).where(events.c.type == "rerouted"))).scalars().all()
    assert [tuple(r) for r in loops_rows] == [("a@example.com", "queued")]
    assert rerouted == ["a@example.com"]
    await outbox.drain()  # exactly once
    async with engine.connect() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).where(deliveries.c.route == LOOPS_ROUTE)) == 1


async def test_a_complaint_about_a_shadow_copy_is_never_the_recipients(engine: AsyncEngine) -> None:
    from types import SimpleNamespace

    from postroom.bounces.intake import record_complaint

    async with engine.begin() as conn:
        for route in (SHADOW_ROUTE, INHOUSE_ROUTE):
            copy = SimpleNamespace(id=1, message_id="m1", route=route)
            await record_complaint(conn, copy, "ada@example.com", {"feedback_type": "abuse"}, 1.0)
        found = (await conn.execute(sa.select(events.c.type).order_by(events.c.id))).scalars().all()
    assert found == ["shadow_complained", "complained"]
