"""The keys each sending domain signs with now, and the sending policy built on them.

`load_keyring` turns the active selectors into a `Signer`, recording a reason for every domain
whose key cannot be used, so that problem is reported at start (`check-config`) and at submission,
never as a crash at send time. `SendingPolicy` answers, for a From address, whether a message may be
accepted: only from configured domains (RFC 5322 From, as DMARC aligns on it), and only while a
domain that requires DKIM has a usable key.
"""

from __future__ import annotations

import email.utils
from collections.abc import Iterable
from dataclasses import dataclass, field

from postroom.config import DomainSettings
from postroom.dkim.errors import DkimKeyError
from postroom.dkim.keys import DkimKey, load_key
from postroom.dkim.signing import Signer
from postroom.store.dkim_keys import SelectorRecord, SelectorState


@dataclass(frozen=True)
class Keyring:
    signer: Signer
    problems: dict[str, list[str]] = field(default_factory=dict)  # domain -> reasons
    weak: tuple[str, ...] = ()  # "selector._domainkey.domain" of RSA keys under 2048 bits


def load_keyring(records: Iterable[SelectorRecord]) -> Keyring:
    keys: list[DkimKey] = []
    problems: dict[str, list[str]] = {}
    for record in records:
        if record.state is not SelectorState.ACTIVE:
            continue
        try:
            key = load_key(record.key_path, record.domain, record.selector)
        except DkimKeyError as exc:
            problems.setdefault(record.domain, []).append(str(exc))
            continue
        keys.append(key)
    weak = tuple(f"{k.selector}._domainkey.{k.domain}" for k in keys if k.weak)
    return Keyring(Signer(keys), problems, weak)


def address_of_header(value: str | None) -> str | None:
    """The address in a From header value ("Shop <a@shop.example>" -> "a@shop.example")."""
    if not value:
        return None
    _, address = email.utils.parseaddr(value)
    local, at, domain = address.rpartition("@")
    return f"{local}@{domain.lower().rstrip('.')}" if at and local and domain else None


def address_domain(value: str | None) -> str | None:
    """The domain of a From header value ("Shop <a@shop.example>" -> "shop.example")."""
    address = address_of_header(value)
    return address.rpartition("@")[2] if address else None


@dataclass(frozen=True)
class Refusal:
    permanent: bool  # SMTP 550 / HTTP 422 with code unknown_sender_domain, else 451 / 422
    code: str
    reason: str


class SendingPolicy:
    def __init__(self, domains: Iterable[DomainSettings], keyring: Keyring):
        self._domains = {d.name: d for d in domains}
        self.keyring = keyring

    def replace_keyring(self, keyring: Keyring) -> None:
        """Swap in reloaded keys (one attribute assignment: readers see old or new, never half)."""
        self.keyring = keyring

    def signing_domain(self, header_from: str | None) -> str | None:
        """The domain to sign for, or None when the message is not to be signed here."""
        domain = address_domain(header_from)
        settings = self._domains.get(domain or "")
        if settings is None or settings.dkim == "off":
            return None
        return domain

    def check(self, header_from: str | None) -> Refusal | None:
        domain = address_domain(header_from)
        if domain is None:
            return Refusal(True, "invalid_from", "the message has no valid From address")
        settings = self._domains.get(domain)
        if settings is None:
            return Refusal(True, "unknown_sender_domain",
                           f"{domain} is not a sending domain of this server")  # fmt: skip
        if settings.dkim == "off":
            return None
        if not self.keyring.signer.keys_for(domain):
            reasons = self.keyring.problems.get(domain)
            why = "; ".join(reasons) if reasons else "no active DKIM key (run `postroom dkim keygen`)"
            return Refusal(False, "dkim_unavailable", f"cannot sign for {domain}: {why}")
        return None
