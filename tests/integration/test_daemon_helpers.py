"""The helpers that run `postroom serve` for the process tests (tests/support.py) fail at once, with
the end of the daemon's log, when the daemon exits instead of serving; `start_serving` learns the
ports a daemon bound on port 0 from its READY status; `free_port` hands out ports that outgoing
connections and bind(0) cannot take before the daemon binds them."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support import (
    DaemonExited,
    _fixed_port_range,
    free_port,
    postroom_cli,
    start_daemon,
    start_serving,
    wait_for_port,
    wait_until,
    write_config,
)


def config_in(tmp_path: Path, submission_port: int = 0, processes: int = 1) -> Path:
    config = write_config(tmp_path / "postroom.toml", db_url=f"sqlite+aiosqlite:///{tmp_path / 'q.db'}",
                          submission_port=submission_port, http_port=0, mx_port=0, sink_port=2525,
                          processes=processes)  # fmt: skip
    postroom_cli("db", "upgrade", "--config", str(config))
    return config


@pytest.mark.parametrize("processes", [1, 2])
async def test_start_serving_reports_the_ports_the_daemon_bound(tmp_path: Path, processes: int) -> None:
    serving = await start_serving(config_in(tmp_path, processes=processes), tmp_path / "serve.log")
    try:
        assert set(serving.listeners) == {"submission", "mx", "http"}
        assert all(port > 0 for _, port in serving.listeners.values())
        with urllib.request.urlopen(serving.url("/readyz"), timeout=5) as response:
            assert response.status == 200
        with socket.create_connection(serving.listeners["submission"], timeout=5) as smtp:
            assert smtp.recv(100).startswith(b"220 ")
    finally:
        assert await serving.stop() == 0


async def test_a_daemon_that_cannot_start_fails_the_wait_at_once_with_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = config_in(tmp_path, submission_port=taken.getsockname()[1])
        started = time.monotonic()
        with pytest.raises(DaemonExited, match="address already in use"):
            await start_serving(config, tmp_path / "serve.log", timeout=60)
        assert time.monotonic() - started < 20

        daemon = start_daemon(config, tmp_path / "again.log")
        with pytest.raises(DaemonExited, match="address already in use"):
            await wait_until(lambda: False, 60, what="something", alive=[daemon])
        with pytest.raises(DaemonExited, match="address already in use"):
            wait_for_port("127.0.0.1", 9, timeout=60, process=daemon)
        assert time.monotonic() - started < 30


def test_free_ports_are_distinct_free_and_outside_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)
    fixed = _fixed_port_range()
    if fixed is not None:  # Linux: the ephemeral range is known
        assert all(port in fixed for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
