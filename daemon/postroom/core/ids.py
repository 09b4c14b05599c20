"""Identifiers: time-ordered, URL-safe message ids (like a Postfix queue id, but unique forever)."""

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U


def _base32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_message_id(now: float | None = None) -> str:
    """A 26-character ULID: 48 bits of milliseconds, then 80 random bits; sorts by creation time."""
    millis = int((time.time() if now is None else now) * 1000)
    return _base32(millis, 10) + _base32(int.from_bytes(os.urandom(10), "big"), 16)
