#!/usr/bin/env python3
"""End-to-end delivery throughput: smtp-source -> system -> smtp-sink.

This module owns the throughput part of ``e2e.py``. Per run: a fresh
``smtp-sink`` on 127.0.0.1, a fresh system relaying to it (``e2e_systems``),
then ``smtp-source`` sends N messages of 5 KB over S sessions (one message per
connection, as in ``ingest.py``) and the harness waits until the sink has
counted all N. The rate is

    messages counted at the sink / (last arrival at the sink - start of smtp-source)

Beside it: how long smtp-source took (the ingest phase), the CPU seconds of the
system's process tree (Postfix: the master and everything below it, including
the children it reaped; postroom: the supervisor and its daemon processes),
of the sink and of smtp-source, and the busy CPU of the whole machine over the
same interval, whose excess over ours is other people's load.

Verification: the sink counted exactly N messages, and the system has nothing
left: Postfix's queue is empty; postroom's ``postroom_delivered_total`` grew by
N and ``postroom_dkim_signatures_total{result="signed"}`` by N (every message
signed with its domain's keys).
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e_systems import RECIPIENT, Running, open_system
from loadgen import SmtpSink, SourceJob, free_port, run_smtp_source
from proctree import CpuMeter, machine_cpu
from pyspy import Profiler

logger = logging.getLogger(__name__)


class VerificationError(RuntimeError):
    """The system did not deliver exactly the messages that were sent."""


@dataclass(frozen=True)
class ThroughputSettings:
    messages: int = 20000
    sessions: int = 20
    size: int = 5120
    rounds: int = 3
    systems: tuple[str, ...] = ("postfix", "postroom-smarthost")
    postroom: Path = Path(".venv/bin/postroom")
    base_dir: str | None = None
    keep: bool = False
    timeout: float = 900.0
    profiler: Profiler | None = None


@dataclass
class ThroughputRun:
    system: str
    round: int
    messages: int
    delivered: int
    seconds: float  # first message sent -> last message at the sink
    rate: float
    ingest_seconds: float  # smtp-source's wall time
    cpu_seconds: float  # the system's process tree
    sink_cpu_seconds: float
    source_cpu_seconds: float
    machine_busy_seconds: float  # every process on the machine, same interval
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_ms_per_message(self) -> float:
        return 1000 * self.cpu_seconds / self.delivered if self.delivered else 0.0

    @property
    def other_load_cores(self) -> float:
        """Busy cores not accounted for by the system, the sink or smtp-source."""
        ours = self.cpu_seconds + self.sink_cpu_seconds + self.source_cpu_seconds
        return max(0.0, self.machine_busy_seconds - ours) / self.seconds if self.seconds else 0.0


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(settings: ThroughputSettings, system: str, round_no: int) -> ThroughputRun:
    sink_port = free_port()
    with SmtpSink(sink_port) as sink, open_system(system, sink_port, postroom=settings.postroom,
                                                  base_dir=settings.base_dir,
                                                  keep=settings.keep) as running:
        before = snapshot_counters(running)
        job = SourceJob(port=running.port, messages=settings.messages, sessions=settings.sessions,
                        size=settings.size, sender=running.sender, recipient=RECIPIENT,
                        timeout=settings.timeout)
        meter, sink_meter = CpuMeter(running.tree), CpuMeter(lambda: [sink.pid or 0])
        profile = (settings.profiler.attach(f"throughput-{system}-r{round_no}", running.tree)
                   if settings.profiler and running.postroom else None)
        meter.start()
        sink_meter.start()
        source_before, machine_before = children_cpu(), machine_cpu()[0]
        started = time.perf_counter()
        result = run_smtp_source(job)
        received = sink.wait_for(settings.messages, timeout=settings.timeout)
        last = sink.last_received_at
        machine_after = machine_cpu()[0]
        meter.stop()
        sink_meter.stop()
        source_cpu = children_cpu() - source_before
        if profile is not None:
            profile.stop()
        time.sleep(1.0)  # a duplicate would show up now
        delivered = sink.received
        extra = verify(settings, running, before, delivered)
    seconds = last - started
    return ThroughputRun(
        system=system, round=round_no, messages=settings.messages, delivered=delivered,
        seconds=seconds, rate=delivered / seconds if seconds > 0 else 0.0,
        ingest_seconds=result.seconds, cpu_seconds=meter.seconds,
        sink_cpu_seconds=sink_meter.seconds, source_cpu_seconds=source_cpu,
        machine_busy_seconds=machine_after - machine_before,
        extra={**extra, "received_when_done": received},
    )


def snapshot_counters(running: Running) -> dict[str, float]:
    if running.postroom is None:
        return {}
    text = running.postroom.metrics()
    return {"delivered": running.postroom.metric("postroom_delivered_total", text),
            "signed": running.postroom.labelled("postroom_dkim_signatures_total", "result",
                                                text).get("signed", 0.0)}


def verify(settings: ThroughputSettings, running: Running, before: dict[str, float],
           delivered: int) -> dict[str, Any]:
    n = settings.messages
    if delivered != n:
        raise VerificationError(f"{running.system}: sent {n}, the sink counted {delivered}")
    if running.postfix is not None:
        pending = running.postfix.wait_until_empty(timeout=30)
        if pending:
            raise VerificationError(f"postfix: {pending} messages still queued after delivery")
        return {"queue_left": pending}
    assert running.postroom is not None
    after = snapshot_counters(running)
    grown = {k: after[k] - before[k] for k in after}
    if grown["delivered"] != n or grown["signed"] != n:
        raise VerificationError(f"{running.system}: sent {n}, postroom_delivered_total grew by "
                                f"{grown['delivered']:g}, DKIM signed {grown['signed']:g}")
    return {"postroom_delivered": grown["delivered"], "dkim_signed": grown["signed"]}


def run_throughput(settings: ThroughputSettings) -> list[ThroughputRun]:
    """All rounds; the order of the systems rotates from one round to the next."""
    runs: list[ThroughputRun] = []
    systems = list(settings.systems)
    for round_no in range(1, settings.rounds + 1):
        shift = (round_no - 1) % len(systems)
        order = systems[shift:] + systems[:shift]
        for system in order:
            run = measure(settings, system, round_no)
            logger.info("round %d %-18s %6d msgs in %6.2fs = %6.1f msg/s (ingest %.2fs), "
                        "CPU %.1fs = %.2f ms/msg, %.2f cores; others %.2f cores",
                        round_no, system, run.delivered, run.seconds, run.rate,
                        run.ingest_seconds, run.cpu_seconds, run.cpu_ms_per_message,
                        run.cpu_seconds / run.seconds, run.other_load_cores)
            runs.append(run)
    return runs
