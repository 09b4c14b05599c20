"""`WebhookService`: what the HTTP API and the CLI do with webhook endpoints: create (the secret
is shown once), list, delete, enable, send a signed test webhook now, and replay events."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from postroom.core.clock import Clock
from postroom.core.errors import InvalidMessageError
from postroom.webhooks.model import Endpoint, new_secret, parse_subscription, test_payload, valid_secret
from postroom.webhooks.sender import post_webhook
from postroom.webhooks.signing import body_bytes
from postroom.webhooks.store import SqlWebhookStore


@dataclass(frozen=True)
class TestResult:
    ok: bool
    status: int | None
    error: str

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "status": self.status, "error": self.error or None}


def check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidMessageError(f"{url!r} is not an http:// or https:// URL")
    return url.strip()


class WebhookService:
    def __init__(self, store: SqlWebhookStore, clock: Clock):
        self._store = store
        self._clock = clock

    async def create(self, url: str, event_types: Sequence[str], description: str = "",
                     secret: str | None = None) -> tuple[Endpoint, str]:  # fmt: skip
        """The new endpoint and its signing secret (stored for signing, never shown again)."""
        try:
            types = parse_subscription(event_types)
        except ValueError as exc:
            raise InvalidMessageError(str(exc)) from None
        if secret is not None and not valid_secret(secret):
            raise InvalidMessageError("secret must be whsec_ followed by base64 of 24 to 64 bytes")
        secret = secret or new_secret()
        endpoint_id = "we_" + os.urandom(8).hex()
        made = await self._store.create_endpoint(endpoint_id, check_url(url), secret, types, description,
                                                 self._clock.now())  # fmt: skip
        return made, secret

    async def endpoints(self) -> list[Endpoint]:
        return await self._store.endpoints()

    async def show(self, endpoint_id: str) -> Endpoint:
        return await self._store.endpoint(endpoint_id)

    async def deliveries(self, endpoint_id: str, limit: int = 100) -> list[dict[str, Any]]:
        return await self._store.deliveries(endpoint_id, limit)

    async def delete(self, endpoint_id: str) -> None:
        await self._store.delete_endpoint(endpoint_id)

    async def set_enabled(self, endpoint_id: str, enabled: bool) -> Endpoint:
        return await self._store.set_enabled(endpoint_id, enabled, self._clock.now())

    async def test(self, endpoint_id: str, session: aiohttp.ClientSession) -> TestResult:
        """POST a signed `webhook.test` to the endpoint now (enabled or not) and say what it answered."""
        url, secret = await self._store.secret(endpoint_id)
        now = self._clock.now()
        ok, status, error = await post_webhook(session, url, secret, f"test_{os.urandom(8).hex()}",
                                               body_bytes(test_payload(endpoint_id, now)), now)  # fmt: skip
        return TestResult(ok, status, error)

    async def replay(self, *, event_ids: Sequence[int] = (), since: float | None = None,
                     until: float | None = None, endpoint_id: str | None = None,
                     progress: Callable[[int, int], None] | None = None) -> int:  # fmt: skip
        if not event_ids and since is None and until is None:
            raise InvalidMessageError("name event ids, or a time range (from, to)")
        if since is not None and until is not None and until <= since:
            raise InvalidMessageError("the end of the range must be after its start")
        return await self._store.replay(event_ids=event_ids, since=since, until=until, endpoint_id=endpoint_id,
                                        now=self._clock.now(), progress=progress)  # fmt: skip
