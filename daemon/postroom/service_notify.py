"""The systemd notification protocol (sd_notify(3)) in a few lines of stdlib.

`READY=1` once listeners are bound, `WATCHDOG=1` every half `WATCHDOG_USEC`, `STOPPING=1` on the way
out. Without `$NOTIFY_SOCKET` (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping

logger = logging.getLogger(__name__)


class ServiceNotifier:
    def __init__(self, environ: Mapping[str, str]):
        path = environ.get("NOTIFY_SOCKET", "")
        # A leading "@" names a socket in the abstract namespace (sd_notify(3)).
        self._address = "\0" + path[1:] if path.startswith("@") else path
        usec = environ.get("WATCHDOG_USEC", "")
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *lines: str) -> None:
        if not self._address:
            return
        payload = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._address)
                sock.sendall(payload)
        except OSError as exc:
            logger.warning("could not notify the service manager: %s", exc)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=draining")

    async def run_watchdog(self, stop: asyncio.Event) -> None:
        """Ping while the loop is alive: a stuck loop stops pinging and systemd restarts us."""
        if self.watchdog_interval is None or not self._address:
            await stop.wait()
            return
        while not stop.is_set():
            self.notify("WATCHDOG=1")
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.watchdog_interval)
            except TimeoutError:
                continue
