"""An attempt this daemon decided by itself, without a peer's reply, says so: `local: true` in the
event detail, as `GET /v1/messages/{id}` shows it. Without it an operator (or a bounce report)
would read "552 5.3.4 ... exceeds the limit" as the recipient's server refusing the message.

The in-process daemon delivers in `mx` mode against a DNS server on 127.0.0.1 (`tests/dns_server`)
and aiosmtpd sinks standing on 127.0.0.2 and 127.0.0.3, all on one port. One message goes to:

- nomail.test, a null MX (RFC 7505): bounced by the MX lookup, no connection;
- broken.test, whose DNS answers SERVFAIL: deferred by the MX lookup;
- big.test, whose server advertises SIZE 4096 (RFC 1870) for a larger message: bounced before MAIL;
- refused.test, whose server answers RCPT with 550: refused by the peer, so not local;
- fine.test, which takes it: delivered, not local.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiosmtpd.smtp import SMTP

from postroom.store import schema
from postroom.store.credentials import Role, SqlApiKeys
from postroom.store.engine import create_engine
from tests.conftest import running
from tests.dns_server import serve_dns
from tests.support import SinkHandler, make_settings, wait_until

ATTEMPTS = {"delivered", "deferred", "bounced", "expired"}  # event types of recorded attempts
SIZE_LIMIT = 4096


@contextlib.asynccontextmanager
async def sink_on(address: str, port: int, handler: SinkHandler, **options: Any) -> AsyncIterator[SinkHandler]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname=f"sink-{address}", decode_data=False, **options), address, port
    )
    try:
        yield handler
    finally:
        server.close()


async def test_attempts_decided_locally_say_local_and_refusals_by_the_peer_do_not(tmp_path: Path) -> None:
    big, other = SinkHandler(), SinkHandler(replies={"user@refused.test": "550 5.1.1 no such user"})
    async with contextlib.AsyncExitStack() as stack:
        # 127.0.0.1:port bound (not listening) keeps the port ours for the 127.0.0.2+ sinks.
        reservation = stack.enter_context(socket.socket())
        reservation.bind(("127.0.0.1", 0))
        port = reservation.getsockname()[1]
        dns, dns_port = await stack.enter_async_context(serve_dns())
        dns.set("nomail.test", "MX", ["0 ."])
        dns.set("nomail.test", "A", ["127.0.0.3"])  # a live server: the null MX must win
        dns.servfail.add("broken.test")
        dns.set("big.test", "MX", ["10 mx.big.test."])
        dns.set("mx.big.test", "A", ["127.0.0.2"])
        for domain in ("refused.test", "fine.test"):
            dns.set(domain, "MX", ["10 mx.other.test."])
        dns.set("mx.other.test", "A", ["127.0.0.3"])
        await stack.enter_async_context(sink_on("127.0.0.2", port, big, data_size_limit=SIZE_LIMIT))
        await stack.enter_async_context(sink_on("127.0.0.3", port, other))

        settings = make_settings(tmp_path, delivery={
            "mode": "mx", "mx_port": port, "dns_resolver": f"127.0.0.1:{dns_port}", "poll_interval": 0.05,
            "connect_timeout": 5, "greeting_timeout": 5, "command_timeout": 5, "data_timeout": 5,
        })  # fmt: skip
        engine = create_engine(settings.database)
        try:
            await schema.upgrade(engine)
            keys = SqlApiKeys(engine)
            _, sender = await keys.create("sender", Role.SENDER, time.time())
            _, viewer = await keys.create("viewer", Role.VIEWER, time.time())
        finally:
            await engine.dispose()

        recipients = [f"user@{d}" for d in ("nomail.test", "broken.test", "big.test", "refused.test", "fine.test")]
        payload = {"from": "app@postroom.test", "to": recipients, "subject": "local or not",
                   "text": "x" * (2 * SIZE_LIMIT)}  # fmt: skip
        daemon = await stack.enter_async_context(running(settings))
        http = await stack.enter_async_context(aiohttp.ClientSession(daemon.http))
        async with http.post("/v1/messages", data=json.dumps(payload),
                             headers={"Authorization": f"Bearer {sender}", "Content-Type": "application/json"}) as response:  # fmt: skip
            assert response.status == 202, await response.text()
            message_id = (await response.json())["id"]

        async def shown() -> dict[str, Any]:
            async with http.get(f"/v1/messages/{message_id}",
                                headers={"Authorization": f"Bearer {viewer}"}) as response:  # fmt: skip
                assert response.status == 200, await response.text()
                return {d["recipient"]: d for d in (await response.json())["deliveries"]}

        async def every_recipient_tried() -> bool:
            deliveries = await shown()
            return all(any(e["type"] in ATTEMPTS for e in d["events"]) for d in deliveries.values())

        await wait_until(every_recipient_tried, 30, what="an attempt recorded for every recipient")
        deliveries = await shown()

    def attempts(recipient: str) -> list[dict[str, Any]]:
        return [e for e in deliveries[recipient]["events"] if e["type"] in ATTEMPTS]

    states = {r: d["state"] for r, d in deliveries.items()}
    assert states == {"user@nomail.test": "bounced", "user@broken.test": "deferred", "user@big.test": "bounced",
                      "user@refused.test": "bounced", "user@fine.test": "delivered"}  # fmt: skip
    assert "null MX" in attempts("user@nomail.test")[0]["detail"]["reply"]
    assert "DNS" in attempts("user@broken.test")[0]["detail"]["reply"]
    assert attempts("user@big.test")[0]["detail"]["reply"].startswith("552 5.3.4")
    assert attempts("user@refused.test")[0]["detail"]["reply"].startswith("550 5.1.1")
    assert big.messages == [], "the message over the peer's SIZE was not sent"
    assert [m.recipients for m in other.messages] == [["user@fine.test"]]

    # Every recorded attempt of a recipient says the same: local (True) or from the peer (no key).
    local = {r: {e["detail"].get("local", "absent") for e in attempts(r)} for r in recipients}
    assert local == {"user@nomail.test": {True}, "user@broken.test": {True}, "user@big.test": {True},
                     "user@refused.test": {"absent"}, "user@fine.test": {"absent"}}  # fmt: skip
