"""The VERP return path: one envelope sender per delivery, `<prefix>+<token>@<bounce domain>`,
whose token names the delivery and is signed so that a bounce cannot be forged onto another one.

The token is 20 bytes in lower-case base32 (32 characters, no padding): the delivery id (8 bytes),
the hour it was issued (4 bytes), and the first 8 bytes of an HMAC-SHA256 over both. Base32 is
case-insensitive, because remote MTAs may fold the local part's case (RFC 5321 §2.4 lets them not,
but some do). Keys rotate: the first key signs, every key verifies. Issue time bounds a token's
life (`verp_max_age`): a return path leaked into a forged bounce stops working after it.

The one-click unsubscribe tokens (RFC 8058) use the same keys with their own domain separation;
they name a message, a recipient and a stream and live in URLs, so they are base64url.

Pure functions of their arguments: no clock, no settings.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

_VERP = b"postroom-verp\0"
_UNSUBSCRIBE = b"postroom-unsubscribe\0"
_MAC_BYTES = 8
_HOUR = 3600.0
_FUTURE_SLACK = 2  # hours a token's issue time may be ahead of our clock (several hosts)


class TokenProblem(enum.StrEnum):
    MALFORMED = "malformed"  # not a token at all
    FORGED = "forged"  # no key signed it
    EXPIRED = "expired"  # signed, but older than the maximum age


@dataclass(frozen=True)
class ReturnPath:
    """A verified VERP address: the delivery it belongs to and when it was issued."""

    delivery_id: int
    issued_at: float


def _mac(key: str, domain: bytes, payload: bytes) -> bytes:
    return hmac.new(key.encode(), domain + payload, hashlib.sha256).digest()


def encode_verp(delivery_id: int, now: float, keys: Sequence[str]) -> str:
    """The token for `delivery_id`, issued `now`, signed with the first key."""
    if not keys:
        raise ValueError("VERP needs at least one key")
    payload = struct.pack(">QI", delivery_id, int(now // _HOUR))
    token = payload + _mac(keys[0], _VERP, payload)[:_MAC_BYTES]
    return base64.b32encode(token).decode().rstrip("=").lower()


def decode_verp(token: str, now: float, keys: Sequence[str], max_age: float) -> ReturnPath | TokenProblem:
    """The delivery a token names, or why it is refused."""
    try:
        raw = base64.b32decode(token.upper() + "=" * (-len(token) % 8))
    except (binascii.Error, ValueError):
        return TokenProblem.MALFORMED
    if len(raw) != 12 + _MAC_BYTES:
        return TokenProblem.MALFORMED
    payload, mac = raw[:12], raw[12:]
    if not any(hmac.compare_digest(_mac(key, _VERP, payload)[:_MAC_BYTES], mac) for key in keys):
        return TokenProblem.FORGED
    delivery_id, hour = struct.unpack(">QI", payload)
    issued_at = hour * _HOUR
    current = int(now // _HOUR)
    if hour > current + _FUTURE_SLACK or now - issued_at > max_age + _HOUR:
        return TokenProblem.EXPIRED
    return ReturnPath(delivery_id, issued_at)


def verp_address(prefix: str, token: str, domain: str) -> str:
    return f"{prefix}+{token}@{domain}"


def verp_token(address: str, prefix: str, domains: frozenset[str]) -> str | None:
    """The token of an address that has the shape of one of our return paths, else None.
    Local part and domain compare case-insensitively."""
    local, at, domain = address.strip().strip("<>").rpartition("@")
    if not at or domain.lower().rstrip(".") not in domains:
        return None
    head, plus, token = local.partition("+")
    if not plus or head.lower() != prefix.lower() or not token:
        return None
    return token


@dataclass(frozen=True)
class Unsubscribe:
    """What a one-click unsubscribe token names."""

    message_id: str
    recipient: str
    stream: str


def encode_unsubscribe(item: Unsubscribe, keys: Sequence[str]) -> str:
    if not keys:
        raise ValueError("unsubscribe links need at least one key")
    payload = json.dumps([item.message_id, item.recipient, item.stream], separators=(",", ":")).encode()
    mac = _mac(keys[0], _UNSUBSCRIBE, payload)[:12]
    return (base64.urlsafe_b64encode(payload).decode().rstrip("=") + "."
            + base64.urlsafe_b64encode(mac).decode().rstrip("="))  # fmt: skip


def decode_unsubscribe(token: str, keys: Sequence[str]) -> Unsubscribe | TokenProblem:
    """Unsubscribe links do not expire: a recipient may use one from an old message (RFC 8058 §3.1
    asks that the link keep working); they are bound to one recipient and stream."""
    body, dot, signature = token.partition(".")
    if not dot or len(token) > 2048:
        return TokenProblem.MALFORMED
    try:
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        mac = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    except (binascii.Error, ValueError):
        return TokenProblem.MALFORMED
    if not any(hmac.compare_digest(_mac(key, _UNSUBSCRIBE, payload)[:12], mac) for key in keys):
        return TokenProblem.FORGED
    try:
        message_id, recipient, stream = json.loads(payload)
    except (ValueError, TypeError):
        return TokenProblem.MALFORMED
    if not all(isinstance(part, str) for part in (message_id, recipient, stream)):
        return TokenProblem.MALFORMED
    return Unsubscribe(message_id, recipient, stream)
