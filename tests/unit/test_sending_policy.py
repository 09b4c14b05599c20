"""`submission.policy`: whose name a message may carry, checked on the bytes that will be signed
(the outside probe's From-alignment findings: every From and Sender address counts, one From field,
a restricted login cannot put another address in From)."""

from __future__ import annotations

import pytest

from postroom.config import DomainSettings
from postroom.core.types import Submission
from postroom.dkim.keyring import Keyring, SigningKeys
from postroom.dkim.signing import Signer
from postroom.submission.outcome import Caller, Refusal
from postroom.submission.policy import SendingPolicy

KEYS = SigningKeys(
    [DomainSettings(name="postroom.test", dkim="off"), DomainSettings(name="other.test", dkim="off"),
     DomainSettings(name="signed.test")],
    Keyring(Signer([]), {"signed.test": ["key file /k.pem is unreadable"]}),
)  # fmt: skip
ANYONE = Caller("api", "apikey:k")


def message(*headers: str) -> Submission:
    head = "\r\n".join((*headers, "To: u@example.com", "Subject: hi")).encode()
    return Submission("bounce@postroom.test", ("u@example.com",), head + b"\r\n\r\nbody\r\n", "api")


def verdict(submission: Submission, caller: Caller = ANYONE) -> Refusal | None:
    return SendingPolicy(KEYS).check(submission, caller)


def test_a_plain_message_from_a_sending_domain_passes() -> None:
    assert verdict(message("From: App <app@postroom.test>")) is None
    assert verdict(message("From: a@postroom.test", "Sender: b@postroom.test")) is None


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        (("From: a@postroom.test, ceo@evil.example",), "unknown_sender_domain"),
        (("From: a@postroom.test <ceo@evil.example>",), "invalid_from"),
        (('From: "a@postroom.test" <ceo@evil.example>',), "unknown_sender_domain"),
        (("From: a@postroom.test", "From: ceo@evil.example"), "invalid_from"),
        (("From: a@postroom.test", "Sender: ceo@evil.example"), "unknown_sender_domain"),
        (("From: a@postroom.test", "Sender: a@postroom.test", "Sender: b@postroom.test"), "invalid_from"),
        (("From: a@postroom.test, b@other.test",), "unaligned_from"),
        (("Subject-less: x",), "invalid_from"),
        (("From: undisclosed-recipients:;",), "invalid_from"),
    ],
)
def test_every_from_and_sender_address_is_checked(headers: tuple[str, ...], code: str) -> None:
    refusal = verdict(message(*headers))
    assert refusal is not None and refusal.permanent and refusal.code == code


def test_a_restricted_login_may_not_put_another_address_in_from_or_sender() -> None:
    billing = Caller("smtp", "billing", allowed_senders=("billing@postroom.test",))
    assert verdict(message("From: billing@postroom.test"), billing) is None
    for headers in (("From: ceo@postroom.test",), ("From: billing@postroom.test", "Sender: ceo@postroom.test")):
        refusal = verdict(message(*headers), billing)
        assert refusal == Refusal(True, "sender_not_allowed", "this login may not send as ceo@postroom.test")


def test_a_domain_without_a_usable_key_is_refused_for_now_with_the_keys_problem() -> None:
    refusal = verdict(message("From: a@signed.test"))
    assert refusal == Refusal(False, "dkim_unavailable", "cannot sign for signed.test: key file /k.pem is unreadable")
