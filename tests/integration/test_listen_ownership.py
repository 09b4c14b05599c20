"""One owner per port: a second `postroom serve` on the ports of a running one is refused at once.

Listeners used to bind with SO_REUSEPORT (so that several processes of one daemon could share the
ports); a second, unrelated instance with another database then started, said ready and silently
took half the connections. Now `postroom serve` binds every socket once, without SO_REUSEPORT, and
hands them to its processes; the second instance fails at bind and the first keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import aiosmtplib
import pytest

from postroom.listen import LISTEN_FDS_ENV, Listener, ListenError, bind_listeners, decode_fds
from tests.conftest import Tls
from tests.support import (
    SinkHandler,
    free_port,
    postroom_cli,
    smtp_sink,
    wait_until,
    write_config,
)

MESSAGE = b"From: app@postroom.test\r\nTo: x@example.com\r\nSubject: s\r\n\r\nbody\r\n"


def _ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def _notify_socket(path: Path) -> Iterator[Callable[[], list[str]]]:
    """A $NOTIFY_SOCKET to start a daemon with; yields a function returning what it has said so
    far. READY=1 comes once every process serves (the supervisor waits for all of them)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    seen: list[str] = []

    def said() -> list[str]:
        while sock.fileno() != -1:  # after the block: what was said until then
            try:
                seen.extend(sock.recv(4096).decode().splitlines())
            except BlockingIOError:
                break
        return seen

    try:
        yield said
    finally:
        sock.close()


def _start(config: Path, log: Path, notify: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "postroom.cli", "serve", "--config", str(config)],
            stdout=handle, stderr=handle, env={**os.environ, "NOTIFY_SOCKET": str(notify)},
        )  # fmt: skip


def _serve_until_exit(config: Path, timeout: float) -> tuple[int | None, str, float]:
    """Run `postroom serve`; return (exit code or None if still running after `timeout`, stderr,
    seconds it ran). A second instance that starts is stopped, so the test can report it."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "postroom.cli", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy(),
    )  # fmt: skip
    try:
        _, stderr = process.communicate(timeout=timeout)
        return process.returncode, stderr.decode(), time.monotonic() - started
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        return None, stderr.decode(), time.monotonic() - started


@pytest.mark.parametrize("processes", [1, 2])
async def test_a_second_serve_on_the_same_ports_is_refused(tmp_path: Path, processes: int) -> None:
    handler = SinkHandler()
    async with smtp_sink(handler) as (_, sink_port):
        submission, http, mx = free_port(), free_port(), free_port()
        configs = []
        for name in ("first", "second"):
            (tmp_path / name).mkdir()
            config = write_config(
                tmp_path / name / "postroom.toml",
                db_url=f"sqlite+aiosqlite:///{tmp_path / name / 'q.db'}",
                submission_port=submission, http_port=http, mx_port=mx, sink_port=sink_port,
                processes=processes,
            )  # fmt: skip
            postroom_cli("db", "upgrade", "--config", str(config))
            configs.append(config)
        log = tmp_path / "first.log"
        with _notify_socket(tmp_path / "notify.sock") as said:
            first = _start(configs[0], log, tmp_path / "notify.sock")
            try:
                await wait_until(lambda: "READY=1" in said(), 60, what="the first daemon's READY=1")
            except BaseException:
                first.kill()
                raise
        try:
            assert _ready(http)

            code, stderr, seconds = await asyncio.to_thread(_serve_until_exit, configs[1], 20)
            assert code is not None, f"a second daemon started on the same ports: {stderr[-2000:]}"
            assert code != 0
            assert seconds < 10, f"refusing took {seconds:.1f} s"
            expected = f"postroom: address already in use: 127.0.0.1:{submission} (is another postroom running?)"
            assert expected in stderr.splitlines(), stderr

            # The first daemon still serves: SMTP (several connections, as the second would have
            # taken some of them) and /readyz.
            for n in range(6):
                smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=submission, start_tls=False)
                await smtp.connect()
                await smtp.sendmail("app@postroom.test", [f"r{n}@example.com"], MESSAGE)
                await smtp.quit()
            await wait_until(lambda: len(handler.messages) == 6, 30, what="6 deliveries")
            assert _ready(http)
            assert first.poll() is None
        finally:
            first.send_signal(signal.SIGTERM)
            exit_code = await asyncio.to_thread(first.wait, 30)
    assert exit_code == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()


async def test_port_zero_is_bound_once_and_served_by_every_process(tmp_path: Path, tls: Tls) -> None:
    """Port 0 in the config: the kernel picks each port at the one bind, and every process serves
    from that socket (the implicit-TLS one with TLS); no child binds one of its own."""
    handler = SinkHandler()
    async with smtp_sink(handler) as (_, sink_port):
        config = write_config(
            tmp_path / "postroom.toml", db_url=f"sqlite+aiosqlite:///{tmp_path / 'q.db'}",
            submission_port=0, http_port=0, mx_port=0, sink_port=sink_port, processes=2,
        )  # fmt: skip
        config.write_text(config.read_text().replace(
            'trusted_networks = ["127.0.0.1/32"]',
            'trusted_networks = ["127.0.0.1/32"]\nsubmissions_listen = "127.0.0.1:0"\n'
            f'tls_cert = "{tls.cert}"\ntls_key = "{tls.key}"',
        ))  # fmt: skip
        postroom_cli("db", "upgrade", "--config", str(config))
        log = tmp_path / "serve.log"
        with _notify_socket(tmp_path / "notify.sock") as said:
            daemon = _start(config, log, tmp_path / "notify.sock")
            try:
                await wait_until(lambda: "READY=1" in said(), 60, what="READY=1")
            except BaseException:
                daemon.kill()
                raise
        try:
            children = _children_of(daemon.pid)
            listening = [_inherited_listeners(pid) for pid in children]
            assert listening[0] == listening[1]
            assert set(listening[0]) == {"submission", "submissions", "mx", "http"}
            # The same sockets (inodes) as the supervisor holds, and no other listening socket.
            inodes = {inode for inode, _ in listening[0].values()}
            for pid in (daemon.pid, *children):
                assert _listening_inodes(pid) == inodes
            ports = {name: port for name, (_, port) in listening[0].items()}
            assert 0 not in ports.values()
            # The supervisor's status names the ports the kernel picked.
            [status] = [line for line in said() if line.startswith("STATUS=")]
            assert f"submission 127.0.0.1:{ports['submission']}" in status, status
            assert f"http 127.0.0.1:{ports['http']}" in status, status
            assert _ready(ports["http"])
            for n in range(4):
                smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=ports["submission"], start_tls=False)
                await smtp.connect()
                await smtp.sendmail("app@postroom.test", [f"r{n}@example.com"], MESSAGE)
                await smtp.quit()
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=ports["submissions"], use_tls=True,
                                   tls_context=tls.client)  # fmt: skip
            await smtp.connect()
            await smtp.sendmail("app@postroom.test", ["tls@example.com"], MESSAGE)
            await smtp.quit()
            await wait_until(lambda: len(handler.messages) == 5, 30, what="5 deliveries")
        finally:
            daemon.send_signal(signal.SIGTERM)
            exit_code = await asyncio.to_thread(daemon.wait, 30)
    assert exit_code == 0, log.read_text()[-3000:]


def _children_of(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _tcp_listeners() -> dict[str, int]:
    """Listening TCP sockets of this network namespace: inode -> local port."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    found[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    return found


def _socket_inode(pid: int, fd: int) -> str | None:
    target = os.readlink(f"/proc/{pid}/fd/{fd}")
    return target[len("socket:[") : -1] if target.startswith("socket:[") else None


def _listening_inodes(pid: int) -> set[str]:
    listening = _tcp_listeners()
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            inode = _socket_inode(pid, int(fd))
            if inode in listening:
                inodes.add(inode)
    return inodes


def _inherited_listeners(pid: int) -> dict[str, tuple[str, int]]:
    """What $POSTROOM_LISTEN_FDS names in a process: listener -> (socket inode, port)."""
    environ = dict(
        entry.split("=", 1)
        for entry in Path(f"/proc/{pid}/environ").read_text().split("\0")
        if "=" in entry
    )
    listening = _tcp_listeners()
    named = {}
    for name, fds in decode_fds(environ[LISTEN_FDS_ENV]).items():
        [fd] = fds
        inode = _socket_inode(pid, fd)
        assert inode in listening, f"{name} (fd {fd}) is not a listening TCP socket"
        named[name] = (inode, listening[inode])
    return named


def test_bind_failures_say_what_and_where() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        address = f"127.0.0.1:{port}"
        with pytest.raises(ListenError) as caught:
            bind_listeners([Listener("submission", "smtp.submission_listen", address)])
        assert str(caught.value) == f"address already in use: {address} (is another postroom running?)"
    with pytest.raises(ListenError, match=r"smtp\.mx_listen and http\.listen both listen on"):
        bind_listeners([Listener("mx", "smtp.mx_listen", "127.0.0.1:2999"),
                        Listener("http", "http.listen", "127.0.0.1:2999")])  # fmt: skip
    if os.geteuid() != 0:
        with pytest.raises(ListenError, match=r"permission denied: cannot listen on 127\.0\.0\.1:25 "
                                              r"\(smtp\.mx_listen; ports below 1024"):  # fmt: skip
            bind_listeners([Listener("mx", "smtp.mx_listen", "127.0.0.1:25")])
    with pytest.raises(ListenError, match="address not available on this host: 192.0.2.1:2587"):
        bind_listeners([Listener("submission", "smtp.submission_listen", "192.0.2.1:2587")])


def test_bound_sockets_do_not_share_the_port() -> None:
    """Neither SO_REUSEPORT on our socket nor room for another socket on the port."""
    bound = bind_listeners([Listener("http", "http.listen", "127.0.0.1:0")])
    try:
        [sock] = bound["http"]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError) as caught:
                other.bind(sock.getsockname())
            assert caught.value.errno == errno.EADDRINUSE
    finally:
        for socks in bound.values():
            for sock in socks:
                sock.close()
