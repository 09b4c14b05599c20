"""`postroom init`: writes a configuration, a self-signed certificate and the first credentials.

`--dev` makes a local quickstart in one directory: loopback ports 2587 / 2525 / 8025, SQLite, capture
delivery into an outbox folder, 127.0.0.1 trusted. Its credentials are kept in `quickstart.json`
(mode 0600) so `make run` can print them again; a production `init` prints them once only.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.config import Settings
from postroom.core.errors import NotFoundError
from postroom.core.secrets import new_password
from postroom.dkim.management import create_selector
from postroom.store import schema
from postroom.store.credentials import Role, SqlApiKeys, SqlSmtpUsers
from postroom.store.dkim_keys import SqlDkimKeys

QUICKSTART_DOMAIN = "postroom.test"
QUICKSTART_FILE = "quickstart.json"
VERP_KEY_FILE = "verp-keys"


@dataclass(frozen=True)
class InitResult:
    config: str
    api_key: str
    smtp_user: str
    smtp_password: str
    domain: str
    http: str
    submission: str
    mx: str


def write_private(path: Path, data: bytes) -> None:
    """Create a file only its owner can read (keys, credentials)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def self_signed_certificate(hostname: str, cert_path: Path, key_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def dev_config(directory: Path) -> str:
    d = directory.resolve()
    return f"""# postroom quickstart configuration (postroom init --dev). Not for production:
# see config/postroom.example.toml for every key.
state_dir = {_toml_string(str(d))}

[database]
url = {_toml_string(f"sqlite+aiosqlite:///{d / 'postroom.db'}")}

[smtp]
hostname = "localhost"
submission_listen = "127.0.0.1:2587"
mx_listen = "127.0.0.1:2525"
tls_cert = {_toml_string(str(d / 'tls' / 'cert.pem'))}
tls_key = {_toml_string(str(d / 'tls' / 'key.pem'))}
# Like Postfix's mynetworks: these clients may submit without AUTH (load tools, local apps).
trusted_networks = ["127.0.0.1/32"]

[delivery]
# Nothing leaves this machine: every message is written to the outbox as it would be sent.
mode = "capture"
capture_dir = {_toml_string(str(d / 'outbox'))}

[log]
format = "text"

[http]
listen = "127.0.0.1:8025"
# One-click unsubscribe links in non-transactional mail point here (/u/<token>).
public_url = "http://127.0.0.1:8025"

[bounces]
# Signs the VERP return paths (bounces+<token>@{QUICKSTART_DOMAIN}, received by the MX on 2525)
# and the unsubscribe links. One key per line; the first signs.
verp_keys_file = {_toml_string(str(d / VERP_KEY_FILE))}

[[domains]]
name = "{QUICKSTART_DOMAIN}"
"""


def ensure_verp_key(directory: Path) -> None:
    """A fresh VERP signing key for the quickstart, unless it has one (tokens stay valid)."""
    path = directory / VERP_KEY_FILE
    if not path.exists():
        write_private(path, (os.urandom(32).hex() + "\n").encode())


def save_quickstart(directory: Path, result: InitResult) -> None:
    write_private(directory / QUICKSTART_FILE, json.dumps(asdict(result), indent=2).encode())


def load_quickstart(directory: Path) -> InitResult | None:
    path = directory / QUICKSTART_FILE
    if not path.exists():
        return None
    return InitResult(**json.loads(path.read_text()))


async def prepare_database(
    engine: AsyncEngine, settings: Settings, config_path: Path, existing: InitResult | None, now: float
) -> InitResult:
    """Migrate, give the quickstart domain its DKIM keys, and make sure the saved credentials
    work; new ones (an admin API key, an SMTP user) when they do not."""
    await schema.upgrade(engine)
    await create_quickstart_keys(engine, settings, now)
    users = SqlSmtpUsers(engine)
    api_keys = SqlApiKeys(engine)
    # Saved credentials are reused only while the database still knows them (it may have been
    # deleted to start afresh); otherwise the quickstart would print a dead key.
    if (
        existing is not None
        and await api_keys.authenticate(existing.api_key) is not None
        and await users.verify(existing.smtp_user, existing.smtp_password)
    ):
        return listening_on(existing, settings)
    _, token = await api_keys.create("quickstart admin", Role.ADMIN, now)
    password = new_password()
    user = f"app@{QUICKSTART_DOMAIN}"
    with contextlib.suppress(NotFoundError):
        await users.remove(user)  # a stale quickstart user gets the new password
    await users.add(user, password, now)
    return listening_on(
        InitResult(str(config_path.resolve()), token, user, password, QUICKSTART_DOMAIN, "", "", ""),
        settings,
    )


def listening_on(result: InitResult, settings: Settings) -> InitResult:
    """The result with the addresses the configuration listens on now (it may have changed)."""
    return InitResult(**{**asdict(result), "http": settings.http.listen,
                         "submission": settings.smtp.submission_listen,
                         "mx": settings.smtp.mx_listen})  # fmt: skip


async def create_quickstart_keys(engine: AsyncEngine, settings: Settings, now: float) -> None:
    """An RSA-2048 and an Ed25519 key for the quickstart domain, unless it has keys already."""
    keys = SqlDkimKeys(engine)
    if await keys.list(QUICKSTART_DOMAIN):
        return
    for selector, algorithm in (("quickstart-rsa", "rsa"), ("quickstart-ed", "ed25519")):
        path = Path(settings.dkim_key_dir) / QUICKSTART_DOMAIN / f"{selector}.pem"
        if path.exists():  # the database was deleted to start afresh: keep the key files
            await keys.add(QUICKSTART_DOMAIN, selector, algorithm, str(path), now)
            continue
        await create_selector(keys, Path(settings.dkim_key_dir), QUICKSTART_DOMAIN, selector,
                              algorithm, 2048, now)  # type: ignore[arg-type]  # fmt: skip


def banner(result: InitResult, settings: Settings) -> str:
    """What `make run` prints: where everything listens, the credentials, and how to send."""
    return f"""
postroom quickstart
  config       {result.config}
  HTTP API     http://{result.http}   (API key: {result.api_key})
  submission   {result.submission}    (STARTTLS; AUTH {result.smtp_user} / {result.smtp_password};
                                 127.0.0.1 may also send without AUTH)
  inbound MX   {result.mx}
  outbox       {settings.delivery.capture_dir}   (capture mode: nothing leaves this machine)

Send a message:
  curl -s http://{result.http}/v1/messages -H 'Authorization: Bearer {result.api_key}' \\
    -H 'Content-Type: application/json' \\
    -d '{{"from": "hello@{result.domain}", "to": "you@example.com", "subject": "Hi", "text": "It works."}}'
  swaks --server {result.submission} --tls --auth-user {result.smtp_user} \\
    --auth-password '{result.smtp_password}' --from hello@{result.domain} --to you@example.com

Moving from Loops: the same calls answer under http://{result.http}/api/v1 (the loops SDK takes
  client.apiRoot = "http://{result.http}/api/"); the API is described at http://{result.http}/v1/openapi.json
"""
