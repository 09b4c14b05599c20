"""`classify_reply`: the one classifier for synchronous SMTP replies and bounce reports, on
hand-written typical replies of common MTAs and providers."""

from __future__ import annotations

import pytest

from postroom.bounces.classify import classify_reply, find_reply_code, find_status, reason_of
from postroom.bounces.model import BounceClass

HARD, SOFT, NONE = BounceClass.HARD, BounceClass.SOFT, BounceClass.NONE


@pytest.mark.parametrize(
    ("code", "status", "text", "command", "expected"),
    [
        # Postfix, Exim, Sendmail: the unknown user, with and without an enhanced code.
        (550, "5.1.1", "5.1.1 <x@y.example>: Recipient address rejected: User unknown in local recipient table",
         "RCPT", ("userunknown", HARD)),
        (550, None, "550 5.1.1 <x@y.example>: Recipient address rejected: User unknown", None, ("userunknown", HARD)),
        (550, None, "No such user here", "RCPT", ("userunknown", HARD)),
        (550, "5.1.1", "The email account that you tried to reach does not exist.", "RCPT", ("userunknown", HARD)),
        # Full mailboxes, temporary or not: the class of mailboxfull is soft either way.
        (452, "4.2.2", "Mailbox full", "RCPT", ("mailboxfull", SOFT)),
        (552, "5.2.2", "The email account that you tried to reach is over quota.", "RCPT", ("mailboxfull", SOFT)),
        (550, None, "user is over quota", "RCPT", ("mailboxfull", SOFT)),
        # Google's rate and reputation replies.
        (421, "4.7.28", "421-4.7.28 Our system has detected an unusual rate of unsolicited mail originating "
         "from your IP address. To protect our users from spam, mail sent from your IP address has been "
         "temporarily rate limited.", "DATA", ("speeding", SOFT)),
        (550, "5.7.26", "This mail has been blocked because the sender is unauthenticated. Gmail requires all "
         "senders to authenticate with either SPF or DKIM.", "DATA", ("authfailure", SOFT)),
        # SPF, DKIM, DMARC failures.
        (550, "5.7.1", "5.7.1 Message rejected: SPF check failed for example.com", "MAIL", ("authfailure", SOFT)),
        (550, "5.7.1", "Email rejected per DMARC policy for example.com", "DATA", ("authfailure", SOFT)),
        # Blocklists and reputation.
        (554, "5.7.1", "Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org", "RCPT",
         ("blocked", SOFT)),
        (550, "5.7.1", "Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet "
         "service provider since part of their network is on our block list (S3140).", "RCPT", ("blocked", SOFT)),
        (554, None, "Your access to this mail system has been rejected due to the sending MTA's poor reputation.",
         "CONN", ("badreputation", SOFT)),
        # Domains and relays.
        (550, "5.1.2", "Host or domain name not found. Name service error for name=nowhere.example", None,
         ("hostunknown", HARD)),
        (554, "5.7.1", "<x@y.example>: Relay access denied", "RCPT", ("norelaying", SOFT)),
        (556, "5.1.10", "Recipient address has null MX", "RCPT", ("notaccept", HARD)),
        # Content.
        (552, "5.3.4", "Message size exceeds fixed limit", "DATA", ("mesgtoobig", SOFT)),
        (554, "5.7.1", "Message rejected as spam by Content Filtering", "DATA", ("spamdetected", SOFT)),
        (554, None, "Virus found in message: Eicar-Test-Signature", "DATA", ("virusdetected", SOFT)),
        # The stage of the refusal says what the words cannot.
        (553, None, "sender address does not exist", "MAIL", ("rejected", SOFT)),
        (550, "5.0.0", "Mailbox unavailable", "MAIL", ("rejected", SOFT)),
        (550, None, "User unknown", "DATA", ("filtered", SOFT)),
        (421, None, "Too many concurrent SMTP connections from this IP address; please try again later",
         "CONN", ("toomanyconn", SOFT)),
        # Accounts that exist but do not take mail.
        (550, "5.2.1", "The email account that you tried to reach is disabled.", "RCPT", ("suspend", SOFT)),
        (550, "5.1.6", "Recipient has moved", "RCPT", ("hasmoved", HARD)),
        # Time-outs and the queue.
        (451, "4.4.1", "connect to mx.example.net[192.0.2.9]:25: Connection timed out", None, ("networkerror", SOFT)),
        (451, "4.4.7", "Message expired in the queue after 5 days", None, ("expired", SOFT)),
        # Codes alone, when the words say nothing.
        (550, "5.7.13", "", None, ("suspend", SOFT)),
        (550, "5.1.1", "", None, ("userunknown", HARD)),
        (550, None, "", None, ("onhold", SOFT)),
        (None, None, "", None, ("undefined", SOFT)),
        (250, "2.0.0", "Ok: queued as 4Xyz", None, ("delivered", NONE)),
    ],
)  # fmt: skip
def test_typical_replies(
    code: int | None, status: str | None, text: str, command: str | None, expected: tuple[str, BounceClass]
) -> None:
    assert classify_reply(code, status, text, command) == expected


def test_the_status_is_read_from_the_text_when_not_given() -> None:
    assert classify_reply(550, None, "5.2.2 mailbox full") == ("mailboxfull", SOFT)
    assert classify_reply(None, None, "host said: 550 5.1.1 <x@y.example>... User unknown") == ("userunknown", HARD)


def test_a_temporary_code_makes_a_failed_name_lookup_a_network_error() -> None:
    assert reason_of(451, "4.4.3", "Host or domain name not found") == "networkerror"
    assert reason_of(550, "5.1.2", "Host or domain name not found") == "hostunknown"


def test_a_stock_user_unknown_with_a_mailbox_status_is_a_filter() -> None:
    # X.2.x says the mailbox exists: a "user unknown" wording with it is a filter's stock phrase.
    assert reason_of(550, "5.2.1", "<x@y.example>... User Unknown", None) == "filtered"
    assert reason_of(550, "5.2.1", "<x@y.example>... User Unknown", "RCPT") == "userunknown"


def test_find_status_and_reply_code_prefer_the_failure_in_a_transcript() -> None:
    transcript = "Out: 250 2.1.5 Ok In: DATA Out: 354 go ahead Out: 451 4.3.0 Error: queue file write error"
    assert find_status(transcript) == "4.3.0"
    assert find_reply_code(transcript) == 451
    assert find_status("version 5.1.10.2 of the software") is None  # not a status: part of a longer number
    assert find_reply_code("message of 5500 bytes") is None


def test_the_classifier_agrees_with_the_delivery_verdict_on_permanence() -> None:
    """A reply the delivery worker bounces (5yz) never gets a reason that says "delivered", and a
    2yz never gets a failure reason, so the two classifiers cannot contradict each other."""
    from postroom.core.types import Verdict
    from postroom.delivery.replies import classify as classify_delivery

    for code, text in [(550, "5.1.1 unknown"), (452, "4.2.2 full"), (250, "ok"), (554, "5.7.1 spam")]:
        verdict = classify_delivery(code, text).verdict
        reason, bounce_class = classify_reply(code, None, text)
        assert (verdict is Verdict.DELIVERED) == (reason == "delivered") == (bounce_class is NONE)
