"""Addresses: the one place they are checked, split and normalised. Pure functions.

Mailbox syntax is checked with email-validator, syntax only (a DNS check would block the loop).
Special-use names (RFC 6761) such as `.localhost` and `.invalid` are refused because nothing can be
delivered there; `.test` is allowed, since labs and the quickstart use it, as are single-label
domains on private networks.

Normalising keeps the local part as written (RFC 5321 §2.4: only the receiving host may interpret
its case) and lower-cases the domain without its trailing dot, so `Ada@Example.COM.` and
`Ada@example.com` are the same mailbox to every lookup (sending domains, logins, destinations).

Header fields that carry mailboxes (From, Sender, Reply-To) are read with the standard library's
RFC 5322 parser, strictly: anything it had to repair is refused, because a lenient reading is how
`a@good.example <ceo@evil.example>` passes a check on one address and displays another.
"""

from __future__ import annotations

import functools
import re
from email._header_value_parser import get_address_list  # the RFC 5322 parser behind headerregistry
from email.errors import ObsoleteHeaderDefect

from email_validator import EmailNotValidError, validate_email

from postroom.core.errors import InvalidMessageError


@functools.lru_cache(maxsize=65536)  # pure; ingest sees the same senders and recipients again
def valid_mailbox(address: str) -> bool:
    try:
        validate_email(
            address,
            check_deliverability=False,
            allow_smtputf8=True,
            globally_deliverable=False,
            test_environment=True,
        )
    except EmailNotValidError:
        return False
    return True


def normalise_domain(domain: str) -> str:
    """`Example.COM.` -> `example.com`."""
    return domain.strip().rstrip(".").lower()


def domain_of(address: str) -> str:
    """The normalised domain of an address ("" when it has none)."""
    _, at, domain = address.rpartition("@")
    return normalise_domain(domain) if at else ""


def normalise_address(address: str) -> str:
    """The address with its domain normalised and its local part as written."""
    local, at, domain = address.strip().rpartition("@")
    return f"{local}@{normalise_domain(domain)}" if at else address.strip()


def address_allowed(address: str, allowed: tuple[str, ...]) -> bool:
    """Whether `address` is one of `allowed` (whole addresses, or domains meaning any address
    there); an empty `allowed` allows everything. Entries are compared case-insensitively."""
    if not allowed:
        return True
    wanted = address.strip().lower().rstrip(".")
    domain = domain_of(wanted)
    return any(entry == wanted or entry == domain for entry in allowed)


# A bare address or `Display Name <address>` with nothing unusual: the common case, read without
# the full parser (it costs ~45 µs, and every submitted message has a From field).
_PLAIN_MAILBOX = re.compile(
    r"""\s*(?:(?P<bare>[A-Za-z0-9._%+=-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)
           |[A-Za-z0-9 ._'-]*<(?P<angle>[A-Za-z0-9._%+=-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)>)\s*""",
    re.VERBOSE,
)


@functools.lru_cache(maxsize=4096)  # pure; an application sends from a handful of From values
def mailboxes(value: str, field: str = "From") -> tuple[str, ...]:
    """Every address in a mailbox-list header value, normalised; raise InvalidMessageError when
    the value is not one strict RFC 5322 (§3.4) mailbox list. Groups are flattened."""
    plain = _PLAIN_MAILBOX.fullmatch(value)
    if plain is not None:
        return (normalise_address(plain["bare"] or plain["angle"]),)
    try:
        parsed, rest = get_address_list(value)
    except Exception:  # the parser raises its own HeaderParseError and others on junk
        raise InvalidMessageError(f"the {field} field is not a valid address list") from None
    defects = [d for d in parsed.all_defects if not isinstance(d, ObsoleteHeaderDefect)]
    if rest or defects:
        raise InvalidMessageError(f"the {field} field is not a valid address list")
    found = []
    for mailbox in parsed.all_mailboxes:
        local, domain = mailbox.local_part, mailbox.domain
        if not local or not domain or "@" in domain:
            raise InvalidMessageError(f"the {field} field is not a valid address list")
        found.append(normalise_address(f"{local}@{domain}"))
    return tuple(found)
