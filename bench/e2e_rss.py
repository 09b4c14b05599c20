#!/usr/bin/env python3
"""Peak memory of postroom with a large deferred queue that it keeps retrying.

This module owns the memory part of ``e2e.py``. A fresh ``smtp-sink -r rcpt``
answers every RCPT with ``450 4.3.0 Error: command failed`` (temporary, not a
throttling reply), so every delivery attempt ends deferred. postroom runs in
smarthost mode towards it, with its defaults (one process per core) except a
short ``retry_base`` so that retries fall due during the run. ``smtp-source``
fills the queue with N messages of 5 KB over 20 sessions; then the harness
keeps the daemon running for ``hold`` seconds more while the worker retries.

A thread samples VmRSS of the supervisor and its daemon processes every half
second (the peak of the sum is reported) and keeps each process's VmHWM, the
kernel's high-water mark of its resident set; their sum is the figure checked
against the goal (an upper bound of the peak of the sum).

Verification: ``postroom_messages_accepted_total`` grew by N, nothing was
delivered, at the end every delivery is in the queue (queued, deferred or
sending: ``postroom_queue_depth``), and deferred attempts exceed N, i.e.
messages were retried while they sat in the queue.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e_systems import RECIPIENT, open_system
from loadgen import SmtpSink, SourceJob, free_port, run_smtp_source
from proctree import CpuMeter, MemorySampler, pss_kib
from pyspy import Profiler

logger = logging.getLogger(__name__)

ACTIVE_STATES = ("queued", "deferred", "sending")


class VerificationError(RuntimeError):
    """The queue did not hold the messages, or nothing was retried."""


@dataclass(frozen=True)
class RssSettings:
    messages: int = 100_000
    sessions: int = 20
    size: int = 5120
    hold: float = 120.0  # seconds of retrying after the queue is full
    retry_base: float = 5.0
    postroom: Path = Path(".venv/bin/postroom")
    base_dir: str | None = None
    keep: bool = False
    profiler: Profiler | None = None


@dataclass
class RssRun:
    messages: int
    fill_seconds: float
    hold_seconds: float
    peak_rss_sum_mib: float  # the largest sampled sum of VmRSS over the tree
    hwm_sum_mib: float  # sum of each process's VmHWM
    hwm_by_process_mib: dict[str, float]
    deferred_attempts: float
    queue_depth: dict[str, float]
    cpu_seconds: float
    start_rss_sum_mib: float = 0.0  # the tree's summed VmRSS when the fill began (idle daemon)
    max_pss_sum_mib: float = 0.0  # the largest summed PSS of the timeline snapshots
    timeline: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def measure(settings: RssSettings) -> RssRun:
    sink_port = free_port()
    delivery = {"retry_base": str(settings.retry_base)}
    with SmtpSink(sink_port, soft_reject="rcpt") as sink, \
            open_system("postroom-smarthost", sink_port, postroom=settings.postroom,
                        base_dir=settings.base_dir, keep=settings.keep,
                        delivery=delivery) as running:
        daemon = running.postroom
        assert daemon is not None
        accepted_before = daemon.accepted_total()
        sampler = MemorySampler(daemon.tree, interval=0.5)
        meter = CpuMeter(daemon.tree)
        sampler.start()
        meter.start()
        started = time.perf_counter()
        job = SourceJob(port=running.port, messages=settings.messages, sessions=settings.sessions,
                        size=settings.size, sender=running.sender, recipient=RECIPIENT)
        source = run_smtp_source(job)
        filled = time.perf_counter()
        timeline = [snapshot(daemon, sampler, 0.0)]
        logger.info("queue filled with %d messages in %.1fs; holding %.0fs",
                    settings.messages, source.seconds, settings.hold)
        profile = (settings.profiler.attach("rss-postroom", daemon.tree)
                   if settings.profiler else None)
        while (elapsed := time.perf_counter() - filled) < settings.hold:
            time.sleep(min(10.0, settings.hold - elapsed))
            timeline.append(snapshot(daemon, sampler, time.perf_counter() - filled))
            logger.info("  +%4.0fs rss %6.1f MiB (pss %6.1f), deferred attempts %8.0f, depth %s",
                        timeline[-1]["t"], timeline[-1]["rss_mib"], timeline[-1]["pss_mib"],
                        timeline[-1]["deferred_attempts"], {
                            k[6:]: v for k, v in timeline[-1].items() if k.startswith("depth_")})
        held = time.perf_counter() - filled
        if profile is not None:
            profile.stop()
        meter.stop()
        sampler.stop()
        text = daemon.metrics()
        accepted = daemon.accepted_total() - accepted_before
        delivered = daemon.metric("postroom_delivered_total", text)
        attempts = daemon.labelled("postroom_delivery_attempts_total", "result", text)
        depth = daemon.labelled("postroom_queue_depth", "state", text)
        signatures = daemon.labelled("postroom_dkim_signatures_total", "result", text)
        hwm = {f"{pid}": kib / 1024 for pid, kib in sampler.hwm_by_pid.items()}
        sink_rcpt_sessions = sink.counters.sess
        root_pid = daemon.pid
    run = RssRun(
        messages=settings.messages, fill_seconds=filled - started,
        hold_seconds=held,
        peak_rss_sum_mib=sampler.peak_kib / 1024, hwm_sum_mib=sampler.hwm_kib / 1024,
        hwm_by_process_mib=hwm, deferred_attempts=attempts.get("deferred", 0.0),
        queue_depth=depth, cpu_seconds=meter.seconds, timeline=timeline,
        start_rss_sum_mib=sampler.samples[0][1] / 1024 if sampler.samples else 0.0,
        max_pss_sum_mib=max((row["pss_mib"] for row in timeline), default=0.0),
        extra={"accepted": accepted, "delivered": delivered, "attempts": attempts,
               "dkim_signatures": signatures,
               "sink_sessions": sink_rcpt_sessions, "root_pid": root_pid},
    )
    active = sum(depth.get(state, 0.0) for state in ACTIVE_STATES)
    if accepted != settings.messages or delivered or active != settings.messages:
        raise VerificationError(f"accepted {accepted:g}, delivered {delivered:g}, "
                                f"in the queue {active:g} ({depth}); expected "
                                f"{settings.messages}, 0, {settings.messages}")
    if run.deferred_attempts <= settings.messages:
        raise VerificationError(f"only {run.deferred_attempts:g} deferred attempts for "
                                f"{settings.messages} messages: nothing was retried")
    return run


def snapshot(daemon: Any, sampler: MemorySampler, t: float) -> dict[str, float]:
    text = daemon.metrics()
    depth = daemon.labelled("postroom_queue_depth", "state", text)
    row = {"t": t, "rss_mib": sampler.sample() / 1024,
           "pss_mib": sum(pss_kib(pid) for pid in daemon.tree()) / 1024,
           "deferred_attempts": daemon.labelled("postroom_delivery_attempts_total", "result",
                                                text).get("deferred", 0.0)}
    row.update({f"depth_{k}": v for k, v in depth.items() if v})
    return row
