"""The start/stop lifecycle the benchmark labs share, as a context manager.

This module owns how a lab (a thing a benchmark brings up on 127.0.0.1, uses
and throws away: a private Postfix, a postroom daemon, a DNS responder, an SMTP
sink) is entered and left. A lab says how it starts and how it stops;
``with lab:`` calls ``start()``, hands the lab back, and calls ``stop()``
however the block ends. Exceptions are never swallowed. ``stop()`` must be safe
to call twice and after a ``start()`` that failed part-way, because a lab's
own error path in ``start()`` and ``__exit__`` may both reach it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self


class Lab(ABC):
    """Something a benchmark starts, uses and stops: ``with lab:`` is start, then stop."""

    @abstractmethod
    def start(self) -> None:
        """Bring the lab up; return once it serves."""

    @abstractmethod
    def stop(self) -> None:
        """Bring the lab down and release what it holds; calling it again does nothing."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
