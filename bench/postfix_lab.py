#!/usr/bin/env python3
"""A private, throw-away Postfix instance for benchmarks.

This module owns running Postfix for the bench harness and the interop
tests: writing a self-contained ``main.cf``/``master.cf`` (rendered by
``postfix_config.py``) into a temporary directory (its own config, queue and
data directories, so the system's default instance under /etc/postfix and
/var/spool/postfix is neither used nor disturbed), starting and stopping it
with ``postfix -c DIR``, and looking at its queue, log and mailboxes.

Three modes:

* ``hold``  -- accept everything on 127.0.0.1:PORT and park it in the hold
  queue (``check_client_access static:HOLD``): every message is written and
  fsync'ed to disk by cleanup, but nothing is ever delivered.
* ``relay`` -- accept everything and relay it to ``relayhost =
  [HOST]:PORT`` (typically an smtp-sink), without DNS and without TLS
  towards the relay host.
* ``mailbox`` -- act as the final MX of the domains of the given mailbox
  addresses: mail to a listed address is stored by virtual(8) in a Maildir
  under the instance's directory (``mailbox_messages``); any other address at
  those domains is refused at RCPT with ``550 5.1.1``, and other domains
  with ``554 5.7.1`` (no relaying). Nobody is trusted by address here: the
  SMTP client is treated like any host on the Internet.

In every mode the SMTP listener can offer STARTTLS (``ServerTls``: level
``may`` offers it, ``encrypt`` refuses mail without it) with a given
certificate; TLS sessions are logged and noted in Postfix's Received header.

Only loopback addresses are accepted for the listener and the relay host.
Must run as root (Postfix's master needs it); the daemons run as the
``postfix`` user.

CLI::

    python3 bench/postfix_lab.py hold --port 10025
    python3 bench/postfix_lab.py relay 127.0.0.1:10026 --port 10025
    python3 bench/postfix_lab.py mailbox --mailbox alice@mail.lab.test \
        --tls-chain cert.pem --tls-key key.pem --port 10025

All run until Ctrl-C (or SIGTERM), then stop Postfix and delete the
directory (unless ``--keep``).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lab import Lab
from postfix_config import (
    PostfixTools,
    PostfixTuning,
    ServerTls,
    mailbox_domains,
    maildir_of,
    render_main_cf,
    render_master_cf,
)

__all__ = [  # the configuration types are re-exported: callers import them from here
    "PostfixLab", "PostfixTools", "PostfixTuning", "ServerTls", "parse_host_port",
    "parse_postqueue_total", "port_accepts", "require_loopback", "wait_for_port",
]

logger = logging.getLogger(__name__)


def require_loopback(host: str) -> str:
    """Return ``host`` if it is a loopback IP address, else raise ValueError."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(f"not an IP address: {host!r} (only loopback is allowed)") from exc
    if not address.is_loopback:
        raise ValueError(f"refusing non-loopback address {host}: benchmarks stay on 127.0.0.1")
    return host


def parse_host_port(value: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (loopback IPv4 only) into a tuple."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return require_loopback(host.strip("[]")), int(port)


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connection to host:port succeeds and a 220 banner arrives."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            banner = sock.recv(512)
            sock.sendall(b"QUIT\r\n")
            return banner.startswith(b"220")
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 20.0) -> None:
    """Poll until an SMTP server answers on host:port, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_accepts(host, port):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing answered SMTP on {host}:{port} within {timeout:.0f}s")


def count_files(directory: Path) -> int:
    """Count regular files below ``directory`` (queues may be hashed)."""
    if not directory.is_dir():
        return 0
    return sum(len(files) for _, _, files in os.walk(directory))


def postfix_pids(queue_dir: Path, daemon_dir: str) -> list[int]:
    """PIDs of this instance's Postfix daemons.

    A process belongs to the instance when its executable lives in Postfix's
    daemon_directory and its working directory is our private queue_directory
    (every Postfix daemon chdirs there), so no other process can match.
    """
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(entry / "exe")
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if exe.startswith(daemon_dir.rstrip("/") + "/") and cwd == queue_dir:
            found.append(int(entry.name))
    return found


class PostfixLab(Lab):
    """A private Postfix instance in a temporary directory.

    Use as a context manager::

        with PostfixLab("hold", 10025) as lab:
            ...  # send mail to 127.0.0.1:10025
            print(lab.held_count())

        with PostfixLab("mailbox", 10025, mailboxes=["alice@mail.lab.test"],
                        tls=ServerTls("chain.pem", "key.pem")) as lab:
            ...  # send mail for alice@mail.lab.test to 127.0.0.1:10025
            print(lab.mailbox_messages("alice@mail.lab.test"))
    """

    def __init__(
        self,
        mode: str,
        listen_port: int,
        relay: str | None = None,
        *,
        mailboxes: Sequence[str] = (),
        tls: ServerTls | None = None,
        base_dir: str | None = None,
        keep: bool = False,
        tuning: PostfixTuning | None = None,
        tools: PostfixTools | None = None,
    ) -> None:
        if mode not in ("hold", "relay", "mailbox"):
            raise ValueError(f"mode must be 'hold', 'relay' or 'mailbox', not {mode!r}")
        if (mode == "relay") != (relay is not None):
            raise ValueError("relay mode needs relay='HOST:PORT'; the other modes take none")
        if (mode == "mailbox") != bool(mailboxes):
            raise ValueError("mailbox mode needs mailboxes=[ADDRESS, ...]; the other modes take none")
        mailbox_domains(mailboxes)  # a bad address fails here, not in Postfix
        self.mode = mode
        self.listen_port = listen_port
        self.relay = parse_host_port(relay) if relay else None
        self.mailboxes = tuple(mailboxes)
        self.tls = tls
        self.base_dir = base_dir
        self.keep = keep
        self.tuning = tuning or PostfixTuning()
        self.tools = tools or PostfixTools()
        self.root: Path | None = None
        self.running = False

    # -- paths ---------------------------------------------------------

    @property
    def config_dir(self) -> Path:
        return self._root() / "etc"

    @property
    def queue_dir(self) -> Path:
        return self._root() / "queue"

    @property
    def maillog(self) -> Path:
        return self._root() / "maillog"

    @property
    def mailbox_dir(self) -> Path:
        return self._root() / "mail"

    def _root(self) -> Path:
        if self.root is None:
            raise RuntimeError("PostfixLab is not set up (call start())")
        return self.root

    # -- lifecycle -----------------------------------------------------

    def start(self) -> None:
        """Write the configuration, start Postfix and wait for its SMTP banner."""
        if os.geteuid() != 0:
            raise PermissionError("a private Postfix instance must be started as root")
        if port_accepts("127.0.0.1", self.listen_port):
            raise RuntimeError(f"something already listens on 127.0.0.1:{self.listen_port}")
        try:
            self._make_tree()
            logger.info("starting Postfix (%s) in %s on 127.0.0.1:%d",
                        self.mode, self.root, self.listen_port)
            self._postfix("check")
            self.running = True
            self._postfix("start")
            wait_for_port("127.0.0.1", self.listen_port)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop Postfix, wait for all its processes, delete the directory."""
        if self.root is None:
            return
        if self.running:
            self._postfix("stop", check=False)
            self._wait_for_exit()
            self.running = False
        if self.keep:
            logger.info("keeping %s", self.root)
        else:
            shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def _make_tree(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="postfix-lab-", dir=self.base_dir))
        # Postfix daemons (user postfix) must be able to traverse the tree.
        self.root.chmod(0o755)
        owner = pwd.getpwnam(self.tools.mail_owner)
        for name in ("etc", "queue", "data"):
            (self.root / name).mkdir(mode=0o755)
        os.chown(self.root / "data", owner.pw_uid, owner.pw_gid)
        if self.mailboxes:
            keeper = pwd.getpwnam(self.tools.mailbox_owner)
            self.mailbox_dir.mkdir(mode=0o700)
            os.chown(self.mailbox_dir, keeper.pw_uid, keeper.pw_gid)
            (self.config_dir / "mailboxes").write_text(
                "".join(f"{a} {maildir_of(a)}\n" for a in self.mailboxes))
        if self.tls is not None:
            # Copies inside the instance, so the files' own directory may be private to root.
            tls_dir = self.config_dir / "tls"
            tls_dir.mkdir(mode=0o700)
            shutil.copyfile(self.tls.key, tls_dir / "key.pem")
            shutil.copyfile(self.tls.cert_chain, tls_dir / "chain.pem")
        (self.config_dir / "main.cf").write_text(
            render_main_cf(self.root, self.mode, self.relay, self.tools, self.tuning,
                           mailboxes=self.mailboxes, tls=self.tls))
        (self.config_dir / "master.cf").write_text(
            render_master_cf(self.listen_port, self.tuning.maillog, self.tls is not None))

    def _postfix(self, command: str, check: bool = True) -> None:
        argv = [self.tools.postfix, "-c", str(self.config_dir), command]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}"
                + self._maillog_tail())

    def _wait_for_exit(self, timeout: float = 15.0) -> None:
        """Wait until no process of this instance is left; TERM stragglers by PID."""
        deadline = time.monotonic() + timeout
        daemon_dir = self.tools.daemon_directory
        while (pids := postfix_pids(self.queue_dir, daemon_dir)) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in pids:
            logger.warning("Postfix process %d still running after stop; sending SIGTERM", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _maillog_tail(self, lines: int = 15) -> str:
        try:
            text = self.maillog.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\nmaillog:\n" + "\n".join(text)

    def log_lines(self) -> list[str]:
        """Postfix's log so far (empty when maillog is off or nothing was logged yet)."""
        try:
            return self.maillog.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    # -- mailboxes (mailbox mode) ----------------------------------------

    def mailbox_messages(self, address: str) -> list[bytes]:
        """The messages virtual(8) stored for ``address``, oldest first, as stored (LF endings)."""
        if address not in self.mailboxes:
            raise ValueError(f"{address!r} is not a mailbox of this instance")
        maildir = self.mailbox_dir / maildir_of(address)
        # A Maildir file name starts with the delivery time: sorting by name is delivery order.
        files = sorted((maildir / "new").glob("*")) + sorted((maildir / "cur").glob("*"))
        return [path.read_bytes() for path in files if path.is_file()]

    def wait_for_mailbox(self, address: str, expected: int, timeout: float = 30.0) -> list[bytes]:
        """Poll until ``address`` holds at least ``expected`` messages (or timeout); return them."""
        deadline = time.monotonic() + timeout
        while len(found := self.mailbox_messages(address)) < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        return found

    # -- queue inspection ----------------------------------------------

    def queue_counts(self) -> dict[str, int]:
        """Number of queue files per queue (maildrop, incoming, active, deferred, hold)."""
        names = ("maildrop", "incoming", "active", "deferred", "hold")
        return {name: count_files(self.queue_dir / name) for name in names}

    def held_count(self) -> int:
        """Messages sitting in the hold queue (written to disk, never delivered)."""
        return self.queue_counts()["hold"]

    def pending_count(self) -> int:
        """Messages still waiting for delivery (everything except hold)."""
        counts = self.queue_counts()
        return sum(v for k, v in counts.items() if k != "hold")

    def postqueue_requests(self) -> int:
        """Total messages in the queue as reported by ``postqueue -p``."""
        argv = [self.tools.postqueue, "-c", str(self.config_dir), "-p"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                             check=True).stdout
        return parse_postqueue_total(out)

    def wait_until_held(self, expected: int, timeout: float = 30.0) -> int:
        """Poll until ``expected`` messages are held (or timeout); return the count."""
        return self._wait(lambda: self.held_count() >= expected, self.held_count, timeout)

    def wait_until_empty(self, timeout: float = 300.0) -> int:
        """Poll until no message awaits delivery (or timeout); return what is left."""
        return self._wait(lambda: self.pending_count() == 0, self.pending_count, timeout)

    @staticmethod
    def _wait(done: Callable[[], bool], value: Callable[[], int], timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            time.sleep(0.2)
        return value()


def parse_postqueue_total(output: str) -> int:
    """Parse ``postqueue -p`` output: '-- N Kbytes in M Requests.' -> M."""
    for line in reversed(output.strip().splitlines()):
        if "Mail queue is empty" in line:
            return 0
        words = line.split()
        if line.startswith("--") and "Request" in line:
            return int(words[-2])
    raise ValueError(f"unexpected postqueue output: {output[-200:]!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("hold", "relay", "mailbox"))
    parser.add_argument("relay", nargs="?", help="HOST:PORT to relay to (relay mode)")
    parser.add_argument("--mailbox", action="append", default=[], metavar="ADDRESS",
                        help="an address to store mail for (mailbox mode; repeat for more)")
    parser.add_argument("--tls-chain", help="PEM certificate chain: offer STARTTLS")
    parser.add_argument("--tls-key", help="PEM private key for --tls-chain")
    parser.add_argument("--tls-level", choices=("may", "encrypt"), default="may",
                        help="encrypt: refuse mail without STARTTLS")
    parser.add_argument("--port", type=int, default=10025, help="SMTP port on 127.0.0.1")
    parser.add_argument("--dir", help="parent directory for the instance (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="do not delete the directory")
    parser.add_argument("--no-maillog", action="store_true", help="disable Postfix logging")
    return parser


def serve_until_signal(lab: PostfixLab) -> None:
    """Print queue counts every few seconds until SIGINT/SIGTERM."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"Postfix {lab.mode} on 127.0.0.1:{lab.listen_port}; config {lab.config_dir}",
          flush=True)
    print(f"  postqueue -c {lab.config_dir} -p    # inspect; Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(5)
            print(f"  queue: {lab.queue_counts()}", flush=True)
    except KeyboardInterrupt:
        print("stopping", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.mode == "relay" and not args.relay:
        print("relay mode needs HOST:PORT", file=sys.stderr)
        return 2
    if (args.mode == "mailbox") != bool(args.mailbox):
        print("mailbox mode needs --mailbox ADDRESS (and only it takes one)", file=sys.stderr)
        return 2
    if bool(args.tls_chain) != bool(args.tls_key):
        print("--tls-chain and --tls-key go together", file=sys.stderr)
        return 2
    tls = ServerTls(args.tls_chain, args.tls_key, args.tls_level) if args.tls_chain else None
    tuning = PostfixTuning(maillog=not args.no_maillog)
    lab = PostfixLab(args.mode, args.port, args.relay if args.mode == "relay" else None,
                     mailboxes=args.mailbox, tls=tls, base_dir=args.dir, keep=args.keep,
                     tuning=tuning)
    with lab:
        serve_until_signal(lab)
    return 0


if __name__ == "__main__":
    sys.exit(main())
