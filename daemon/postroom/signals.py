"""Signal handling shared by the daemon and the supervisor: SIGTERM/SIGINT stop, SIGHUP reloads."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

logger = logging.getLogger(__name__)


def install_signal_handlers(stop: asyncio.Event, on_reload: Callable[[], None] | None = None) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(
        signal.SIGHUP, on_reload or (lambda: logger.info("SIGHUP: nothing to reload here"))
    )
