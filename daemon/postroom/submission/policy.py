"""The sending policy: whose name a message may carry, checked on the bytes that will be signed.

A message is accepted only with exactly one From field (RFC 5322 §3.6: "from" occurs once), every
From and Sender address in a configured sending domain and allowed to the caller's credential, all
From addresses in one domain (DMARC aligns on it, RFC 7489 §3.1), and, while a domain that must be
signed has no usable DKIM key, not at all (a temporary refusal naming the key's problem). Address
lists are read strictly (`core.addresses.mailboxes`): a From that a lenient reader would take for
one address while a mail client shows another is refused, not guessed at.
"""

from __future__ import annotations

from postroom.core.addresses import address_allowed, domain_of, mailboxes
from postroom.core.errors import InvalidMessageError
from postroom.core.types import Submission
from postroom.dkim.keyring import SigningKeys
from postroom.submission.outcome import Caller, Refusal
from postroom.submission.raw import summarise_headers


class SendingPolicy:
    """A submission step (see `steps.Step`)."""

    name = "policy"

    def __init__(self, keys: SigningKeys):
        self._keys = keys

    async def __call__(self, submission: Submission, caller: Caller) -> Submission | Refusal:
        return self.check(submission, caller) or submission

    def check(self, submission: Submission, caller: Caller) -> Refusal | None:
        summary = summarise_headers(submission.content)
        if len(summary.from_fields) != 1:
            found = len(summary.from_fields)
            return Refusal(True, "invalid_from", f"a message needs exactly one From field, it has {found}")
        if len(summary.sender_fields) > 1:
            return Refusal(True, "invalid_from", "a message may have one Sender field at most")
        try:
            from_addresses = mailboxes(summary.from_fields[0], "From")
            senders = mailboxes(summary.sender_fields[0], "Sender") if summary.sender_fields else ()
        except InvalidMessageError as exc:
            return Refusal(True, "invalid_from", str(exc))
        if not from_addresses:
            return Refusal(True, "invalid_from", "the message has no valid From address")
        if len(senders) > 1:
            return Refusal(True, "invalid_from", "the Sender field must hold one address")
        for address in (*from_addresses, *senders):
            refusal = self._may_use(address, caller)
            if refusal is not None:
                return refusal
        domains = {domain_of(address) for address in from_addresses}
        if len(domains) > 1:
            return Refusal(True, "unaligned_from", "all From addresses must be in one domain")
        (domain,) = domains
        problem = self._keys.unusable(domain)
        if problem is not None:
            return Refusal(False, "dkim_unavailable", f"cannot sign for {domain}: {problem}")
        return None

    def _may_use(self, address: str, caller: Caller) -> Refusal | None:
        domain = domain_of(address)
        if domain not in self._keys.domains:
            return Refusal(True, "unknown_sender_domain", f"{domain} is not a sending domain of this server")
        if not address_allowed(address, caller.allowed_senders):
            return Refusal(True, "sender_not_allowed", f"this login may not send as {address}")
        return None
