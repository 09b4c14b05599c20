"""Failed TLS handshakes: each one counted, and logged as one line up to a rate.

Anyone may connect, say STARTTLS and then send garbage or offer only TLS 1.0, on the MX without
logging in, as fast as they like (issue 10, finding 5). Such a failure is the peer's business, not
an error of ours: it is counted in `postroom_smtp_tls_failures_total{listener}` and logged at INFO
with the peer and the reason, at most `limit` lines per `window` seconds per process; the rest are
summed up in one line when the window ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from postroom.metrics import Metrics

logger = logging.getLogger(__name__)


class HandshakeFailures:
    def __init__(self, metrics: Metrics, *, limit: int = 10, window: float = 60.0):
        self._metrics = metrics
        self._limit = limit
        self._window = window
        self._window_end = float("-inf")  # on the loop's clock
        self._logged = 0
        self._suppressed = 0
        self._summary: asyncio.TimerHandle | None = None

    def reporter(self, listener: str) -> Callable[[str, str], None]:
        """What a listener's sessions call with (peer address, reason)."""
        counter = self._metrics.smtp_tls_failures.labels(listener)

        def report(peer: str, reason: str) -> None:
            counter.inc()
            self._log(listener, peer, reason)

        return report

    def _log(self, listener: str, peer: str, reason: str) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now >= self._window_end:
            self._summarise()
            self._window_end = now + self._window
            self._logged = 0
        if self._logged < self._limit:
            self._logged += 1
            logger.info("TLS handshake failed on the %s listener from %s: %s", listener, peer, reason)
            return
        self._suppressed += 1
        if self._summary is None:
            self._summary = loop.call_at(self._window_end, self._summarise)

    def _summarise(self) -> None:
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        if self._suppressed:
            logger.info("... %d more failed TLS handshakes in the last %.0f s not logged "
                        "(all are counted in postroom_smtp_tls_failures_total)",
                        self._suppressed, self._window)  # fmt: skip
            self._suppressed = 0

    def close(self) -> None:
        """Log the summary now (the listeners are closing)."""
        self._summarise()
