#!/usr/bin/env python3
"""Benchmark: sends through the HTTP API into the queue, Loops-compatible vs native, side by side.

This module owns the HTTP API benchmark. One postroom daemon (``postroom init
--dev`` in a temp directory, SQLite on disk, ``[delivery] hold = true`` so every
message is accepted and queued but never delivered) gets one published template
with a subject, HTML and text that use two data variables. Then, for several
rounds that rotate which goes first, it takes

* (a) N ``POST /v1/messages`` (native) whose subject, HTML and text are what the
  template renders for that request's data: the harness asks the daemon for a
  preview with marker values once and substitutes each request's values into it
  (checked against a real preview before the first round),
* (b) N ``POST /v1/messages`` naming the template and giving the data (native,
  rendered by the daemon), and
* (c) N ``POST /api/v1/transactional`` (Loops-compatible) naming the template and
  giving the data, so the daemon renders it,

each from C concurrent keep-alive HTTP clients (``http_load``). The report is the
median requests/s of each and the ratios Loops / native-template (what the
compatibility layer costs: both render) and Loops / native, with the CPU the daemon's
processes and the harness used per request, the size of the queued message, and
"others' load": the machine's busy CPU over the run less the daemon's and the
harness's (mostly whoever else uses the machine; compare runs only when it is
low). Every run is verified:
every response has the endpoint's success status (202 with ``"created": true``
for the native send, as docs/api.md says; 200 ``{"success": true}`` for Loops)
and ``postroom_messages_accepted_total`` grew by exactly N.

``--limiter-cost`` measures something else with the same parts: the native send
with the per-API-key rate limiter on (``[http.rate_limit] enabled = true`` at a
rate no run reaches) against the limiter off, a fresh daemon for each run. A
daemon whose configuration has no ``[http.rate_limit]`` refuses those variables;
the mode then says so and reports nothing.

    .venv/bin/python bench/http_api.py                          # 5000 requests x 32 clients, 3 rounds
    .venv/bin/python bench/http_api.py --requests 3000 --json
    .venv/bin/python bench/http_api.py --limiter-cost --env POSTROOM_PROCESSES__COUNT=1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import http_load
from ingest import PostroomDaemon
from proctree import CpuMeter, descendants, machine_cpu

logger = logging.getLogger(__name__)

TEMPLATE_ID = "bench-order-shipped"
NAME_MARK, ORDER_MARK = "Xnamemark", "Xordermark"  # survive HTML escaping and CSS inlining as they are
SUBJECT = "{{ first_name }}, order {{ order }} has shipped"
HTML = """<h1>Good news, {{ first_name }}</h1>
<p>Your order <strong>{{ order }}</strong> left our warehouse this morning and is on its way. Parcels
usually arrive within two to four working days; the carrier's tracking page has the latest news.</p>
<table style="width:100%;border-collapse:collapse">
  <tr><td style="padding:4px 0">Order</td><td style="text-align:right">{{ order }}</td></tr>
  <tr><td style="padding:4px 0">Shipping</td><td style="text-align:right">Standard, tracked</td></tr>
</table>
<p><a href="https://shop.example.com/orders/{{ order }}" style="color:#0b5cad">See your order</a></p>
<p style="color:#666;font-size:12px">You get this email because you placed an order with us. Questions?
Reply to this message, {{ first_name }}, and our team answers within one working day.</p>
"""
TEXT = """Good news, {{ first_name }}

Your order {{ order }} left our warehouse this morning and is on its way. Parcels usually arrive
within two to four working days.

See your order: https://shop.example.com/orders/{{ order }}

Questions? Reply to this message, {{ first_name }}, and our team answers within one working day.
"""

NATIVE, NATIVE_TEMPLATE, LOOPS = "native", "native-template", "loops"
ENDPOINTS = {NATIVE: ("/v1/messages", 202), NATIVE_TEMPLATE: ("/v1/messages", 202),
             LOOPS: ("/api/v1/transactional", 200)}
KIND_TAGS = {NATIVE: "N", NATIVE_TEMPLATE: "T", LOOPS: "L"}
LIMITER_OFF, LIMITER_ON = "limiter-off", "limiter-on"
# The ratios reported: the compatibility layer's cost is Loops against the native send that also
# renders the template; against a native send of pre-rendered content it also includes rendering.
RATIOS = {"loops_vs_native": ((LOOPS, NATIVE_TEMPLATE), (LOOPS, NATIVE)),
          "limiter_cost": ((LIMITER_ON, LIMITER_OFF),)}
LIMITER_ENV = {
    LIMITER_OFF: {"POSTROOM_HTTP__RATE_LIMIT__ENABLED": "false"},
    LIMITER_ON: {"POSTROOM_HTTP__RATE_LIMIT__ENABLED": "true",
                 "POSTROOM_HTTP__RATE_LIMIT__DEFAULT": "1000000/s"},
}


class VerificationError(RuntimeError):
    """A request was not answered as a success, or the queue did not take exactly N."""


class ConfigRefused(RuntimeError):
    """``postroom check-config`` refused the configuration with the variables given."""


@dataclass(frozen=True)
class Settings:
    requests: int = 5000
    concurrency: int = 32
    rounds: int = 3
    warmup: int = 200
    processes: int | None = None  # None: the daemon's default (one per core)
    env: tuple[tuple[str, str], ...] = ()
    postroom: Path = Path(".venv/bin/postroom")
    base_dir: str | None = None
    keep: bool = False

    def daemon_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {} if self.processes is None else {"POSTROOM_PROCESSES__COUNT": str(self.processes)}
        return {**env, **dict(self.env), **(extra or {})}


@dataclass(frozen=True)
class RunResult:
    """One measured, verified batch."""

    kind: str
    round: int
    requests: int
    seconds: float
    rate: float
    accepted: int
    daemon_cpu_ms_per_request: float
    client_cpu_ms_per_request: float
    others_cores: float  # the machine's busy CPU over the run, less the daemon's and the harness's
    message_size: int


@dataclass(frozen=True)
class Rendering:
    """The template's output for the marker values: each request's values are put in its place."""

    subject: str
    html: str
    text: str
    sender: str

    def filled(self, name: str, order: str) -> dict[str, str]:
        def fill(value: str) -> str:
            return value.replace(NAME_MARK, name).replace(ORDER_MARK, order)
        return {"subject": fill(self.subject), "html": fill(self.html), "text": fill(self.text)}


@dataclass
class ApiDaemon(PostroomDaemon):
    """``PostroomDaemon`` whose configuration is checked with its environment before it starts."""

    @property
    def api_key(self) -> str:
        return str(self.info["api_key"])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _serve(self) -> None:
        argv = [str(self.executable), "check-config", "--config", str(self._config_path())]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                              env={**os.environ, **self.env})
        if proc.returncode != 0:
            raise ConfigRefused((proc.stderr or proc.stdout).strip()[-1000:])
        super()._serve()

    def call(self, path: str, payload: Any | None = None) -> tuple[int, Any]:
        """One request with the admin key (GET without payload, else POST JSON); status and JSON."""
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.base_url + path, data=data, headers={
            "Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def processes(self) -> int | None:
        """How many daemon processes served: what the supervisor reported when it was ready, or
        (one process runs without a supervisor) how many said they were ready."""
        try:
            log = self.log_path.read_text(errors="replace")
        except OSError:
            return None
        found = re.search(r"ready with (\d+) process", log)
        ready = log.count("postroom ready: ")
        return int(found.group(1)) if found else ready or None

    def tree(self) -> list[int]:
        return descendants(self.proc.pid) if self.proc is not None else []


def expect(status: int, answer: Any, wanted: int, what: str) -> Any:
    if status != wanted:
        raise VerificationError(f"{what}: {status} {answer!r:.300}")
    return answer


def publish_template(daemon: ApiDaemon) -> Rendering:
    """Create and publish the template; return its rendering of the marker values, checked
    against a real preview of other values."""
    sender = f"bench@{daemon.domain}"
    made = expect(*daemon.call("/v1/templates", {"id": TEMPLATE_ID, "subject": SUBJECT, "html": HTML,
                                                 "text": TEXT, "from": sender}), 201, "create template")
    expect(*daemon.call(f"/v1/templates/{TEMPLATE_ID}/publish", {"version": made["version"]}), 200, "publish")

    def preview(name: str, order: str) -> dict[str, Any]:
        path = f"/v1/templates/{TEMPLATE_ID}/preview"
        answer = expect(*daemon.call(path, {"data": {"first_name": name, "order": order}}), 200, "preview")
        return dict(answer)

    marked = preview(NAME_MARK, ORDER_MARK)
    rendering = Rendering(marked["subject"], marked["html"], marked["text"] or "", marked["from"] or sender)
    real = preview("Probe", "P0000001")
    if rendering.filled("Probe", "P0000001") != {k: real[k] for k in ("subject", "html", "text")}:
        raise VerificationError("the native bodies would not equal what the template renders")
    return rendering


def payloads(kind: str, rendering: Rendering, tag: str, count: int) -> list[dict[str, Any]]:
    """``count`` request bodies of one kind; each has its own recipient and data values."""
    bodies: list[dict[str, Any]] = []
    for i in range(count):
        name, order, email = f"Customer{i}", f"{tag}{i:07d}", f"{tag.lower()}{i}@example.net"
        if kind == NATIVE:
            bodies.append({"from": rendering.sender, "to": email, **rendering.filled(name, order)})
        elif kind == NATIVE_TEMPLATE:
            bodies.append({"template": {"id": TEMPLATE_ID}, "to": email,
                           "data": {"first_name": name, "order": order}})
        else:
            bodies.append({"transactionalId": TEMPLATE_ID, "email": email,
                           "dataVariables": {"first_name": name, "order": order}})
    return bodies


def accepts(kind: str) -> Any:
    if kind in (NATIVE, NATIVE_TEMPLATE):
        return lambda answer: isinstance(answer, dict) and answer.get("created") is True
    return lambda answer: answer == {"success": True}


def measure(daemon: ApiDaemon, settings: Settings, kind: str, rendering: Rendering, round_no: int,
            count: int, tag: str) -> RunResult:
    """Send ``count`` requests of ``kind`` (a limiter variant sends native); verify the answers and
    the accepted counter."""
    endpoint = NATIVE if kind in LIMITER_ENV else kind
    path, status = ENDPOINTS[endpoint]
    batch = http_load.Batch(
        url=daemon.base_url + path,
        bodies=http_load.encode_bodies(payloads(endpoint, rendering, tag, count)),
        headers={"Authorization": f"Bearer {daemon.api_key}", "Content-Type": "application/json"},
        concurrency=settings.concurrency, expected_status=status, accept=accepts(endpoint))
    before = daemon.accepted_total()
    cpu = CpuMeter(daemon.tree)
    cpu.start()
    client_before, busy_before = time.process_time(), machine_cpu()[0]
    result = http_load.send(batch)
    client_cpu, busy = time.process_time() - client_before, machine_cpu()[0] - busy_before
    cpu.stop()
    others = max(0.0, busy - cpu.seconds - client_cpu) / cpu.wall if cpu.wall > 0 else 0.0
    if result.good != count:
        raise VerificationError(f"{kind}: {result.good} of {count} requests answered {status} as expected; "
                                f"statuses {dict(result.statuses)}; first failures: {result.failures}")
    accepted = daemon.wait_accepted(before + count, timeout=30.0) - before
    if accepted != count:
        raise VerificationError(f"{kind}: {count} requests, postroom_messages_accepted_total grew by {accepted:g}")
    _, newest = daemon.call("/v1/messages?limit=1")
    size = int(newest["data"][0]["size"]) if isinstance(newest, dict) and newest.get("data") else 0
    return RunResult(kind, round_no, count, result.seconds, result.rate, int(accepted),
                     1000 * cpu.seconds / count, 1000 * client_cpu / count, others, size)


def new_daemon(settings: Settings, extra_env: dict[str, str] | None = None) -> ApiDaemon:
    """A daemon not yet started: ``with`` starts it and always stops it."""
    return ApiDaemon(settings.postroom, settings.base_dir, settings.keep, env=settings.daemon_env(extra_env))


def run_loops_vs_native(settings: Settings) -> tuple[list[RunResult], dict[str, Any]]:
    """One daemon, one template; rounds of N sends of each kind, the order rotating each round."""
    results: list[RunResult] = []
    # The limiter stays on, as in production, at a quota no run reaches (its cost: --limiter-cost).
    with new_daemon(settings, LIMITER_ENV[LIMITER_ON]) as daemon:
        rendering = publish_template(daemon)
        kinds = [NATIVE, NATIVE_TEMPLATE, LOOPS]
        for kind in kinds:  # not counted: connections, template cache, first commits
            if settings.warmup:
                measure(daemon, settings, kind, rendering, 0, settings.warmup, "W")
        for round_no in range(1, settings.rounds + 1):
            shift = (round_no - 1) % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                result = measure(daemon, settings, kind, rendering, round_no, settings.requests,
                                 f"R{round_no}{KIND_TAGS[kind]}")
                log_run(result)
                results.append(result)
        info = {"processes": daemon.processes() or settings.processes}
    return results, info


def run_limiter_cost(settings: Settings) -> tuple[list[RunResult], dict[str, Any]]:
    """The native send with the limiter off and on at a rate no run reaches, a fresh daemon per run."""
    results: list[RunResult] = []
    info: dict[str, Any] = {}
    for round_no in range(1, settings.rounds + 1):
        order = (LIMITER_OFF, LIMITER_ON) if round_no % 2 else (LIMITER_ON, LIMITER_OFF)
        for variant in order:
            with new_daemon(settings, LIMITER_ENV[variant]) as daemon:
                rendering = publish_template(daemon)
                if settings.warmup:
                    measure(daemon, settings, variant, rendering, 0, settings.warmup, "W")
                result = measure(daemon, settings, variant, rendering, round_no, settings.requests, f"R{round_no}")
                info["processes"] = daemon.processes() or settings.processes
            log_run(result)
            results.append(result)
    return results, info


def log_run(result: RunResult) -> None:
    logger.info("round %d %-11s %6d requests in %6.2fs = %7.1f req/s (daemon CPU %.2f ms/req, %d B/msg, "
                "others' load %.2f cores)", result.round, result.kind, result.requests, result.seconds,
                result.rate, result.daemon_cpu_ms_per_request, result.message_size, result.others_cores)


# -- the report -----------------------------------------------------------


def median_of(results: list[RunResult], kind: str, attr: str) -> float | None:
    values = [getattr(r, attr) for r in results if r.kind == kind]
    return statistics.median(values) if values else None


def summarize(settings: Settings, mode: str, results: list[RunResult], info: dict[str, Any]) -> dict[str, Any]:
    kinds = (NATIVE, NATIVE_TEMPLATE, LOOPS) if mode == "loops_vs_native" else (LIMITER_OFF, LIMITER_ON)
    per_kind = {kind: {
        "requests_per_s": median_of(results, kind, "rate"),
        "rounds": [r.rate for r in results if r.kind == kind],
        "daemon_cpu_ms_per_request": median_of(results, kind, "daemon_cpu_ms_per_request"),
        "client_cpu_ms_per_request": median_of(results, kind, "client_cpu_ms_per_request"),
        "others_cores": median_of(results, kind, "others_cores"),
        "message_size": median_of(results, kind, "message_size"),
    } for kind in kinds}
    ratios = {}
    for top, bottom in RATIOS[mode]:
        high, low = median_of(results, top, "rate"), median_of(results, bottom, "rate")
        ratios[f"{top}/{bottom}"] = high / low if low and high else None
    summary: dict[str, Any] = {
        "benchmark": f"http_api_{mode}",
        "requests": settings.requests, "concurrency": settings.concurrency, "rounds": settings.rounds,
        "warmup": settings.warmup, "processes": info.get("processes"), "env": dict(settings.env),
        "cpus": os.cpu_count(), "client_loop": http_load.loop_name(),
        "kinds": per_kind,
        "ratios": ratios,
        "runs": [asdict(r) for r in results],
    }
    summary["markdown"] = markdown(summary, kinds)
    return summary


LABELS = {NATIVE: "native `POST /v1/messages`, content given", NATIVE_TEMPLATE: "native `POST /v1/messages`, template + data",
          LOOPS: "Loops `POST /api/v1/transactional`",
          LIMITER_OFF: "native, limiter off", LIMITER_ON: "native, limiter on (1000000/s)"}


def markdown(summary: dict[str, Any], kinds: tuple[str, ...]) -> str:
    lines = ["| send | requests x rounds | clients | req/s (median) | rounds | daemon CPU ms/req | "
             "client CPU ms/req | others' load (cores) | message bytes |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for kind in kinds:
        k = summary["kinds"][kind]
        lines.append(f"| {LABELS[kind]} | {summary['requests']} x {summary['rounds']} | {summary['concurrency']} | "
                     f"{fmt(k['requests_per_s'], ',.0f')} | {' / '.join(format(r, ',.0f') for r in k['rounds'])} | "
                     f"{fmt(k['daemon_cpu_ms_per_request'], '.2f')} | {fmt(k['client_cpu_ms_per_request'], '.2f')} | "
                     f"{fmt(k['others_cores'], '.2f')} | {fmt(k['message_size'], '.0f')} |")
    for name, ratio in summary["ratios"].items():
        lines.append(f"| **{name}** | | | **{fmt(ratio, '.2f')}** | | | | | |")
    return "\n".join(lines)


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


# -- the command line -----------------------------------------------------


def env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    repo_root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description="HTTP API sends into the queue: Loops-compatible vs native.")
    parser.add_argument("--requests", type=int, default=5000, help="requests per run (N)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="concurrent keep-alive clients (C); the daemon allows "
                             "http.max_connections_per_client (64) per process")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=200, help="uncounted requests of each kind first")
    parser.add_argument("--processes", type=int, help="[processes] count (default: the daemon's, one per core)")
    parser.add_argument("--env", type=env_pair, action="append", default=[], metavar="KEY=VALUE",
                        help="a variable for postroom serve (repeatable)")
    parser.add_argument("--limiter-cost", action="store_true",
                        help="native send with [http.rate_limit] enabled at 1000000/s vs disabled")
    parser.add_argument("--postroom", type=Path, default=repo_root / ".venv/bin/postroom")
    parser.add_argument("--dir", help="parent directory for the instance (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the instance directory")
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)  # per-run progress on stderr
    settings = Settings(requests=args.requests, concurrency=args.concurrency, rounds=args.rounds,
                        warmup=args.warmup, processes=args.processes, env=tuple(args.env),
                        postroom=args.postroom, base_dir=args.dir, keep=args.keep)
    if min(settings.requests, settings.concurrency, settings.rounds) < 1 or settings.warmup < 0:
        print("http_api: --requests, --concurrency and --rounds must be positive", file=sys.stderr)
        return 2
    if not os.access(settings.postroom, os.X_OK):
        print(f"http_api: no postroom executable at {settings.postroom} (make venv)", file=sys.stderr)
        return 2
    mode = "limiter_cost" if args.limiter_cost else "loops_vs_native"
    try:
        results, info = (run_limiter_cost if args.limiter_cost else run_loops_vs_native)(settings)
    except ConfigRefused as exc:
        if args.limiter_cost and "rate_limit" in str(exc):
            print("http_api: --limiter-cost needs the per-API-key rate limiter ([http.rate_limit]) in the "
                  f"daemon; this build refuses its settings, so nothing was measured:\n  {exc}", file=sys.stderr)
        else:
            print(f"http_api: postroom check-config refused the configuration:\n  {exc}", file=sys.stderr)
        return 2
    except VerificationError as exc:
        print(f"http_api: verification failed: {exc}", file=sys.stderr)
        return 1
    summary = summarize(settings, mode, results, info)
    print(json.dumps(summary, indent=2) if args.json else summary["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
