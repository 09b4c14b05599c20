#!/usr/bin/env python3
"""Micro-benchmark: what one rate-limit check costs (policy + GCRA spend), in process memory and
in the shared table file with its flock, next to what an HTTP request costs the daemon
(bench/http_api.py --limiter-cost measures that end to end).

    .venv/bin/python bench/ratelimit_check.py            # 200000 checks over 50 keys
    .venv/bin/python bench/ratelimit_check.py --json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from postroom.ratelimit.policy import RateLimiter, RatePolicy
from postroom.ratelimit.settings import RateLimitSettings
from postroom.ratelimit.table import RateTable, create_table_file


def per_check_us(table: RateTable, checks: int, keys: int) -> float:
    limiter = RateLimiter(RatePolicy(RateLimitSettings(default="1000000/s")), table)
    started = time.perf_counter()
    for n in range(checks):
        limiter.check(f"key-{n % keys}", "bench", "read")
    return (time.perf_counter() - started) / checks * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "buckets"
        create_table_file(path)
        shared = RateTable.shared(path, time.time)
        try:
            results = {"in_memory_us": per_check_us(RateTable.in_memory(time.time), args.checks, args.keys),
                       "shared_file_us": per_check_us(shared, args.checks, args.keys)}  # fmt: skip
        finally:
            shared.close()
    if args.json:
        print(json.dumps({"checks": args.checks, "keys": args.keys, **results}))
    else:
        print(f"{args.checks} checks over {args.keys} keys: in memory {results['in_memory_us']:.2f} us/check, "
              f"shared table file {results['shared_file_us']:.2f} us/check")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
