#!/usr/bin/env python3
"""Benchmark: end-to-end delivery, postroom vs Postfix, on this machine (issue 4).

Three measurements, one subcommand each; every run starts fresh instances,
and everything stays on 127.0.0.1:

* ``throughput``: smtp-source -> system -> smtp-sink, N messages of 5 KB over
  20 sessions; rate = messages counted at the sink / (last arrival - first
  send). postroom DKIM-signs every message with RSA-2048 and Ed25519 (domain
  ``bench.test``, ``dkim = "required"``, keys from ``postroom dkim keygen``);
  Postfix relays through ``relayhost`` and does not sign. Systems:
  ``postfix``, ``postroom-smarthost`` (the match for relayhost) and
  ``postroom-mx`` (direct MX delivery, DNS from a local responder). Median of
  the rounds; CPU of each process tree. (``e2e_throughput.py``)
* ``latency``: a paced sender at 300 msg/s -> system -> an arrival-logging
  sink; p50 / p99 of sink arrival - the 250 for DATA. (``e2e_latency.py``)
* ``rss``: postroom with 100,000 deferred messages that it keeps retrying
  (the sink answers 450 to RCPT); peak resident memory of its processes.
  (``e2e_rss.py``)

Needs root (Postfix), ``apt-get install postfix`` and the venv's postroom.

    python3 bench/e2e.py throughput                       # 20000 msgs, 3 rounds
    python3 bench/e2e.py throughput --systems postfix,postroom-smarthost,postroom-mx
    python3 bench/e2e.py latency                          # 300 msg/s, 9000 msgs, 3 rounds
    python3 bench/e2e.py rss                              # 100000 deferred, 120 s of retries
    python3 bench/e2e.py throughput --messages 2000 --rounds 1 -v --json
    python3 bench/e2e.py throughput --only postroom-smarthost --py-spy /tmp/probe/bin/py-spy
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from e2e_latency import LatencyRun, LatencySettings, run_latency
from e2e_rss import RssRun, RssSettings
from e2e_rss import measure as measure_rss
from e2e_systems import SYSTEMS
from e2e_throughput import ThroughputRun, ThroughputSettings, run_throughput
from pyspy import Profiler, render, summarize

logger = logging.getLogger("e2e")
REPO = Path(__file__).resolve().parent.parent


def machine() -> dict[str, Any]:
    """nproc, CPU model, kernel, the filesystem the instances live on, the date."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}


def filesystem(directory: str | None) -> str:
    target = directory or os.environ.get("TMPDIR") or "/tmp"
    out = subprocess.run(["df", "-T", target], capture_output=True, text=True).stdout.splitlines()
    if len(out) < 2:
        return "?"
    device, fstype, *_rest, mount = out[1].split()
    return f"{fstype} ({device} on {mount}, {target})"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


# -- throughput ---------------------------------------------------------------------------


def summarize_throughput(settings: ThroughputSettings, runs: list[ThroughputRun]) -> dict[str, Any]:
    systems: dict[str, Any] = {}
    for system in settings.systems:
        mine = [r for r in runs if r.system == system]
        systems[system] = {
            "rate": median([r.rate for r in mine]),
            "rates": [round(r.rate, 1) for r in mine],
            "ingest_rate": median([r.messages / r.ingest_seconds for r in mine]),
            "cpu_ms_per_message": median([r.cpu_ms_per_message for r in mine]),
            "cpu_cores": median([r.cpu_seconds / r.seconds for r in mine]),
            "other_load_cores": median([r.other_load_cores for r in mine]),
        }
    base = systems.get("postfix", {}).get("rate")
    for values in systems.values():
        values["ratio"] = values["rate"] / base if base and values["rate"] else None
    return {"benchmark": "e2e_throughput", "messages": settings.messages,
            "message_bytes": settings.size, "sessions": settings.sessions,
            "rounds": settings.rounds, "systems": systems,
            "runs": [{**asdict(r), "cpu_ms_per_message": r.cpu_ms_per_message,
                      "other_load_cores": r.other_load_cores} for r in runs]}


def throughput_table(summary: dict[str, Any]) -> str:
    lines = ["| system | msg/s (median) | rounds | vs Postfix | smtp-source phase msg/s | "
             "CPU ms/msg | cores busy | others' load (cores) |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for system, v in summary["systems"].items():
        lines.append(f"| {system} | {fmt(v['rate'])} | {' / '.join(fmt(x) for x in v['rates'])} "
                     f"| {fmt(v['ratio'], '.2f')} | {fmt(v['ingest_rate'])} | "
                     f"{fmt(v['cpu_ms_per_message'], '.2f')} | {fmt(v['cpu_cores'], '.2f')} | "
                     f"{fmt(v['other_load_cores'], '.2f')} |")
    return "\n".join(lines)


# -- latency ------------------------------------------------------------------------------


def summarize_latency(settings: LatencySettings, runs: list[LatencyRun]) -> dict[str, Any]:
    systems: dict[str, Any] = {}
    for system in settings.systems:
        mine = [r for r in runs if r.system == system]
        systems[system] = {key: median([getattr(r, key) for r in mine]) for key in (
            "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "send_rate",
            "max_start_delay_ms", "submit_p50_ms", "submit_p99_ms")}
        systems[system]["p99_by_round"] = [round(r.p99_ms, 2) for r in mine]
        systems[system]["cpu_cores"] = median([r.cpu_seconds / r.seconds for r in mine])
        systems[system]["sink_cpu_share"] = median([r.sink_cpu_seconds / r.seconds for r in mine])
        systems[system]["machine_busy_cores"] = median([r.machine_busy_seconds / r.seconds
                                                        for r in mine])
    return {"benchmark": "e2e_latency", "rate": settings.rate, "messages": settings.messages,
            "warmup": settings.warmup, "connections": settings.connections,
            "message_bytes": settings.size, "rounds": settings.rounds, "systems": systems,
            "runs": [asdict(r) for r in runs]}


def latency_table(summary: dict[str, Any]) -> str:
    lines = ["| system | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | p99 by round | "
             "sent msg/s | max send delay ms | submit p50 / p99 ms | CPU cores | machine busy | "
             "sink CPU |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---:|---:|"]
    for system, v in summary["systems"].items():
        lines.append(
            f"| {system} | {fmt(v['p50_ms'], '.1f')} | {fmt(v['p90_ms'], '.1f')} | "
            f"{fmt(v['p99_ms'], '.1f')} | {fmt(v['p999_ms'], '.1f')} | {fmt(v['max_ms'], '.1f')} | "
            f"{' / '.join(fmt(x, '.1f') for x in v['p99_by_round'])} | "
            f"{fmt(v['send_rate'], '.1f')} | {fmt(v['max_start_delay_ms'], '.0f')} | "
            f"{fmt(v['submit_p50_ms'], '.1f')} / {fmt(v['submit_p99_ms'], '.1f')} | "
            f"{fmt(v['cpu_cores'], '.2f')} | {fmt(v['machine_busy_cores'], '.2f')} | "
            f"{fmt(100 * v['sink_cpu_share'], '.1f')}% |")
    return "\n".join(lines)


# -- rss ----------------------------------------------------------------------------------


def rss_table(run: RssRun) -> str:
    return "\n".join([
        "| messages deferred | fill s | retrying s | deferred attempts | idle VmRSS MiB | "
        "peak sum VmRSS MiB | max sum PSS MiB | sum VmHWM MiB | per process VmHWM MiB | "
        "goal < 300 MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        f"| {run.messages:,} | {run.fill_seconds:.0f} | {run.hold_seconds:.0f} | "
        f"{run.deferred_attempts:,.0f} | {run.start_rss_sum_mib:.1f} | "
        f"{run.peak_rss_sum_mib:.1f} | {run.max_pss_sum_mib:.1f} | {run.hwm_sum_mib:.1f} | "
        f"{' / '.join(f'{v:.1f}' for v in run.hwm_by_process_mib.values())} | "
        f"{'met' if run.hwm_sum_mib * 1.048576 < 300 else 'MISSED'} |",
    ])


# -- command line -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--postroom", type=Path, default=REPO / ".venv/bin/postroom")
    common.add_argument("--dir", help="parent directory of the instances (default: $TMPDIR)")
    common.add_argument("--keep", action="store_true", help="keep instance directories")
    common.add_argument("--json", action="store_true", help="print a JSON report")
    common.add_argument("--py-spy", type=Path, help="profile postroom's processes with this py-spy")
    common.add_argument("--profile-dir", type=Path, default=Path("/tmp/e2e-profiles"))
    common.add_argument("--py-spy-args", default="",
                        help="extra py-spy record flags, e.g. '--gil' or '--threads'")
    common.add_argument("-v", "--verbose", action="store_true")
    systems = ",".join(SYSTEMS[:2])

    tp = sub.add_parser("throughput", parents=[common], help="end-to-end msg/s")
    tp.add_argument("--messages", type=int, default=20000)
    tp.add_argument("--sessions", type=int, default=20)
    tp.add_argument("--size", type=int, default=5120)
    tp.add_argument("--rounds", type=int, default=3)
    tp.add_argument("--systems", default=systems, help=f"comma-separated, of {','.join(SYSTEMS)}")
    tp.add_argument("--only", choices=SYSTEMS, help="one system only")

    lat = sub.add_parser("latency", parents=[common], help="p50/p99 at a steady rate")
    lat.add_argument("--rate", type=float, default=300.0)
    lat.add_argument("--messages", type=int, default=9000, help="measured messages")
    lat.add_argument("--warmup", type=int, default=600, help="messages sent first, not measured")
    lat.add_argument("--connections", type=int, default=10)
    lat.add_argument("--size", type=int, default=5120)
    lat.add_argument("--rounds", type=int, default=3)
    lat.add_argument("--systems", default=systems)
    lat.add_argument("--only", choices=SYSTEMS)

    rss = sub.add_parser("rss", parents=[common], help="peak RSS with a deferred queue")
    rss.add_argument("--messages", type=int, default=100_000)
    rss.add_argument("--hold", type=float, default=120.0, help="seconds of retrying after filling")
    rss.add_argument("--retry-base", type=float, default=5.0)
    return parser


def preflight(args: argparse.Namespace) -> str | None:
    if os.geteuid() != 0:
        return "needs root (Postfix, smtp-sink -u)"
    if not os.access(args.postroom, os.X_OK):
        return f"no postroom executable at {args.postroom}"
    if args.py_spy and not os.access(args.py_spy, os.X_OK):
        return f"no py-spy at {args.py_spy}"
    for name in ("systems",):
        for system in (getattr(args, name, "") or "").split(","):
            if system and system not in SYSTEMS:
                return f"unknown system {system!r} (choose from {', '.join(SYSTEMS)})"
    return None


def print_profiles(profiler: Profiler | None) -> None:
    if profiler is None:
        return
    for session in profiler.sessions:
        for path in session.files.values():
            if path.exists():
                print(render(summarize(path, top=20), session.seconds, session.rate),
                      file=sys.stderr)


def exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the context managers: sinks and daemons stop


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A run started in the background of a script has SIGINT ignored; make both signals stop
    # the run cleanly (every instance directory removed, every child process stopped).
    signal.signal(signal.SIGTERM, exit_on_signal)
    signal.signal(signal.SIGINT, exit_on_signal)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("e2e", "e2e_throughput", "e2e_latency", "e2e_rss"):
        logging.getLogger(name).setLevel(logging.INFO)  # progress on stderr
    if problem := preflight(args):
        print(f"e2e: {problem}", file=sys.stderr)
        return 2
    profiler = (Profiler(args.py_spy, args.profile_dir, extra_args=tuple(args.py_spy_args.split()))
                if args.py_spy else None)
    systems = (args.only,) if getattr(args, "only", None) else tuple(
        s for s in getattr(args, "systems", "").split(",") if s)
    report: dict[str, Any] = {"machine": {**machine(), "filesystem": filesystem(args.dir)},
                              "profiled": bool(profiler)}
    try:
        if args.command == "throughput":
            tps = ThroughputSettings(messages=args.messages, sessions=args.sessions,
                                     size=args.size, rounds=args.rounds, systems=systems,
                                     postroom=args.postroom, base_dir=args.dir, keep=args.keep,
                                     profiler=profiler)
            report.update(summarize_throughput(tps, run_throughput(tps)))
            table = throughput_table(report)
        elif args.command == "latency":
            ls = LatencySettings(rate=args.rate, messages=args.messages, warmup=args.warmup,
                                 connections=args.connections, size=args.size,
                                 rounds=args.rounds, systems=systems, postroom=args.postroom,
                                 base_dir=args.dir, keep=args.keep, profiler=profiler)
            report.update(summarize_latency(ls, run_latency(ls)))
            table = latency_table(report)
        else:
            rs = RssSettings(messages=args.messages, hold=args.hold, retry_base=args.retry_base,
                             postroom=args.postroom, base_dir=args.dir, keep=args.keep,
                             profiler=profiler)
            run = measure_rss(rs)
            report.update({"benchmark": "e2e_rss", **asdict(run)})
            table = rss_table(run)
    except RuntimeError as exc:  # VerificationError and failed runs of the programs
        print(f"e2e {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print_profiles(profiler)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        m = report["machine"]
        print(f"<!-- {m['date']}; nproc {m['nproc']}; {m['cpu']}; {m['filesystem']} -->")
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
