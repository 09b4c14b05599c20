#!/usr/bin/env python3
"""The two systems under test in ``e2e.py``, started the same way for every benchmark.

This module owns how each end-to-end benchmark gets a delivering system in
front of a sink on 127.0.0.1:

* ``postfix``: a fresh ``PostfixLab("relay", ...)`` with ``relayhost`` = the
  sink (no DNS, no TLS, queue fsynced as Postfix always does);
* ``postroom-smarthost``: a fresh ``DeliveringPostroom`` with ``mode =
  "smarthost"`` and ``smarthost`` = the sink (Postfix's relayhost, in postroom);
* ``postroom-mx``: ``mode = "mx"``, the recipient domain's MX pointing to the
  sink through a ``DnsResponder`` (``dns_resolver`` and ``mx_port`` set).

``open_system`` yields a :class:`Running` with the port to submit to, the
envelope sender to use and the process tree to measure. Both sides keep their
queue under ``base_dir`` (default ``$TMPDIR``), so on the same filesystem.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dns_lab import DnsResponder
from loadgen import free_port
from postfix_lab import PostfixLab
from postroom_lab import SENDING_DOMAIN, DeliveringPostroom
from proctree import descendants

SYSTEMS = ("postfix", "postroom-smarthost", "postroom-mx")
RECIPIENT = "anyone@example.net"
SINK_HOST = "sink.bench.test"  # the MX host name of example.net in the mx runs


@dataclass
class Running:
    """A started system: where to send, as whom, and which processes are it."""

    system: str
    port: int
    sender: str
    tree: Callable[[], list[int]]
    postroom: DeliveringPostroom | None = None
    postfix: PostfixLab | None = None
    notes: dict[str, object] = field(default_factory=dict)


def postfix_master_pid(lab: PostfixLab) -> int:
    """The master's PID, from the pid file Postfix keeps in its queue directory."""
    return int((lab.queue_dir / "pid" / "master.pid").read_text().split()[0])


@contextlib.contextmanager
def open_system(
    system: str,
    sink_port: int,
    *,
    postroom: Path,
    base_dir: str | None = None,
    keep: bool = False,
    delivery: dict[str, str] | None = None,
) -> Iterator[Running]:
    """Start ``system`` delivering to 127.0.0.1:``sink_port``; stop it on exit.

    ``delivery`` adds ``[delivery]`` keys for postroom (retry settings, ...).
    """
    if system == "postfix":
        port = free_port()
        with PostfixLab("relay", port, relay=f"127.0.0.1:{sink_port}", base_dir=base_dir,
                        keep=keep) as lab:
            master = postfix_master_pid(lab)
            yield Running(system, port, f"bench@{SENDING_DOMAIN}", lambda: descendants(master),
                          postfix=lab)
        return
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}")
    keys = dict(delivery or {})
    with contextlib.ExitStack() as stack:
        if system == "postroom-smarthost":
            keys.update({"mode": "smarthost", "smarthost": f"127.0.0.1:{sink_port}"})
        else:
            dns = stack.enter_context(DnsResponder({
                (RECIPIENT.rpartition("@")[2], "MX"): [(10, SINK_HOST)],
                (SINK_HOST, "A"): ["127.0.0.1"],
            }))
            keys.update({"mode": "mx", "mx_port": str(sink_port),
                         "dns_resolver": f"127.0.0.1:{dns.port}"})
        daemon = DeliveringPostroom(postroom, base_dir, keep, delivery=keys)
        stack.enter_context(daemon)
        yield Running(system, daemon.submission_port, f"bench@{SENDING_DOMAIN}", daemon.tree,
                      postroom=daemon, notes={"delivery": keys, "selectors": daemon.selectors})
