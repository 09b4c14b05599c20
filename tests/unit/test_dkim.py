"""`dkim`: key files, DNS record text, and signatures that dkimpy itself verifies and reproduces."""

from __future__ import annotations

import base64
import os
import random
import re
import threading
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import dkim
import nacl.encoding
import nacl.signing
import pytest
import time_machine
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.dkim.errors import DkimKeyError, DkimSigningError
from postroom.dkim.keys import (
    DkimKey,
    PrivateKey,
    dns_record_name,
    dns_record_value,
    generate_key,
    load_key,
    split_txt,
    write_private_key,
)
from postroom.dkim.records import (
    MalformedTagList,
    compare_published_key,
    parse_key_record,
    parse_tag_list,
    parse_tag_specs,
)
from postroom.dkim.signing import (
    Signer,
    canonicalize_body_relaxed,
    parse_message,
    sign_in_thread,
    sign_message,
    signed_header_names,
)

NOW = 1_750_000_000
DOMAIN = "example.com"
NO_ENCRYPTION = serialization.NoEncryption()


# -- keys and key files -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    key = generate_key("rsa")
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    key = generate_key("ed25519")
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key


def pkcs8(key: Any, encryption: Any = NO_ENCRYPTION) -> bytes:
    pem: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    return pem


def raw_public(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_der(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def small_rsa_key(bits: int) -> rsa.RSAPrivateKey:
    """An RSA key shorter than cryptography will generate, from two probable primes."""
    rng = random.Random(bits)

    def is_probable_prime(n: int) -> bool:
        d, s = n - 1, 0
        while d % 2 == 0:
            d, s = d // 2, s + 1
        for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
            x = pow(a, d, n)
            if x in (1, n - 1):
                continue
            for _ in range(s - 1):
                x = pow(x, 2, n)
                if x == n - 1:
                    break
            else:
                return False
        return True

    def prime(size: int) -> int:
        while True:
            candidate = rng.getrandbits(size) | (3 << (size - 2)) | 1
            if (candidate - 1) % 65537 and is_probable_prime(candidate):
                return candidate

    p, q = prime(bits // 2), prime(bits // 2)
    d = pow(65537, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(65537, p * q),
    )
    return numbers.private_key()


def assert_no_key_material(error: BaseException, *secrets: bytes) -> None:
    """Neither the message nor the formatted traceback (causes included) shows any 16-character
    piece of the key's base64 text."""
    shown = str(error) + "".join(traceback.format_exception(error))
    for secret in secrets:
        # The base64 lines: not the armour, not the headers of an encrypted PEM (Proc-Type: ...).
        lines = secret.splitlines()
        body = b"".join(line for line in lines if not line.startswith(b"-") and b":" not in line)
        assert body, "nothing to look for"
        for start in range(0, max(len(body) - 16, 1), 8):
            assert body[start : start + 16].decode("ascii") not in shown


@pytest.mark.parametrize("umask", [0o000, 0o277], ids=["umask-000", "umask-277"])
@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_generated_key_is_written_0600_in_0700_dirs_and_loads_back(
    tmp_path: Path, algorithm: Any, umask: int
) -> None:
    key = generate_key(algorithm)
    path = tmp_path / "keys" / "example.com" / "s1.pem"
    old_umask = os.umask(umask)  # the modes must not depend on the umask
    try:
        write_private_key(path, key)
    finally:
        os.umask(old_umask)
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert sorted(os.listdir(path.parent)) == ["s1.pem"]  # no temporary file left behind
    loaded = load_key(path, "Example.COM", "s1")
    assert (loaded.algorithm, loaded.domain, loaded.selector) == (algorithm, DOMAIN, "s1")
    assert loaded.path == path
    assert loaded.weak is False
    assert loaded.bits == (2048 if algorithm == "rsa" else 256)
    assert public_der(loaded.private_key) == public_der(key)
    assert "private_key" not in repr(loaded)


def test_write_refuses_to_overwrite_unless_asked(
    tmp_path: Path, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    path = tmp_path / "s1.pem"
    write_private_key(path, ed_key)
    other = generate_key("ed25519")
    with pytest.raises(DkimKeyError, match="already exists") as caught:
        write_private_key(path, other)
    assert str(path) in str(caught.value)
    assert public_der(load_key(path, DOMAIN, "s1").private_key) == public_der(ed_key)
    write_private_key(path, other, overwrite=True)
    assert public_der(load_key(path, DOMAIN, "s1").private_key) == public_der(other)
    assert os.listdir(tmp_path) == ["s1.pem"]


def test_traditional_rsa_pem_loads(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, NO_ENCRYPTION
    )
    assert pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    (tmp_path / "k.pem").write_bytes(pem)
    loaded = load_key(tmp_path / "k.pem", DOMAIN, "s1")
    assert loaded.algorithm == "rsa"
    assert public_der(loaded.private_key) == public_der(rsa_key)


def test_dkimpy_raw_ed25519_seed_loads(tmp_path: Path) -> None:
    # The format dkimpy's dknewkey writes: base64 of the 32-byte seed, no PEM armour.
    nacl_key = nacl.signing.SigningKey.generate()
    (tmp_path / "k.key").write_bytes(nacl_key.encode(encoder=nacl.encoding.Base64Encoder) + b"\n")
    loaded = load_key(tmp_path / "k.key", DOMAIN, "s1")
    assert loaded.algorithm == "ed25519"
    assert isinstance(loaded.private_key, ed25519.Ed25519PrivateKey)
    assert raw_public(loaded.private_key) == bytes(nacl_key.verify_key)


def test_rsa_1024_loads_flagged_weak(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (tmp_path / "k.pem").write_bytes(pkcs8(key))
    loaded = load_key(tmp_path / "k.pem", DOMAIN, "s1")
    assert (loaded.algorithm, loaded.bits, loaded.weak) == ("rsa", 1024, True)


def test_rsa_shorter_than_1024_is_refused(tmp_path: Path) -> None:
    pem = pkcs8(small_rsa_key(512))
    (tmp_path / "k.pem").write_bytes(pem)
    with pytest.raises(DkimKeyError, match=r"512 bits.*RFC 8301") as caught:
        load_key(tmp_path / "k.pem", DOMAIN, "s1")
    assert str(tmp_path / "k.pem") in str(caught.value)
    assert_no_key_material(caught.value, pem)


def _corrupt(pem: bytes) -> bytes:
    lines = pem.splitlines(keepends=True)
    middle = len(lines) // 2
    lines[middle] = bytes(reversed(lines[middle][:-1])) + b"\n"
    return b"".join(lines)


def _truncate(pem: bytes) -> bytes:
    lines = pem.splitlines(keepends=True)
    return b"".join(lines[: len(lines) // 2] + lines[-1:])


BAD_KEY_FILES: dict[str, tuple[Callable[[rsa.RSAPrivateKey], bytes], str]] = {
    "empty": (lambda k: b"\n", "empty file"),
    "not PEM": (lambda k: b"this is not a key\n", "not a PEM private key"),
    "corrupted body": (lambda k: _corrupt(pkcs8(k)), "corrupted"),
    "truncated": (lambda k: _truncate(pkcs8(k)), "corrupted"),
    "public key": (
        lambda k: k.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "a public key",
    ),
    "EC P-256 PKCS#8": (
        lambda k: pkcs8(ec.generate_private_key(ec.SECP256R1())),
        r"an EC \(secp256r1\) key",
    ),
    "EC P-256 traditional": (
        lambda k: ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, NO_ENCRYPTION
        ),
        "an EC key",
    ),
    "Ed448": (lambda k: pkcs8(ed448.Ed448PrivateKey.generate()), "an Ed448 key"),
    "encrypted PKCS#8": (
        lambda k: pkcs8(k, serialization.BestAvailableEncryption(b"passphrase")),
        "encrypted with a passphrase",
    ),
    "encrypted traditional": (
        lambda k: k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.BestAvailableEncryption(b"passphrase"),
        ),
        "encrypted with a passphrase",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_KEY_FILES))
def test_bad_key_file_is_refused_naming_file_and_reason_without_material(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, case: str
) -> None:
    make, reason = BAD_KEY_FILES[case]
    content = make(rsa_key)
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(DkimKeyError, match=reason) as caught:
        load_key(path, DOMAIN, "s1")
    assert str(caught.value).startswith(f"DKIM key {path}: ")
    if b"-----BEGIN" in content:
        assert_no_key_material(caught.value, content, pkcs8(rsa_key))


def test_missing_file_and_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DkimKeyError, match=f"{tmp_path / 'nope.pem'}: no such file"):
        load_key(tmp_path / "nope.pem", DOMAIN, "s1")
    with pytest.raises(DkimKeyError, match=f"{tmp_path}: is a directory"):
        load_key(tmp_path, DOMAIN, "s1")


def test_unreadable_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(b"")

    def denied(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    # Tests run as root in CI, where chmod 000 would not stop the read.
    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(DkimKeyError, match=f"{path}: permission denied"):
        load_key(path, DOMAIN, "s1")


def test_generate_refuses_bad_parameters() -> None:
    with pytest.raises(DkimKeyError, match="1024-bit RSA key"):
        generate_key("rsa", 1024)
    with pytest.raises(DkimKeyError, match="unknown DKIM key algorithm"):
        generate_key("dsa")  # type: ignore[arg-type]


@pytest.mark.parametrize(("domain", "selector"), [("exa mple.com", "s1"), (DOMAIN, "s;1"), (DOMAIN, "")])
def test_bad_domain_or_selector_is_refused(
    ed_key: ed25519.Ed25519PrivateKey, domain: str, selector: str
) -> None:
    with pytest.raises(DkimKeyError, match="not a"):
        DkimKey(domain, selector, ed_key)


# -- DNS record text ----------------------------------------------------------------------------------


def test_rsa_record_publishes_the_subject_public_key_info(rsa_key: rsa.RSAPrivateKey) -> None:
    value = dns_record_value(rsa_key)
    prefix, p = value.split("p=")
    assert prefix == "v=DKIM1; k=rsa; "
    published = serialization.load_der_public_key(base64.b64decode(p))
    assert isinstance(published, rsa.RSAPublicKey)
    assert published.public_numbers() == rsa_key.public_key().public_numbers()
    assert dns_record_value(rsa_key.public_key()) == value
    pk, bits, ktag, _ = dkim.evaluate_pk(b"s1._domainkey.example.com.", value.encode())
    assert (pk["modulus"], bits, ktag) == (rsa_key.public_key().public_numbers().n, 2048, b"rsa")


def test_ed25519_record_publishes_the_raw_32_byte_key(ed_key: ed25519.Ed25519PrivateKey) -> None:
    value = dns_record_value(ed_key)
    prefix, p = value.split("p=")
    assert prefix == "v=DKIM1; k=ed25519; "
    raw = base64.b64decode(p)
    assert len(raw) == 32  # RFC 8463 §4.2: the bare key, not a SubjectPublicKeyInfo
    assert raw == raw_public(ed_key)
    pk, _, ktag, _ = dkim.evaluate_pk(b"s1._domainkey.example.com.", value.encode())
    assert (bytes(pk), ktag) == (raw, b"ed25519")


def test_split_txt_cuts_into_strings_of_at_most_255_bytes(rsa_key: rsa.RSAPrivateKey) -> None:
    value = dns_record_value(rsa_key)
    parts = split_txt(value)
    assert len(parts) == 2
    assert all(len(part.encode()) <= 255 for part in parts)
    assert "".join(parts) == value
    assert split_txt("x" * 255) == ["x" * 255]
    assert split_txt("x" * 256) == ["x" * 255, "x"]
    assert split_txt("x" * 600) == ["x" * 255, "x" * 255, "x" * 90]
    assert split_txt("") == [""]
    with pytest.raises(ValueError):
        split_txt("p=é")


# -- tag=value lists and published key records -------------------------------------------------------


def test_tag_list_keeps_names_as_written_and_strips_values() -> None:
    assert parse_tag_list(" v=DKIM1; K = rsa ;P=ab=;") == {"v": "DKIM1", "K": "rsa", "P": "ab="}
    # RFC 6376 §3.2: names are case-sensitive, so p= and P= are two tags, not a repeat.
    assert parse_tag_list("p=a; P=b") == {"p": "a", "P": "b"}
    assert parse_tag_list("a=1;;b=2; ;") == {"a": "1", "b": "2"}  # empty specs are skipped
    assert parse_tag_list("") == parse_tag_list("  ") == {}
    assert parse_tag_list("n=é") == {"n": "é"}


def test_tag_list_keeps_folded_whitespace_inside_values() -> None:
    folded = "v=DKIM1; k=rsa;\r\n\tp=MIIBIjAN BgkqhkiG\r\n 9w0BAQEF ;"
    assert parse_tag_list(folded) == {"v": "DKIM1", "k": "rsa", "p": "MIIBIjAN BgkqhkiG\r\n 9w0BAQEF"}
    assert parse_key_record(folded) == ("rsa", "MIIBIjANBgkqhkiG9w0BAQEF")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("just some text", "'just some text' is not a tag=value spec"),
        ("v=DKIM1; k", "'k' is not a tag=value spec"),
        ("v=DKIM1; =rsa", "'=rsa' is not a tag=value spec"),
        ("p=a; p=b", "tag 'p' given twice"),
        ("1p=a", "'1p=a' is not a tag=value spec"),
        ("a-b=1", "'a-b' is not a tag name"),  # dkimpy alone would take these two
        ("p x=1", "'p x' is not a tag name"),
    ],
)
def test_malformed_tag_lists_are_refused_naming_the_part(text: str, reason: str) -> None:
    with pytest.raises(MalformedTagList) as caught:
        parse_tag_list(text)
    assert str(caught.value) == reason
    assert isinstance(caught.value, ValueError)
    # Only our error reaches the caller's traceback, not dkimpy's behind it.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__


def test_tag_specs_skip_what_does_not_parse_and_keep_repeats() -> None:
    record = "v=DMARC1; junk; p=reject;; 1x=2; a-b=3; P = None ; p=quarantine"
    assert parse_tag_specs(record) == [
        ("v", "DMARC1"),
        ("p", "reject"),
        ("P", "None"),
        ("p", "quarantine"),
    ]
    assert parse_tag_specs("nothing here") == []


def test_key_record_gives_type_and_key() -> None:
    assert parse_key_record("p=AB CD") == ("rsa", "ABCD")  # k= defaults to rsa
    assert parse_key_record("v=DKIM1; k=Ed25519; p=AB") == ("ed25519", "AB")
    for no_key in ("v=DKIM1; p=", "v=DKIM1; k=rsa", "v=DKIM1; P=AB"):
        with pytest.raises(ValueError, match="without a public key"):
            parse_key_record(no_key)
    with pytest.raises(MalformedTagList):
        parse_key_record("p=AB; p=AB")


NAME = "s1._domainkey.example.com"
ED_RECORD = "v=DKIM1; k=ed25519; p=ABCD"


@pytest.mark.parametrize(
    ("found", "verdict", "detail"),
    [
        (["v=DKIM1;k=ed25519;p=AB CD"], "ok", "key matches"),
        (["p=AB\r\n CD; k=ED25519"], "ok", "key matches"),  # any order, any case of k=
        (["v=DKIM1; k=ed25519; t=y:s; p=ABCD"], "ok", "key matches; testing mode (t=y)"),
        ([], "missing", f"no TXT record at {NAME}"),
        ([ED_RECORD, ED_RECORD], "wrong", f"2 TXT records at {NAME}; publish exactly one"),
        (["v=DKIM1; k=ed25519; p=ABCD; p=ABCD"], "wrong", "malformed tag=value list"),
        (["v=DKIM2; k=ed25519; p=ABCD"], "wrong", "v=DKIM2, expected v=DKIM1"),
        (["v=DKIM1; k=ed25519; p="], "wrong", "no public key (empty p= means revoked"),
        (["V=DKIM1; K=ed25519; P=ABCD"], "wrong", "no public key"),  # names are case-sensitive
        (["v=DKIM1; k=rsa; p=ABCD"], "wrong", "key type k=rsa, expected k=ed25519"),
        (["v=DKIM1; p=ABCD"], "wrong", "key type k=rsa, expected k=ed25519"),
        (["v=DKIM1; k=ed25519; p=ABCE"], "wrong", "not the public half of our key"),
        (["v=DKIM1; k=ed25519; p=abcd"], "wrong", "not the public half of our key"),
    ],
)
def test_compare_published_key(found: list[str], verdict: str, detail: str) -> None:
    published = compare_published_key(NAME, found, ED_RECORD)
    assert published.verdict == verdict
    assert detail in published.detail
    assert published.ok is (verdict == "ok")


def test_compare_published_key_with_real_records(
    rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    ours = dns_record_value(rsa_key)
    # As a zone file holds it: cut into 255-byte strings, which verifiers join with nothing between.
    assert compare_published_key(NAME, ["".join(split_txt(ours))], ours).ok
    folded = ours.replace("p=", "p=\r\n ").replace("; ", ";\r\n\t")
    assert compare_published_key(NAME, [folded], ours).ok
    assert not compare_published_key(NAME, [dns_record_value(ed_key)], ours).ok
    other = dns_record_value(generate_key("ed25519"))
    assert not compare_published_key(NAME, [other], dns_record_value(ed_key)).ok


def test_compare_published_key_refuses_an_expected_record_without_a_key() -> None:
    for bad in ("v=DKIM1; k=rsa", "v=DKIM1; p=", "not a record"):
        with pytest.raises(ValueError, match=f"expected DKIM record for {NAME} has no public key"):
            compare_published_key(NAME, [ED_RECORD], bad)


# -- signing ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey) -> list[DkimKey]:
    return [DkimKey(DOMAIN, "ed1", ed_key), DkimKey(DOMAIN, "rsa1", rsa_key)]


@pytest.fixture(scope="module")
def dnsfunc(keys: list[DkimKey]) -> Callable[..., bytes | None]:
    records = {
        f"{dns_record_name(k.domain, k.selector)}.": dns_record_value(k.private_key) for k in keys
    }

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        value = records.get(name.decode("ascii"))
        return None if value is None else value.encode("ascii")

    return lookup


def plain_message(linesep: bytes = b"\r\n") -> bytes:
    lines = [
        b"From: Sender <news@example.com>",
        b"To: reader@example.org",
        b"Subject: Hello",
        b"Date: Sun, 15 Jun 2025 14:00:00 +0000",
        b"Message-ID: <1@example.com>",
        b"X-Mailer: postroom",
        b"",
        b"Hello,  world \t",
        b"",
        b"",
    ]
    return linesep.join(lines)


def utf8_message() -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = "Zoë <zoe@example.com>"
    message["To"] = "reader@example.org"
    message["Subject"] = "Grüße"
    message.set_content("Grüße aus Köln — naïve café ✓\nZweite Zeile\n", cte="8bit")
    data = message.as_bytes()
    assert "Grüße aus Köln".encode() in data  # really 8-bit on the wire
    return data


def long_header_message() -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = "news@example.com"
    message["To"] = ", ".join(f"reader{i}@example.org" for i in range(12))
    message["Subject"] = " ".join(["a rather long subject line"] * 8)
    message["References"] = " ".join(f"<thread-{i}.abcdefgh@example.com>" for i in range(10))
    message.set_content("Body.\n")
    data = message.as_bytes()
    assert b"\r\n " in data.split(b"\r\n\r\n")[0]  # folded
    assert max(len(line) for line in data.split(b"\r\n")) <= 78
    return data


def attachment_message() -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = "reports@example.com"
    message["To"] = "finance@example.org"
    message["Subject"] = "Monthly report"
    message["Date"] = "Sun, 15 Jun 2025 14:00:00 +0000"
    message["MIME-Version"] = "1.0"
    message.set_content("The report is attached.\n")
    message.add_attachment(
        random.Random(1).randbytes(3000), maintype="application", subtype="pdf", filename="report.pdf"
    )
    data = message.as_bytes()
    assert b"Content-Disposition: attachment" in data
    return data


MESSAGES: dict[str, Callable[[], bytes]] = {
    "plain CRLF": plain_message,
    "plain LF": lambda: plain_message(b"\n"),
    "8-bit UTF-8": utf8_message,
    "folded long headers": long_header_message,
    "attachment": attachment_message,
}


def verify_each(signed: bytes, dnsfunc: Callable[..., bytes | None]) -> list[bool]:
    count = len(re.findall(rb"^DKIM-Signature:", signed, flags=re.M))
    return [_verifies(signed, i, dnsfunc) for i in range(count)]


def _verifies(signed: bytes, idx: int, dnsfunc: Callable[..., bytes | None]) -> bool:
    try:
        return bool(dkim.DKIM(signed).verify(idx=idx, dnsfunc=dnsfunc))
    except dkim.DKIMException:  # a body hash mismatch is raised, not returned (as dkim.verify does)
        return False


def signature_tags(signed: bytes, idx: int = 0) -> dict[bytes, bytes]:
    headers, _ = dkim.rfc822_parse(signed)
    values = [value for name, value in headers if name.lower() == b"dkim-signature"]
    tags: dict[bytes, bytes] = dkim.util.parse_tag_value(values[idx])
    return tags


@pytest.mark.parametrize("case", sorted(MESSAGES))
def test_both_signatures_verify_with_dkimpy(
    case: str, keys: list[DkimKey], dnsfunc: Callable[..., bytes | None]
) -> None:
    message = MESSAGES[case]()
    signed = sign_message(message, keys, NOW)
    assert signed.endswith(message)
    assert verify_each(signed, dnsfunc) == [True, True]
    # dkim.verify checks the topmost signature: RSA is on top, Ed25519 below it.
    assert dkim.verify(signed, dnsfunc=dnsfunc)
    assert [signature_tags(signed, i)[b"a"] for i in (0, 1)] == [b"rsa-sha256", b"ed25519-sha256"]
    tags = signature_tags(signed)
    assert (tags[b"c"], tags[b"d"], tags[b"s"]) == (b"relaxed/relaxed", b"example.com", b"rsa1")
    assert tags[b"t"] == b"1750000000"
    for key in keys:
        alone = sign_message(message, [key], NOW)
        assert dkim.verify(alone, dnsfunc=dnsfunc)


def test_new_headers_use_the_message_line_ending(keys: list[DkimKey]) -> None:
    lf = sign_message(plain_message(b"\n"), keys, NOW)
    assert b"\r" not in lf
    crlf = sign_message(plain_message(), keys, NOW)
    header_block = crlf.split(b"\r\n\r\n")[0]
    assert b"\n" not in header_block.replace(b"\r\n", b"")


def _tamper_body(signed: bytes) -> bytes:
    return signed.replace(b"Hello,  world", b"Hello,  w0rld")


def _tamper_subject(signed: bytes) -> bytes:
    return signed.replace(b"Subject: Hello", b"Subject: Hello!")


def _second_from(signed: bytes) -> bytes:
    return signed.replace(b"To: reader", b"From: Bank <bank@example.net>\r\nTo: reader")


@pytest.mark.parametrize("tamper", [_tamper_body, _tamper_subject, _second_from])
def test_tampering_breaks_both_signatures(
    tamper: Callable[[bytes], bytes], keys: list[DkimKey], dnsfunc: Callable[..., bytes | None]
) -> None:
    signed = sign_message(plain_message(), keys, NOW)
    tampered = tamper(signed)
    assert tampered != signed
    assert verify_each(tampered, dnsfunc) == [False, False]


def test_unsigned_header_added_in_transit_keeps_signatures_valid(
    keys: list[DkimKey], dnsfunc: Callable[..., bytes | None]
) -> None:
    signed = sign_message(plain_message(), keys, NOW)
    assert verify_each(b"Received: from relay\r\nX-Spam-Score: 0\r\n" + signed, dnsfunc) == [True, True]


def test_signed_headers_are_those_present_with_from_oversigned(keys: list[DkimKey]) -> None:
    message = (
        b"Received: from somewhere\r\nFrom: news@example.com\r\nReply-To: help@example.com\r\n"
        b"To: a@example.org\r\nSubject: s\r\nDate: Sun, 15 Jun 2025 14:00:00 +0000\r\n"
        b"Message-ID: <2@example.com>\r\nIn-Reply-To: <1@example.com>\r\nReferences: <1@example.com>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\nList-Unsubscribe: <https://example.com/u/1>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nX-Campaign: 7\r\n\r\nbody\r\n"
    )
    for idx in (0, 1):
        h = signature_tags(sign_message(message, keys, NOW), idx)[b"h"]
        assert re.split(rb"\s*:\s*", h) == [
            b"from", b"reply-to", b"to", b"subject", b"date", b"message-id", b"in-reply-to",
            b"references", b"mime-version", b"content-type", b"list-unsubscribe",
            b"list-unsubscribe-post", b"from",
        ]  # fmt: skip
    plain_h = signature_tags(sign_message(plain_message(), keys, NOW))[b"h"]
    assert re.split(rb"\s*:\s*", plain_h) == [
        b"from", b"to", b"subject", b"date", b"message-id", b"from",
    ]  # fmt: skip
    assert signed_header_names([(b"FROM", b"x"), (b"Cc", b"y")]) == [b"from", b"cc", b"from"]


def test_message_without_from_or_with_broken_headers_is_refused(keys: list[DkimKey]) -> None:
    with pytest.raises(DkimSigningError, match="no From header"):
        sign_message(b"To: a@example.org\r\nSubject: s\r\n\r\nbody\r\n", keys, NOW)
    with pytest.raises(DkimSigningError, match="malformed"):
        sign_message(b"From: a@example.com\r\nnot a header line\r\n\r\nbody\r\n", keys, NOW)
    with pytest.raises(DkimSigningError, match="malformed"):
        sign_message(b" folded first\r\nFrom: a@example.com\r\n\r\nbody\r\n", keys, NOW)
    assert sign_message(plain_message(), [], NOW) == plain_message()


# Bytes that make canonicalization and header parsing interesting: WSP runs, bare CR and LF, a
# form feed (not WSP), folding, header-like and mbox-like lines.
_PIECES = [b" ", b"  ", b"\t", b"\r", b"\n", b"\r\n", b"a", b"b:", b"\x0c", b"\xc3\xa9", b"From "]
_wire_bytes = st.lists(st.sampled_from(_PIECES), max_size=40).map(b"".join)
_header_lines = st.sampled_from(
    [
        b"From: a@example.com", b"Subject:  x \t y ", b" folded", b"\tfolded", b"", b"bad line",
        b"From x", b"To:b",
    ]  # fmt: skip
)
_line_ends = st.sampled_from([b"\r\n", b"\n"])


@given(_wire_bytes)
def test_relaxed_body_canonicalization_is_dkimpys(body: bytes) -> None:
    assert canonicalize_body_relaxed(body) == Relaxed.canonicalize_body(body)


@settings(max_examples=300)
@given(st.lists(st.tuples(_header_lines, _line_ends), max_size=8), _wire_bytes)
def test_parse_message_is_dkimpys_rfc822_parse(lines: list[tuple[bytes, bytes]], body: bytes) -> None:
    message = b"".join(line + end for line, end in lines) + body
    try:
        expected = dkim.rfc822_parse(message)
    except (dkim.MessageFormatError, IndexError) as exc:  # IndexError: a leading folded line
        with pytest.raises(type(exc)):
            parse_message(message)
    else:
        assert parse_message(message) == expected


@pytest.fixture
def pinned_clock() -> Iterator[None]:
    # Stock dkimpy takes t= from time.time() with no parameter to pass it: pin the clock instead.
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.mark.usefixtures("pinned_clock")
@pytest.mark.parametrize("case", sorted(MESSAGES))
def test_signatures_are_byte_identical_to_stock_dkimpy(
    case: str, rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    message = MESSAGES[case]()
    linesep = b"\n" if case == "plain LF" else b"\r\n"
    include = signed_header_names(dkim.rfc822_parse(message)[0])
    seed = ed_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, NO_ENCRYPTION
    )
    stock_keys = {
        "rsa": (b"rsa-sha256", pkcs8(rsa_key)),
        "ed25519": (b"ed25519-sha256", base64.b64encode(seed)),  # dkimpy's format: the bare seed
    }
    for ours in (DkimKey(DOMAIN, "sel1", rsa_key), DkimKey(DOMAIN, "sel1", ed_key)):
        algorithm, privkey = stock_keys[ours.algorithm]
        stock = dkim.sign(
            message, b"sel1", b"example.com", privkey, signature_algorithm=algorithm,
            canonicalize=(b"relaxed", b"relaxed"), include_headers=include, linesep=linesep,
        )  # fmt: skip
        assert stock.startswith(b"DKIM-Signature: v=1; a=" + algorithm)
        assert sign_message(message, [ours], NOW) == stock + message


def test_signer_signs_per_domain_and_refuses_unknown_domains(
    keys: list[DkimKey], ed_key: ed25519.Ed25519PrivateKey, dnsfunc: Callable[..., bytes | None]
) -> None:
    other = DkimKey("other.example", "s1", ed_key)
    signer = Signer([*keys, other])
    assert signer.domains == frozenset({DOMAIN, "other.example"})
    assert signer.keys_for("EXAMPLE.com") == tuple(keys)
    signed = signer.sign(plain_message(), "Example.com", NOW)
    assert signed == sign_message(plain_message(), keys, NOW)
    assert verify_each(signed, dnsfunc) == [True, True]
    with pytest.raises(DkimSigningError, match="no DKIM key for domain 'nowhere.example'"):
        signer.sign(plain_message(), "nowhere.example", NOW)


def test_signer_gives_the_same_bytes_from_many_threads(keys: list[DkimKey]) -> None:
    signer = Signer(keys)
    messages = [plain_message().replace(b"<1@", f"<{i}@".encode()) for i in range(40)]
    expected = [signer.sign(m, DOMAIN, NOW + i) for i, m in enumerate(messages)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        jobs = [(i % len(messages), m) for i, m in enumerate(messages * 5)]
        results = list(pool.map(lambda job: signer.sign(job[1], DOMAIN, NOW + job[0]), jobs))
    assert results == expected * 5


class RecordingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


async def test_sign_in_thread_runs_off_the_event_loop(keys: list[DkimKey]) -> None:
    signer = Signer(keys)
    loop_thread = threading.get_ident()
    threads: list[int] = []
    original = signer.sign

    def recording_sign(message: bytes, domain: str, now: int) -> bytes:
        threads.append(threading.get_ident())
        return original(message, domain, now)

    signer.sign = recording_sign  # type: ignore[method-assign]
    with RecordingExecutor() as executor:
        signed = await sign_in_thread(executor, signer, plain_message(), DOMAIN, NOW)
        default_pool = await sign_in_thread(None, signer, plain_message(), DOMAIN, NOW)
    assert signed == default_pool == sign_message(plain_message(), keys, NOW)
    assert executor.submitted == 1
    assert len(threads) == 2 and loop_thread not in threads
