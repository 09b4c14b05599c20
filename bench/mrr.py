#!/usr/bin/env python3
"""Benchmark: issue 15's two goals for MRR, on this machine.

1. Full recompute over N generated subscriptions (goal: < 5 s on one core):
   * ``engine``: the pure engine (value, per-customer holdings, FX) in one process, best of
     ``--rounds``, CPU and wall time (``bench/mrr_recompute.py``);
   * ``stored``: ``postroom stripe backfill`` as an operator runs it (``billing.sync.synchronise``
     from the fake Stripe API into SQLite and PostgreSQL), then a reconcile with no drift, with the
     reading told apart from storing and settling. It is far slower than the engine, so by default it
     runs on ``--stored-subscriptions`` (10,000) and the report scales it to N linearly.
2. Webhook-to-updated-MRR latency (goal: p95 < 20 ms): a real ``postroom serve`` (one process) on
   each database, seeded by webhooks, then ``--events`` updates posted one at a time; each timed
   from the POST until no event is pending (``bench/mrr_webhooks.py``).

Needs the venv (``make venv``); run with ``python3`` it re-runs itself under ``.venv/bin/python``.
PostgreSQL: 127.0.0.1:5432, user postgres (``POSTROOM_TEST_PG``); each run makes its own
database and drops it. All traffic stays on 127.0.0.1.

    python3 bench/mrr.py                                  # everything, 100,000 subscriptions
    python3 bench/mrr.py --parts engine --json
    python3 bench/mrr.py --parts latency --databases sqlite --events 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

if __name__ == "__main__" and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() and VENV_PYTHON.exists():
    os.execv(VENV_PYTHON, [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import mrr_recompute  # noqa: E402
import mrr_webhooks  # noqa: E402

logger = logging.getLogger("mrr")

PARTS = ("engine", "stored", "latency")
DATABASES = ("sqlite", "postgresql")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="MRR: full recompute and webhook-to-MRR latency (issue 15).")
    parser.add_argument("--subscriptions", type=int, default=100_000, help="for the engine recompute")
    parser.add_argument("--stored-subscriptions", type=int, default=10_000,
                        help="for the stored backfill/reconcile (scaled to --subscriptions in the report)")
    parser.add_argument("--rounds", type=int, default=3, help="engine rounds (best of)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed of the recompute")
    parser.add_argument("--events", type=int, default=1000, help="measured webhook updates per database")
    parser.add_argument("--seed-events", type=int, default=1000, help="subscriptions created by webhook first")
    parser.add_argument("--poll-interval", type=float, default=0.0005, help="seconds between pending polls")
    parser.add_argument("--gap", type=float, default=0.0,
                        help="seconds to wait after each event is visible before posting the next")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated of {', '.join(PARTS)}")
    parser.add_argument("--databases", default=",".join(DATABASES), help="comma-separated of sqlite, postgresql")
    parser.add_argument("--profile", action="store_true", help="cProfile the engine and the backfills (stderr)")
    parser.add_argument("--dir", help="parent directory for databases and state (default: $TMPDIR)")
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


async def run(args: argparse.Namespace) -> dict[str, Any]:
    parts = [p for p in args.parts.split(",") if p]
    databases = [d for d in args.databases.split(",") if d]
    report: dict[str, Any] = {"benchmark": "mrr", "cpus": os.cpu_count(), "subscriptions": args.subscriptions}
    if "engine" in parts:
        engine = mrr_recompute.measure_engine(args.subscriptions, args.seed, args.rounds)
        report["engine"] = mrr_recompute.as_json(engine)
        if args.profile:
            print(mrr_recompute.profile_engine(args.subscriptions, args.seed), file=sys.stderr)
    if "stored" in parts:
        report["stored_subscriptions"] = args.stored_subscriptions
        report["stored"] = []
        for database in databases:
            stored = await mrr_recompute.measure_stored(database, args.stored_subscriptions, args.seed, args.dir,
                                                        args.profile)  # fmt: skip
            if stored.profile:
                print(f"--- cProfile of the {database} backfill ---\n{stored.profile}", file=sys.stderr)
            report["stored"].append({**mrr_recompute.as_json(stored), "profile": None})
    if "latency" in parts:
        report["latency"] = []
        for database in databases:
            latency = await mrr_webhooks.measure_latency(database, args.seed_events, args.events, args.dir,
                                                         args.poll_interval, args.gap)  # fmt: skip
            report["latency"].append(vars(latency))
    return report


def table(report: dict[str, Any]) -> str:
    lines = []
    if engine := report.get("engine"):
        lines += [f"Full recompute, pure engine: {engine['subscriptions']:,} subscriptions, "
                  f"{engine['customers']:,} customers (goal < 5 s on one core)",
                  "| best CPU s | best wall s | rounds CPU s | MRR (USD) | paying customers |",
                  "|---:|---:|---|---:|---:|",
                  f"| {engine['best_cpu_seconds']:.2f} | {engine['best_wall_seconds']:.2f} | "
                  f"{' / '.join(f'{s:.2f}' for s in engine['cpu_seconds'])} | "
                  f"{engine['mrr_cents'] / 100:,.2f} | {engine['paying_customers']:,} |", ""]  # fmt: skip
    if stored := report.get("stored"):
        n, scale = report["stored_subscriptions"], report["subscriptions"] / report["stored_subscriptions"]
        lines += [f"Stored path (backfill = synchronise, then reconcile with no drift): {n:,} subscriptions; "
                  f"'x{scale:g}' columns scale linearly to {report['subscriptions']:,}",
                  "| database | read only s | backfill s (keep / settle) | backfill CPU s | reconcile s (keep / settle) "
                  f"| backfill x{scale:g} | reconcile x{scale:g} | SQL statements per subscription (backfill / reconcile) "
                  "| opened | drift |",
                  "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]  # fmt: skip
        for s in stored:
            lines.append(f"| {s['database']} | {s['read_seconds']:.1f} | {s['backfill_seconds']:.1f} "
                         f"({s['backfill_keep_seconds']:.1f} / {s['backfill_settle_seconds']:.1f}) | "
                         f"{s['backfill_cpu_seconds']:.1f} | {s['reconcile_seconds']:.1f} "
                         f"({s['reconcile_keep_seconds']:.1f} / {s['reconcile_settle_seconds']:.1f}) | "
                         f"{s['backfill_seconds'] * scale:,.0f} | {s['reconcile_seconds'] * scale:,.0f} | "
                         f"{s['backfill_statements'] / n:.3g} / {s['reconcile_statements'] / n:.3g} | "
                         f"{s['opened_customers']:,} | {s['drift']} |")  # fmt: skip
        lines.append("")
    if latency := report.get("latency"):
        lines += ["Webhook -> MRR committed (POST until nothing pending), ms (goal p95 < 20 ms)"
                  + (f"; {latency[0]['gap_seconds']:g} s idle between events" if latency[0]["gap_seconds"] else ""),
                  "| database | events | p50 | p95 | p99 | max | POST p50 | daemon hist. mean | daemon <= 20 ms "
                  "| daemon p95 <= | applied | other results |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for r in latency:
            q, h = r["latency_ms"], r["daemon_histogram"]
            lines.append(f"| {r['database']} | {r['events']:,} | {q['p50']:.1f} | {q['p95']:.1f} | {q['p99']:.1f} | "
                         f"{q['max']:.1f} | {r['post_ms']['p50']:.1f} | {h['mean_ms']:.1f} | "
                         f"{100 * h['within_20ms']:.1f}% | {h['p95_le_ms']:g} | {r['applied']:,} | "
                         f"{r['not_applied'] or '-'} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("mrr", "mrr_recompute", "mrr_webhooks"):
        logging.getLogger(name).setLevel(logging.INFO if args.verbose else logging.WARNING)
    if args.subscriptions < 1 or args.stored_subscriptions < 1 or args.rounds < 1 or args.events < 1:
        print("mrr: counts must be positive", file=sys.stderr)
        return 2
    report = asyncio.run(run(args))
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
