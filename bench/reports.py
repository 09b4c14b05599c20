#!/usr/bin/env python3
"""Benchmark: issue 16's two goals for reports, on this machine.

1. Build time (goal: the monthly report with all its charts built and rendered in < 2 s):
   ``ReportService.preview("monthly", 2026-02)`` (sections built from the database and a fake
   PostHog, then ``render``: Jinja, the charts as PNGs, the text part), best and median of
   ``--previews``, and the two halves apart: ``ReportService.build`` (the sections) and
   ``postroom.reports.render.render`` (templates and charts). On two data sets per database
   (SQLite file in WAL, and PostgreSQL on 127.0.0.1:5432):
   * ``worked``: the worked month of docs/mrr.md (the 15 fixture subscriptions of the fake
     Stripe, a backfill, the month's 9 signed events, EUR 1.10 on 2026-02-28);
   * ``large``: the same plus ``--customers`` generated subscriptions (``tests/stripe_generate``,
     seed 0) in the fake Stripe before the backfill.
   The data is loaded as the daemon loads it: a daemon in this process (``tests.conftest.running``
   with a fake clock at 2026-02-01), ``POST /v1/stripe/reconcile`` (the backfill), then the events
   through ``POST /webhooks/stripe``. The report service measured is wired as the daemon wires it
   (``postroom.reports.feature.reports`` with ``product_source``).
2. Memory over ``--runs`` report runs (goal: no growth, e.g. matplotlib figures left open): a real
   ``postroom serve`` ([processes] count = 1, capture delivery, [posthog] at the fake PostHog this
   script serves) on the SQLite database of the largest data set; ``POST
   /v1/reports/monthly/run`` with ``{"period": "2026-02", "to": ["cfo@example.com"]}`` one at a
   time; VmRSS (/proc/PID/status) of the serving process after runs 1, 10, 25, 50, 75 and 100,
   the growth from run 10 to the last, and each run's wall time at the client and
   ``render_seconds`` from the run record.

Needs the venv (``make venv``); run with ``python3`` it re-runs itself under ``.venv/bin/python``.
Needs the Stripe test data of the integration tests (``POSTROOM_TEST_DATA``). All traffic stays on
127.0.0.1; each PostgreSQL database is made for the run and dropped.

    python3 bench/reports.py                                   # everything, 10,000 customers, 100 runs
    python3 bench/reports.py --runs 100 --customers 10000 --json
    python3 bench/reports.py --databases sqlite --customers 0 --runs 20   # quick check
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import logging
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

if __name__ == "__main__" and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() and VENV_PYTHON.exists():
    os.execv(VENV_PYTHON, [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import aiohttp  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from matplotlib.figure import Figure as MplFigure  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from postroom.cli import main as cli_main  # noqa: E402
from postroom.core.clock import FakeClock, SystemClock  # noqa: E402
from postroom.metrics import Metrics  # noqa: E402
from postroom.reports import charts as report_charts  # noqa: E402
from postroom.reports import service as report_service  # noqa: E402
from postroom.reports.feature import reports as reports_feature  # noqa: E402
from postroom.reports.periods import parse_period  # noqa: E402
from postroom.reports.product import product_source  # noqa: E402
from postroom.reports.render import compile_templates, load_templates, render  # noqa: E402
from postroom.store import schema  # noqa: E402
from postroom.store.credentials import Role, SqlApiKeys  # noqa: E402
from postroom.store.engine import WriteGate, create_engine  # noqa: E402
from postroom.store.tables import deliveries, events, messages  # noqa: E402
from tests.conftest import running  # noqa: E402
from tests.integration.test_reports import february  # noqa: E402
from tests.integration.test_stripe_mrr import FEB_1, Rig, _cli_config, _month_bodies  # noqa: E402
from tests.posthog_fake import API_KEY as POSTHOG_KEY  # noqa: E402
from tests.posthog_fake import PROJECT_ID, FakePostHog, fake_posthog  # noqa: E402
from tests.stripe_fake import API_KEY, fake_stripe  # noqa: E402
from tests.stripe_fixtures import SECRET, invoice_n, stripe_data  # noqa: E402
from tests.support import children_of, create_pg_database, drop_pg_database, make_settings, start_serving  # noqa: E402

logger = logging.getLogger("reports")

PERIOD = "2026-02"
RUN_BODY = {"period": PERIOD, "to": ["cfo@example.com"]}
CHECKPOINTS = (1, 10, 25, 50, 75, 100)
DATABASES = ("sqlite", "postgresql")


@dataclass
class BuildResult:
    database: str
    dataset: str
    subscriptions: int  # in the fake Stripe
    load_seconds: float  # backfill + the 9 events applied
    preview_seconds: list[float]  # ReportService.preview: build + render (in a thread, as the daemon does)
    build_seconds: list[float]  # ReportService.build alone: the sections, charts drawn included
    chart_seconds: list[float]  # inside each build: drawing the charts (postroom.reports.charts, PNG included)
    render_seconds: list[float]  # render() alone, in this thread
    preview_cpu_seconds: list[float]  # this process's CPU (all threads) during each preview
    charts: int  # inline PNGs in the rendered mail
    chart_bytes: int
    html_bytes: int
    sections: dict[str, bool]  # name -> available
    cold_seconds: float = 0.0  # the first preview of the process
    section_seconds: dict[str, list[float]] = field(default_factory=dict)  # per build, by section
    figures_alive: int = 0  # matplotlib Figure objects still reachable after every preview and build
    profile: str = ""
    mrr_end_cents: int | None = None

    def summary(self) -> dict[str, float]:
        return {f"{k}_{q}": f(getattr(self, f"{k}_seconds")) for k in ("preview", "preview_cpu", "build", "chart", "render")
                for q, f in (("best", min), ("median", statistics.median))}  # fmt: skip


@dataclass
class RssResult:
    database: str
    dataset: str
    runs: int
    pid: int
    processes: int  # the daemon's process and its children
    rss_kb: dict[int, int]  # after run n -> VmRSS of the serving process
    rss_before_kb: int  # after READY, before the first run
    growth_10_to_last_kb: int
    wall_ms: list[float] = field(default_factory=list)  # POST .../run, per run
    render_seconds: list[float] = field(default_factory=list)  # the run record's render_seconds
    statuses: dict[str, int] = field(default_factory=dict)
    deliveries: int = 0
    captured: int = 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Reports: build time and memory over runs (issue 16).")
    parser.add_argument("--runs", type=int, default=100, help="report runs through the API for the RSS part")
    parser.add_argument("--customers", type=int, default=10_000,
                        help="generated subscriptions of the large data set (0: the worked month only)")
    parser.add_argument("--deliveries", type=int, default=3000,
                        help="mail history of the large data set: messages sent over January-February 2026, "
                             "each delivered or bounced (for the delivery-health section and its chart)")
    parser.add_argument("--previews", type=int, default=5, help="timed previews per data set (best/median of)")
    parser.add_argument("--databases", default=",".join(DATABASES), help="comma-separated of sqlite, postgresql")
    parser.add_argument("--parts", default="build,rss", help="comma-separated of build, rss")
    parser.add_argument("--profile", action="store_true", help="cProfile one build per data set (stderr)")
    parser.add_argument("--dir", help="parent directory for databases and state (default: $TMPDIR)")
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


class ChartTimer:
    """Adds up the wall time of the chart functions the sections call (`charts.mrr_sparkline`
    and the others, each drawing a matplotlib figure and saving its PNG): the module's functions
    are wrapped in this process only."""

    NAMES = ("mrr_sparkline", "movements_waterfall", "product_trend", "delivery_health")

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        for name in self.NAMES:
            setattr(report_charts, name, self._timed(getattr(report_charts, name)))

    def _timed(self, function: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1

        return timed


CHART_TIMER: ChartTimer | None = None


class SectionTimer:
    """The wall time of each section of a build (`build_section` as the service calls it),
    wrapped in this process only; `seconds` holds the last build's, by section name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        original = report_service.build_section

        async def timed(builder: Any, name: str, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await original(builder, name, *args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

        report_service.build_section = timed


SECTION_TIMER: SectionTimer | None = None


async def seed_deliveries(db_url: str, state: Path, n: int) -> None:
    """`n` messages of January and February 2026, one recipient each: 97% delivered 2-60 s after
    acceptance, 2% hard bounces, 1% soft; inserted directly (history, as the daemon would have
    written it: messages, deliveries and their events)."""
    import random

    from tests.stripe_generate import T0

    rng = random.Random(16)
    settings = make_settings(state, db_url)
    engine = create_engine(settings.database)
    span = 59 * 86400  # 2026-01-01 .. 2026-02-28
    rows_m, rows_d, rows_e = [], [], []
    for i in range(n):
        created = T0 + rng.random() * span
        domain = rng.choice(("example.com", "example.net", "example.org", "mail.test"))
        message_id = f"01BENCH{i:019d}"
        roll = rng.random()
        kind, detail = (("delivered", {}) if roll < 0.97 else
                        ("bounced", {"bounce_class": "hard" if roll < 0.99 else "soft", "reason": "user-unknown"}))  # fmt: skip
        done = created + rng.uniform(2, 60)
        rows_m.append({"id": message_id, "created_at": created, "source": "http", "submitted_by": "bench",
                       "mail_from": "bench@postroom.test", "header_from": "bench@postroom.test", "subject": "bench",
                       "stream": "transactional", "route": "inhouse", "tags": [], "size": 2048,
                       "content": b"Subject: bench\r\n\r\nbench\r\n"})  # fmt: skip
        rows_d.append({"id": i + 1, "message_id": message_id, "recipient": f"user{i}@{domain}", "domain": domain,
                       "state": kind, "attempts": 1, "created_at": created, "updated_at": done,
                       "next_attempt_at": done, "finished_at": done})  # fmt: skip
        rows_e.append({"at": done, "type": kind, "message_id": message_id, "delivery_id": i + 1,
                       "recipient": f"user{i}@{domain}", "detail": detail})  # fmt: skip
    try:
        async with engine.begin() as conn:
            for table, rows in ((messages, rows_m), (deliveries, rows_d), (events, rows_e)):
                for k in range(0, len(rows), 500):
                    await conn.execute(sa.insert(table), rows[k:k + 500])
    finally:
        await engine.dispose()


# -- loading a data set -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def loaded(db_url: str, state: Path, posthog: FakePostHog, generated: int) -> AsyncIterator[tuple[Rig, float]]:
    """A daemon in this process on `db_url` with the worked month (and `generated` more
    subscriptions) backfilled from a fake Stripe, the 9 events applied and EUR 1.10 set for
    2026-02-28. Yields the rig and the seconds the loading took."""
    stripe_data()
    async with fake_stripe() as fake:
        fake.load_fixtures()
        fake.put_invoice(invoice_n())
        if generated:
            fake.add_generated(generated, 0)
        settings = make_settings(
            state, db_url,
            stripe={"api_key": API_KEY, "api_base": fake.url, "webhook_secrets": [SECRET], "max_network_retries": 0,
                    "reconcile_at": "", "sweep_interval": 0.1},
            mrr={"fx_rates": {"eur": "1.08", "jpy": "0.0067"}},
            posthog={"host": posthog.url, "project_id": PROJECT_ID, "personal_api_key": POSTHOG_KEY,
                     "timeout": 5.0, "budget": 10.0},
            reports={"section_timeout": 60.0},
        )  # fmt: skip
        engine = create_engine(settings.database)
        await schema.upgrade(engine)
        token = (await SqlApiKeys(engine).create("bench-admin", Role.ADMIN, time.time()))[1]
        await engine.dispose()
        timeout = aiohttp.ClientTimeout(total=None)
        async with running(settings, clock=FakeClock(FEB_1)) as daemon, aiohttp.ClientSession(timeout=timeout) as session:
            rig = Rig(daemon, fake, token, session)
            started = time.perf_counter()
            await rig.reconcile()
            for body in _month_bodies():
                status, answer = await rig.post_event(body)
                if status != 200:
                    raise RuntimeError(f"POST /webhooks/stripe answered {status}: {answer}")
            await rig.settled()
            done = await asyncio.to_thread(CliRunner().invoke, cli_main, ["--config", str(_cli_config(rig)), "fx",
                                                                          "set", "2026-02-28", "EUR", "1.10"])  # fmt: skip
            if done.exit_code != 0:
                raise RuntimeError(f"postroom fx set failed: {done.output}")
            yield rig, time.perf_counter() - started


async def measure_build(database: str, dataset: str, rig: Rig, load_seconds: float, subscriptions: int,
                        previews: int, profile: bool = False) -> BuildResult:  # fmt: skip
    """Previews of the monthly report for 2026-02 by a report service wired as the daemon wires it."""
    settings = rig.daemon.settings
    metrics = Metrics(CollectorRegistry())
    engine = create_engine(settings.database)
    product = product_source(settings)
    try:
        made = reports_feature(settings, engine, WriteGate.for_database(settings.database), SystemClock(), metrics,
                               None, product)  # fmt: skip
        service = made.service
        period = parse_period(PERIOD)
        template = compile_templates(load_templates(settings.reports.template_dir), "report")
        with_csv = "csv" in service.definition("monthly").formats
        # The first preview is cold: matplotlib's import and font cache, PostHog asked (then cached).
        cold = (await service.preview("monthly", period))[2]
        timer, sections = CHART_TIMER, SECTION_TIMER
        assert timer is not None and sections is not None
        per_section: dict[str, list[float]] = {}
        preview, build, drawing, rendering = [], [], [], []
        cpu = []
        for _ in range(previews):
            c0 = time.process_time()
            _, rendered, seconds = await service.preview("monthly", period)
            cpu.append(time.process_time() - c0)
            preview.append(seconds)
        for _ in range(previews):
            timer.seconds, sections.seconds, t0 = 0.0, {}, time.perf_counter()
            report = await service.build("monthly", period)
            build.append(time.perf_counter() - t0)
            drawing.append(timer.seconds)
            for name, seconds in sections.seconds.items():
                per_section.setdefault(name, []).append(seconds)
            t0 = time.perf_counter()
            rendered = render(report, template, with_csv=with_csv)
            rendering.append(time.perf_counter() - t0)
        shown = ""
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            await service.build("monthly", period)
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(40)
            shown = out.getvalue()
        gc.collect()
        alive = sum(1 for o in gc.get_objects() if isinstance(o, MplFigure))
        charts = [a for a in rendered.attachments if getattr(a, "content_id", None)]
        figures = report.figures()
        end = (figures.get("mrr-movements") or {}).get("end")
        result = BuildResult(database, dataset, subscriptions, load_seconds, preview, build, drawing, rendering, cpu, len(charts),
                             sum(len(a.content) for a in charts), len(rendered.html.encode()),
                             {s.name: s.available for s in report.sections}, cold, per_section, alive, shown,
                             end)  # fmt: skip
        logger.info("%s/%s: preview best %.3f s (build %.3f, render %.3f), %d charts", database, dataset,
                    min(preview), min(build), min(rendering), len(charts))  # fmt: skip
        return result
    finally:
        if product is not None:
            await product.aclose()
        await engine.dispose()


# -- memory over runs: a real daemon --------------------------------------------------------------


def config_text(state: Path, db_url: str, posthog_url: str) -> str:
    return f"""state_dir = "{state}"
[database]
url = "{db_url}"
[http]
listen = "127.0.0.1:0"
[http.rate_limit]
enabled = false
[smtp]
hostname = "mail.postroom.test"
submission_listen = "127.0.0.1:0"
mx_listen = "127.0.0.1:0"
[delivery]
mode = "capture"
capture_dir = "{state / 'outbox-serve'}"
[log]
format = "json"
level = "warning"
[processes]
count = 1
[stripe]
webhook_secrets = ["{SECRET}"]
reconcile_at = ""
[mrr]
fx_rates = {{ eur = "1.08", jpy = "0.0067" }}
[posthog]
host = "{posthog_url}"
project_id = {json.dumps(PROJECT_ID)}
personal_api_key = "{POSTHOG_KEY}"
timeout = 5.0
budget = 10.0
[reports]
section_timeout = 60.0

[[domains]]
name = "postroom.test"
dkim = "off"
"""


def vm_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def measure_rss(database: str, dataset: str, state: Path, db_url: str, token: str, posthog: FakePostHog,
                      runs: int) -> RssResult:  # fmt: skip
    config = state / "serve.toml"
    config.write_text(config_text(state, db_url, posthog.url))
    serving = await start_serving(config, state / "serve.log")
    try:
        children = children_of(serving.pid)
        # [processes] count = 1: the daemon serves in its own process; with children, the one serving.
        pid = max(children, key=vm_rss_kb) if children else serving.pid
        result = RssResult(database, dataset, runs, pid, 1 + len(children), {}, vm_rss_kb(pid), 0)
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            for n in range(1, runs + 1):
                t0 = time.perf_counter()
                async with session.post(serving.url("/v1/reports/monthly/run"), json=RUN_BODY, headers=auth) as response:
                    answer = await response.json()
                    if response.status != 200:
                        raise RuntimeError(f"run {n}: {response.status} {answer}")
                result.wall_ms.append(1000 * (time.perf_counter() - t0))
                result.render_seconds.append(float(answer.get("render_seconds") or 0.0))
                result.statuses[answer["status"]] = result.statuses.get(answer["status"], 0) + 1
                result.deliveries += len(answer.get("deliveries") or ())
                if n in CHECKPOINTS or n == runs:
                    result.rss_kb[n] = vm_rss_kb(pid)
                    logger.info("run %d: %.0f ms, VmRSS %d kB", n, result.wall_ms[-1], result.rss_kb[n])
        await asyncio.sleep(2)  # let capture delivery write what was queued
        result.captured = sum(1 for _ in (state / "outbox-serve").rglob("*.eml"))
        base = result.rss_kb.get(10, result.rss_kb[min(result.rss_kb)])
        result.growth_10_to_last_kb = result.rss_kb[max(result.rss_kb)] - base
        return result
    finally:
        code = await serving.stop()
        if code != 0:
            logger.warning("postroom serve exited %d: %s", code, serving.process.log_tail())


# -- the run ----------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    databases = [d for d in args.databases.split(",") if d]
    parts = [p for p in args.parts.split(",") if p]
    datasets = [("worked", 0)] + ([("large", args.customers)] if args.customers else [])
    report: dict[str, Any] = {"benchmark": "reports", "period": PERIOD, "cpus": os.cpu_count(),
                              "load_average": os.getloadavg(), "build": [], "rss": None}  # fmt: skip
    rss_database = "sqlite" if "sqlite" in databases else databases[0]
    rss_dataset = datasets[-1][0]
    with tempfile.TemporaryDirectory(prefix="postroom-bench-reports-", dir=args.dir) as tmp:
        async with fake_posthog() as posthog:
            posthog.responder = february
            for database in databases:
                for dataset, generated in datasets:
                    keep = "rss" in parts and (database, dataset) == (rss_database, rss_dataset)
                    if "build" not in parts and not keep:
                        continue
                    state = Path(tmp) / f"{database}-{dataset}"
                    state.mkdir()
                    db_url = (f"sqlite+aiosqlite:///{state / 'postroom.db'}" if database == "sqlite"
                              else await create_pg_database())  # fmt: skip
                    try:
                        if generated and args.deliveries:
                            engine = create_engine(make_settings(state, db_url).database)
                            await schema.upgrade(engine)
                            await engine.dispose()
                            await seed_deliveries(db_url, state, args.deliveries)
                        async with loaded(db_url, state, posthog, generated) as (rig, load_seconds):
                            logger.info("%s/%s loaded in %.1f s", database, dataset, load_seconds)
                            if "build" in parts:
                                built = await measure_build(database, dataset, rig, load_seconds, 15 + generated,
                                                            args.previews, args.profile)  # fmt: skip
                                if built.profile:
                                    print(f"--- cProfile of one build, {database}/{dataset} ---\n{built.profile}",
                                          file=sys.stderr)
                                report["build"].append({**asdict(built), **built.summary(), "profile": None})
                            token = rig.token
                        if keep:
                            rss = await measure_rss(database, dataset, state, db_url, token, posthog, args.runs)
                            report["rss"] = {**asdict(rss), **rss_summary(rss)}
                    finally:
                        if database != "sqlite":
                            await drop_pg_database(db_url)
    report["load_average_after"] = os.getloadavg()
    return report


def rss_summary(rss: RssResult) -> dict[str, Any]:
    wall = sorted(rss.wall_ms)
    return {"wall_ms_median": statistics.median(wall), "wall_ms_p95": wall[min(len(wall) - 1, round(0.95 * len(wall)) - 1)],
            "wall_ms_max": wall[-1], "wall_ms_first": rss.wall_ms[0],
            "render_seconds_median": statistics.median(rss.render_seconds)}  # fmt: skip


def table(report: dict[str, Any]) -> str:
    lines = []
    if report["build"]:
        lines += [f"Monthly report {report['period']}, all charts: seconds, best / median of "
                  f"{len(report['build'][0]['preview_seconds'])} (goal: preview < 2 s)",
                  "| database | data set | subscriptions | load s | first preview | preview (build + render) | preview CPU | build (sections, charts included) "
                  "| of which charts drawn | render (templates, text, CSV) | charts | PNG KB | HTML KB | sections unavailable | goal |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]  # fmt: skip
        for b in report["build"]:
            down = [name for name, up in b["sections"].items() if not up]
            lines.append(f"| {b['database']} | {b['dataset']} | {b['subscriptions']:,} | {b['load_seconds']:.1f} | "
                         f"{b['cold_seconds']:.3f} | "
                         f"{b['preview_best']:.3f} / {b['preview_median']:.3f} | "
                         f"{b['preview_cpu_best']:.3f} / {b['preview_cpu_median']:.3f} | "
                         f"{b['build_best']:.3f} / {b['build_median']:.3f} | "
                         f"{b['chart_best']:.3f} / {b['chart_median']:.3f} | "
                         f"{b['render_best']:.3f} / {b['render_median']:.3f} | {b['charts']} | "
                         f"{b['chart_bytes'] / 1024:.0f} | {b['html_bytes'] / 1024:.0f} | {', '.join(down) or '-'} | "
                         f"{'met' if b['preview_median'] < 2 else 'MISSED'} |")  # fmt: skip
        lines += ["", "Build by section, seconds (median of the builds): "
                  + "; ".join(f"{b['database']}/{b['dataset']}: "
                              + ", ".join(f"{name} {statistics.median(v):.3f}" for name, v in b["section_seconds"].items())
                              for b in report["build"]),
                  "matplotlib Figure objects alive after the previews: "
                  + ", ".join(f"{b['database']}/{b['dataset']} {b['figures_alive']}" for b in report["build"]), ""]
    if rss := report.get("rss"):
        points = sorted((int(k), v) for k, v in rss["rss_kb"].items())
        lines += [f"postroom serve ([processes] count = 1, pid {rss['pid']}, {rss['processes']} process(es)), "
                  f"{rss['runs']} x POST /v1/reports/monthly/run on {rss['database']}/{rss['dataset']}: VmRSS MB",
                  "| before | " + " | ".join(f"run {n}" for n, _ in points) + " | growth run 10 -> last | goal (< 10 MB) |",
                  "|---:|" + "---:|" * len(points) + "---:|---|",
                  f"| {rss['rss_before_kb'] / 1024:.1f} | " + " | ".join(f"{v / 1024:.1f}" for _, v in points)
                  + f" | {rss['growth_10_to_last_kb'] / 1024:+.1f} | "
                  + ("met" if rss["growth_10_to_last_kb"] < 10 * 1024 else "MISSED") + " |", "",
                  "| runs | statuses | mails captured | POST wall ms: first / median / p95 / max | render_seconds median |",
                  "|---:|---|---:|---|---:|",
                  f"| {rss['runs']} | {rss['statuses']} | {rss['captured']} | {rss['wall_ms_first']:.0f} / "
                  f"{rss['wall_ms_median']:.0f} / {rss['wall_ms_p95']:.0f} / {rss['wall_ms_max']:.0f} | "
                  f"{rss['render_seconds_median']:.3f} |"]  # fmt: skip
    la, lb = report["load_average"], report["load_average_after"]
    lines.append(f"\nload average before {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}, after {lb[0]:.2f} {lb[1]:.2f} {lb[2]:.2f}"
                 f" ({report['cpus']} CPUs)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("reports").setLevel(logging.INFO if args.verbose else logging.WARNING)
    if args.runs < 1 or args.customers < 0 or args.previews < 1:
        print("reports: --runs and --previews must be positive, --customers not negative", file=sys.stderr)
        return 2
    global CHART_TIMER, SECTION_TIMER
    CHART_TIMER, SECTION_TIMER = ChartTimer(), SectionTimer()
    report = asyncio.run(run(args))
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
