"""Postfix, a mail server no one here wrote, on the receiving end of postroom's delivery.

* **Postfix as the recipients' MX.** A private Postfix instance (bench/postfix_lab.py, mailbox
  mode) is the final MX of `mail.interop.test` and two more test domains, stores mail in Maildirs
  and offers STARTTLS with a trustme certificate. A real `postroom serve` process in mode "mx"
  finds it through MX and A records served by `tests/dns_server.py` and connects to `mx_port`.
  What Postfix stored must be exactly what postroom stored (headers and body, 8-bit and dot lines
  included) under the fields Postfix adds itself, and TLS must have been used. An unknown user is
  refused by Postfix with 550 5.1.1, and postroom records that reply as a bounce. A destination
  with `tls = "verify"` is delivered when Postfix's certificate names the MX host and deferred,
  never sent in clear, when it does not. Postfix logs every command postroom sends, so the tests
  also check its EHLO name and MAIL FROM parameters.
* **Postfix as the smarthost.** postroom in mode "smarthost" with STARTTLS required and the
  certificate verified -> a Postfix relay instance that refuses mail without STARTTLS -> an
  aiosmtpd sink in this test, which must receive postroom's message unchanged.

The DNS server and the sink run in the test's event loop, so the test only ever awaits while the
daemon works (blocking calls go through `asyncio.to_thread`). Each Postfix instance lives in its own
temporary directory and is stopped and deleted when its fixture or `finally` ends. Needs Postfix
and root: skipped without them, except in CI (.ci/run installs Postfix and runs as root), where
their absence is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
import trustme

from postroom.config import DatabaseSettings
from postroom.queue.views import SqlQueueViews
from postroom.store import schema
from postroom.store.credentials import Role, SqlApiKeys
from postroom.store.engine import create_engine
from tests.dns_server import serve_dns
from tests.support import SinkHandler, free_port, postroom_cli, smtp_sink, start_daemon, wait_until

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:  # bench/ is a directory of sibling scripts, not a package
    sys.path.insert(0, str(BENCH))

from postfix_lab import PostfixLab, PostfixTools, PostfixTuning, ServerTls  # noqa: E402

pytestmark = [pytest.mark.interop, pytest.mark.slow]

SENDER = "app@postroom.test"
EHLO_NAME = "mail.postroom.test"  # [smtp] hostname: what postroom says in EHLO
DOMAIN = "mail.interop.test"
MX_NAME = "mx.interop.test"
ALICE, BOB, CAROL = f"alice@{DOMAIN}", f"bob@{DOMAIN}", f"carol@{DOMAIN}"
UNKNOWN = f"nobody@{DOMAIN}"
JUERGEN = f"jürgen@{DOMAIN}"
VERA = "vera@verify.interop.test"  # tls = "verify": the certificate names the MX host
MONA = "mona@mismatch.interop.test"  # tls = "verify": the MX host name is not in the certificate
MAILBOXES = (ALICE, BOB, CAROL, JUERGEN, VERA, MONA)

ZONE = {
    (DOMAIN, "MX"): [f"10 {MX_NAME}."],
    (MX_NAME, "A"): ["127.0.0.1"],
    ("verify.interop.test", "MX"): [f"10 {MX_NAME}."],
    ("mismatch.interop.test", "MX"): ["10 mx-elsewhere.interop.test."],
    ("mx-elsewhere.interop.test", "A"): ["127.0.0.1"],
}

EIGHT_BIT_BODY = (
    "Grüße aus Köln, naïve café, 日本語のテキスト, emoji 🙂.\r\n"
    ".a line that starts with a dot\r\n"
    ".\r\n"
    "..\r\n"
    "From the start of a line (an mbox writer would quote this)\r\n"
    "trailing spaces and a tab   \t\r\n"
    + "x" * 900
    + "\r\n"
    "\r\n"
    "Æ Ø Å — last line\r\n"
)

FINAL_STATES = {"delivered", "bounced", "expired", "dead"}
TLS_PROTOCOL = re.compile(r"TLSv1\.[23]")
# What Postfix puts above the message it was given: virtual(8)'s Return-Path, X-Original-To and
# Delivered-To, and smtpd's own Received field (each with its folded continuation lines).
POSTFIX_FIELD = re.compile(rb"(Return-Path|X-Original-To|Delivered-To|Received):[^\n]*\n(?:[ \t][^\n]*\n)*")


def _need(condition: bool, reason: str) -> None:
    """Skip without Postfix or root; in CI, where .ci/run provides both, their absence fails."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI must run this test (.ci/run installs Postfix, runs as root)")
        pytest.skip(reason)


def need_postfix() -> None:
    tools = PostfixTools()
    _need(os.access(tools.postfix, os.X_OK) and os.path.isdir(tools.daemon_directory),
          f"Postfix is not installed ({tools.postfix}; apt-get install postfix)")  # fmt: skip
    _need(os.geteuid() == 0, "a private Postfix instance needs root (its master starts as root)")


# -- certificates and Postfix instances ------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the CA postroom is told to trust (tls_ca, smarthost_ca)
    chain: Path  # Postfix's certificate, for MX_NAME (MX mode) and 127.0.0.1 (the smarthost)
    key: Path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    ca = trustme.CA()
    server = ca.issue_cert(MX_NAME, "127.0.0.1")
    directory = tmp_path_factory.mktemp("postfix-tls")
    paths = Certificates(directory / "ca.pem", directory / "chain.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(paths.ca))
    paths.chain.write_bytes(b"".join(pem.bytes() for pem in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(paths.key))
    return paths


@contextlib.contextmanager
def postfix(mode: str, relay: str | None = None, **kwargs: Any) -> Iterator[PostfixLab]:
    """A started private Postfix instance on a free port; stopped and deleted whatever happens."""
    need_postfix()
    lab = PostfixLab(mode, free_port(), relay, tuning=PostfixTuning(log_client_commands=True), **kwargs)
    with lab:  # start() cleans up after itself when it fails; __exit__ always stops
        yield lab


@pytest.fixture(scope="module")
def mx_lab(certificates: Certificates) -> Iterator[PostfixLab]:
    """Postfix as the final MX of the test domains, STARTTLS offered (level "may")."""
    with postfix("mailbox", mailboxes=MAILBOXES,
                 tls=ServerTls(str(certificates.chain), str(certificates.key))) as lab:  # fmt: skip
        yield lab


# -- a postroom daemon -----------------------------------------------------------------------------


@dataclass
class Postroom:
    """A `postroom serve` process (one process) and ways to feed it and look at its queue."""

    directory: Path
    config: Path
    submission: int
    http: int
    api_key: str = ""

    @property
    def log(self) -> Path:
        return self.directory / "serve.log"

    @property
    def database(self) -> DatabaseSettings:
        return DatabaseSettings(url=f"sqlite+aiosqlite:///{self.directory / 'q.db'}")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return postroom_cli(*args, "--config", str(self.config))

    async def submit(self, recipients: list[str], content: bytes) -> str:
        """Send one message to the submission port; return postroom's queue id from the 250."""
        options = [] if all(r.isascii() for r in recipients) else ["SMTPUTF8"]  # RFC 6531
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=self.submission, start_tls=False) as smtp:
            refused, reply = await smtp.sendmail(SENDER, recipients, content, mail_options=options)
        assert not refused, refused
        found = re.search(r"queued as (\S+)", reply)
        assert found, reply
        return found.group(1)

    async def detail(self, message_id: str) -> dict[str, Any]:
        """GET /v1/messages/{id}: the message with each recipient's state and attempts."""
        headers = {"Authorization": f"Bearer {self.api_key}"}
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{self.http}/v1/messages/{message_id}"
            async with session.get(url, headers=headers) as response:
                assert response.status == 200, await response.text()
                return dict(await response.json())

    async def deliveries(self, message_id: str, timeout: float = 20.0,
                         done: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
        """Each recipient's delivery, once `done` holds for all of them (default: a final state)."""
        done = done or (lambda d: d["state"] in FINAL_STATES)
        found: dict[str, dict[str, Any]] = {}

        async def settled() -> bool:
            found.clear()
            found.update({d["recipient"]: d for d in (await self.detail(message_id))["deliveries"]})
            return all(done(d) for d in found.values())

        await wait_until(settled, timeout, interval=0.1, what=f"the deliveries of {message_id}")
        return found

    async def stored(self, message_id: str) -> bytes:
        """The message exactly as postroom stored it (what it sends: no DKIM for postroom.test)."""
        engine = create_engine(self.database)
        try:
            return bytes(await SqlQueueViews(engine).content(message_id))
        finally:
            await engine.dispose()

    async def prepare(self) -> None:
        """Migrate the database and make a viewer API key (in this process: the CLI takes seconds
        to start, and `postroom db upgrade` / `apikeys create` are tested elsewhere)."""
        engine = create_engine(self.database)
        try:
            await schema.upgrade(engine)
            _, self.api_key = await SqlApiKeys(engine).create("interop", Role.VIEWER, time.time())
        finally:
            await engine.dispose()


def write_config(directory: Path, delivery: str) -> Postroom:
    daemon = Postroom(directory, directory / "postroom.toml", free_port(), free_port())
    daemon.config.write_text(
        f"""state_dir = "{directory}"
[database]
url = "sqlite+aiosqlite:///{directory / 'q.db'}"
[http]
listen = "127.0.0.1:{daemon.http}"
[http.rate_limit]
default = "1000/s"  # the test polls a message's deliveries every 0.1 s
[smtp]
hostname = "{EHLO_NAME}"
submission_listen = "127.0.0.1:{daemon.submission}"
mx_listen = "127.0.0.1:{free_port()}"
trusted_networks = ["127.0.0.1/32"]
[log]
format = "json"
level = "info"
[processes]
count = 1
[[domains]]
name = "postroom.test"
dkim = "off"
[delivery]
connect_timeout = 5
command_timeout = 10
poll_interval = 0.1
retry_base = 1
retry_max = 2
drain_grace = 2
{delivery}"""
    )
    return daemon


@contextlib.asynccontextmanager
async def serving(directory: Path, delivery: str) -> AsyncIterator[Postroom]:
    """`postroom serve` with `delivery` appended to its [delivery] section; SIGTERM on exit."""
    daemon = write_config(directory, delivery)
    await daemon.prepare()
    process = start_daemon(daemon.config, daemon.log)
    try:
        await wait_until(lambda: process.poll() is not None or ready(daemon.http), 60, what="postroom /readyz")
        assert process.poll() is None, daemon.log.read_text()[-3000:]
        yield daemon
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 20)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait, 10)
    log = daemon.log.read_text()
    assert "Traceback" not in log, log[-3000:]


def ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def mx_delivery(lab: PostfixLab, dns_port: int, certificates: Certificates) -> str:
    return f"""mode = "mx"
mx_port = {lab.listen_port}
dns_resolver = "127.0.0.1:{dns_port}"
tls_ca = "{certificates.ca}"
[[delivery.destinations]]
match = "verify.interop.test"
tls = "verify"
[[delivery.destinations]]
match = "mismatch.interop.test"
tls = "verify"
"""


# -- messages and what Postfix made of them --------------------------------------------------------


def compose(token: str, to: str, subject: str, body: str) -> bytes:
    """A complete message (Date and Message-ID included, so postroom adds only its Received)."""
    return (
        f"From: App <{SENDER}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{token}@postroom.test>\r\n"
        f"X-Test-Token: {token}\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}"
    ).encode()


def postfix_fields(delivered: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """Split what Postfix put on top of a message from the message it was given: [(name, field)]
    for its own fields (a Received field counts only when it says "(Postfix)"), and the rest."""
    fields: list[tuple[str, bytes]] = []
    rest = delivered
    while (found := POSTFIX_FIELD.match(rest)) and (found[1] != b"Received" or b"(Postfix)" in found[0]):
        fields.append((found[1].decode(), found[0]))
        rest = rest[found.end() :]
    return fields, rest


def field_value(fields: list[tuple[str, bytes]], name: str) -> str:
    [value] = [raw.split(b":", 1)[1].decode() for n, raw in fields if n == name]
    return " ".join(value.split())  # unfolded


def copies(lab: PostfixLab, address: str, token: str) -> list[bytes]:
    """The messages with X-Test-Token `token` in `address`'s Maildir."""
    return [m for m in lab.mailbox_messages(address) if f"\nX-Test-Token: {token}\n".encode() in m]


async def stored_copy(lab: PostfixLab, address: str, token: str) -> bytes:
    """The one copy Postfix stored for `address` (virtual(8) runs after smtpd's 250: wait for it)."""
    await wait_until(lambda: copies(lab, address, token), 10, interval=0.05, what=f"{token} for {address}")
    [copy] = copies(lab, address, token)
    return copy


def sessions(lab: PostfixLab, since: int = 0) -> list[str | None]:
    """For each SMTP session begun after log line `since`, Postfix's disconnect line (None while
    the session is open, or until postlogd has written that line: it lags a little)."""
    found: list[str | None] = []
    open_at: dict[str, int] = {}
    for line in lab.log_lines()[since:]:
        event = re.search(r"/smtpd\[(\d+)\]: (connect|disconnect) from unknown\[127\.0\.0\.1\]", line)
        if event and event[2] == "connect":
            open_at[event[1]] = len(found)
            found.append(None)
        elif event and event[1] in open_at:
            found[open_at.pop(event[1])] = line
    return found


async def log_mark(lab: PostfixLab) -> int:
    """Where this test's part of Postfix's log starts: once every earlier session is logged closed,
    so that no line of an earlier test (or of the lab's start-up probe) comes after it."""
    await wait_until(lambda: None not in sessions(lab), 10, what="earlier SMTP sessions to end")
    return len(lab.log_lines())


async def disconnects(lab: PostfixLab, since: int) -> list[str]:
    """The disconnect lines of the sessions begun after `since`, once all have ended."""
    with contextlib.suppress(TimeoutError):
        await wait_until(lambda: None not in sessions(lab, since), 10, what="SMTP sessions to end")
    ended = sessions(lab, since)
    assert None not in ended, "\n".join(lab.log_lines()[since:])
    return [line for line in ended if line is not None]


def postfix_queue_id(reply: str) -> str:
    found = re.fullmatch(r"250 2\.0\.0 Ok: queued as ([0-9A-F]+)", reply)
    assert found, reply
    return found.group(1)


def last_attempt(delivery: dict[str, Any]) -> dict[str, Any]:
    attempts = [e["detail"] for e in delivery["events"] if "reply" in e["detail"]]
    assert attempts, delivery
    return dict(attempts[-1])


def client_lines(lab: PostfixLab, since: int, command: str) -> list[str]:
    """The commands postroom sent to Postfix that start with `command` (log_client_commands)."""
    marker = "]: < unknown[127.0.0.1]: "
    return [line.split(marker, 1)[1] for line in lab.log_lines()[since:]
            if marker in line and line.split(marker, 1)[1].upper().startswith(command)]  # fmt: skip


def problems(lab: PostfixLab, since: int) -> list[str]:
    """Lines where Postfix complains about its client: warnings, pipelining, lost connections."""
    words = ("warning:", "error:", "fatal:", "improper command pipelining", "lost connection")
    return [line for line in lab.log_lines()[since:] if any(w in line for w in words)]


# -- Postfix as the MX -----------------------------------------------------------------------------


async def test_postfix_mx_stores_exactly_what_postroom_sent_over_starttls(
    tmp_path: Path, mx_lab: PostfixLab, certificates: Certificates
) -> None:
    since = await log_mark(mx_lab)
    messages = {
        "plain": ([ALICE], compose("plain-1", ALICE, "plain ASCII", "Hello Alice.\r\nSecond line.\r\n")),
        "two": ([ALICE, BOB], compose("two-1", f"{ALICE}, {BOB}", "for two", "One copy each.\r\n")),
        "8bit": ([CAROL], compose("8bit-1", CAROL, "Grüße, 8-bit", EIGHT_BIT_BODY)),
    }
    async with serve_dns(ZONE) as (dns, dns_port):
        async with serving(tmp_path, mx_delivery(mx_lab, dns_port, certificates)) as daemon:
            ids = {name: await daemon.submit(rcpts, content) for name, (rcpts, content) in messages.items()}
            results = {name: await daemon.deliveries(ids[name]) for name in messages}
            stored = {name: await daemon.stored(ids[name]) for name in messages}
        assert (DOMAIN, "MX") in dns.queries and (MX_NAME, "A") in dns.queries

    for name, (recipients, submitted) in messages.items():
        # postroom kept the client's bytes, under its own Received field only.
        assert stored[name].endswith(submitted)
        assert stored[name].startswith(b"Received: ") and b"(postroom)" in stored[name][: -len(submitted)]
        assert set(results[name]) == set(recipients)
        for recipient in recipients:
            delivery = results[name][recipient]
            assert delivery["state"] == "delivered", delivery
            postfix_id = postfix_queue_id(delivery["last_reply"])
            attempt = last_attempt(delivery)
            assert (attempt["mx"], attempt["ip"], attempt["port"]) == (MX_NAME, "127.0.0.1", mx_lab.listen_port)
            assert TLS_PROTOCOL.fullmatch(attempt["tls"]), attempt

            copy = await stored_copy(mx_lab, recipient, name + "-1")
            fields, rest = postfix_fields(copy)
            # Byte for byte what postroom stored; Postfix keeps lines with LF rather than CRLF.
            assert rest == stored[name].replace(b"\r\n", b"\n")
            assert [n for n, _ in fields] == ["Return-Path", "X-Original-To", "Delivered-To", "Received"]
            assert field_value(fields, "Return-Path") == f"<{SENDER}>"
            assert field_value(fields, "Delivered-To") == recipient
            received = field_value(fields, "Received")
            assert received.startswith(f"from {EHLO_NAME} (unknown [127.0.0.1]) (using TLSv1."), received
            # The copy Postfix stored is the one whose queue id postroom recorded from the 250.
            assert f"(Postfix) with ESMTPS id {postfix_id}" in received
        # One SMTP transaction per message: every recipient got Postfix's reply to the same DATA.
        assert len({results[name][r]["last_reply"] for r in recipients}) == 1

    log = mx_lab.log_lines()[since:]
    assert any(re.search(r"TLS connection established from unknown\[127\.0\.0\.1\]: TLSv1\.[23] ", line)
               for line in log), "\n".join(log)  # fmt: skip
    assert set(client_lines(mx_lab, since, "EHLO")) == {f"EHLO {EHLO_NAME}"}
    assert client_lines(mx_lab, since, "STARTTLS"), "postroom never sent STARTTLS"
    # postroom's SIGTERM drain closed its pooled sessions with QUIT, and Postfix had nothing to say.
    ended = await disconnects(mx_lab, since)
    assert ended and all(" quit=1 " in line for line in ended), "\n".join(ended)
    assert all("starttls=1" in line for line in ended if " mail=" in line), "\n".join(ended)
    assert problems(mx_lab, since) == []


async def test_postfix_mx_refuses_an_unknown_user_and_postroom_bounces_it_with_that_reply(
    tmp_path: Path, mx_lab: PostfixLab, certificates: Certificates
) -> None:
    since = await log_mark(mx_lab)
    content = compose("unknown-1", f"{ALICE}, {UNKNOWN}", "one known, one not", "Hello.\r\n")
    async with serve_dns(ZONE) as (_, dns_port):
        async with serving(tmp_path, mx_delivery(mx_lab, dns_port, certificates)) as daemon:
            message_id = await daemon.submit([ALICE, UNKNOWN], content)
            results = await daemon.deliveries(message_id)
            shown = await asyncio.to_thread(daemon.cli, "queue", "show", message_id)

    refusal = f"550 5.1.1 <{UNKNOWN}>: Recipient address rejected: User unknown in virtual mailbox table"
    assert results[UNKNOWN]["state"] == "bounced" and results[UNKNOWN]["attempts"] == 1
    assert results[UNKNOWN]["last_reply"] == refusal
    assert last_attempt(results[UNKNOWN])["status"] == "5.1.1"
    assert results[ALICE]["state"] == "delivered"
    assert f"{UNKNOWN}: bounced, 1 attempt(s)" in shown.stdout
    assert f"via {MX_NAME} [127.0.0.1]:{mx_lab.listen_port} TLSv1." in shown.stdout
    assert refusal in shown.stdout

    # Postfix refused that RCPT and stored the message for Alice only.
    copy = await stored_copy(mx_lab, ALICE, "unknown-1")
    assert f"for <{ALICE}>" in field_value(postfix_fields(copy)[0], "Received")
    assert any(f"reject: RCPT from unknown[127.0.0.1]: {refusal}" in line for line in mx_lab.log_lines()[since:])


async def test_postfix_mx_with_tls_verify_checks_the_certificate_name_and_never_falls_back(
    tmp_path: Path, mx_lab: PostfixLab, certificates: Certificates
) -> None:
    since = await log_mark(mx_lab)
    async with serve_dns(ZONE) as (_, dns_port):
        async with serving(tmp_path, mx_delivery(mx_lab, dns_port, certificates)) as daemon:
            good = await daemon.submit([VERA], compose("verify-1", VERA, "verified", "Hi Vera.\r\n"))
            bad = await daemon.submit([MONA], compose("verify-2", MONA, "not verified", "Hi Mona.\r\n"))
            verified = await daemon.deliveries(good)
            refused = await daemon.deliveries(bad, done=lambda d: d["attempts"] >= 1)

    assert verified[VERA]["state"] == "delivered"
    assert TLS_PROTOCOL.fullmatch(last_attempt(verified[VERA])["tls"])
    copy = await stored_copy(mx_lab, VERA, "verify-1")
    assert "with ESMTPS" in field_value(postfix_fields(copy)[0], "Received")

    # mx-elsewhere.interop.test is not in Postfix's certificate: deferred, not sent in clear.
    assert refused[MONA]["state"] == "deferred", refused
    assert "certificate" in refused[MONA]["last_reply"].lower(), refused[MONA]["last_reply"]
    ended = await disconnects(mx_lab, since)  # every line of this test is logged by now
    assert any("starttls=0/1" in line for line in ended), "\n".join(ended)  # the refused handshake
    assert all("starttls=1" in line for line in ended if " mail=" in line), "\n".join(ended)
    assert not [line for line in client_lines(mx_lab, since, "RCPT") if MONA in line]
    assert copies(mx_lab, MONA, "verify-2") == []


async def test_postfix_mx_first_message_on_a_tls_session_declares_8bitmime_and_smtputf8(
    tmp_path: Path, mx_lab: PostfixLab, certificates: Certificates
) -> None:
    since = await log_mark(mx_lab)
    content = compose("utf8-1", JUERGEN, "Grüße", EIGHT_BIT_BODY)
    async with serve_dns(ZONE) as (_, dns_port):
        async with serving(tmp_path, mx_delivery(mx_lab, dns_port, certificates)) as daemon:
            message_id = await daemon.submit([JUERGEN], content)
            results = await daemon.deliveries(message_id)

    # Postfix offers SMTPUTF8 and 8BITMIME, after STARTTLS too.
    assert results[JUERGEN]["state"] == "delivered", results[JUERGEN]["last_reply"]
    # RFC 3207 §4.2: after STARTTLS the client must EHLO again and use only what that EHLO says.
    assert client_lines(mx_lab, since, "EHLO") == [f"EHLO {EHLO_NAME}"] * 2
    [mail_from] = client_lines(mx_lab, since, "MAIL FROM")
    assert {"BODY=8BITMIME", "SMTPUTF8"} <= set(mail_from.split()[1:]), mail_from
    assert any(option.startswith("SIZE=") for option in mail_from.split()[1:]), mail_from


# -- Postfix as the smarthost ----------------------------------------------------------------------


async def test_postfix_smarthost_with_required_verified_starttls_relays_unchanged_to_a_sink(
    tmp_path: Path, certificates: Certificates
) -> None:
    messages = {
        # Two recipients at one domain: postroom makes one transaction per recipient domain, even
        # through a smarthost, so recipients at two domains would arrive as two copies.
        "relay-1": (["x@example.com", "y@example.com"], compose("relay-1", "x@example.com", "relayed", "Hi.\r\n")),
        "relay-2": (["z@example.org"], compose("relay-2", "z@example.org", "Grüße, relayed", EIGHT_BIT_BODY)),
    }
    handler = SinkHandler()
    async with smtp_sink(handler) as (_, sink_port):
        # level "encrypt": this Postfix answers MAIL without STARTTLS with 530 5.7.0.
        tls = ServerTls(str(certificates.chain), str(certificates.key), level="encrypt")
        with postfix("relay", f"127.0.0.1:{sink_port}", tls=tls) as relay:
            smarthost = f"""mode = "smarthost"
smarthost = "127.0.0.1:{relay.listen_port}"
smarthost_tls = "required"
smarthost_verify = true
smarthost_ca = "{certificates.ca}"
"""
            async with serving(tmp_path, smarthost) as daemon:
                ids = {name: await daemon.submit(rcpts, content) for name, (rcpts, content) in messages.items()}
                results = {name: await daemon.deliveries(ids[name]) for name in messages}
                stored = {name: await daemon.stored(ids[name]) for name in messages}
            await wait_until(lambda: len(handler.messages) >= len(messages), 20, what="Postfix relaying to the sink")
            relay_problems = problems(relay, 0)
            relay_log = relay.log_lines()

    for name, (recipients, submitted) in messages.items():
        assert stored[name].endswith(submitted)
        for recipient in recipients:
            delivery = results[name][recipient]
            assert delivery["state"] == "delivered", delivery
            postfix_queue_id(delivery["last_reply"])
            attempt = last_attempt(delivery)
            assert (attempt["mx"], attempt["port"]) == ("127.0.0.1", relay.listen_port)
            assert TLS_PROTOCOL.fullmatch(attempt["tls"]), attempt
        [arrived] = [m for m in handler.messages if f"\r\nX-Test-Token: {name}\r\n".encode() in m.content]
        assert arrived.mail_from == SENDER
        assert sorted(arrived.recipients) == sorted(recipients)
        fields, rest = postfix_fields(arrived.content)
        assert rest == stored[name]  # on the wire again: CRLF, byte for byte
        assert [n for n, _ in fields] == ["Received"]
        received = field_value(fields, "Received")
        assert received.startswith(f"from {EHLO_NAME} (unknown [127.0.0.1]) (using TLSv1."), received
        assert "(Postfix) with ESMTPS id" in received
    assert any("TLS connection established from unknown[127.0.0.1]" in line for line in relay_log)
    assert relay_problems == []
