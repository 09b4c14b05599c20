"""DKIM-Signature headers: relaxed/relaxed, rsa-sha256 and ed25519-sha256, one header per key.

dkimpy does the message work (header parsing, relaxed canonicalization, the header hash, folding);
`cryptography` does the private-key operation with the key object parsed once at load.

Why not `dkim.DKIM.sign`: in dkimpy 1.1 it has no hook for either part we need. It parses the
`privkey` PEM on every call into a dict of integers for its pure-Python RSA (about 120 RSA-2048
signatures/s), reads `time.time()` for t= (a hidden clock), and `DKIM.gen_header` calls the module
global `RSASSA_PKCS1_v1_5_sign` by name. The ways in were: (1) replace that module global, which is
process-wide state that also changes every other dkimpy user, so no; (2) send RSA through
`gen_header`'s Ed25519 branch, which only calls `pk.sign(digest).signature`, which works but depends
on `gen_header` never checking the a= tag against its own algorithm; (3) subclass `DKIM` and override
`gen_header`, which copies the same lines and inherits per-call mutable instance state. Instead,
`_signature_header` calls dkimpy's module-level building blocks (`rfc822_parse`,
`CanonicalizationPolicy`, `hash_headers`, `fold`, `RE_BTAG`) in the order `DKIM.sign` and
`gen_header` call them, with the same tag list, and hands the SHA-256 digest of the canonical headers
to `cryptography`: RSASSA-PKCS1-v1_5 over a prehashed SHA-256 digest (RFC 8017 §8.2) is exactly what
dkimpy's `RSASSA_PKCS1_v1_5_sign` computes, and Ed25519 signs that digest (RFC 8463 §3), exactly as
dkimpy's `pk.sign(h.digest())` does. Both signature schemes are deterministic, so the output is
byte-identical to stock dkimpy's for the same message, key and time; tests/unit/test_dkim.py checks
that for both algorithms, which is what catches a dkimpy release that changes its tag order or folding.

Safe in worker threads: nothing here keeps state between calls, the key objects are immutable and
OpenSSL signs with a fresh context per call. `Signer` is immutable after construction (to reload
keys, build a new one and swap the reference). Keys from `cryptography` cannot be pickled, so sign
in a thread pool, not a process pool.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from types import MappingProxyType

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim import RE_BTAG, MessageFormatError, fold, hash_headers, rfc822_parse  # type: ignore[import-untyped]
from dkim.canonicalization import CanonicalizationPolicy  # type: ignore[import-untyped]

from postroom.dkim.errors import DkimSigningError
from postroom.dkim.keys import DkimKey

# RFC 6376 §5.4.1 recommends these, where present; List-Unsubscribe-Post is added because RFC 8058
# §4 requires both it and List-Unsubscribe to be covered by a valid DKIM signature for one-click.
SIGNED_HEADERS = frozenset(
    {
        b"from",
        b"to",
        b"cc",
        b"subject",
        b"date",
        b"message-id",
        b"reply-to",
        b"mime-version",
        b"content-type",
        b"in-reply-to",
        b"references",
        b"list-unsubscribe",
        b"list-unsubscribe-post",
    }
)
# Listed once more than present ("oversigned", RFC 6376 §8.15), so that a From added in transit
# breaks the signature instead of being shown to the reader next to the signed one.
OVERSIGNED_HEADERS = (b"from",)

_HEADER_NAME = b"DKIM-Signature"
_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_A_TAG = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}
# Output order, top to bottom: RSA first. Verifiers that follow RFC 6376 §6.1 try every signature,
# so the order is irrelevant to them; verifiers that look only at the topmost one (dkimpy's own
# `dkim.verify` does) are often the old ones without Ed25519 (RFC 8463 dates from 2018), and pass
# on an RSA signature where an Ed25519 one on top would be unverifiable to them.
_ORDER = {"rsa": 0, "ed25519": 1}


def signed_header_names(headers: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    """The h= list: each signable header field present, in message order, lowercased, plus the
    oversigned ones once more."""
    present = [name.lower() for name, _ in headers if name.lower() in SIGNED_HEADERS]
    return present + [name for name in OVERSIGNED_HEADERS if name in present]


def sign_message(message: bytes, keys: Sequence[DkimKey], now: int) -> bytes:
    """`message` with one DKIM-Signature header per key prepended, t= set to `now` (epoch seconds).

    With no keys the message comes back unchanged. The new headers use the message's own line
    ending (CRLF, or LF when its first line ends in a bare LF).
    """
    if not keys:
        return message
    if now < 0:
        raise DkimSigningError(f"signing time {now} is before the epoch")
    try:
        headers, body = rfc822_parse(message)
    except MessageFormatError:
        raise DkimSigningError("the message's header block is malformed") from None
    include = signed_header_names(headers)
    if b"from" not in include:
        raise DkimSigningError("the message has no From header, which DKIM must sign (RFC 6376 §5.4)")
    # Both algorithms hash with SHA-256 and share the canonical form: compute it once per message.
    canonical_headers: list[tuple[bytes, bytes]] = _RELAXED.canonicalize_headers(headers)
    canonical_body: bytes = _RELAXED.canonicalize_body(body)
    body_hash = base64.b64encode(hashlib.sha256(canonical_body).digest())
    linesep = _line_ending(message)
    ordered = sorted(keys, key=lambda key: _ORDER[key.algorithm])
    signatures = [
        _signature_header(key, canonical_headers, include, body_hash, now, linesep) for key in ordered
    ]
    return b"".join(signatures) + message


def _signature_header(
    key: DkimKey,
    canonical_headers: list[tuple[bytes, bytes]],
    include: list[bytes],
    body_hash: bytes,
    now: int,
    linesep: bytes,
) -> bytes:
    """One DKIM-Signature header line, the steps of dkimpy's `DKIM.sign` and `DKIM.gen_header`."""
    domain = key.domain.encode("ascii")
    fields = [
        (b"v", b"1"),
        (b"a", _A_TAG[key.algorithm]),
        (b"c", b"relaxed/relaxed"),
        (b"d", domain),
        (b"i", b"@" + domain),
        (b"q", b"dns/txt"),
        (b"s", key.selector.encode("ascii")),
        (b"t", str(now).encode("ascii")),
        (b"h", b" : ".join(include)),
        (b"bh", body_hash),
        # A placeholder as long as a folded line forces b= onto its own line, so the folding of
        # the other tags is the same before and after the real value goes in.
        (b"b", b"0" * 60),
    ]
    # RFC 6376 §3.7: the signature covers its own header field with an empty b= value, unfolded
    # by the relaxed canonicalization and without its trailing CRLF (which `hash_headers` drops).
    unsigned: bytes = fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(_HEADER_NAME), linesep=b"\r\n")
    unsigned = RE_BTAG.sub(b"\\1", unsigned)
    hasher = hashlib.sha256()
    hash_headers(hasher, _RELAXED, canonical_headers, include, (_HEADER_NAME, b" " + unsigned), None)
    fields[-1] = (b"b", base64.b64encode(_sign_digest(key, hasher.digest())))
    value: bytes = fold(b"; ".join(b"=".join(f) for f in fields) + linesep, namelen=len(_HEADER_NAME), linesep=linesep)
    return _HEADER_NAME + b": " + value


def _sign_digest(key: DkimKey, digest: bytes) -> bytes:
    private_key = key.private_key
    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    return private_key.sign(digest)


def _line_ending(message: bytes) -> bytes:
    end = message.find(b"\n")
    return b"\n" if end > 0 and message[end - 1 : end] != b"\r" else b"\r\n"


class Signer:
    """The loaded keys of each sending domain; `sign` is safe to call from many threads at once."""

    def __init__(self, keys: Iterable[DkimKey]) -> None:
        by_domain: dict[str, list[DkimKey]] = {}
        for key in keys:
            by_domain.setdefault(key.domain, []).append(key)
        self._keys = MappingProxyType({domain: tuple(found) for domain, found in by_domain.items()})

    @property
    def domains(self) -> frozenset[str]:
        return frozenset(self._keys)

    def keys_for(self, domain: str) -> tuple[DkimKey, ...]:
        return self._keys.get(domain.lower(), ())

    def sign(self, message: bytes, domain: str, now: int) -> bytes:
        """`message` signed with every key of `domain`; a domain without keys is an error."""
        keys = self.keys_for(domain)
        if not keys:
            raise DkimSigningError(f"no DKIM key for domain {domain!r}")
        return sign_message(message, keys, now)


async def sign_in_thread(
    executor: Executor | None, signer: Signer, message: bytes, domain: str, now: int
) -> bytes:
    """`signer.sign` run in `executor` (a thread pool; None for the loop's default) so the event
    loop only waits (STYLE rule 9)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, functools.partial(signer.sign, message, domain, now))
