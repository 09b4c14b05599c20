"""Standard Webhooks signatures (https://www.standardwebhooks.com), made by the `standardwebhooks`
package so a receiver verifies with any implementation of the scheme: the headers `webhook-id`,
`webhook-timestamp` (whole seconds) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of
"id.timestamp.body">`), over the exact body bytes sent."""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any

from standardwebhooks.webhooks import Webhook

USER_AGENT = "postroom-webhooks/1"


def body_bytes(payload: Mapping[str, Any]) -> bytes:
    """The body as sent and signed: compact JSON, UTF-8."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode()


def signed_headers(secret: str, webhook_id: str, at: float, body: bytes) -> dict[str, str]:
    timestamp = datetime.datetime.fromtimestamp(int(at), datetime.UTC)
    signature = Webhook(secret).sign(webhook_id, timestamp, body)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at)),
        "webhook-signature": signature,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }
