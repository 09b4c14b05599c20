"""Verifiers no one here wrote check the signatures of mail the daemon sent: the npm package mailauth
(RSA and Ed25519) and Perl's Mail::DKIM (Debian's build checks RSA only).

The daemon runs once per module, in-process with capture delivery; every message is sent through
it (HTTP API or SMTP submission) and read back from the outbox exactly as it would go on the wire.
mailauth reads the DKIM TXT records from its `--dns-cache` file; Mail::DKIM asks a local DNS server
over UDP. Copies with the body or a signed header changed must fail, so that neither a verifier that
passes everything nor one that checks only the body hash can make these tests pass.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest

from tests.conftest import running
from tests.dns_server import serve_dns
from tests.integration.test_dkim_signing import DOMAIN, prepare, settings_for
from tests.support import token_of, wait_until

pytestmark = pytest.mark.interop

HERE = Path(__file__).resolve().parent
MAILAUTH = HERE / "node" / "node_modules" / ".bin" / "mailauth"
PERL_VERIFIER = HERE / "dkim_verify.pl"
SELECTORS = {"r1": "rsa-sha256", "e1": "ed25519-sha256"}

_WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()
LONG_ASCII_SUBJECT = "Quarterly statement " + " ".join(_WORDS[i % len(_WORDS)] for i in range(40))
LONG_UTF8_SUBJECT = "Ünïcödé Grüße " + " ".join(f"Köln-{i} naïve café" for i in range(14))
LONG_REFERENCES = " ".join(f"<thread-{i:03d}.{'x' * 20}@mail.{DOMAIN}>" for i in range(8))
LONG_X_HEADER = "; ".join(f"segment{i}={'v' * 18}" for i in range(12))
assert min(map(len, (LONG_ASCII_SUBJECT, LONG_UTF8_SUBJECT, LONG_REFERENCES, LONG_X_HEADER))) > 200

EIGHT_BIT_BODY = (
    "Grüße aus Köln, naïve café, 日本語のテキスト, emoji 🙂.\r\n"
    "trailing spaces and a tab after this   \t\r\n"
    "inner   runs  of\t\tspaces\r\n"
    "\r\n"
    "Æ Ø Å — last line\r\n"
    "\r\n\r\n"
)


def _need(condition: bool, reason: str) -> None:
    """Skip without the tool; in CI, where .ci/run installs it, its absence is a failure."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI must run this test (.ci/run installs it)")
        pytest.skip(reason)


def _perl_has_mail_dkim() -> bool:
    if shutil.which("perl") is None:
        return False
    probe = ["perl", "-MMail::DKIM::Verifier", "-MNet::DNS", "-e", "1"]
    return subprocess.run(probe, capture_output=True, timeout=60).returncode == 0


@pytest.fixture(scope="module")
def need_mailauth() -> None:
    _need(shutil.which("node") is not None, "node is not installed")
    _need(MAILAUTH.exists(), "mailauth is not installed (npm ci --prefix tests/interop/node)")


@pytest.fixture(scope="module")
def need_mail_dkim() -> None:
    _need(_perl_has_mail_dkim(), "Perl Mail::DKIM is not installed (apt-get install libmail-dkim-perl)")


# -- the messages -------------------------------------------------------------------------------


def smtp_8bit_body() -> bytes:
    """8-bit UTF-8 body (Content-Transfer-Encoding: 8bit), with the whitespace relaxed body
    canonicalization rewrites: trailing blanks, inner runs, trailing empty lines."""
    head = (f"From: App <app@{DOMAIN}>\r\nTo: x@example.com\r\nSubject: 8-bit body\r\n"
            f"Date: Tue, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <8bit.1@{DOMAIN}>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\nX-Test-Token: smtp-8bit-body\r\n\r\n")  # fmt: skip
    return head.encode() + EIGHT_BIT_BODY.encode()


def smtp_utf8_headers() -> bytes:
    """RFC 6532 raw UTF-8 in signed headers (From display name, Subject), sent with SMTPUTF8."""
    head = (f"From: Zoë Ünïcode <app@{DOMAIN}>\r\nTo: Jürgen <x@example.com>\r\n"
            "Subject: Grüße aus Köln — 日本語\r\n"
            f"Date: Tue, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <utf8.1@{DOMAIN}>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\nX-Test-Token: smtp-utf8-headers\r\n\r\n")  # fmt: skip
    return head.encode() + EIGHT_BIT_BODY.encode()


def smtp_long_headers() -> bytes:
    """Long signed headers as a client folds them (tab and space continuations, extra blanks
    around the colon and inside the value) and one long line left unfolded."""
    first, second = LONG_ASCII_SUBJECT.index(" ", 80), LONG_ASCII_SUBJECT.index(" ", 160)
    folded_subject = (LONG_ASCII_SUBJECT[:first] + " \r\n\t" + LONG_ASCII_SUBJECT[first + 1 : second]
                      + "\r\n   " + LONG_ASCII_SUBJECT[second:])  # fmt: skip
    folded_references = LONG_REFERENCES.replace("> <", ">\r\n <")
    unfolded_to = ", ".join(f"Recipient Number {i} <r{i}@example.com>" for i in range(8))
    assert len(unfolded_to) > 200
    head = (f"From: App <app@{DOMAIN}>\r\n"
            f"To: {unfolded_to}\r\n"
            f"Subject:   {folded_subject}  \r\n"
            f"Date: Tue, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <long.1@{DOMAIN}>\r\n"
            f"References: {folded_references}\r\n"
            f"X-Long-Header: {LONG_X_HEADER}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n"
            "X-Test-Token: smtp-long-headers\r\n\r\n"
            "Long headers above.\r\n")  # fmt: skip
    return head.encode()


def smtp_attachments() -> bytes:
    """text + html alternatives and two attachments, one binary, built by the stdlib client side."""
    message = EmailMessage()
    message["From"] = f"App <app@{DOMAIN}>"
    message["To"] = "x@example.com"
    message["Subject"] = "Attachments over SMTP"
    message["Message-ID"] = f"<attach.1@{DOMAIN}>"
    message["X-Test-Token"] = "smtp-attachments"
    message.set_content("See the attached files.\n")
    message.add_alternative("<p>See the <b>attached</b> files.</p>\n", subtype="html")
    message.add_attachment(bytes(range(256)) * 12, maintype="application", subtype="octet-stream",
                           filename="blob.bin")  # fmt: skip
    message.add_attachment("name,city\nZoë,Köln\n", subtype="csv", filename="people.csv")
    return message.as_bytes(policy=SMTP)


def smtp_ascii() -> bytes:
    return (f"From: app@{DOMAIN}\r\nTo: x@example.com\r\nSubject: plain\r\n"
            f"Message-ID: <ascii.1@{DOMAIN}>\r\nX-Test-Token: smtp-ascii\r\n\r\n"
            "Just ASCII.\r\n").encode()  # fmt: skip


SMTP_MESSAGES: dict[str, tuple[Callable[[], bytes], list[str]]] = {
    "smtp-8bit-body": (smtp_8bit_body, ["BODY=8BITMIME"]),
    "smtp-utf8-headers": (smtp_utf8_headers, ["BODY=8BITMIME", "SMTPUTF8"]),
    "smtp-long-headers": (smtp_long_headers, []),
    "smtp-attachments": (smtp_attachments, []),
    "smtp-ascii": (smtp_ascii, []),
}

API_MESSAGES: dict[str, dict[str, Any]] = {
    "api-long-headers": {
        "subject": LONG_UTF8_SUBJECT,
        "text": "Long headers above.\n",
        "headers": {"References": LONG_REFERENCES, "X-Long-Header": LONG_X_HEADER},
    },
    "api-attachments": {
        "subject": "Attachments over HTTP",
        "text": "Héllo, see the attached files.\n" * 3,
        "html": "<p>Héllo, see the <b>attached</b> files.</p>",
        "attachments": [
            {"filename": "blob.bin", "content": base64.b64encode(bytes(range(256)) * 12).decode()},
            {"filename": "report.csv", "content_type": "text/csv",
             "content": base64.b64encode("name,city\nZoë,Köln\n".encode()).decode()},
        ],  # fmt: skip
    },
    "api-ascii": {"subject": "plain", "text": "Just ASCII.\n"},
}

MESSAGE_NAMES = [*SMTP_MESSAGES, *API_MESSAGES]


async def send_all(tmp_path: Path) -> tuple[dict[str, bytes], dict[str, str]]:
    """Run the daemon, send every message, return {name: the captured bytes} and the DNS records."""
    settings = settings_for(tmp_path)
    records, token = await prepare(settings)
    outbox = Path(settings.delivery.capture_dir)
    async with running(settings) as d, aiohttp.ClientSession() as http:
        for name, fields in API_MESSAGES.items():
            body = {"from": f"Shop <shop@{DOMAIN}>", "to": "x@example.com", **fields}
            body["headers"] = {**body.get("headers", {}), "X-Test-Token": name}
            async with http.post(f"{d.http}/v1/messages", json=body,
                                 headers={"Authorization": f"Bearer {token}"}) as response:  # fmt: skip
                assert response.status == 202, await response.text()
        smtp = aiosmtplib.SMTP(hostname=d.submission[0], port=d.submission[1], start_tls=False)
        await smtp.connect()
        for build, options in SMTP_MESSAGES.values():
            await smtp.sendmail(f"app@{DOMAIN}", ["x@example.com"], build(), mail_options=options)
        await smtp.quit()
        await wait_until(lambda: len(list(outbox.glob("*.eml"))) == len(MESSAGE_NAMES), 30,
                         what="every message in the outbox")  # fmt: skip
    captured = {}
    for path in outbox.glob("*.eml"):
        content = path.read_bytes()
        name = token_of(content)
        assert name in MESSAGE_NAMES, path
        captured[name] = content
    return captured, records


@dataclass(frozen=True)
class Sent:
    """The captured messages as files, each with damaged twins, and the DKIM DNS records."""

    directory: Path
    records: dict[str, str]  # {name: TXT value}
    mailauth_dns: Path  # the records in mailauth's --dns-cache format

    def message(self, name: str, damage: str | None = None) -> Path:
        return self.directory / (f"{name}.{damage}.eml" if damage else f"{name}.eml")


# What each damaged copy changes: the body (the body hash breaks) or a signed header (the
# signature over the header hash breaks while the body hash still matches).
DAMAGE = {
    "body": lambda head, body: (head, b"Tampered in transit.\r\n" + body),
    "subject": lambda head, body: (head.replace(b"\r\nSubject:", b"\r\nSubject: [changed]", 1), body),
}


@pytest.fixture(scope="module")
def sent(tmp_path_factory: pytest.TempPathFactory) -> Sent:
    directory = tmp_path_factory.mktemp("dkim-interop")
    captured, records = asyncio.run(send_all(directory / "daemon"))
    assert records.keys() == {f"{s}._domainkey.{DOMAIN}" for s in SELECTORS}
    for name, content in captured.items():
        head, body = content.split(b"\r\n\r\n", 1)
        assert head.count(b"DKIM-Signature:") == 2 and head.count(b"\r\nSubject:") == 1, name
        (directory / f"{name}.eml").write_bytes(content)
        for damage, change in DAMAGE.items():
            (directory / f"{name}.{damage}.eml").write_bytes(b"\r\n\r\n".join(change(head, body)))
    dns = directory / "mailauth-dns.json"
    # Node's resolveTxt format, which the cache stands in for: per record, its character-strings.
    dns.write_text(json.dumps({name: {"TXT": [txt_strings(value)]} for name, value in records.items()}))
    return Sent(directory, records, dns)


def test_the_messages_carry_what_the_verifiers_are_meant_to_see(sent: Sent) -> None:
    """The cases above are only covered if the daemon sends them on as built: 8-bit bytes under
    Content-Transfer-Encoding: 8bit, header lines past 200 characters, folded signed headers."""
    eight_bit = sent.message("smtp-8bit-body").read_bytes()
    assert EIGHT_BIT_BODY.encode() in eight_bit and b"\r\nContent-Transfer-Encoding: 8bit\r\n" in eight_bit
    assert "Grüße aus Köln".encode() in sent.message("smtp-utf8-headers").read_bytes().split(b"\r\n\r\n")[0]
    for name in ("smtp-long-headers", "api-long-headers"):
        head = sent.message(name).read_bytes().split(b"\r\n\r\n")[0]
        subject = head[head.index(b"\r\nSubject:") + 2 :].split(b"\r\n")
        assert subject[1][:1] in (b" ", b"\t"), subject[:2]  # folded
        assert any(line.startswith(b" <thread-") for line in head.split(b"\r\n"))  # References, folded
        signed = re.search(rb"[; ]h=([^;]+);", head)
        assert signed and b"references" in re.sub(rb"\s", b"", signed.group(1)).split(b":")  # and signed
    assert max(map(len, sent.message("smtp-long-headers").read_bytes().split(b"\r\n"))) > 200
    attachments = sent.message("api-attachments").read_bytes()
    assert attachments.count(b"Content-Disposition: attachment") == 2
    assert base64.b64encode(bytes(range(256)) * 12)[:76] in attachments


def txt_strings(value: str) -> list[str]:
    """A TXT record's character-strings as DNS carries them: at most 255 octets each (RFC 1035
    §3.3), so the RSA-2048 key spans two; verifiers concatenate them (RFC 6376 §3.6.2.2)."""
    return [value[i : i + 255] for i in range(0, len(value), 255)]


# -- mailauth --------------------------------------------------------------------------------------


def mailauth_dkim(message: Path, dns: Path) -> dict[str, dict[str, Any]]:
    """{selector: result entry} from `mailauth report`; the entry's status.result is pass/fail/..."""
    result = subprocess.run(
        [str(MAILAUTH), "report", "--dns-cache", str(dns), "--mta", "mx.test", str(message)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    entries = report["dkim"]["results"]
    by_selector = {entry["selector"]: entry for entry in entries}
    assert len(by_selector) == len(entries) == 2, json.dumps(entries, indent=2)
    return by_selector


@pytest.mark.parametrize("name", MESSAGE_NAMES)
def test_mailauth_passes_rsa_and_ed25519(name: str, need_mailauth: None, sent: Sent) -> None:
    results = mailauth_dkim(sent.message(name), sent.mailauth_dns)
    for selector, algorithm in SELECTORS.items():
        entry = results[selector]
        assert (entry["signingDomain"], entry["algo"]) == (DOMAIN, algorithm), entry
        assert entry["status"]["result"] == "pass", json.dumps(entry, indent=2)


# mailauth reports a body hash mismatch as "neutral" (not "fail"), with this comment.
MAILAUTH_DAMAGED = {"body": ("neutral", "body hash did not verify"), "subject": ("fail", "bad signature")}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("name", MESSAGE_NAMES)
def test_mailauth_fails_both_on_a_changed_message(name: str, damage: str, need_mailauth: None,
                                                  sent: Sent) -> None:  # fmt: skip
    results = mailauth_dkim(sent.message(name, damage), sent.mailauth_dns)
    for selector in SELECTORS:
        status = results[selector]["status"]
        assert (status["result"], status.get("comment")) == MAILAUTH_DAMAGED[damage], status


# -- Mail::DKIM ------------------------------------------------------------------------------------


Verdict = tuple[str, ...]


async def mail_dkim(message: Path, records: dict[str, str]) -> tuple[dict[str, Verdict], Verdict]:
    """({selector: (algorithm, domain, result, detail)}, (overall result, detail)), with the keys
    served by a local DNS server that must have been asked for the RSA key only."""
    async with serve_dns({(name, "TXT"): [value] for name, value in records.items()}) as (server, port):
        process = await asyncio.create_subprocess_exec(
            "perl", str(PERL_VERIFIER), f"127.0.0.1:{port}", str(message),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    output = stdout.decode() + stderr.decode()
    assert process.returncode == 0, output
    signatures: dict[str, Verdict] = {}
    overall: Verdict | None = None
    for line in stdout.decode().splitlines():
        kind, *fields = line.split("\t")
        if kind == "signature":
            algorithm, domain, selector, verdict, detail = fields
            signatures[selector] = (algorithm, domain, verdict, detail)
        elif kind == "overall":
            overall = tuple(fields)
    assert overall is not None and len(signatures) == 2, output
    # Mail::DKIM rejects the Ed25519 signature before looking up its key.
    assert server.queries == [(f"r1._domainkey.{DOMAIN}", "TXT")], server.queries
    return signatures, overall


# Debian's Mail::DKIM 1.20230212 has no Ed25519 (its Signature.pm knows rsa-sha1 and rsa-sha256
# only): it reports that signature invalid, which must not spoil the overall result (RFC 6376 §6.1:
# a verifier that cannot check a signature ignores it).
MAIL_DKIM_ED25519 = ("ed25519-sha256", DOMAIN, "invalid", "invalid (unsupported algorithm ed25519-sha256)")


@pytest.mark.parametrize("name", MESSAGE_NAMES)
async def test_mail_dkim_passes_rsa(name: str, need_mail_dkim: None, sent: Sent) -> None:
    signatures, overall = await mail_dkim(sent.message(name), sent.records)
    assert signatures["r1"] == ("rsa-sha256", DOMAIN, "pass", "pass")
    assert signatures["e1"] == MAIL_DKIM_ED25519
    assert overall == ("pass", "pass")


MAIL_DKIM_DAMAGED = {"body": "fail (body has been altered)", "subject": "fail (message has been altered)"}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("name", MESSAGE_NAMES)
async def test_mail_dkim_fails_rsa_on_a_changed_message(name: str, damage: str, need_mail_dkim: None,
                                                        sent: Sent) -> None:  # fmt: skip
    signatures, overall = await mail_dkim(sent.message(name, damage), sent.records)
    assert signatures["r1"] == ("rsa-sha256", DOMAIN, "fail", MAIL_DKIM_DAMAGED[damage])
    assert signatures["e1"] == MAIL_DKIM_ED25519
    assert overall == ("fail", MAIL_DKIM_DAMAGED[damage])
