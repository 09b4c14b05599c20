#!/usr/bin/env python3
"""Accept-to-delivered latency at a steady rate: paced sender -> system -> arrival sink.

This module owns the latency part of ``e2e.py``. Per run: a fresh
``arrival_sink.py`` process on 127.0.0.1 (it logs the arrival time of each
message id), a fresh system relaying to it (``e2e_systems``), then
``paced_source.send_paced`` sends ``warmup + messages`` messages at ``rate``
per second over ``connections`` persistent sessions. For each message after
the warm-up:

    latency = arrival at the sink - moment the sender got the 250 for DATA

(both ``time.monotonic()``, CLOCK_MONOTONIC, the same clock in every process).
The report gives p50 / p90 / p99 / p99.9 / max over the measured messages,
the achieved send rate and the largest start delay of the sender (how far
behind its schedule a message went out), and the CPU the sink used, which
shows it was nowhere near its limit.

Verification: every measured message got its 250 and arrived exactly once;
for postroom, each arrived with an RSA and an Ed25519 DKIM signature.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e_systems import RECIPIENT, open_system
from lab import Lab
from loadgen import free_port
from paced_source import PacedJob, send_paced
from proctree import CpuMeter, machine_cpu
from pyspy import Profiler

logger = logging.getLogger(__name__)
BENCH_DIR = Path(__file__).resolve().parent


class VerificationError(RuntimeError):
    """Some message was refused, lost, duplicated or not signed."""


@dataclass(frozen=True)
class LatencySettings:
    rate: float = 300.0
    messages: int = 9000  # measured, after the warm-up
    warmup: int = 600  # the first 2 s at 300 msg/s: process start-up, first connections
    connections: int = 10
    size: int = 5120
    rounds: int = 3
    systems: tuple[str, ...] = ("postfix", "postroom-smarthost")
    postroom: Path = Path(".venv/bin/postroom")
    base_dir: str | None = None
    keep: bool = False
    profiler: Profiler | None = None


@dataclass
class LatencyRun:
    system: str
    round: int
    measured: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    min_ms: float
    send_rate: float
    max_start_delay_ms: float
    cpu_seconds: float  # the system's process tree, over the whole send
    sink_cpu_seconds: float
    seconds: float
    machine_busy_seconds: float
    submit_p50_ms: float = 0.0  # MAIL FROM sent -> 250 after DATA, at the sender
    submit_p99_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class ArrivalSink(Lab):
    """``arrival_sink.py`` as a child process writing to ``out``."""

    def __init__(self, port: int, out: Path) -> None:
        self.port, self.out = port, out
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """Start arrival_sink.py and wait for its ``ready`` line."""
        argv = [sys.executable, str(BENCH_DIR / "arrival_sink.py"), "--port", str(self.port),
                "--out", str(self.out)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            self.stop()  # do not leave the child running behind the error
            raise RuntimeError(f"arrival sink did not start: {line!r}")

    def stop(self) -> None:
        """Terminate the sink (our child, by PID) if it still runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def arrivals(self) -> list[tuple[str, float, str]]:
        rows = []
        for line in self.out.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                rows.append((parts[0], float(parts[1]), parts[2]))
        return rows

    def wait_for(self, ids: set[str], timeout: float) -> list[tuple[str, float, str]]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.arrivals()
            if ids <= {r[0] for r in rows} or time.monotonic() > deadline:
                return rows
            time.sleep(0.2)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def measure(settings: LatencySettings, system: str, round_no: int, work: Path) -> LatencyRun:
    sink_port = free_port()
    out = work / f"arrivals-{system}-r{round_no}.txt"
    run_id = f"{system[:8]}r{round_no}"
    total = settings.warmup + settings.messages
    with ArrivalSink(sink_port, out) as sink, open_system(system, sink_port,
                                                          postroom=settings.postroom,
                                                          base_dir=settings.base_dir,
                                                          keep=settings.keep) as running:
        job = PacedJob(port=running.port, rate=settings.rate, messages=total,
                       connections=settings.connections, size=settings.size,
                       sender=running.sender, recipient=RECIPIENT, run_id=run_id)
        meter, sink_meter = CpuMeter(running.tree), CpuMeter(lambda: [sink.pid])
        profile = (settings.profiler.attach(f"latency-{system}-r{round_no}", running.tree)
                   if settings.profiler and running.postroom else None)
        meter.start()
        sink_meter.start()
        machine_before = machine_cpu()[0]
        result = asyncio.run(send_paced(job))
        accepted = {s.bench_id for s in result.accepted}
        rows = sink.wait_for(accepted, timeout=120)
        machine_after = machine_cpu()[0]
        meter.stop()
        sink_meter.stop()
        if profile is not None:
            profile.stop()
    refused = [s for s in result.sent if not s.ok]
    if refused:
        raise VerificationError(f"{system}: {len(refused)} messages not accepted, first: "
                                f"{refused[0].bench_id} {refused[0].reply!r}")
    arrivals: dict[str, float] = {}
    duplicates, unsigned = 0, 0
    for bench_id, arrived, algorithms in rows:
        if bench_id in arrivals:
            duplicates += 1
        arrivals[bench_id] = min(arrived, arrivals.get(bench_id, arrived))
        if running.postroom is not None and sorted(algorithms.split(",")) != \
                ["ed25519-sha256", "rsa-sha256"]:
            unsigned += 1
    missing = [s.bench_id for s in result.sent if s.bench_id not in arrivals]
    if missing or duplicates or unsigned:
        raise VerificationError(f"{system}: {len(missing)} missing at the sink, {duplicates} "
                                f"duplicates, {unsigned} without both DKIM signatures")
    measured = result.sent[settings.warmup:]
    latencies = [1000 * (arrivals[s.bench_id] - s.acked) for s in measured]
    # How long the system took to answer each transaction (MAIL to the 250 after DATA).
    submits = [1000 * (s.acked - s.started) for s in measured]
    return LatencyRun(
        system=system, round=round_no, measured=len(latencies),
        p50_ms=percentile(latencies, 50), p90_ms=percentile(latencies, 90),
        p99_ms=percentile(latencies, 99), p999_ms=percentile(latencies, 99.9),
        max_ms=max(latencies), min_ms=min(latencies), send_rate=result.rate,
        max_start_delay_ms=1000 * result.max_start_delay, cpu_seconds=meter.seconds,
        sink_cpu_seconds=sink_meter.seconds, seconds=meter.wall,
        machine_busy_seconds=machine_after - machine_before,
        submit_p50_ms=percentile(submits, 50), submit_p99_ms=percentile(submits, 99),
        extra={"mean_ms": statistics.fmean(latencies), "warmup": settings.warmup,
               "negative": sum(1 for v in latencies if v < 0)},
    )


def run_latency(settings: LatencySettings) -> list[LatencyRun]:
    runs: list[LatencyRun] = []
    systems = list(settings.systems)
    with tempfile.TemporaryDirectory(prefix="e2e-latency-", dir=settings.base_dir) as tmp:
        for round_no in range(1, settings.rounds + 1):
            shift = (round_no - 1) % len(systems)
            for system in systems[shift:] + systems[:shift]:
                run = measure(settings, system, round_no, Path(tmp))
                logger.info("round %d %-18s p50 %.1f ms p99 %.1f ms max %.1f ms (sent %.1f msg/s, "
                            "max start delay %.1f ms, submit p50 %.1f p99 %.1f ms); CPU %.1fs, "
                            "sink %.1fs, machine busy %.2f cores",
                            round_no, system, run.p50_ms, run.p99_ms, run.max_ms, run.send_rate,
                            run.max_start_delay_ms, run.submit_p50_ms, run.submit_p99_ms,
                            run.cpu_seconds, run.sink_cpu_seconds,
                            run.machine_busy_seconds / run.seconds)
                runs.append(run)
    return runs
