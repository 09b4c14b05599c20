"""DKIM private keys: loading and checking key files, generating and writing new ones, DNS record text.

A key is an RSA or Ed25519 private key object from `cryptography`, parsed once and kept in a frozen
`DkimKey` with the domain and selector it signs for. Key files are PEM (PKCS#8 or the traditional
`RSA PRIVATE KEY`), or the bare base64 Ed25519 seed that dkimpy's `dknewkey` writes. Every refusal is
a `DkimKeyError` naming the file and the reason; none carries key material, not even in its cause
chain, because these errors are logged and printed by the command line.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from postroom.dkim.errors import DkimKeyError

Algorithm: TypeAlias = Literal["rsa", "ed25519"]
PrivateKey: TypeAlias = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey: TypeAlias = rsa.RSAPublicKey | ed25519.Ed25519PublicKey

# RFC 8301 §3.2: signers MUST use RSA keys of at least 1024 bits and SHOULD use at least 2048;
# verifiers MUST be able to validate keys of 1024 to 4096 bits, so a longer key may not verify.
MIN_RSA_BITS = 1024
RECOMMENDED_RSA_BITS = 2048
MAX_RSA_BITS = 4096

# A 4096-bit PKCS#8 PEM is about 3.3 KB; anything this large is not a DKIM key.
MAX_KEY_FILE_BYTES = 64 * 1024

# RFC 6376 §3.1: selectors and domains are dot-separated DNS labels. Underscores are accepted
# because real selectors use them and DNS carries them; ";", "=" and whitespace, which would break
# the tag=value syntax of the DKIM-Signature header, are not.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")

_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,40})-----")
# dkimpy's dknewkey writes an Ed25519 key as the base64 of its 32-byte seed: 43 characters and "=".
_DKIMPY_ED25519_SEED = re.compile(rb"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")


@dataclass(frozen=True, eq=False)
class DkimKey:
    """A loaded private key and the domain and selector it signs for.

    `algorithm` and `weak` follow from the key: `weak` is set for RSA keys shorter than 2048 bits,
    which still sign but which the caller should warn about at start (RFC 8301 §3.2).
    """

    domain: str
    selector: str
    private_key: PrivateKey = field(repr=False)
    path: Path | None = None
    algorithm: Algorithm = field(init=False)
    weak: bool = field(init=False)

    def __post_init__(self) -> None:
        where = str(self.path) if self.path is not None else f"for {self.selector}/{self.domain}"
        if not _DNS_NAME.fullmatch(self.domain):
            raise DkimKeyError(f"DKIM key {where}: domain {self.domain!r} is not an ASCII DNS name")
        if not _DNS_NAME.fullmatch(self.selector):
            raise DkimKeyError(f"DKIM key {where}: selector {self.selector!r} is not a DNS label")
        object.__setattr__(self, "domain", self.domain.lower())
        if isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            object.__setattr__(self, "algorithm", "ed25519")
            object.__setattr__(self, "weak", False)
        elif isinstance(self.private_key, rsa.RSAPrivateKey):
            bits = self.private_key.key_size
            if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
                raise DkimKeyError(
                    f"DKIM key {where}: RSA key is {bits} bits; DKIM needs {MIN_RSA_BITS} to "
                    f"{MAX_RSA_BITS} bits (RFC 8301 §3.2), {RECOMMENDED_RSA_BITS} recommended"
                )
            object.__setattr__(self, "algorithm", "rsa")
            object.__setattr__(self, "weak", bits < RECOMMENDED_RSA_BITS)
        else:
            kind = _key_kind(self.private_key)
            raise DkimKeyError(f"DKIM key {where}: {kind} key; DKIM signs with RSA or Ed25519")

    @property
    def bits(self) -> int:
        """The key size: the RSA modulus length, or 256 for Ed25519."""
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.key_size
        return 256


def load_key(path: str | os.PathLike[str], domain: str, selector: str) -> DkimKey:
    """Read and check the private key in `path` for signing as `domain` with `selector`."""
    key_path = Path(path)
    private_key = parse_private_key(_read_key_file(key_path), str(key_path))
    return DkimKey(domain, selector, private_key, key_path)


def parse_private_key(data: bytes, source: str) -> PrivateKey:
    """Parse a PEM private key (or dkimpy's base64 Ed25519 seed); `source` names it in errors."""
    match = _PEM_BEGIN.search(data)
    if match is None:
        token = data.strip()
        if _DKIMPY_ED25519_SEED.fullmatch(token):
            return ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(token))
        raise DkimKeyError(
            f"DKIM key {source}: not a PEM private key (no '-----BEGIN ... PRIVATE KEY-----' line) "
            "and not the base64 Ed25519 seed that dkimpy writes"
        )
    label = match.group(1).decode("ascii")
    refusal = _refuse_pem_label(label)
    if refusal is not None:
        raise DkimKeyError(f"DKIM key {source}: {refusal}")
    # The causes are dropped (`from None`) on purpose: cryptography's parse errors are not needed to
    # act on the message, and a decode error may hold the input bytes (UnicodeDecodeError.object).
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise DkimKeyError(f"DKIM key {source}: {_ENCRYPTED}") from None
    except UnsupportedAlgorithm:
        raise DkimKeyError(f"DKIM key {source}: a key type that cryptography cannot read") from None
    except ValueError:
        raise DkimKeyError(
            f"DKIM key {source}: corrupted: the {label} block does not decode to a valid key"
        ) from None
    if isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        return key
    raise DkimKeyError(f"DKIM key {source}: {_key_kind(key)} key; DKIM signs with RSA or Ed25519")


_ENCRYPTED = "encrypted with a passphrase; postroom reads unencrypted keys (kept with mode 0600)"


def _refuse_pem_label(label: str) -> str | None:
    if label in ("PRIVATE KEY", "RSA PRIVATE KEY"):
        return None
    if label in ("PUBLIC KEY", "RSA PUBLIC KEY"):
        return "a public key; signing needs the private key"
    if label == "ENCRYPTED PRIVATE KEY":
        return _ENCRYPTED
    if label == "EC PRIVATE KEY":
        return "an EC key; DKIM signs with RSA or Ed25519"
    if label in ("CERTIFICATE", "TRUSTED CERTIFICATE"):
        return "a certificate, not a private key"
    return f"a PEM block of type {label!r}, not a private key"


def _key_kind(key: object) -> str:
    # Only names: never the key's repr or numbers.
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"an EC ({key.curve.name})"
    if isinstance(key, ed448.Ed448PrivateKey):
        return "an Ed448"
    return f"an unsupported ({type(key).__name__})"


def _read_key_file(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError as exc:
        raise DkimKeyError(f"DKIM key {path}: no such file") from exc
    except IsADirectoryError as exc:
        raise DkimKeyError(f"DKIM key {path}: is a directory, not a key file") from exc
    except PermissionError as exc:
        raise DkimKeyError(
            f"DKIM key {path}: permission denied (the daemon's user must be able to read it)"
        ) from exc
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DkimKeyError(f"DKIM key {path}: cannot read ({reason})") from exc
    if len(data) > MAX_KEY_FILE_BYTES:
        raise DkimKeyError(f"DKIM key {path}: larger than {MAX_KEY_FILE_BYTES} bytes, not a key file")
    if not data.strip():
        raise DkimKeyError(f"DKIM key {path}: empty file")
    return data


def generate_key(algorithm: Algorithm, bits: int = RECOMMENDED_RSA_BITS) -> PrivateKey:
    """A new private key; `bits` (2048 to 4096) applies to RSA only."""
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "rsa":
        if not RECOMMENDED_RSA_BITS <= bits <= MAX_RSA_BITS:
            raise DkimKeyError(
                f"cannot generate a {bits}-bit RSA key: use {RECOMMENDED_RSA_BITS} to "
                f"{MAX_RSA_BITS} bits (RFC 8301 §3.2)"
            )
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    raise DkimKeyError(f"unknown DKIM key algorithm {algorithm!r}: use 'rsa' or 'ed25519'")


def write_private_key(
    path: str | os.PathLike[str], key: PrivateKey, *, overwrite: bool = False
) -> None:
    """Write `key` as unencrypted PKCS#8 PEM, mode 0600, atomically; missing parents are made 0700.

    The file appears complete or not at all: it is written and fsynced under a temporary name in
    the same directory, then linked into place. Without `overwrite` an existing file is an error,
    because it may be the private half of a key that DNS still publishes.
    """
    target = Path(path)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    try:
        _make_private_dirs(target.parent)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temporary, flags, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                os.fchmod(file.fileno(), 0o600)  # exactly 0600 whatever the umask
                file.write(pem)
                file.flush()
                os.fsync(file.fileno())
            if overwrite:
                os.replace(temporary, target)
            else:
                os.link(temporary, target)  # atomic, and fails if the target exists
        finally:
            temporary.unlink(missing_ok=True)
        _fsync_directory(target.parent)
    except FileExistsError:
        raise DkimKeyError(
            f"DKIM key {target}: already exists; not overwriting a key that DNS may publish"
        ) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DkimKeyError(f"DKIM key {target}: cannot write ({reason})") from exc


def _make_private_dirs(directory: Path) -> None:
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        try:
            os.mkdir(new, 0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: leave its mode alone
        os.chmod(new, 0o700)  # the umask may have cleared bits os.mkdir asked for


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dns_record_name(domain: str, selector: str) -> str:
    """Where the public key is published: `selector._domainkey.domain` (RFC 6376 §3.6.2.1)."""
    return f"{selector}._domainkey.{domain}"


def dns_record_value(key: PrivateKey | PublicKey) -> str:
    """The TXT record value publishing the public half of `key`.

    RSA: base64 of the DER SubjectPublicKeyInfo (RFC 6376 §3.6.1). Ed25519: base64 of the 32-byte
    raw public key, not of a SubjectPublicKeyInfo (RFC 8463 §4.2).
    """
    public: PublicKey
    if isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        public = key.public_key()
    else:
        public = key
    if isinstance(public, rsa.RSAPublicKey):
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = public.public_bytes(serialization.Encoding.DER, spki)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"


def split_txt(value: str) -> list[str]:
    """`value` cut into character-strings of at most 255 bytes for a zone file.

    A TXT record is a sequence of strings of up to 255 bytes each (RFC 1035 §3.3); DKIM verifiers
    concatenate them with nothing in between (RFC 6376 §3.6.2.2), so the cut may fall anywhere.
    Raises ValueError (UnicodeEncodeError) when `value` is not ASCII, as DKIM records are.
    """
    data = value.encode("ascii")
    return [data[i : i + 255].decode("ascii") for i in range(0, len(data), 255)] or [""]
