"""`ServiceNotifier` against a real AF_UNIX datagram socket, as systemd's notify socket is."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from postroom.service_notify import ServiceNotifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield sock, path
    finally:
        sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def nothing_waiting(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(5)
    return False


def test_ready_and_stopping(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = ServiceNotifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready("smtp 127.0.0.1:2587; delivery capture")
    assert received(sock) == ["READY=1", "STATUS=smtp 127.0.0.1:2587; delivery capture"]
    notifier.stopping()
    assert received(sock) == ["STOPPING=1", "STATUS=draining"]


def test_without_notify_socket_every_call_is_a_no_op(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, _ = notify_socket
    notifier = ServiceNotifier({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.ready("x")
    notifier.stopping()
    notifier.notify("WATCHDOG=1")
    assert nothing_waiting(sock)


def test_a_vanished_socket_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = ServiceNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    notifier.ready("x")
    assert "could not notify the service manager" in caplog.text


@pytest.mark.parametrize(
    ("usec", "interval"),
    [("4000000", 2.0), ("1", 0.0000005), ("0", None), ("", None), ("abc", None), ("-5", None)],
)
def test_watchdog_interval_is_half_of_watchdog_usec(usec: str, interval: float | None) -> None:
    notifier = ServiceNotifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": usec})
    assert notifier.watchdog_interval == interval


async def test_run_watchdog_pings_until_stop(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = ServiceNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"})  # every 10 ms
    assert notifier.watchdog_interval == pytest.approx(0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(notifier.run_watchdog(stop))
    loop = asyncio.get_running_loop()
    pings = [await loop.run_in_executor(None, received, sock) for _ in range(3)]
    assert pings == [["WATCHDOG=1"]] * 3
    stop.set()
    await asyncio.wait_for(task, timeout=5)


async def test_run_watchdog_returns_when_stop_is_set_even_with_a_long_interval(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    notifier = ServiceNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(3600 * 10**6)})
    stop = asyncio.Event()
    task = asyncio.create_task(notifier.run_watchdog(stop))
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, received, sock) == ["WATCHDOG=1"]  # pings at once
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert nothing_waiting(sock)


async def test_run_watchdog_without_watchdog_just_waits_for_stop(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    notifier = ServiceNotifier({"NOTIFY_SOCKET": path})
    stop = asyncio.Event()
    task = asyncio.create_task(notifier.run_watchdog(stop))
    await asyncio.sleep(0)
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert nothing_waiting(sock)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX") or os.uname().sysname != "Linux",
                    reason="abstract sockets are Linux-only")  # fmt: skip
def test_abstract_socket_name() -> None:
    name = f"postroom-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        ServiceNotifier({"NOTIFY_SOCKET": "@" + name}).ready("abstract")
        assert received(sock) == ["READY=1", "STATUS=abstract"]
