"""Making and checking secrets: API keys and SMTP passwords. Pure functions, no storage.

API keys are 32 random bytes, so a plain SHA-256 of the secret part is enough to store (as GitHub
does with its tokens): there is nothing to brute-force. Passwords may be chosen by people, so they
are hashed with scrypt (RFC 7914) at the interactive-login cost recommended by OWASP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

API_KEY_PREFIX = "pr"
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


@dataclass(frozen=True)
class NewApiKey:
    id: str  # public part, stored in clear and shown in listings
    token: str  # the whole key, shown once
    secret_hash: str


def new_api_key() -> NewApiKey:
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewApiKey(key_id, f"{API_KEY_PREFIX}_{key_id}_{secret}", hash_api_secret(secret))


def split_api_key(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def hash_api_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def api_secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_api_secret(secret), stored_hash)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, salt: bytes | None = None) -> str:
    """`$scrypt$ln=14,r=8,p=1$<salt>$<hash>`, the passlib/PHC layout."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"$scrypt$ln=14,r={_SCRYPT_R},p={_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def password_matches(password: str, stored: str) -> bool:
    try:
        _, scheme, params, salt, digest = stored.split("$")
        fields = dict(item.split("=") for item in params.split(","))
        n, r, p = 2 ** int(fields["ln"]), int(fields["r"]), int(fields["p"])
    except (ValueError, KeyError):
        return False
    if scheme != "scrypt":
        return False
    expected = _unb64(digest)
    actual = hashlib.scrypt(
        password.encode(), salt=_unb64(salt), n=n, r=r, p=p, dklen=len(expected)
    )
    return hmac.compare_digest(actual, expected)


def new_password() -> str:
    return secrets.token_urlsafe(18)
