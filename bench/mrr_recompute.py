"""The MRR full recompute over generated subscriptions (issue 15, goal 1: < 5 s on one core).

Two measurements:

* ``engine``: the pure engine in this process, no I/O. Every subscription valued with
  ``postroom.mrr.valuation.value`` at one fixed moment (default ``Context()``, ``Policies()``),
  summed and rounded per customer with ``movements.holdings``, then converted to USD with a
  ``money.FxTable`` (static EUR and JPY rates). CPU (``time.process_time``) and wall time, best
  of ``rounds``.
* ``stored``: what an operator runs, ``postroom stripe backfill``: ``billing.sync.synchronise``
  reading the fake Stripe API (``tests/stripe_fake.py`` with ``add_generated(n)``, in its own
  process, as Stripe is not in ours) through ``StripeReader`` into ``SqlBillingStore`` on SQLite
  (a file) or PostgreSQL, then the same pass again (a reconcile that finds no drift). A bare
  iteration over the reader comes first, so the reading can be told from the storing and settling;
  the store's ``keep`` and ``settle`` calls are timed inside the pass.
"""

from __future__ import annotations

import asyncio
import cProfile
import datetime as dt
import io
import logging
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from postroom.billing.store import PaidEvidence, SqlBillingStore
from postroom.billing.stripe_api import StripeReader
from postroom.billing.sync import synchronise
from postroom.mrr.money import FxTable
from postroom.mrr.movements import Holding, holdings
from postroom.mrr.policies import Policies
from postroom.mrr.valuation import Context, Value, value
from postroom.store import schema
from postroom.store.engine import WriteGate, create_engine
from tests.stripe_fake import API_KEY
from tests.stripe_generate import T0, generate_subscriptions
from tests.support import create_pg_database, drop_pg_database, make_settings

logger = logging.getLogger(__name__)

FX_RATES = {"eur": Decimal("1.08"), "jpy": Decimal("0.0067")}  # USD per unit, as [mrr.fx_rates]
AT = dt.datetime.fromtimestamp(T0, dt.UTC)  # the generator's clock: 2026-01-01


# -- the pure engine ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineResult:
    subscriptions: int
    customers: int
    generate_seconds: float
    cpu_seconds: list[float]  # per round
    wall_seconds: list[float]
    mrr_cents: int  # in USD
    paying_customers: int

    @property
    def best_cpu(self) -> float:
        return min(self.cpu_seconds)

    @property
    def best_wall(self) -> float:
        return min(self.wall_seconds)


def recompute(subscriptions: list[dict[str, Any]], fx: FxTable, policies: Policies) -> tuple[int, int]:
    """Every subscription's value, each customer's holdings, the total in the reporting currency:
    (MRR cents, paying customers)."""
    context = Context()
    by_customer: dict[str, list[Value]] = {}
    for sub in subscriptions:
        by_customer.setdefault(sub["customer"], []).append(value(sub, AT, context, policies))
    day = AT.date()
    total, paying = 0, 0
    for values in by_customer.values():
        held: dict[str, Holding] = holdings(values)
        total += sum(fx.convert(h.cents, currency, day) for currency, h in held.items())
        paying += any(h.cents > 0 for h in held.values())
    return total, paying


def measure_engine(n: int, seed: int, rounds: int) -> EngineResult:
    started = time.perf_counter()
    customers, subscriptions = generate_subscriptions(n, seed)
    generated = time.perf_counter() - started
    fx, policies = FxTable.of("usd", FX_RATES), Policies()
    cpu, wall = [], []
    figures = (0, 0)
    for round_no in range(1, rounds + 1):
        c0, w0 = time.process_time(), time.perf_counter()
        figures = recompute(subscriptions, fx, policies)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        logger.info("engine round %d: %.2f s CPU, %.2f s wall", round_no, cpu[-1], wall[-1])
    return EngineResult(n, len(customers), generated, cpu, wall, figures[0], figures[1])


def profile_engine(n: int, seed: int, top: int = 15) -> str:
    """cProfile of one recompute: the functions with the most own time."""
    _, subscriptions = generate_subscriptions(n, seed)
    fx, policies = FxTable.of("usd", FX_RATES), Policies()
    profiler = cProfile.Profile()
    profiler.runcall(recompute, subscriptions, fx, policies)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


# -- the stored path: backfill and reconcile -----------------------------------------------------


@dataclass
class StoredResult:
    database: str
    subscriptions: int
    customers: int
    read_seconds: float  # bare iteration over the reader: customers, subscriptions, invoices
    read_cpu_seconds: float  # this process's CPU during it (the fake's is in its own process)
    backfill_seconds: float
    backfill_cpu_seconds: float
    backfill_keep_seconds: float  # inside the backfill: storing pages (keep)
    backfill_settle_seconds: float  # inside the backfill: valuing and writing the ledger (settle)
    reconcile_seconds: float
    reconcile_cpu_seconds: float
    reconcile_keep_seconds: float
    reconcile_settle_seconds: float
    opened_customers: int
    drift: int
    backfill_statements: int = 0  # SQL statements the backfill sent (SQLAlchemy's before_cursor_execute)
    reconcile_statements: int = 0
    profile: str = ""


class TimedBillingStore(SqlBillingStore):
    """The real store with the wall time of its `keep` and `settle` calls added up."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep_seconds = self.settle_seconds = 0.0

    async def keep(self, **kwargs: Any) -> None:  # type: ignore[override]
        started = time.perf_counter()
        try:
            await super().keep(**kwargs)
        finally:
            self.keep_seconds += time.perf_counter() - started

    async def settle(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        started = time.perf_counter()
        try:
            return await super().settle(*args, **kwargs)
        finally:
            self.settle_seconds += time.perf_counter() - started


@dataclass
class FakeStripeProcess:
    """`tests.stripe_fake` with `add_generated(n, seed)` in a child process of this script."""

    n: int
    seed: int
    proc: subprocess.Popen[str] | None = None
    url: str = ""

    def __enter__(self) -> FakeStripeProcess:
        root = Path(__file__).resolve().parent.parent
        argv = [sys.executable, str(Path(__file__).resolve()), str(self.n), str(self.seed)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root,
                                     env=env)  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http://127.0.0.1:"):
            self.__exit__()
            raise RuntimeError(f"the fake Stripe process did not start (said {line!r})")
        self.url = line
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # EOF: the fake stops
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


async def serve_fake(n: int, seed: int) -> None:
    """The child's side: serve the fake until stdin closes."""
    from tests.stripe_fake import fake_stripe

    async with fake_stripe() as fake:
        fake.add_generated(n, seed)
        print(fake.url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def read_everything(reader: StripeReader) -> tuple[int, int, int]:
    """Iterate the three listings as `synchronise` does, keeping nothing but what it derives."""
    evidence = PaidEvidence()
    counts = [0, 0, 0]
    async for _customer in reader.customers():
        counts[0] += 1
    async for subscription in reader.subscriptions():
        evidence.see_subscription(subscription)
        counts[1] += 1
    async for invoice in reader.invoices():
        evidence.see_invoice(invoice)
        counts[2] += 1
    return counts[0], counts[1], counts[2]


@contextmanager
def timed() -> Iterator[list[float]]:
    """Yields [wall, cpu] filled in at the end of the block."""
    out = [0.0, 0.0]
    w0, c0 = time.perf_counter(), time.process_time()
    try:
        yield out
    finally:
        out[0], out[1] = time.perf_counter() - w0, time.process_time() - c0


async def measure_stored(database: str, n: int, seed: int, base_dir: str | None,
                         profile: bool = False) -> StoredResult:  # fmt: skip
    """Backfill then reconcile `n` generated subscriptions into a fresh `database` ("sqlite" or
    "postgresql"); with `profile`, cProfile the backfill."""
    with tempfile.TemporaryDirectory(prefix="postroom-bench-mrr-", dir=base_dir) as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'postroom.db'}" if database == "sqlite" else await create_pg_database()
        try:
            with FakeStripeProcess(n, seed) as fake:
                return await _stored(database, url, Path(tmp), fake.url, profile)
        finally:
            if database != "sqlite":
                await drop_pg_database(url)


async def _stored(database: str, url: str, tmp: Path, api_base: str, profile: bool) -> StoredResult:
    settings = make_settings(tmp, url, stripe={"api_key": API_KEY, "api_base": api_base, "max_network_retries": 0},
                             mrr={"fx_rates": {k: str(v) for k, v in FX_RATES.items()}})  # fmt: skip
    engine = create_engine(settings.database)
    try:
        await schema.upgrade(engine)
        statements = [0]

        def count(*_args: Any) -> None:
            statements[0] += 1

        sa.event.listen(engine.sync_engine, "before_cursor_execute", count)
        store = TimedBillingStore(engine, settings.mrr.policies(), WriteGate.for_database(settings.database))
        async with StripeReader(API_KEY, api_base=api_base, max_network_retries=0) as reader:
            with timed() as read:
                customers, subscriptions, _invoices = await read_everything(reader)
            logger.info("%s: read %d customers, %d subscriptions in %.1f s", database, customers, subscriptions, read[0])
            profiler = cProfile.Profile() if profile else None
            with timed() as backfill:
                if profiler:
                    profiler.enable()
                first = await synchronise(reader, store, time.time())
                if profiler:
                    profiler.disable()
            kept, settled, backfill_statements = store.keep_seconds, store.settle_seconds, statements[0]
            logger.info("%s: backfill %.1f s (keep %.1f, settle %.1f)", database, backfill[0], kept, settled)
            store.keep_seconds = store.settle_seconds = 0.0
            statements[0] = 0
            with timed() as again:
                second = await synchronise(reader, store, time.time())
            logger.info("%s: reconcile %.1f s, %d drift", database, again[0], len(second.drift))
    finally:
        await engine.dispose()
    shown = ""
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
        shown = out.getvalue()
    return StoredResult(database, subscriptions, customers, read[0], read[1], backfill[0], backfill[1], kept, settled,
                        again[0], again[1], store.keep_seconds, store.settle_seconds, first.opened,
                        len(second.drift), backfill_statements, statements[0], shown)  # fmt: skip


def as_json(result: EngineResult | StoredResult) -> dict[str, Any]:
    out = asdict(result)
    if isinstance(result, EngineResult):
        out.update(best_cpu_seconds=result.best_cpu, best_wall_seconds=result.best_wall)
    return out


if __name__ == "__main__":  # the fake Stripe child of FakeStripeProcess
    asyncio.run(serve_fake(int(sys.argv[1]), int(sys.argv[2])))
