"""Shared test machinery: settings builders, a recording SMTP sink, databases, a daemon in-process,
and `postroom serve` as a process (ports that are not taken meanwhile, waits that fail at once when
the daemon exits)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from postroom.config import Settings

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("POSTROOM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def make_settings(tmp_path: Path, db_url: str | None = None, **sections: dict[str, Any]) -> Settings:
    """Settings on loopback port 0 with capture delivery, overridable per section."""
    tree: dict[str, Any] = {
        "state_dir": str(tmp_path),
        "database": {"url": db_url or f"sqlite+aiosqlite:///{tmp_path / 'postroom.db'}"},
        # Tests about other things poll the API faster than a key's 10/s; rate limits have theirs.
        "http": {"listen": "127.0.0.1:0", "rate_limit": {"enabled": False}},
        "smtp": {
            "hostname": "mail.postroom.test",
            "submission_listen": "127.0.0.1:0",
            "mx_listen": "127.0.0.1:0",
            "trusted_networks": [],
        },
        "delivery": {"mode": "capture", "capture_dir": str(tmp_path / "outbox"), "poll_interval": 0.05},
        "log": {"format": "text", "level": "warning"},
        # A sending domain that is not signed, so tests about other things need no keys.
        "domains": [{"name": "postroom.test", "dkim": "off"}],
    }
    for name, values in sections.items():
        tree[name] = values if isinstance(values, list) else {**tree.get(name, {}), **values}
    return Settings.model_validate(tree)


@dataclass
class Received:
    mail_from: str
    recipients: list[str]
    content: bytes


@dataclass
class SinkHandler:
    """Records every message; `replies` maps a recipient to the RCPT reply to give instead of 250."""

    messages: list[Received] = field(default_factory=list)
    replies: dict[str, str] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append(
            Received(envelope.mail_from or "", list(envelope.rcpt_tos), envelope.original_content or b"")
        )
        self.arrived.set()
        return "250 2.0.0 stored"


@contextlib.asynccontextmanager
async def smtp_sink(handler: SinkHandler | None = None) -> AsyncIterator[tuple[SinkHandler, int]]:
    """A real aiosmtpd server on 127.0.0.1:0 in this loop."""
    handler = handler or SinkHandler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="sink.test", decode_data=False), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    try:
        yield handler, port
    finally:
        server.close()


# -- ports for daemons started as processes ------------------------------------------------------
#
# A port picked now and bound later by another process can be taken in between. bind(0) picks from
# the kernel's ephemeral range, which is also where every outgoing connection (the tests' clients,
# the daemons' deliveries, database connections) gets its local port: a port from `free_port` used
# to be taken that way, and the daemon then exited with "address already in use" while the test
# waited a minute for it. So `free_port` picks below that range, where only explicit binds go, and
# reserves the port against other test processes with a lock file held for the life of this one.
# Better still, a daemon can bind port 0 itself: `start_serving` reads the bound ports from the
# status it reports when ready.

PORT_LOCK_DIR = Path(tempfile.gettempdir()) / "postroom-test-ports"
FIXED_PORTS = range(20000, 32768)  # used when the ephemeral range starts above it (Linux: 32768)
_held_port_locks: dict[int, int] = {}  # port -> descriptor of its lock file (held until exit), or -1
_port_choice = random.SystemRandom()  # not the seeded `random` (hypothesis seeds it per test)


def _fixed_port_range() -> range | None:
    """Ports no outgoing connection or bind(0) gets on this host, or None if unknown."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if low <= FIXED_PORTS.start + 1000:
        return None
    return range(FIXED_PORTS.start, min(FIXED_PORTS.stop, low))


def _reserve(port: int) -> bool:
    """Take the lock file of `port` (shared by every test process on this host) and check the
    port is free on 127.0.0.1 now; keep the lock until this process exits."""
    if port in _held_port_locks:
        return False
    try:
        fd = os.open(_port_lock_dir() / str(port), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        fd = -1  # a lock directory we cannot write to (another user's): the bind check only
    try:
        if fd >= 0:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with socket.socket() as probe:  # no SO_REUSEADDR: a port in TIME_WAIT counts as busy
            probe.bind(("127.0.0.1", port))
    except OSError:
        if fd >= 0:
            os.close(fd)
        return False
    _held_port_locks[port] = fd
    return True


def _port_lock_dir() -> Path:
    if not PORT_LOCK_DIR.is_dir():
        with contextlib.suppress(FileExistsError):
            PORT_LOCK_DIR.mkdir()
            PORT_LOCK_DIR.chmod(0o1777)  # every user's test runs share the reservations
    return PORT_LOCK_DIR


def free_port() -> int:
    """A TCP port on 127.0.0.1 for a daemon process to bind (see above): free now, outside the
    ephemeral range, never handed out twice by this process or to another test process."""
    fixed = _fixed_port_range()
    if fixed is not None:
        for _ in range(200):
            port = _port_choice.choice(fixed)
            if _reserve(port):
                return port
    with socket.socket() as sock:  # no fixed range known: the kernel's choice, racy as it is
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


async def create_pg_database() -> str:
    """A fresh, empty PostgreSQL database; returns its SQLAlchemy URL."""
    import asyncpg

    name = f"postroom_t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


async def drop_pg_database(url: str) -> None:
    import asyncpg

    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def postroom_cli(*args: str, env: dict[str, str] | None = None, input: str | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "postroom.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        input=input,
        timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"postroom {' '.join(args)} failed: {result.stderr}")
    return result


def wait_for_port(host: str, port: int, timeout: float = 20.0, *,
                  process: subprocess.Popen[bytes] | None = None) -> None:  # fmt: skip
    """Wait until something accepts on host:port; with `process` (the daemon that should bind
    it), fail at once if it exits, with the end of its log when it is a `DaemonProcess`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None:
            check_running(process, f"listening on {host}:{port}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port}{_log_tail_of(process)}")


def write_config(path: Path, *, db_url: str, submission_port: int, http_port: int, mx_port: int,
                 sink_port: int, lease_seconds: float = 3.0, processes: int = 1) -> Path:  # fmt: skip
    """A daemon config for subprocess tests: smarthost delivery to a local sink, 127.0.0.1 trusted."""
    path.write_text(
        f"""state_dir = "{path.parent}"
[database]
url = "{db_url}"
[http]
listen = "127.0.0.1:{http_port}"
[smtp]
hostname = "mail.postroom.test"
submission_listen = "127.0.0.1:{submission_port}"
mx_listen = "127.0.0.1:{mx_port}"
trusted_networks = ["127.0.0.1/32"]
[delivery]
mode = "smarthost"
smarthost = "127.0.0.1:{sink_port}"
smarthost_tls = "none"
lease_seconds = {lease_seconds}
poll_interval = 0.2
retry_base = 1
retry_max = 2
[log]
format = "json"
level = "warning"
[processes]
count = {processes}

[[domains]]
name = "postroom.test"
dkim = "off"
"""
    )
    return path


# -- daemons as processes ------------------------------------------------------------------------


class DaemonExited(AssertionError):
    """A daemon process a test waits on exited; the message ends with the end of its log."""


class DaemonProcess(subprocess.Popen[bytes]):
    """`postroom serve` as a child process, writing stdout and stderr to `log`."""

    log: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])


def _log_tail_of(process: subprocess.Popen[bytes] | None) -> str:
    if isinstance(process, DaemonProcess):
        return f"; the end of {process.log}:\n{process.log_tail()}"
    return ""


def check_running(process: subprocess.Popen[bytes], waiting_for: str = "it") -> None:
    """Raise DaemonExited (with the end of its log) if `process` has exited."""
    code = process.poll()
    if code is not None:
        raise DaemonExited(f"pid {process.pid} exited with {code} while waiting for {waiting_for}"
                           f"{_log_tail_of(process)}")  # fmt: skip


def start_daemon(config: Path, log: Path, *, env: dict[str, str] | None = None) -> DaemonProcess:
    """`postroom serve --config config`, output appended to `log`; returns at once (see
    `start_serving` to wait until it is ready and learn its ports)."""
    with open(log, "ab") as handle:  # the child keeps its own copy of the descriptor
        process = DaemonProcess(
            [sys.executable, "-m", "postroom.cli", "serve", "--config", str(config)],
            stdout=handle,
            stderr=handle,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    process.log = log
    return process


@dataclass
class Serving:
    """A `postroom serve` process that said READY=1, with the addresses its status named. The
    notify socket stays open until `stop` (or garbage collection), so the daemon's STOPPING=1
    has somewhere to go."""

    process: DaemonProcess
    listeners: dict[str, tuple[str, int]]  # "submission", "mx", "http" -> (host, port) bound
    _closing: weakref.finalize[[socket.socket, str], Serving] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def port(self, listener: str) -> int:
        return self.listeners[listener][1]

    def url(self, path: str = "") -> str:
        host, port = self.listeners["http"]
        return f"http://{host}:{port}{path}"

    def close_notify_socket(self) -> None:
        if self._closing is not None:
            self._closing()

    async def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait for the exit (killing it after `timeout`); return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait, 10)
        self.close_notify_socket()
        return int(self.process.returncode)


def _close_notify_socket(listener: socket.socket, directory: str) -> None:
    listener.close()
    shutil.rmtree(directory, ignore_errors=True)


STATUS_ADDRESS = re.compile(r"(\w+) (\S+):(\d+)\b")


def listeners_in_status(status: str) -> dict[str, tuple[str, int]]:
    """"submission 127.0.0.1:40001, http 127.0.0.1:40002; delivery ..." (the daemon's STATUS, or
    the supervisor's "2 processes; ...") as {"submission": ("127.0.0.1", 40001), ...}."""
    return {m[1]: (m[2].strip("[]"), int(m[3])) for m in STATUS_ADDRESS.finditer(status)}


async def start_serving(config: Path, log: Path, *, env: dict[str, str] | None = None,
                        timeout: float = 60.0) -> Serving:  # fmt: skip
    """Start `postroom serve` and wait for its READY=1 on a notify socket of our own; fail at
    once, with the end of its log, if it exits first. The ports come from its STATUS, so a config
    with port 0 works (the daemon binds, then tells: no window for another process to take them).
    """
    directory = tempfile.mkdtemp(prefix="pr-notify-")  # short: AF_UNIX paths end at 108 bytes
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(os.path.join(directory, "n"))
    listener.setblocking(False)
    process = start_daemon(config, log, env={**(env or {}), "NOTIFY_SOCKET": listener.getsockname()})
    serving = Serving(process, {})
    serving._closing = weakref.finalize(serving, _close_notify_socket, listener, directory)
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    try:
        while "READY=1" not in lines:
            with contextlib.suppress(BlockingIOError):
                while True:
                    lines += listener.recv(65536).decode().splitlines()
            if "READY=1" in lines:
                break
            check_running(process, "READY=1")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no READY=1 from pid {process.pid} after {timeout}s{_log_tail_of(process)}")
            await asyncio.sleep(0.05)
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        serving.close_notify_socket()
        raise
    status = next((line for line in lines if line.startswith("STATUS=")), "STATUS=")
    serving.listeners = listeners_in_status(status.removeprefix("STATUS="))
    return serving


async def wait_until(predicate: Any, timeout: float, interval: float = 0.05, what: str = "condition",
                     *, alive: Sequence[subprocess.Popen[bytes]] = ()) -> None:  # fmt: skip
    """Poll `predicate()` (sync or async) until true or raise TimeoutError naming `what`; fail at
    once (DaemonExited, with the end of its log) if a process in `alive` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in alive:
            check_running(process, what)
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(interval)
    tails = "".join(_log_tail_of(p) for p in alive)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}{tails}")


MESSAGE_ID = re.compile(rb"^Message-ID:\s*<([^>]+)>", re.IGNORECASE | re.MULTILINE)
TOKEN = re.compile(rb"^X-Test-Token:\s*(\S+)", re.IGNORECASE | re.MULTILINE)


def token_of(content: bytes) -> str | None:
    found = TOKEN.search(content)
    return found.group(1).decode() if found else None


async def claim(store: Any, owner: str, limit: int, now: float, lease_seconds: float,
                exclude_domains: Any = ()) -> Any:  # fmt: skip
    """Lease due deliveries without loading their messages (what the store tests look at)."""
    claimed, _ = await store.claim_with_messages(owner, limit, now, lease_seconds, exclude_domains, load=False)
    return claimed


def children_of(pid: int) -> set[int]:
    """The live child processes of `pid` (Linux /proc), empty once it is gone."""
    try:
        return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
