"""The keys each sending domain signs with now.

`load_keyring` turns the active selectors into a `Signer`, recording a reason for every domain
whose key cannot be used, so that problem is reported at start (`check-config`) and at submission
(the submission policy asks `SigningKeys.unusable`), never as a crash at send time.
"""

from __future__ import annotations

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


class SigningKeys:
    """The keyring signing uses now, and which From domains are signed here.

    The key monitor swaps in a reloaded keyring (`replace_keyring`: one attribute assignment, so
    readers see the old or the new one, never half); the submission policy and the signing step
    of delivery read it.
    """

    def __init__(self, domains: Iterable[DomainSettings], keyring: Keyring):
        self.domains = {d.name: d for d in domains}
        self.keyring = keyring

    def replace_keyring(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def signing_domain(self, domain: str | None) -> str | None:
        """`domain` (a normalised From domain) when mail from it is signed here, else None."""
        settings = self.domains.get(domain or "")
        if settings is None or settings.dkim == "off":
            return None
        return domain

    def unusable(self, domain: str) -> str | None:
        """Why a domain that must be signed cannot be now, or None when it can (or need not)."""
        if self.signing_domain(domain) is None or self.keyring.signer.keys_for(domain):
            return None
        reasons = self.keyring.problems.get(domain)
        return "; ".join(reasons) if reasons else "no active DKIM key (run `postroom dkim keygen`)"
