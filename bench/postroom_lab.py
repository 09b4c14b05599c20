#!/usr/bin/env python3
"""A throw-away postroom that delivers, for the end-to-end benchmarks.

This module owns the postroom side of ``e2e.py``: ``postroom init --dev`` in a
fresh directory (SQLite under it, on the filesystem the benchmark runs on),
then a sending domain added to its configuration with ``dkim = "required"``
and two keys made for it with the CLI, as an operator would::

    postroom dkim keygen --domain bench.test --selector e2e-rsa --algorithm rsa
    postroom dkim keygen --domain bench.test --selector e2e-ed --algorithm ed25519

and ``postroom serve`` with its defaults (one process per core) except for
what the run needs, set through ``POSTROOM_*`` variables: free loopback ports,
and ``[delivery]`` either ``mode = "smarthost"`` to a sink or ``mode = "mx"``
with ``dns_resolver`` pointing at the benchmark's DNS responder and ``mx_port``
at the sink. Retry settings can be given for the deferred-queue benchmark.

Start, readiness, metrics and SIGTERM are those of ``ingest.PostroomDaemon``.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest import PostroomDaemon, sum_metric
from loadgen import free_port
from proctree import descendants

logger = logging.getLogger(__name__)

SENDING_DOMAIN = "bench.test"
SELECTORS = (("e2e-rsa", "rsa"), ("e2e-ed", "ed25519"))


@dataclass
class DeliveringPostroom(PostroomDaemon):
    """``PostroomDaemon`` that delivers (no hold) with the ``[delivery]`` keys in ``delivery``.

    ``delivery`` maps keys of the ``[delivery]`` section to values, e.g.
    ``{"mode": "smarthost", "smarthost": "127.0.0.1:10026"}``; each becomes a
    ``POSTROOM_DELIVERY__KEY`` variable of the serve process.
    """

    delivery: dict[str, str] = field(default_factory=dict)
    selectors: list[str] = field(default_factory=list)  # `dkim ls` lines of the active keys

    @property
    def domain(self) -> str:
        return SENDING_DOMAIN

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def tree(self) -> list[int]:
        """The supervisor and its daemon processes."""
        return descendants(self.pid) if self.proc is not None else []

    def _init(self) -> dict[str, Any]:
        info = super()._init()
        config = Path(info.get("config") or self._root() / "postroom.toml")
        with config.open("a", encoding="utf-8") as handle:
            handle.write(f'\n# added by bench/postroom_lab.py\n[[domains]]\n'
                         f'name = "{SENDING_DOMAIN}"\ndkim = "required"\n')
        for selector, algorithm in SELECTORS:
            self._postroom("dkim", "keygen", "--config", str(config), "--domain", SENDING_DOMAIN,
                           "--selector", selector, "--algorithm", algorithm, "--json")
        listing = self._postroom("dkim", "ls", "--config", str(config), SENDING_DOMAIN)
        active = [line for line in listing.splitlines()
                  if line.startswith(SENDING_DOMAIN) and " active " in line]
        if len(active) != len(SELECTORS):
            raise RuntimeError(f"expected {len(SELECTORS)} active selectors:\n{listing}")
        self.selectors = active
        return info

    def _root(self) -> Path:
        assert self.root is not None
        return self.root

    def _postroom(self, *args: str) -> str:
        argv = [str(self.executable), *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): "
                               f"{proc.stderr.strip()[-1000:]}")
        return proc.stdout

    def _serve(self) -> None:
        self.submission_port, self.http_port, self.mx_port = free_port(), free_port(), free_port()
        env = dict(os.environ)
        env.update({
            "POSTROOM_SMTP__SUBMISSION_LISTEN": f"127.0.0.1:{self.submission_port}",
            "POSTROOM_HTTP__LISTEN": f"127.0.0.1:{self.http_port}",
            "POSTROOM_SMTP__MX_LISTEN": f"127.0.0.1:{self.mx_port}",
        })
        env.update({f"POSTROOM_DELIVERY__{key.upper()}": value
                    for key, value in self.delivery.items()})
        argv = [str(self.executable), "serve", "--config", str(self._config_path())]
        logger.info("starting %s (submission 127.0.0.1:%d, http 127.0.0.1:%d, delivery %s)",
                    " ".join(argv), self.submission_port, self.http_port, self.delivery)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(argv, env=env, cwd=self.root, stdout=log,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

    def metrics(self) -> str:
        status, text = self._get("/metrics", timeout=20.0)
        if status != 200:
            raise RuntimeError(f"GET /metrics returned {status}")
        return text

    def metric(self, name: str, text: str | None = None) -> float:
        """Sum of every sample of ``name`` (all label sets)."""
        return sum_metric(self.metrics() if text is None else text, name)

    def labelled(self, name: str, label: str, text: str | None = None) -> dict[str, float]:
        """Samples of ``name`` by the value of one label."""
        found: dict[str, float] = {}
        for line in (self.metrics() if text is None else text).splitlines():
            if line.startswith(name + "{") and f'{label}="' in line:
                value = line.split(f'{label}="', 1)[1].split('"', 1)[0]
                found[value] = found.get(value, 0.0) + float(line.rsplit(" ", 1)[-1])
        return found
