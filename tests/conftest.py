"""Fixtures: databases (SQLite always, PostgreSQL when the server runs; CI requires it), TLS from
trustme, and the daemon running in-process on loopback port 0."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.app import Daemon
from postroom.config import Settings
from postroom.store import schema
from postroom.store.engine import create_engine
from tests.support import create_pg_database, drop_pg_database, make_settings, postgres_available


def _require_postgres() -> None:
    if not postgres_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not running on 127.0.0.1:5432 and CI requires it")
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")


@contextlib.asynccontextmanager
async def fresh_pg_database() -> AsyncIterator[str]:
    _require_postgres()
    url = await create_pg_database()
    try:
        yield url
    finally:
        await drop_pg_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database on each engine: the same store tests run on both."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return
    async with fresh_pg_database() as url:
        yield url


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with fresh_pg_database() as url:
        yield url


@pytest.fixture
async def engine(db_url: str, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    settings = make_settings(tmp_path, db_url)
    eng = create_engine(settings.database)
    await schema.upgrade(eng)
    try:
        yield eng
    finally:
        await eng.dispose()


@dataclass(frozen=True)
class Tls:
    cert: str
    key: str
    client: ssl.SSLContext


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", "mail.postroom.test")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    server.private_key_and_cert_chain_pem.write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return Tls(str(cert), str(key), client)


@dataclass
class RunningDaemon:
    daemon: Daemon
    settings: Settings
    registry: CollectorRegistry

    @property
    def submission(self) -> tuple[str, int]:
        return self.daemon.smtp_bound["submission"]

    @property
    def mx(self) -> tuple[str, int]:
        return self.daemon.smtp_bound["mx"]

    @property
    def http(self) -> str:
        assert self.daemon.http_bound is not None
        host, port = self.daemon.http_bound
        return f"http://{host}:{port}"

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


@contextlib.asynccontextmanager
async def running(settings: Settings, **kwargs: Any) -> AsyncIterator[RunningDaemon]:
    """Migrate, start the daemon in this loop, wait for READY, stop it on exit."""
    eng = create_engine(settings.database)
    await schema.upgrade(eng)
    await eng.dispose()
    registry = CollectorRegistry()
    daemon = Daemon(settings, registry=registry, environ={}, **kwargs)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()  # raises the start-up error
    try:
        yield RunningDaemon(daemon, settings, registry)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


@pytest.fixture
def daemon_factory() -> Callable[..., contextlib.AbstractAsyncContextManager[RunningDaemon]]:
    return running
