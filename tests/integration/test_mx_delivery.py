"""Direct MX delivery end to end: a `DeliveryWorker` with the production MX transport, a real DNS
server on 127.0.0.1 (`tests/dns_server.py`) and one SMTP server per recipient domain.

Every MX host of a test listens on the same `mx_port`, so each stands on its own loopback address
(127.0.0.2, 127.0.0.3 ...; Linux routes all of 127/8 to `lo`) named in an A record. The lab keeps
127.0.0.1 bound on that port (not listening), so no other test can take it for a wildcard bind.
The well-behaved hosts are aiosmtpd sinks; the misbehaving ones (a 421 greeting, a connection
dropped inside DATA, silence) are `ScriptedMx`, a hand-written server that does exactly what a test
asks. Tests where timing matters run the worker on the real clock; the rest use `drain()` and a
`FakeClock` to make retries due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP, Envelope, Session
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.delivery.mx import counted_mx_cache
from postroom.config import DeliverySettings, DestinationSettings
from postroom.core.clock import Clock, FakeClock, SystemClock
from postroom.core.types import Submission
from postroom.delivery.transport import Transport, build_transport
from postroom.delivery.worker import DeliveryWorker, WorkerOptions
from postroom.domains.resolver import DnspythonLookup
from postroom.metrics import Metrics
from postroom.queue.models import MessageDetail
from postroom.queue.retry import RetryPolicy
from postroom.queue.sql_store import SqlQueueStore
from postroom.queue.views import SqlQueueViews
from tests.dns_server import LocalDnsServer, serve_dns
from tests.support import SinkHandler, wait_until

SENDER = "app@postroom.test"


# -- the servers standing for recipient domains ------------------------------------------------


class MxSink(SinkHandler):
    """An aiosmtpd handler for one domain's MX: records messages like `SinkHandler`, and also the
    connections (how many, how many at once, messages on each), MAIL commands, the TLS version of
    each message and when it arrived. `rcpt_script` gives the next RCPT replies in order ("250"
    accepts), before `replies` is consulted."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.per_connection: list[int] = []
        self.mail_commands = 0
        self.tls_versions: list[str | None] = []
        self.arrival_times: list[float] = []
        self.rcpt_script: list[str] = []
        self.data_delay = 0.0

    def opened(self) -> int:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        self.per_connection.append(0)
        return len(self.per_connection) - 1

    def closed(self) -> None:
        self.open -= 1

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:  # fmt: skip
        self.mail_commands += 1
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:  # fmt: skip
        if self.rcpt_script:
            reply = self.rcpt_script.pop(0)
            if not reply.startswith("250"):
                return reply
        return await super().handle_RCPT(server, session, envelope, address, options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        ssl_object = session.ssl.get("ssl_object") if session.ssl else None
        self.tls_versions.append(ssl_object.version() if ssl_object is not None else None)
        self.arrival_times.append(time.monotonic())
        if isinstance(server, TrackingSMTP):
            self.per_connection[server.index] += 1
        return await super().handle_DATA(server, session, envelope)


class TrackingSMTP(SMTP):
    """aiosmtpd's server protocol, telling its `MxSink` when a connection opens and closes
    (`connection_made` runs again after STARTTLS on the same connection: counted once)."""

    def __init__(self, sink: MxSink, **kwargs: Any):
        super().__init__(sink, **kwargs)
        self.sink = sink
        self.index = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.index < 0
        super().connection_made(transport)
        if first:
            self.index = self.sink.opened()

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        if self.index >= 0:
            self.sink.closed()
            self.index = -2  # counted


@dataclass
class ScriptedMx:
    """A hand-written SMTP server for what aiosmtpd will not do. `plan` says how to treat each
    new connection, in order; once it runs out every connection gets "ok":

    - "ok": a plain, correct server (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT);
    - "greet-421": answers the connection with "421 4.7.0 Try again later" and closes;
    - "silent": accepts the connection and never says anything;
    - "drop-in-data": reads the whole message after DATA, then closes without a reply;
    - "stall-after-data": reads the whole message after DATA and never replies.
    """

    plan: list[str]
    connections: int = 0
    open: int = 0
    delivered: list[bytes] = field(default_factory=list)
    dropped: list[bytes] = field(default_factory=list)
    spans: list[tuple[float, float]] = field(default_factory=list)  # (opened, closed), monotonic
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        behaviour = self.plan.pop(0) if self.plan else "ok"
        self.connections += 1
        self.open += 1
        self._writers.add(writer)
        opened = time.monotonic()
        try:
            await self._converse(behaviour, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            self.spans.append((opened, time.monotonic()))
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _converse(self, behaviour: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if behaviour == "silent":
            await reader.read()  # until the client gives up and closes
            return
        if behaviour == "greet-421":
            writer.write(b"421 4.7.0 Try again later\r\n")
            await writer.drain()
            return
        writer.write(b"220 scripted.test ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-scripted.test\r\n250 8BITMIME\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                return
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                content = await reader.readuntil(b"\r\n.\r\n")
                if behaviour == "drop-in-data":
                    self.dropped.append(content)
                    return
                if behaviour == "stall-after-data":
                    self.dropped.append(content)
                    await reader.read()
                    return
                self.delivered.append(content)
                writer.write(b"250 2.0.0 queued\r\n")
            elif verb in (b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                writer.write(b"250 OK\r\n")
            else:
                writer.write(b"502 5.5.2 not implemented\r\n")
            await writer.drain()

    def close_connections(self) -> None:
        for writer in list(self._writers):
            writer.close()


class Lab:
    """The DNS server, the shared MX port and the servers of one test."""

    def __init__(self, dns: LocalDnsServer, dns_port: int, port: int, stack: contextlib.AsyncExitStack):
        self.dns = dns
        self.dns_port = dns_port
        self.port = port
        self._stack = stack

    def domain(self, domain: str, *mx: tuple[int, str, str]) -> None:
        """Publish MX records for `domain`: (preference, host name, IPv4 address) each."""
        self.dns.set(domain, "MX", [f"{preference} {host}." for preference, host, _ in mx])
        for _, host, address in mx:
            self.dns.set(host, "A", [address])

    async def sink(self, address: str, handler: MxSink | None = None,
                   tls: ssl.SSLContext | None = None) -> MxSink:  # fmt: skip
        """An aiosmtpd sink on `address`:`port` (offering STARTTLS when `tls` is given)."""
        sink = handler or MxSink()
        server = await asyncio.get_running_loop().create_server(
            lambda: TrackingSMTP(sink, hostname=f"sink-{address}", decode_data=False, tls_context=tls),
            address,
            self.port,
        )
        self._stack.callback(server.close)
        return sink

    async def scripted(self, address: str, plan: Sequence[str]) -> ScriptedMx:
        scripted = ScriptedMx(list(plan))
        server = await asyncio.start_server(scripted.serve, address, self.port)

        async def stop() -> None:
            server.close()
            scripted.close_connections()
            await asyncio.sleep(0)  # let the handlers see their connections closed

        self._stack.push_async_callback(stop)
        return scripted


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    async with contextlib.AsyncExitStack() as stack:
        # Holding 127.0.0.1:port (bound, not listening) reserves the port for 127.0.0.2+ binds.
        reservation = stack.enter_context(socket.socket())
        reservation.bind(("127.0.0.1", 0))
        dns, dns_port = await stack.enter_async_context(serve_dns())
        yield Lab(dns, dns_port, reservation.getsockname()[1], stack)


@dataclass(frozen=True)
class Certificates:
    ca: trustme.CA
    ca_file: str

    def server_context(self, *names: str) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*names).configure_cert(context)
        return context


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    ca = trustme.CA()
    ca_file = tmp_path_factory.mktemp("mx-ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Certificates(ca, str(ca_file))


# -- the worker --------------------------------------------------------------------------------


@dataclass
class Delivering:
    worker: DeliveryWorker
    transport: Transport
    store: SqlQueueStore
    views: SqlQueueViews
    clock: Clock
    registry: CollectorRegistry

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    async def queue(self, *recipients: str, subject: str = "hello") -> str:
        content = (f"From: {SENDER}\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n\r\n"
                   f"body of {subject}\r\n").encode()  # fmt: skip
        ids = await self.store.insert_many(
            [Submission(SENDER, tuple(recipients), content, "api")], self.clock.now()
        )
        return ids[0]

    async def show(self, message_id: str) -> MessageDetail:
        return await self.views.show(message_id)

    async def states(self, message_id: str) -> dict[str, str]:
        return {d.recipient: d.state for d in (await self.show(message_id)).deliveries}

    async def replies(self, message_id: str) -> dict[str, str]:
        return {d.recipient: d.last_reply or "" for d in (await self.show(message_id)).deliveries}


@contextlib.asynccontextmanager
async def delivering(
    engine: AsyncEngine,
    lab: Lab,
    clock: Clock,
    *,
    destinations: Sequence[DestinationSettings] = (),
    **delivery: Any,
) -> AsyncIterator[Delivering]:
    """A worker wired as `app.Daemon` wires it for `[delivery] mode = "mx"`, aimed at the lab."""
    values: dict[str, Any] = {
        "mode": "mx", "mx_port": lab.port, "dns_resolver": f"127.0.0.1:{lab.dns_port}",
        "destinations": tuple(destinations), "connect_timeout": 5, "greeting_timeout": 5,
        "command_timeout": 5, "data_timeout": 5, "poll_interval": 0.05, **delivery,
    }  # fmt: skip
    settings = DeliverySettings(**values)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    lookup = DnspythonLookup(("127.0.0.1", lab.dns_port), timeout=2.0)
    transport = build_transport(settings, "mail.postroom.test", counted_mx_cache(lookup, clock, metrics))
    store = SqlQueueStore(engine)
    worker = DeliveryWorker(
        store, {"inhouse": transport},
        RetryPolicy(base=settings.retry_base, cap=settings.retry_max, max_age=settings.max_age),
        clock, metrics,
        WorkerOptions(owner="mx-test", poll_interval=settings.poll_interval,
                      throttle_backoff=settings.throttle_backoff,
                      throttle_backoff_max=settings.throttle_backoff_max),
        draw=lambda: 0.5,
    )  # fmt: skip
    try:
        yield Delivering(worker, transport, store, SqlQueueViews(engine), clock, registry)
    finally:
        await transport.close()


@contextlib.asynccontextmanager
async def worker_running(worker: DeliveryWorker) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


def events_of(detail: MessageDetail, recipient: str) -> list[dict[str, Any]]:
    return [e for e in detail.events if e["recipient"] == recipient]


# -- 1. MX order and fallback --------------------------------------------------------------------


async def test_lowest_preference_first_then_next_mx_then_the_a_record(engine: AsyncEngine, lab: Lab) -> None:
    # pref.test: both MX hosts take mail; the lower preference must get it (listed second on purpose).
    lab.domain("pref.test", (20, "mx-b.pref.test", "127.0.0.3"), (10, "mx-a.pref.test", "127.0.0.2"))
    preferred, backup = await lab.sink("127.0.0.2"), await lab.sink("127.0.0.3")
    # fallback.test: its preferred MX refuses connections (nothing listens on 127.0.0.4).
    lab.domain("fallback.test", (10, "mx1.fallback.test", "127.0.0.4"), (20, "mx2.fallback.test", "127.0.0.5"))
    second = await lab.sink("127.0.0.5")
    # bare.test: no MX at all; RFC 5321 §5.1 says its A record is the mail host.
    lab.dns.set("bare.test", "A", ["127.0.0.6"])
    bare = await lab.sink("127.0.0.6")

    async with delivering(engine, lab, FakeClock()) as run:
        ids = {domain: await run.queue(f"user@{domain}") for domain in ("pref.test", "fallback.test", "bare.test")}
        assert await run.worker.drain() == 3
        for domain, message_id in ids.items():
            assert await run.states(message_id) == {f"user@{domain}": "delivered"}
        details = {domain: events_of(await run.show(message_id), f"user@{domain}")[-1]["detail"]
                   for domain, message_id in ids.items()}  # fmt: skip

    assert [m.recipients for m in preferred.messages] == [["user@pref.test"]]
    assert backup.messages == [] and backup.connections == 0
    assert details["pref.test"]["mx"] == "mx-a.pref.test"
    assert [m.recipients for m in second.messages] == [["user@fallback.test"]]
    assert details["fallback.test"]["mx"] == "mx2.fallback.test"
    assert ("mx1.fallback.test", "A") in lab.dns.queries  # the first choice was looked up too
    assert [m.recipients for m in bare.messages] == [["user@bare.test"]]
    bare_detail = details["bare.test"]
    assert (bare_detail["mx"], bare_detail["ip"], bare_detail["port"]) == ("bare.test", "127.0.0.6", lab.port)


# -- 2. Null MX -----------------------------------------------------------------------------------


async def test_null_mx_bounces_at_once_without_connecting(engine: AsyncEngine, lab: Lab) -> None:
    lab.dns.set("nomail.test", "MX", ["0 ."])
    lab.dns.set("nomail.test", "A", ["127.0.0.2"])  # a live server: falling back to A would reach it
    bystander = await lab.sink("127.0.0.2")

    async with delivering(engine, lab, FakeClock()) as run:
        message_id = await run.queue("user@nomail.test")
        assert await run.worker.drain() == 1
        detail = await run.show(message_id)

    assert detail.deliveries[0].state == "bounced"
    assert detail.deliveries[0].attempts == 1
    assert "null MX" in (detail.deliveries[0].last_reply or "")
    assert bystander.connections == 0
    assert lab.dns.queries == [("nomail.test", "MX")]  # not even the address was asked
    assert run.metric("postroom_delivery_attempts_total", {"result": "bounced"}) == 1


# -- 3. A destination that throttles --------------------------------------------------------------


@pytest.mark.parametrize("where", ["rcpt", "greeting"])
async def test_throttling_destination_is_suspended_slowed_and_recovers(
    engine: AsyncEngine, lab: Lab, where: str
) -> None:
    backoff = 1.0
    lab.domain("busy.test", (10, "mx.busy.test", "127.0.0.2"))
    lab.domain("calm.test", (10, "mx.calm.test", "127.0.0.3"))
    calm = await lab.sink("127.0.0.3")
    if where == "rcpt":
        busy_sink = await lab.sink("127.0.0.2")
        busy_sink.rcpt_script = ["421 4.7.0 Try again later"]  # once, then it accepts

        def busy_received() -> int:
            return len(busy_sink.messages)
    else:
        busy_scripted = await lab.scripted("127.0.0.2", ["greet-421"])

        def busy_received() -> int:
            return len(busy_scripted.delivered)

    rule = DestinationSettings(match="busy.test", max_connections=1)
    async with delivering(engine, lab, SystemClock(), destinations=[rule], throttle_backoff=backoff,
                          retry_base=0.2, retry_max=0.5) as run:  # fmt: skip
        # One connection at a time, so exactly one message meets the 421; the others are held.
        busy_ids = [await run.queue(f"u{n}@busy.test", subject=f"busy {n}") for n in range(3)]
        key = "mx.busy.test"
        async with worker_running(run.worker):
            await wait_until(lambda: run.metric("postroom_destination_suspensions_total",
                                                {"reason": "throttled"}) == 1, 5, what="the suspension")  # fmt: skip
            throttled_at = time.monotonic()
            assert run.metric("postroom_destination_suspended", {"destination": key, "reason": "throttled"}) == 1
            assert run.metric("postroom_destination_speed_factor", {"destination": key}) == 0.5
            await wait_until(lambda: run.metric("postroom_delivery_attempts_total", {"result": "deferred"}) == 1,
                             5, what="the deferral to be written")  # fmt: skip
            replies = [r for replied in [await run.replies(mid) for mid in busy_ids] for r in replied.values()]
            tried = [r for r in replies if "held back" not in r]
            assert len(tried) == 1 and "421 4.7.0 Try again later" in tried[0], replies
            assert sum(f"destination {key} held back: throttled" in r for r in replies) == 2, replies

            # Another domain is delivered while busy.test is held back.
            calm_ids = [await run.queue(f"u{n}@calm.test") for n in range(2)]
            run.worker.wake()
            await wait_until(lambda: len(calm.messages) == 2, 5, what="calm.test's mail")
            assert busy_received() == 0, "busy.test must stay suspended meanwhile"
            assert run.metric("postroom_destination_suspended", {"destination": key, "reason": "throttled"}) == 1

            async def all_busy_delivered() -> bool:
                states = [await run.states(mid) for mid in busy_ids]
                return all(s == "delivered" for state in states for s in state.values())

            await wait_until(all_busy_delivered, 10, what="busy.test to recover")
            recovered_at = time.monotonic()

        for message_id in calm_ids:
            assert set((await run.states(message_id)).values()) == {"delivered"}
        assert busy_received() == 3
        assert recovered_at - throttled_at >= backoff * 0.8  # not before the backoff ran out
        assert run.metric("postroom_destination_suspensions_total", {"reason": "throttled"}) == 1
        assert run.metric("postroom_destination_suspended", {"destination": key, "reason": "throttled"}) == 0
        details = [await run.show(mid) for mid in busy_ids]
        attempts = sorted(d.attempts for detail in details for d in detail.deliveries)
        assert attempts == [1, 1, 2]  # the held ones were not charged an attempt


# -- 4. A connection dropped inside DATA ------------------------------------------------------------


async def test_connection_dropped_mid_data_defers_then_delivers(engine: AsyncEngine, lab: Lab) -> None:
    lab.domain("flaky.test", (10, "mx.flaky.test", "127.0.0.2"))
    server = await lab.scripted("127.0.0.2", ["drop-in-data"])
    clock = FakeClock()

    async with delivering(engine, lab, clock) as run:
        message_id = await run.queue("user@flaky.test")
        assert await run.worker.drain() == 1
        first = (await run.show(message_id)).deliveries[0]
        assert first.state == "deferred"
        assert "lost at DATA" in (first.last_reply or ""), first.last_reply
        assert "mx.flaky.test" in (first.last_reply or "")
        assert len(server.dropped) == 1 and server.delivered == []  # the whole message went, no reply came
        assert first.next_attempt_at is not None and first.next_attempt_at > clock.now()

        assert await run.worker.drain() == 0  # not due yet
        clock.advance(first.next_attempt_at - clock.now())
        assert await run.worker.drain() == 1
        assert await run.states(message_id) == {"user@flaky.test": "delivered"}

    assert len(server.delivered) == 1
    assert server.delivered[0] == server.dropped[0]
    assert (await run.show(message_id)).deliveries[0].attempts == 2


# -- 5. A destination that times out ----------------------------------------------------------------


@pytest.mark.parametrize("behaviour", ["silent", "stall-after-data"])
async def test_a_silent_destination_times_out_without_delaying_others(
    engine: AsyncEngine, lab: Lab, behaviour: str
) -> None:
    timeout = 1.0
    lab.domain("slow.test", (10, "mx.slow.test", "127.0.0.2"))
    lab.domain("fast.test", (10, "mx.fast.test", "127.0.0.3"))
    slow = await lab.scripted("127.0.0.2", [behaviour])
    fast = await lab.sink("127.0.0.3")

    # The connect timeout is long on purpose: the greeting has its own (RFC 5321 §4.5.3.2.1).
    async with delivering(engine, lab, FakeClock(), connect_timeout=10, greeting_timeout=timeout,
                          command_timeout=timeout, data_timeout=timeout) as run:  # fmt: skip
        slow_id = await run.queue("user@slow.test")
        fast_id = await run.queue("user@fast.test")
        started = time.monotonic()
        assert await run.worker.drain() == 2
        finished = time.monotonic()
        slow_reply = (await run.replies(slow_id))["user@slow.test"]
        assert await run.states(slow_id) == {"user@slow.test": "deferred"}
        assert await run.states(fast_id) == {"user@fast.test": "delivered"}

    assert "timed out" in slow_reply, slow_reply
    if behaviour == "stall-after-data":
        assert "lost at DATA" in slow_reply, slow_reply
    assert slow.connections == 1
    (slow_opened, slow_closed), = slow.spans
    assert slow_closed - slow_opened >= timeout * 0.9  # it really waited for the server
    assert finished - started < timeout + 2  # ... but not for the 10 s connect timeout
    # fast.test was delivered while the slow server still held its connection open.
    assert fast.arrival_times[0] < slow_closed - timeout / 2
    assert fast.arrival_times[0] - started < timeout / 2


# -- 6. 4xx, then 2xx ------------------------------------------------------------------------------


async def test_temporary_refusal_then_delivery_records_both_attempts(engine: AsyncEngine, lab: Lab) -> None:
    lab.domain("later.test", (10, "mx.later.test", "127.0.0.2"))
    sink = await lab.sink("127.0.0.2")
    sink.rcpt_script = ["451 4.3.0 Temporary local problem"]
    clock = FakeClock()

    async with delivering(engine, lab, clock, retry_base=60) as run:
        message_id = await run.queue("user@later.test")
        assert await run.worker.drain() == 1
        first = (await run.show(message_id)).deliveries[0]
        assert first.state == "deferred"
        assert first.last_reply == "451 4.3.0 Temporary local problem"
        assert first.next_attempt_at == pytest.approx(clock.now() + 60 * 0.75)  # base 60, draw 0.5
        assert await run.worker.drain() == 0
        clock.advance(60)
        assert await run.worker.drain() == 1
        detail = await run.show(message_id)

    assert [d.state for d in detail.deliveries] == ["delivered"]
    assert detail.deliveries[0].attempts == 2
    attempts = events_of(detail, "user@later.test")
    assert [e["type"] for e in attempts] == ["deferred", "delivered"]
    assert attempts[0]["detail"]["reply"] == "451 4.3.0 Temporary local problem"
    assert attempts[0]["detail"]["code"] == 451 and attempts[0]["detail"]["status"] == "4.3.0"
    assert attempts[1]["detail"]["reply"] == "250 2.0.0 stored"
    assert attempts[1]["detail"]["mx"] == "mx.later.test"
    assert attempts[1]["at"] - attempts[0]["at"] == pytest.approx(60)
    assert len(sink.messages) == 1


# -- 7. One recipient refused permanently ---------------------------------------------------------


async def test_one_of_two_recipients_bounced_in_one_transaction(engine: AsyncEngine, lab: Lab) -> None:
    lab.domain("two.test", (10, "mx.two.test", "127.0.0.2"))
    sink = await lab.sink("127.0.0.2", MxSink(replies={"gone@two.test": "550 5.1.1 no such user"}))

    async with delivering(engine, lab, FakeClock()) as run:
        message_id = await run.queue("ok@two.test", "gone@two.test")
        assert await run.worker.drain() == 2
        assert await run.states(message_id) == {"ok@two.test": "delivered", "gone@two.test": "bounced"}
        assert (await run.replies(message_id))["gone@two.test"] == "550 5.1.1 no such user"

    assert sink.connections == 1 and sink.mail_commands == 1
    assert [m.recipients for m in sink.messages] == [["ok@two.test"]]


# -- 8. TLS policies: required and verify ---------------------------------------------------------


async def test_required_tls_without_starttls_defers_and_sends_nothing(engine: AsyncEngine, lab: Lab) -> None:
    lab.domain("strict.test", (10, "mx.strict.test", "127.0.0.2"))
    sink = await lab.sink("127.0.0.2")  # no STARTTLS offered

    async with delivering(engine, lab, FakeClock(), destinations=[DestinationSettings(match="strict.test",
                                                                                        tls="required")]) as run:
        message_id = await run.queue("user@strict.test")
        assert await run.worker.drain() == 1
        detail = await run.show(message_id)

    assert detail.deliveries[0].state == "deferred"
    assert "does not offer STARTTLS" in (detail.deliveries[0].last_reply or "")
    assert sink.connections == 1  # it was asked (EHLO) ...
    assert sink.mail_commands == 0 and sink.messages == []  # ... and told nothing in clear


async def test_verified_tls_delivers_to_the_named_mx_and_defers_a_wrong_name(
    engine: AsyncEngine, lab: Lab, certificates: Certificates
) -> None:
    lab.domain("secure.test", (10, "mx.secure.test", "127.0.0.2"))
    lab.domain("wrongname.test", (10, "mx.wrongname.test", "127.0.0.3"))
    good = await lab.sink("127.0.0.2", tls=certificates.server_context("mx.secure.test"))
    wrong = await lab.sink("127.0.0.3", tls=certificates.server_context("mx.elsewhere.test"))
    rules = [DestinationSettings(match="*.test", tls="verify")]

    async with delivering(engine, lab, FakeClock(), destinations=rules, tls_ca=certificates.ca_file) as run:
        good_id = await run.queue("user@secure.test")
        wrong_id = await run.queue("user@wrongname.test")
        assert await run.worker.drain() == 2
        good_detail, wrong_detail = await run.show(good_id), await run.show(wrong_id)

    assert good_detail.deliveries[0].state == "delivered"
    assert events_of(good_detail, "user@secure.test")[-1]["detail"]["tls"] == "TLSv1.3"
    assert good.tls_versions == ["TLSv1.3"]
    assert wrong_detail.deliveries[0].state == "deferred"
    reply = wrong_detail.deliveries[0].last_reply or ""
    assert "certificate" in reply.lower(), reply
    assert wrong.mail_commands == 0 and wrong.messages == []  # not sent once the name did not match


# -- 9. Opportunistic TLS ------------------------------------------------------------------------


async def test_opportunistic_tls_is_used_when_offered(
    engine: AsyncEngine, lab: Lab, certificates: Certificates
) -> None:
    lab.domain("plain.test", (10, "mx.plain.test", "127.0.0.2"))
    lab.domain("offers.test", (10, "mx.offers.test", "127.0.0.3"))
    plain = await lab.sink("127.0.0.2")
    # A certificate for some other name: opportunistic TLS encrypts without checking (RFC 7435).
    offers = await lab.sink("127.0.0.3", tls=certificates.server_context("self.invalid"))

    async with delivering(engine, lab, FakeClock()) as run:
        plain_id = await run.queue("user@plain.test")
        offers_id = await run.queue("user@offers.test")
        assert await run.worker.drain() == 2
        plain_detail, offers_detail = await run.show(plain_id), await run.show(offers_id)

    assert offers.tls_versions == ["TLSv1.3"]
    assert events_of(offers_detail, "user@offers.test")[-1]["detail"]["tls"] == "TLSv1.3"
    assert plain.tls_versions == [None]
    assert events_of(plain_detail, "user@plain.test")[-1]["detail"]["tls"] == "none"


# -- 10. Shaping ------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3])
async def test_max_connections_bounds_concurrent_sessions(engine: AsyncEngine, lab: Lab, limit: int) -> None:
    lab.domain("bounded.test", (10, "mx.bounded.test", "127.0.0.2"))
    sink = await lab.sink("127.0.0.2")
    sink.data_delay = 0.02  # transactions overlap if anything lets them
    # One message per connection: every message opens (and retires) a session.
    rule = DestinationSettings(match="bounded.test", max_connections=limit, messages_per_connection=1)

    async with delivering(engine, lab, SystemClock(), destinations=[rule]) as run:
        for n in range(8):
            await run.queue(f"u{n}@bounded.test")
        assert await run.worker.drain() == 8

    assert len(sink.messages) == 8
    assert sink.connections == 8
    assert sink.most_open == limit  # never more, and (with 3) the limit is actually reached


async def test_messages_per_connection_caps_each_session(engine: AsyncEngine, lab: Lab) -> None:
    lab.domain("reuse.test", (10, "mx.reuse.test", "127.0.0.2"))
    sink = await lab.sink("127.0.0.2")
    rule = DestinationSettings(match="reuse.test", max_connections=1, messages_per_connection=3)

    async with delivering(engine, lab, FakeClock(), destinations=[rule]) as run:
        for n in range(10):
            await run.queue(f"u{n}@reuse.test")
        assert await run.worker.drain() == 10

    assert len(sink.messages) == 10
    assert sink.connections >= 4
    assert max(sink.per_connection) <= 3
    assert sink.per_connection == [3, 3, 3, 1]  # and connections are reused up to the cap


async def test_max_rate_spaces_messages(engine: AsyncEngine, lab: Lab) -> None:
    lab.domain("paced.test", (10, "mx.paced.test", "127.0.0.2"))
    sink = await lab.sink("127.0.0.2")
    rule = DestinationSettings(match="paced.test", max_rate="20/s")

    async with delivering(engine, lab, SystemClock(), destinations=[rule]) as run:
        for n in range(10):
            await run.queue(f"u{n}@paced.test")
        assert await run.worker.drain() == 10

    assert len(sink.messages) == 10
    times = sorted(sink.arrival_times)
    assert times[-1] - times[0] >= 0.45 * 0.9  # nine gaps of 1/20 s
    # No burst: at most two messages in any 50 ms window (a token per 50 ms, one in the bucket).
    assert all(later - earlier >= 0.05 * 0.8 for earlier, later in zip(times, times[2:]))


# -- 11. A resolver that refuses AAAA --------------------------------------------------------------


@pytest.mark.parametrize("rcode", ["REFUSED", "SERVFAIL"])
async def test_a_refused_aaaa_query_does_not_stop_delivery_to_the_ipv4_address(
    engine: AsyncEngine, lab: Lab, caplog: pytest.LogCaptureFixture, rcode: str
) -> None:
    # dnsmasq without an upstream answers A from its hosts file and refuses AAAA; every message
    # to such a domain used to be deferred "DNS temporarily unavailable" with the IPv4 address known.
    lab.domain("v4only.test", (10, "mx.v4only.test", "127.0.0.2"))
    lab.dns.fail("mx.v4only.test", "AAAA", rcode)
    # bare4.test: no MX, so its own A record is the mail host (RFC 5321 §5.1); AAAA fails too.
    lab.dns.set("bare4.test", "A", ["127.0.0.3"])
    lab.dns.fail("bare4.test", "AAAA", rcode)
    mx_sink, bare_sink = await lab.sink("127.0.0.2"), await lab.sink("127.0.0.3")

    with caplog.at_level(logging.WARNING, logger="postroom.delivery.mx"):
        async with delivering(engine, lab, FakeClock()) as run:
            ids = [await run.queue(f"u{n}@v4only.test") for n in range(3)]
            ids.append(await run.queue("user@bare4.test"))
            assert await run.worker.drain() == 4
            states = [await run.states(message_id) for message_id in ids]

    assert all(set(state.values()) == {"delivered"} for state in states), states
    assert sorted(r for m in mx_sink.messages for r in m.recipients) == [f"u{n}@v4only.test" for n in range(3)]
    assert [m.recipients for m in bare_sink.messages] == [["user@bare4.test"]]
    assert lab.dns.queries.count(("mx.v4only.test", "AAAA")) == 1  # the route is cached ...
    logged = [r.getMessage() for r in caplog.records if r.name == "postroom.delivery.mx"]
    v4_lines = [line for line in logged if line.startswith("MX host mx.v4only.test of v4only.test")]
    assert len(v4_lines) == 1, logged  # ... and the failure said once, not per message
    assert v4_lines[0].endswith("; using the addresses found: 127.0.0.2")
    assert len([line for line in logged if line.startswith("MX host bare4.test of bare4.test")]) == 1


async def test_every_address_query_refused_defers(engine: AsyncEngine, lab: Lab) -> None:
    lab.domain("dark.test", (10, "mx.dark.test", "127.0.0.2"))
    lab.dns.fail("mx.dark.test", "A")
    lab.dns.fail("mx.dark.test", "AAAA")
    sink = await lab.sink("127.0.0.2")

    async with delivering(engine, lab, FakeClock()) as run:
        message_id = await run.queue("user@dark.test")
        assert await run.worker.drain() == 1
        delivery = (await run.show(message_id)).deliveries[0]

    assert delivery.state == "deferred"
    assert "DNS temporarily unavailable" in (delivery.last_reply or ""), delivery.last_reply
    assert sink.connections == 0
