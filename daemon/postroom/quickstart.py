"""`postroom init`: writes a configuration, a self-signed certificate and the first credentials.

`--dev` makes a local quickstart in one directory: loopback ports 2587 / 2525 / 8025, SQLite, capture
delivery into an outbox folder, 127.0.0.1 trusted. Its credentials are kept in `quickstart.json`
(mode 0600) so `make run` can print them again; a production `init` prints them once only.
"""

from __future__ import annotations

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

QUICKSTART_DOMAIN = "postroom.test"
QUICKSTART_FILE = "quickstart.json"


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

[http]
listen = "127.0.0.1:8025"

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

[[domains]]
name = "{QUICKSTART_DOMAIN}"
"""


def save_quickstart(directory: Path, result: InitResult) -> None:
    write_private(directory / QUICKSTART_FILE, json.dumps(asdict(result), indent=2).encode())


def load_quickstart(directory: Path) -> InitResult | None:
    path = directory / QUICKSTART_FILE
    if not path.exists():
        return None
    return InitResult(**json.loads(path.read_text()))
