"""`decide`: one recipient's result becomes the state recorded for its delivery."""

from __future__ import annotations

import pytest
from postroom.core.types import DeliveryState, RecipientResult, Verdict
from postroom.delivery.worker import decide
from postroom.queue.models import ClaimedDelivery
from postroom.queue.retry import RetryPolicy

POLICY = RetryPolicy(base=60.0, cap=3600.0, max_age=86400.0, jitter_floor=0.5)
T0 = 1_750_000_000.0


def claimed(attempts: int = 0, accepted_at: float = T0) -> ClaimedDelivery:
    return ClaimedDelivery(
        7, "01JMSGID0000000000000000000", "user@example.com", attempts, accepted_at
    )


def result(verdict: Verdict, reply: str, **details: object) -> RecipientResult:
    return RecipientResult("user@example.com", verdict, reply, dict(details))


def test_delivered_is_final_with_no_next_attempt() -> None:
    release = decide(claimed(), result(Verdict.DELIVERED, "250 2.0.0 Ok"), POLICY, T0 + 1, 0.5)
    assert release.state is DeliveryState.DELIVERED
    assert release.next_attempt_at is None
    assert release.reply == "250 2.0.0 Ok"
    assert (release.delivery_id, release.message_id, release.recipient) == (
        7,
        "01JMSGID0000000000000000000",
        "user@example.com",
    )


def test_bounced_is_final_and_keeps_the_reply_and_details() -> None:
    release = decide(
        claimed(), result(Verdict.BOUNCED, "550 5.1.1 no such user", host="mx.example.com"),
        POLICY, T0 + 1, 0.5,
    )  # fmt: skip
    assert release.state is DeliveryState.BOUNCED
    assert release.next_attempt_at is None
    assert release.reply == "550 5.1.1 no such user"
    assert release.detail == {"host": "mx.example.com", "reason": "userunknown", "bounce_class": "hard"}


def test_first_deferral_is_scheduled_from_the_policy_with_the_draw() -> None:
    now = T0 + 10
    release = decide(
        claimed(attempts=0), result(Verdict.DEFERRED, "451 4.3.0 later"), POLICY, now, 0.0
    )
    assert release.state is DeliveryState.DEFERRED
    assert release.next_attempt_at == pytest.approx(now + 30.0)  # base 60 at the 0.5 floor
    assert release.reply == "451 4.3.0 later"


def test_later_deferral_counts_this_attempt() -> None:
    now = T0 + 100
    # three attempts made before, this is the fourth failure: 60 * 2**3 = 480 at the top of the draw
    release = decide(
        claimed(attempts=3), result(Verdict.DEFERRED, "421 busy"), POLICY, now, 1 - 1e-12
    )
    assert release.next_attempt_at == pytest.approx(now + 480.0)


def test_a_deferral_past_max_age_expires_and_says_why() -> None:
    now = T0 + 86400 - 5
    release = decide(claimed(attempts=11), result(Verdict.DEFERRED, "421 busy"), POLICY, now, 0.0)
    assert release.state is DeliveryState.EXPIRED
    assert release.next_attempt_at is None
    assert release.reply == "expired after 12 attempts; last reply: 421 busy"
    assert release.state.is_final


def test_details_are_copied_not_shared() -> None:
    outcome = result(Verdict.DELIVERED, "250 ok", host="a")
    release = decide(claimed(), outcome, POLICY, T0, 0.5)
    release.detail["host"] = "b"
    assert outcome.details == {"host": "a"}
