#!/usr/bin/env python3
"""Load generation and load sinking with Postfix's smtp-source / smtp-sink.

This module owns the two Postfix test programs and nothing else:

* :func:`run_smtp_source` runs ``smtp-source`` against 127.0.0.1:PORT and
  times it (smtp-source prints nothing useful on success, so the wall clock
  around the process is the measurement). It passes ``-c`` and reads the
  running counter of completed DATA commands, so the caller can check that
  every message got its 250 reply.
* :class:`SmtpSink` runs ``smtp-sink`` on 127.0.0.1:PORT (dropping root
  privileges to ``postfix``) and counts the messages it received from its
  ``-c`` counters, with the time the last one arrived. It can also answer
  chosen commands with a soft 4xx error (``-r``), to make a sender defer.
* :func:`free_port` picks an unused loopback TCP port.

Only loopback addresses are ever used as targets.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

from lab import Lab

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceJob:
    """One smtp-source invocation: what to send, and where (always loopback)."""

    port: int
    messages: int
    sessions: int = 20
    size: int = 5120
    sender: str = "bench@example.com"
    recipient: str = "anyone@example.net"
    host: str = "127.0.0.1"
    reuse_connections: bool = False
    helo: str | None = None
    timeout: float = 1800.0
    binary: str = "/usr/sbin/smtp-source"

    def argv(self) -> list[str]:
        """The smtp-source command line for this job."""
        args = [self.binary, "-c", "-s", str(self.sessions), "-l", str(self.size),
                "-m", str(self.messages), "-f", self.sender, "-t", self.recipient]
        if self.reuse_connections:
            args.append("-d")
        if self.helo:
            args += ["-M", self.helo]
        return args + [f"{require_loopback(self.host)}:{self.port}"]


@dataclass(frozen=True)
class SourceResult:
    """Outcome of one timed smtp-source run."""

    messages: int
    completed: int
    seconds: float

    @property
    def rate(self) -> float:
        """Completed messages per second of wall time."""
        return self.completed / self.seconds if self.seconds > 0 else 0.0


def require_loopback(host: str) -> str:
    """Return ``host`` if it is a loopback IP address, else raise ValueError."""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"refusing non-loopback target {host}: benchmarks stay on 127.0.0.1")
    return host


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port on ``host`` (the kernel's pick; tiny reuse race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((require_loopback(host), 0))
        return int(sock.getsockname()[1])


def last_counter(output: str) -> int:
    """The last number smtp-source -c printed (it rewrites one line with CRs)."""
    numbers = re.findall(r"\d+", output)
    return int(numbers[-1]) if numbers else 0


def run_smtp_source(job: SourceJob) -> SourceResult:
    """Run smtp-source, timing it; raise RuntimeError if it failed or fell short."""
    argv = job.argv()
    logger.info("running %s", " ".join(argv))
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=job.timeout)
    seconds = time.perf_counter() - start
    completed = last_counter(proc.stdout)
    if proc.stderr.strip():
        logger.warning("smtp-source: %s", proc.stderr.strip()[-500:])
    if proc.returncode != 0 or "fatal:" in proc.stderr:
        raise RuntimeError(
            f"smtp-source exited {proc.returncode} after {completed}/{job.messages} "
            f"messages: {proc.stderr.strip()[-500:]}")
    if completed != job.messages:
        raise RuntimeError(f"smtp-source completed {completed} of {job.messages} messages")
    return SourceResult(messages=job.messages, completed=completed, seconds=seconds)


@dataclass
class SinkCounters:
    """smtp-sink's -c counters: sessions, QUITs and messages received."""

    sess: int = 0
    quit: int = 0
    mesg: int = 0
    # time.perf_counter() when mesg last grew: the arrival of the latest message, as
    # seen by the reader thread (smtp-sink prints its counters at every ".").
    last_mesg_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def update(self, text: str, now: float | None = None) -> None:
        """Fold one 'sess=N quit=N mesg=N' record into the counters."""
        values = dict(re.findall(r"(sess|quit|mesg)=(\d+)", text))
        if values:
            with self.lock:
                self.sess = int(values.get("sess", self.sess))
                self.quit = int(values.get("quit", self.quit))
                mesg = int(values.get("mesg", self.mesg))
                if mesg > self.mesg:
                    self.last_mesg_at = time.perf_counter() if now is None else now
                self.mesg = mesg


class SmtpSink(Lab):
    """smtp-sink on 127.0.0.1:PORT that throws messages away and counts them.

    Use as a context manager; :attr:`received` is the number of messages
    (completed DATA transactions) seen so far.
    """

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        backlog: int = 1000,
        user: str = "postfix",
        binary: str = "/usr/sbin/smtp-sink",
        soft_reject: str = "",
    ) -> None:
        self.port = port
        self.host = require_loopback(host)
        self.backlog = backlog
        self.user = user
        self.binary = binary
        # smtp-sink -r: these commands ("rcpt", "mail,rcpt") get "450 4.3.0 Error: command
        # failed", so a sender defers every message (and smtp-sink turns PIPELINING off).
        self.soft_reject = soft_reject
        self.counters = SinkCounters()
        self.proc: subprocess.Popen[bytes] | None = None
        self.reader: threading.Thread | None = None

    @property
    def received(self) -> int:
        with self.counters.lock:
            return self.counters.mesg

    @property
    def last_received_at(self) -> float:
        """time.perf_counter() at the arrival of the latest message (0.0 before any)."""
        with self.counters.lock:
            return self.counters.last_mesg_at

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def argv(self) -> list[str]:
        """The smtp-sink command line (-u drops root after binding the socket)."""
        reject = ["-r", self.soft_reject] if self.soft_reject else []
        return [self.binary, "-c", "-u", self.user, *reject,
                f"{self.host}:{self.port}", str(self.backlog)]

    def start(self) -> None:
        """Start smtp-sink and wait until it answers with a 220 banner."""
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.reader = threading.Thread(target=self._read_counters, daemon=True)
        self.reader.start()
        self._wait_ready()
        logger.info("smtp-sink listening on %s:%d (pid %d)", self.host, self.port, self.proc.pid)

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"smtp-sink exited {self.proc.returncode}: {err.strip()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"smtp-sink did not listen on {self.host}:{self.port}")

    def _read_counters(self) -> None:
        """Reader thread: split smtp-sink's CR-separated counter records."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        pending = b""
        while chunk := os.read(fd, 4096):
            pending += chunk
            *records, pending = re.split(rb"[\r\n]", pending)
            if records:
                self.counters.update(records[-1].decode(errors="replace"))
        self.counters.update(pending.decode(errors="replace"))

    def wait_for(self, expected: int, timeout: float = 300.0) -> int:
        """Poll until ``expected`` messages arrived (or timeout); return the count."""
        deadline = time.monotonic() + timeout
        while self.received < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.received

    def stop(self) -> None:
        """Terminate our smtp-sink process (by its PID) and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.reader is not None:
            self.reader.join(timeout=5)
        self.proc = None
