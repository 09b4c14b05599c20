#!/usr/bin/env python3
"""Benchmark: durable SMTP ingest rate, postroom vs Postfix, on this machine.

This module owns the ingest benchmark: N messages of 5 KB over 20 parallel
SMTP sessions from ``smtp-source`` into

* (a) a private Postfix instance in hold mode (every message is written to
  its queue on disk and held, nothing is delivered), and
* (b) a postroom daemon started from ``postroom init --dev`` with
  ``POSTROOM_DELIVERY__HOLD=true`` (accept and queue, do not deliver),

side by side in the same run, for several rounds that alternate which
system goes first. Each round uses a fresh instance of each system. The
report is the median messages/s of each and the ratio postroom/Postfix, as
a markdown table (default) or JSON (``--json``).

Every run is verified: Postfix's hold queue must contain exactly N queue
files, and postroom's ``postroom_messages_accepted_total`` counter (from
``GET /metrics``) must have grown by exactly N.

All traffic goes to 127.0.0.1. Needs root (for Postfix) and
``apt-get install postfix``.

    python3 bench/ingest.py                      # 20000 messages, 3 rounds
    python3 bench/ingest.py --messages 2000 --rounds 1 --json
    python3 bench/ingest.py --only postfix
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab import Lab
from loadgen import SourceJob, free_port, run_smtp_source
from postfix_lab import PostfixLab

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestSettings:
    """What one benchmark run sends, and with which programs."""

    messages: int = 20000
    sessions: int = 20
    size: int = 5120
    rounds: int = 3
    systems: tuple[str, ...] = ("postfix", "postroom")
    postroom: Path = Path(".venv/bin/postroom")
    base_dir: str | None = None
    reuse_connections: bool = False
    keep: bool = False

    def job(self, port: int, sender: str) -> SourceJob:
        """The smtp-source job for one measured run against ``port``."""
        return SourceJob(port=port, messages=self.messages, sessions=self.sessions,
                         size=self.size, sender=sender, recipient="anyone@example.net",
                         reuse_connections=self.reuse_connections)


@dataclass(frozen=True)
class RunResult:
    """One measured, verified run of one system."""

    system: str
    round: int
    messages: int
    seconds: float
    rate: float
    verified: int


class VerificationError(RuntimeError):
    """The system did not durably accept every message that was sent."""


# -- Postfix ------------------------------------------------------------


def measure_postfix(settings: IngestSettings, round_no: int) -> RunResult:
    """Send N messages into a fresh hold-mode Postfix and check its hold queue."""
    port = free_port()
    with PostfixLab("hold", port, base_dir=settings.base_dir, keep=settings.keep) as lab:
        result = run_smtp_source(settings.job(port, sender="bench@example.com"))
        held = lab.wait_until_held(settings.messages, timeout=30)
        pending = lab.pending_count()
        queued = lab.postqueue_requests()
    if held != settings.messages or queued != settings.messages or pending:
        raise VerificationError(
            f"Postfix: sent {settings.messages}, hold queue has {held} files, "
            f"postqueue -p reports {queued}, {pending} not held")
    return RunResult("postfix", round_no, settings.messages, result.seconds,
                     result.rate, held)


# -- postroom -----------------------------------------------------------


@dataclass
class PostroomDaemon(Lab):
    """A throw-away postroom: ``postroom init --dev`` plus ``postroom serve``.

    The daemon listens on free loopback ports chosen here (passed via the
    POSTROOM_* environment) and holds all delivery. ``env`` is added to the
    serve process's environment last, so it can override any of that.
    """

    executable: Path
    base_dir: str | None = None
    keep: bool = False
    root: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    submission_port: int = 0
    http_port: int = 0
    mx_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        assert self.root is not None
        return self.root / "serve.log"

    @property
    def domain(self) -> str:
        return str(self.info["domain"])

    def start(self) -> None:
        """Initialise a dev instance, start it, wait for /readyz."""
        self.root = Path(tempfile.mkdtemp(prefix="postroom-bench-", dir=self.base_dir))
        try:
            self.info = self._init()
            self._serve()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _init(self) -> dict[str, Any]:
        argv = [str(self.executable), "init", "--dev", "--dir", str(self.root), "--json"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): "
                               f"{proc.stderr.strip()[-1000:]}")
        return parse_json_output(proc.stdout)

    def _config_path(self) -> Path:
        assert self.root is not None
        return Path(self.info.get("config") or self.root / "postroom.toml")

    def _serve(self) -> None:
        self.submission_port, self.http_port, self.mx_port = free_port(), free_port(), free_port()
        env = dict(os.environ)
        env.update({
            "POSTROOM_DELIVERY__HOLD": "true",
            "POSTROOM_SMTP__SUBMISSION_LISTEN": f"127.0.0.1:{self.submission_port}",
            "POSTROOM_HTTP__LISTEN": f"127.0.0.1:{self.http_port}",
            "POSTROOM_SMTP__MX_LISTEN": f"127.0.0.1:{self.mx_port}",
        })
        env.update(self.env)
        argv = [str(self.executable), "serve", "--config", str(self._config_path())]
        logger.info("starting %s (submission 127.0.0.1:%d, http 127.0.0.1:%d)",
                    " ".join(argv), self.submission_port, self.http_port)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(argv, env=env, cwd=self.root, stdout=log,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

    def _get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(url, timeout=timeout) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, ""

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"postroom serve exited {self.proc.returncode}:\n"
                                   + self.log_tail())
            try:
                if self._get("/readyz", timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"postroom /readyz not 200 within {timeout:.0f}s:\n"
                           + self.log_tail())

    def accepted_total(self) -> float:
        """Sum of postroom_messages_accepted_total over all label sets."""
        status, text = self._get("/metrics", timeout=10.0)
        if status != 200:
            raise RuntimeError(f"GET /metrics returned {status}")
        return sum_metric(text, "postroom_messages_accepted_total")

    def wait_accepted(self, expected: float, timeout: float = 30.0) -> float:
        """Poll /metrics until the counter reaches ``expected``; return its value."""
        deadline = time.monotonic() + timeout
        value = self.accepted_total()
        while value < expected and time.monotonic() < deadline:
            time.sleep(0.2)
            value = self.accepted_total()
        return value

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the daemon (our child, by PID), reap it, remove the directory."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    logger.warning("postroom did not exit %ds after SIGTERM; killing",
                                   timeout)
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if self.root is not None and not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
        self.root = None


def parse_json_output(stdout: str) -> dict[str, Any]:
    """Parse the JSON object a CLI printed, tolerating log lines around it."""
    try:
        value = json.loads(stdout)
    except json.JSONDecodeError:
        start, end = stdout.find("{"), stdout.rfind("}")
        if start < 0 or end < start:
            raise ValueError(f"no JSON object in output: {stdout[-500:]!r}") from None
        value = json.loads(stdout[start:end + 1])
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def sum_metric(exposition: str, name: str) -> float:
    """Sum every sample of metric ``name`` in Prometheus text exposition."""
    total = 0.0
    for line in exposition.splitlines():
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            sample_name, rest = line.split("{", 1)
            rest = rest.rsplit("}", 1)[-1]
        else:
            sample_name, _, rest = line.partition(" ")
        if sample_name.strip() == name:
            total += float(rest.split()[0])  # a timestamp may follow the value
    return total


def measure_postroom(settings: IngestSettings, round_no: int) -> RunResult:
    """Send N messages to a fresh held postroom and check its accepted counter."""
    with PostroomDaemon(settings.postroom, settings.base_dir, settings.keep) as daemon:
        before = daemon.accepted_total()
        job = settings.job(daemon.submission_port, sender=f"bench@{daemon.domain}")
        result = run_smtp_source(job)
        accepted = daemon.wait_accepted(before + settings.messages) - before
    if accepted != settings.messages:
        raise VerificationError(f"postroom: sent {settings.messages}, "
                                f"postroom_messages_accepted_total grew by {accepted:g}")
    return RunResult("postroom", round_no, settings.messages, result.seconds,
                     result.rate, int(accepted))


# -- the benchmark --------------------------------------------------------


def run_benchmark(settings: IngestSettings) -> list[RunResult]:
    """All rounds; the order of systems flips each round."""
    measure = {"postfix": measure_postfix, "postroom": measure_postroom}
    results: list[RunResult] = []
    for round_no in range(1, settings.rounds + 1):
        order = settings.systems if round_no % 2 else tuple(reversed(settings.systems))
        for system in order:
            result = measure[system](settings, round_no)
            logger.info("round %d %-8s %6d msgs in %7.2fs = %8.1f msg/s",
                        round_no, system, result.messages, result.seconds, result.rate)
            results.append(result)
    return results


def median_rate(results: list[RunResult], system: str) -> float | None:
    rates = [r.rate for r in results if r.system == system]
    return statistics.median(rates) if rates else None


def summarize(settings: IngestSettings, results: list[RunResult]) -> dict[str, Any]:
    """The JSON report: per-system medians, the ratio, every run."""
    postfix, postroom = median_rate(results, "postfix"), median_rate(results, "postroom")
    ratio = postroom / postfix if postfix and postroom is not None else None
    summary: dict[str, Any] = {
        "benchmark": "durable_smtp_ingest",
        "messages": settings.messages,
        "message_bytes": settings.size,
        "sessions": settings.sessions,
        "rounds": settings.rounds,
        "reuse_connections": settings.reuse_connections,
        "cpus": os.cpu_count(),
        "postfix_msgs_per_s": postfix,
        "postroom_msgs_per_s": postroom,
        "ratio_postroom_postfix": ratio,
        "runs": [asdict(r) for r in results],
    }
    summary["markdown"] = markdown_row(summary)
    return summary


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown_header() -> str:
    return ("| benchmark | messages | size | sessions | rounds | Postfix msg/s | "
            "postroom msg/s | postroom/Postfix |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|")


def markdown_row(summary: dict[str, Any]) -> str:
    """One markdown table row with the medians and the ratio."""
    return (f"| durable SMTP ingest | {summary['messages']} | "
            f"{summary['message_bytes'] // 1024} KB | {summary['sessions']} | "
            f"{summary['rounds']} (median) | {fmt(summary['postfix_msgs_per_s'], '.0f')} | "
            f"{fmt(summary['postroom_msgs_per_s'], '.0f')} | "
            f"{fmt(summary['ratio_postroom_postfix'], '.2f')} |")


def build_parser() -> argparse.ArgumentParser:
    repo_root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(
        description="Durable SMTP ingest rate: postroom vs Postfix (hold mode).")
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=5120, help="message body bytes")
    parser.add_argument("--postroom", type=Path, default=repo_root / ".venv/bin/postroom",
                        help="postroom executable (default: .venv/bin/postroom)")
    parser.add_argument("--only", choices=("postfix", "postroom"),
                        help="measure one system only")
    parser.add_argument("--reuse-connections", action="store_true",
                        help="smtp-source -d: several messages per SMTP session")
    parser.add_argument("--dir", help="parent directory for the instances (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep instance directories")
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def settings_from_args(args: argparse.Namespace) -> IngestSettings:
    systems = (args.only,) if args.only else ("postfix", "postroom")
    return IngestSettings(messages=args.messages, sessions=args.sessions, size=args.size,
                          rounds=args.rounds, systems=systems, postroom=args.postroom,
                          base_dir=args.dir, reuse_connections=args.reuse_connections,
                          keep=args.keep)


def preflight(settings: IngestSettings) -> str | None:
    """A reason the benchmark cannot run, or None."""
    if "postfix" in settings.systems and os.geteuid() != 0:
        return "the Postfix side needs root"
    if "postroom" in settings.systems and not os.access(settings.postroom, os.X_OK):
        return f"no postroom executable at {settings.postroom} (use --postroom or --only postfix)"
    if settings.messages < 1 or settings.rounds < 1:
        return "--messages and --rounds must be positive"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)  # per-round progress on stderr
    settings = settings_from_args(args)
    if problem := preflight(settings):
        print(f"ingest: {problem}", file=sys.stderr)
        return 2
    try:
        results = run_benchmark(settings)
    except VerificationError as exc:
        print(f"ingest: verification failed: {exc}", file=sys.stderr)
        return 1
    summary = summarize(settings, results)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(markdown_header())
        print(summary["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
