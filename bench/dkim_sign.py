#!/usr/bin/env python3
"""DKIM signing throughput: postroom's signer against stock dkimpy, one thread, signatures per second.

Each case signs the same 5 KB message over and over on one thread for `--seconds`, `--rounds` times
(the cases take turns within a round); the figure is the median round. "per core" divides by the
thread's CPU time, so a busy neighbour does not lower it; the wall-clock rate is shown beside it.
Before timing, every postroom signature is verified with dkimpy and the RSA and Ed25519 ones are
checked to be byte-identical to stock dkimpy's; a failed check exits 1 and reports nothing.

Run from the repository root with the project's venv: `.venv/bin/python bench/dkim_sign.py [--json]`.
"""

from __future__ import annotations

import sys

import argparse
import base64
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from unittest import mock

try:
    import dkim
    from cryptography.hazmat.primitives import serialization

    from postroom.dkim.keys import DkimKey, dns_record_name, dns_record_value, generate_key
    from postroom.dkim.signing import sign_message, signed_header_names
except ImportError as exc:  # pragma: no cover - depends on how it is run
    sys.exit(f"bench/dkim_sign.py needs the project venv (make venv, then .venv/bin/python): {exc}")

try:
    import nacl.signing  # noqa: F401  (stock dkimpy needs PyNaCl for Ed25519)

    HAVE_NACL = True
except ImportError:
    HAVE_NACL = False

NOW = 1_750_000_000
DOMAIN = "example.com"
# The goals, per core, for postroom's signer.
GOALS = {"rsa-sha256": 1500.0, "ed25519-sha256": 4000.0}


@dataclass
class Case:
    name: str
    algorithm: str
    sign: Callable[[], bytes]
    goal: float | None = None


@dataclass
class Result:
    name: str
    algorithm: str
    per_core: float  # signatures per CPU-second of the signing thread, median round
    wall: float  # signatures per wall-clock second, median round
    ms_per_signature: float
    goal: float | None
    rounds: list[dict[str, float]]


def make_message(size: int) -> bytes:
    """A transactional-looking message of `size` bytes, CRLF, with the usual signed headers."""
    head = (
        b"From: Example Billing <billing@example.com>\r\n"
        b"To: Customer <customer@example.org>\r\n"
        b"Subject: Your invoice INV-2025-0042 is ready\r\n"
        b"Date: Sun, 15 Jun 2025 14:00:00 +0000\r\n"
        b"Message-ID: <inv-2025-0042.7f3a@example.com>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"List-Unsubscribe: <https://example.com/unsubscribe/7f3a>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        b"\r\n"
    )
    line = "Line of the invoice: item, quantity, price — Grüße, café.\r\n".encode()
    body = (line * (size // len(line) + 1))[: max(size - len(head) - 2, 0)] + b"\r\n"
    return head + body


def build_cases(message: bytes) -> list[Case]:
    """The cases, after checking that postroom's signatures verify and match stock dkimpy's."""
    rsa_key = DkimKey(DOMAIN, "bench-rsa", generate_key("rsa", 2048))
    ed_key = DkimKey(DOMAIN, "bench-ed", generate_key("ed25519"))
    include = signed_header_names(dkim.rfc822_parse(message)[0])
    no_encryption = serialization.NoEncryption()
    rsa_pem = rsa_key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, no_encryption
    )
    # dkimpy's Ed25519 key format: base64 of the 32-byte seed.
    ed_seed = base64.b64encode(
        ed_key.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, no_encryption
        )
    )

    def ours(*keys: DkimKey) -> Callable[[], bytes]:
        return lambda: sign_message(message, keys, NOW)

    def stock(selector: str, privkey: bytes, algorithm: bytes) -> Callable[[], bytes]:
        def sign() -> bytes:
            header: bytes = dkim.sign(
                message, selector.encode(), DOMAIN.encode(), privkey, signature_algorithm=algorithm,
                canonicalize=(b"relaxed", b"relaxed"), include_headers=include,
            )  # fmt: skip
            return header + message

        return sign

    ours_rsa, ours_ed, ours_both = ours(rsa_key), ours(ed_key), ours(rsa_key, ed_key)
    stock_rsa = stock("bench-rsa", rsa_pem, b"rsa-sha256")
    stock_ed = stock("bench-ed", ed_seed, b"ed25519-sha256")
    check(ours_rsa, ours_ed, ours_both, stock_rsa, stock_ed if HAVE_NACL else None, [rsa_key, ed_key])

    cases = [
        Case("postroom (cryptography)", "rsa-sha256", ours_rsa, GOALS["rsa-sha256"]),
        Case("postroom (cryptography)", "ed25519-sha256", ours_ed, GOALS["ed25519-sha256"]),
        Case("postroom, both keys, one call", "rsa + ed25519", ours_both),
        Case("stock dkimpy (pure-Python RSA)", "rsa-sha256", stock_rsa),
    ]
    if HAVE_NACL:
        cases.append(Case("stock dkimpy (PyNaCl)", "ed25519-sha256", stock_ed))
    return cases


def check(
    ours_rsa: Callable[[], bytes],
    ours_ed: Callable[[], bytes],
    ours_both: Callable[[], bytes],
    stock_rsa: Callable[[], bytes],
    stock_ed: Callable[[], bytes] | None,
    keys: list[DkimKey],
) -> None:
    """Measure only real signatures: dkimpy verifies ours, and they equal stock dkimpy's."""
    with mock.patch("time.time", return_value=float(NOW)):  # stock dkimpy reads t= from time.time()
        stock_rsa_signed = stock_rsa()
        stock_ed_signed = stock_ed() if stock_ed is not None else None
    if ours_rsa() != stock_rsa_signed:
        sys.exit("check failed: postroom's RSA signature differs from stock dkimpy's")
    if stock_ed_signed is not None and ours_ed() != stock_ed_signed:
        sys.exit("check failed: postroom's Ed25519 signature differs from stock dkimpy's")
    records = {
        f"{dns_record_name(k.domain, k.selector)}.": dns_record_value(k.private_key) for k in keys
    }

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        value = records.get(name.decode("ascii"))
        return None if value is None else value.encode("ascii")

    # dkimpy verifies Ed25519 only with PyNaCl installed.
    to_verify = [(ours_rsa(), 0), (ours_both(), 0)]
    if HAVE_NACL:
        to_verify += [(ours_ed(), 0), (ours_both(), 1)]
    for signed, idx in to_verify:
        if not dkim.DKIM(signed).verify(idx=idx, dnsfunc=dnsfunc):
            sys.exit("check failed: dkimpy does not verify a postroom signature")


def run_round(case: Case, seconds: float) -> dict[str, float]:
    for _ in range(3):  # warm up
        case.sign()
    count = 0
    cpu_start, wall_start = time.thread_time(), time.perf_counter()
    deadline = wall_start + seconds
    while True:
        for _ in range(10):
            case.sign()
        count += 10
        if time.perf_counter() >= deadline:
            break
    cpu, wall = time.thread_time() - cpu_start, time.perf_counter() - wall_start
    return {
        "signatures": count,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "per_core": count / cpu,
        "wall_rate": count / wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=4.0, help="time per case per round (4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is reported (3)")
    parser.add_argument("--size", type=int, default=5120, help="message size in bytes (5120)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    args = parser.parse_args()

    message = make_message(args.size)
    cases = build_cases(message)
    rounds: list[list[dict[str, float]]] = [[] for _ in cases]
    for round_no in range(1, args.rounds + 1):
        for case, case_rounds in zip(cases, rounds):  # cases take turns, so drift hits all alike
            case_rounds.append(run_round(case, args.seconds))
            rate = case_rounds[-1]["per_core"]
            print(f"round {round_no}: {case.name}, {case.algorithm}: {rate:,.0f}/s", file=sys.stderr)

    results = []
    for case, case_rounds in zip(cases, rounds):
        per_core = statistics.median(r["per_core"] for r in case_rounds)
        wall = statistics.median(r["wall_rate"] for r in case_rounds)
        results.append(
            Result(case.name, case.algorithm, per_core, wall, 1000 / per_core, case.goal, case_rounds)
        )
    if args.json:
        report = {
            "message_bytes": len(message),
            "seconds": args.seconds,
            "rounds": args.rounds,
            "python": sys.version.split()[0],
            "stock_ed25519": HAVE_NACL,
            "results": [asdict(r) for r in results],
        }
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"DKIM signing, {len(message)}-byte message, one thread, "
        f"median of {args.rounds} x {args.seconds:g} s"
    )
    print()
    print("| signer | algorithm | signatures/s per core | signatures/s wall | ms/signature | goal |")
    print("|---|---|---:|---:|---:|---|")
    for r in results:
        goal = ""
        if r.goal is not None:
            goal = f">= {r.goal:,.0f}: {'met' if r.per_core >= r.goal else 'MISSED'}"
        rates = f"{r.per_core:,.0f} | {r.wall:,.0f} | {r.ms_per_signature:.3f}"
        print(f"| {r.name} | {r.algorithm} | {rates} | {goal} |")
    if not HAVE_NACL:
        print("\nstock dkimpy Ed25519 skipped: PyNaCl is not installed (pip install pynacl)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
