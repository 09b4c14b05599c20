"""`LoopsClient`: sends one transactional email through Loops' API, and `classify_response`, what
Loops' answer means for the delivery.

`POST {base_url}/transactional` with `Authorization: Bearer <api key>` and the JSON body Loops
documents (`transactionalId`, `email`, `dataVariables`, `attachments` with base64 `data`,
`addToAudience`), plus an `Idempotency-Key` header (at most 100 characters): Loops answers 409 to
a key used in the previous 24 hours, so a retry of a request whose answer was lost never sends
twice. Loops' answers, as its API reference gives them: 200 `{"success": true}`; 409 for a used
key; 429 past the team's rate limit (10 requests per second); 404 for an unknown transactional
email; 400 for every other error, with `{"success": false, "message": ...}`.

`classify_response` is pure: 2xx with `success: true` is sent; 409 is a duplicate (sent before);
429, 5xx, 401 and 403 are tried again later (Retry-After in seconds or as an HTTP date is kept);
any other status is final with Loops' message. Errors of the connection and timeouts are tried
again by the client. Before each request the client waits for a token of the rate limit every
process of the daemon shares (`LoopsRateGate`).
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import enum
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from postroom.core.clock import Clock
from postroom.metrics import Metrics
from postroom.shadow.loops_rate import LoopsRateGate

logger = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY = 100  # Loops' limit on the header
MAX_MESSAGE = 500  # characters of Loops' error message kept in the delivery's reply
DEFAULT_RETRY_AFTER = 1.0  # a 429 without Retry-After: Loops' limit is per second
MAX_RETRY_AFTER = 3600.0


class Outcome(enum.StrEnum):
    SENT = "sent"  # Loops accepted the email
    DUPLICATE = "duplicate"  # 409: the Idempotency-Key was used: this email was sent before
    RETRY = "retry"  # not sent now; the same request (same key) may be tried again later
    FAILED = "failed"  # Loops refused this request: trying it again would get the same answer


@dataclass(frozen=True)
class LoopsAttachment:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class TransactionalRequest:
    transactional_id: str
    email: str
    idempotency_key: str
    data_variables: Mapping[str, Any] = field(default_factory=dict)
    attachments: Sequence[LoopsAttachment] = ()

    def __post_init__(self) -> None:
        if not 1 <= len(self.idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise ValueError(f"an Idempotency-Key has 1-{MAX_IDEMPOTENCY_KEY} characters")


@dataclass(frozen=True)
class LoopsAnswer:
    outcome: Outcome
    status: int | None  # the HTTP status; None when no answer came (connection, timeout, our limit)
    message: str  # what Loops said, or what happened instead
    retry_after: float | None = None  # seconds Loops asked us to wait (429, 5xx with Retry-After)
    unreachable: bool = False  # no connection to Loops at all


def request_body(request: TransactionalRequest) -> dict[str, Any]:
    """The JSON body of `POST /transactional`."""
    body: dict[str, Any] = {
        "transactionalId": request.transactional_id,
        "email": request.email,
        "dataVariables": dict(request.data_variables),
        "addToAudience": False,  # the contact list is postroom's; sending adds nobody to Loops'
    }
    if request.attachments:
        body["attachments"] = [
            {"filename": a.filename, "contentType": a.content_type, "data": base64.b64encode(a.data).decode("ascii")}
            for a in request.attachments
        ]
    return body


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from `now` (RFC 9110 §10.2.3: delay-seconds or an HTTP-date),
    capped at an hour; None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER)


def loops_message(body: Any, fallback: str) -> str:
    """Loops' own words from an error body (`message`, else `error.message`), one line, bounded."""
    text: Any = None
    if isinstance(body, Mapping):
        text = body.get("message")
        error = body.get("error")
        if not isinstance(text, str) and isinstance(error, Mapping):
            text = error.get("message")
        elif not isinstance(text, str) and isinstance(error, str):
            text = error
    if not isinstance(text, str) or not text.strip():
        text = fallback
    return " ".join(text.split())[:MAX_MESSAGE]


def classify_response(status: int, body: Any, retry_after: str | None, now: float) -> LoopsAnswer:
    """What Loops' answer to one send means (pure: the status, the decoded JSON body or None, the
    Retry-After header and the time)."""
    wait = parse_retry_after(retry_after, now)
    if 200 <= status < 300:
        if isinstance(body, Mapping) and body.get("success") is True:
            return LoopsAnswer(Outcome.SENT, status, "sent")
        # Accepted by HTTP but not a success by Loops' contract: nothing says it was sent, and
        # the same key makes a second try safe.
        return LoopsAnswer(Outcome.RETRY, status, loops_message(body, "no success in Loops' answer"), wait)
    if status == 409:
        return LoopsAnswer(Outcome.DUPLICATE, status, loops_message(body, "Idempotency-Key already used"))
    if status == 429:
        return LoopsAnswer(Outcome.RETRY, status, loops_message(body, "rate limited"),
                           DEFAULT_RETRY_AFTER if wait is None else wait)  # fmt: skip
    if status >= 500:
        return LoopsAnswer(Outcome.RETRY, status, loops_message(body, f"server error {status}"), wait)
    if status in (401, 403):
        # Our API key, not this email, is refused: every send would fail alike. It is retried,
        # so mail waits for the key to be fixed instead of all of it failing for good.
        return LoopsAnswer(Outcome.RETRY, status, loops_message(body, "API key refused"), wait)
    if 400 <= status < 500:
        return LoopsAnswer(Outcome.FAILED, status, loops_message(body, f"refused with {status}"))
    # 1xx and 3xx are not answers Loops gives (redirects are not followed): a wrong base_url.
    return LoopsAnswer(Outcome.RETRY, status, f"unexpected HTTP status {status}", wait)


class LoopsClient:
    """Sends transactional emails through Loops, within the daemon's shared rate limit."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: str,
        gate: LoopsRateGate,
        clock: Clock,
        metrics: Metrics,
        timeout: float = 10.0,
    ):
        self._session = session
        self._url = base_url.rstrip("/") + "/transactional"
        self._api_key = api_key
        self._gate = gate
        self._clock = clock
        self._metrics = metrics
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def send(self, request: TransactionalRequest) -> LoopsAnswer:
        if await self._gate.acquire() is None:
            answer = LoopsAnswer(Outcome.RETRY, None, "not sent: Loops' rate limit is used up for now")
            self._metrics.loops_requests.labels(answer.outcome.value).inc()
            return answer
        headers = {"Authorization": f"Bearer {self._api_key}", "Idempotency-Key": request.idempotency_key}
        started = time.perf_counter()
        try:
            async with self._session.post(self._url, json=request_body(request), headers=headers,
                                          timeout=self._timeout, allow_redirects=False) as response:  # fmt: skip
                body = await self._json(response)
                answer = classify_response(response.status, body, response.headers.get("Retry-After"),
                                           self._clock.now())  # fmt: skip
        except aiohttp.ClientConnectorError as exc:
            answer = LoopsAnswer(Outcome.RETRY, None, f"cannot connect to Loops: {exc.strerror or exc}",
                                 unreachable=True)  # fmt: skip
        except TimeoutError:
            answer = LoopsAnswer(Outcome.RETRY, None, "no answer from Loops in time")
        except aiohttp.ClientError as exc:
            answer = LoopsAnswer(Outcome.RETRY, None, f"request to Loops failed: {type(exc).__name__}")
        self._metrics.loops_request_seconds.observe(time.perf_counter() - started)
        self._metrics.loops_requests.labels(answer.outcome.value).inc()
        if answer.status == 429 and answer.retry_after:
            self._gate.hold(answer.retry_after)
            logger.warning("Loops rate-limits us; no requests for %.1fs", answer.retry_after)
        return answer

    @staticmethod
    async def _json(response: aiohttp.ClientResponse) -> Any:
        """The decoded body, or None when it is not JSON (a proxy's error page)."""
        try:
            return await response.json(content_type=None)
        except ValueError:
            return None
