"""`postpone` (a delivery handed back untried) and `decide` at the edges: expiry after max_age."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from postroom.core.types import DeliveryState, RecipientResult, Verdict
from postroom.delivery import worker
from postroom.delivery.outcomes import decide, postpone
from postroom.queue.models import ClaimedDelivery
from postroom.queue.retry import RetryPolicy

T0 = 1_750_000_000.0
# jitter_floor 1.0: the wait is exactly base * 2**(attempts - 1), capped, so times are exact.
POLICY = RetryPolicy(base=100.0, cap=800.0, max_age=10_000.0, jitter_floor=1.0)


def claimed(attempts: int = 0, accepted_at: float = T0) -> ClaimedDelivery:
    return ClaimedDelivery(42, "01JMSGID0000000000000000042", "bob@example.org", attempts, accepted_at)


def result(verdict: Verdict, reply: str = "451 4.3.0 later", **details: object) -> RecipientResult:
    return RecipientResult("bob@example.org", verdict, reply, dict(details))


# --- postpone --------------------------------------------------------------------------------------


def test_postponing_a_delivery_never_tried_leaves_it_queued() -> None:
    release = postpone(claimed(attempts=0), T0 + 300, "destination x held back: throttled")
    assert release.state is DeliveryState.QUEUED
    assert release.next_attempt_at == T0 + 300
    assert release.tried is False
    assert release.detail == {"postponed": True}
    assert release.reply == "destination x held back: throttled"


@pytest.mark.parametrize("attempts", [1, 2, 17])
def test_postponing_a_delivery_tried_before_leaves_it_deferred(attempts: int) -> None:
    release = postpone(claimed(attempts=attempts), T0 + 60, "shutting down")
    assert (release.state, release.next_attempt_at, release.tried) == (
        DeliveryState.DEFERRED, T0 + 60, False
    )  # fmt: skip
    assert release.detail == {"postponed": True}


def test_postpone_keeps_the_delivery_identity() -> None:
    release = postpone(claimed(attempts=3), T0, "held")
    assert (release.delivery_id, release.message_id, release.recipient) == (
        42, "01JMSGID0000000000000000042", "bob@example.org"
    )  # fmt: skip


def test_postpone_does_not_expire_even_past_max_age() -> None:
    # Untried, so no attempt was spent: the expiry decision belongs to the next real attempt.
    old = claimed(attempts=5, accepted_at=T0 - 10 * POLICY.max_age)
    release = postpone(old, T0 + 60, "held")
    assert release.state is DeliveryState.DEFERRED
    assert release.next_attempt_at == T0 + 60


def test_postponed_details_are_fresh_for_each_release() -> None:
    first = postpone(claimed(), T0, "held")
    first.detail["extra"] = 1
    assert postpone(claimed(), T0, "held").detail == {"postponed": True}


def test_decided_releases_count_as_tried() -> None:
    assert decide(claimed(), result(Verdict.DEFERRED), POLICY, T0, 0.5).tried is True


# --- decide: expiry --------------------------------------------------------------------------------


def test_the_worker_uses_the_outcomes_decide() -> None:
    assert worker.decide is decide


def test_a_deferral_landing_exactly_on_max_age_is_still_deferred() -> None:
    # Third failure: wait 100 * 2**2 = 400; now + 400 - accepted == max_age.
    now = T0 + POLICY.max_age - 400
    release = decide(claimed(attempts=2), result(Verdict.DEFERRED), POLICY, now, 0.0)
    assert release.state is DeliveryState.DEFERRED
    assert release.next_attempt_at == T0 + POLICY.max_age
    assert release.reply == "451 4.3.0 later"


def test_a_deferral_landing_past_max_age_expires_and_says_why() -> None:
    now = T0 + POLICY.max_age - 399
    release = decide(claimed(attempts=2), result(Verdict.DEFERRED, "421 busy"), POLICY, now, 0.0)
    assert release.state is DeliveryState.EXPIRED
    assert release.state.is_final
    assert release.next_attempt_at is None
    assert "expired" in release.reply
    assert release.reply == "expired after 3 attempts; last reply: 421 busy"


def test_an_expiry_keeps_the_details_of_the_last_attempt() -> None:
    now = T0 + POLICY.max_age
    release = decide(claimed(attempts=9), result(Verdict.DEFERRED, "421 busy", host="mx.example.org"),
                     POLICY, now, 0.0)  # fmt: skip
    assert release.state is DeliveryState.EXPIRED
    assert release.detail == {"host": "mx.example.org", "reason": "expired", "bounce_class": "soft"}


@pytest.mark.parametrize(("verdict", "reply", "command", "reason", "bounce_class"), [
    (Verdict.BOUNCED, "550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown", "RCPT",
     "userunknown", "hard"),
    (Verdict.DEFERRED, "452 4.2.2 The email account that you tried to reach is over quota", "RCPT",
     "mailboxfull", "soft"),
    (Verdict.BOUNCED, "550 5.7.1 Message rejected due to SPF policy", "DATA", "authfailure", "soft"),
])  # fmt: skip
def test_a_failed_attempt_gets_the_reason_a_bounce_message_would(
    verdict: Verdict, reply: str, command: str, reason: str, bounce_class: str
) -> None:
    code, status = int(reply[:3]), reply.split()[1]
    release = decide(claimed(), result(verdict, reply, code=code, status=status, command=command), POLICY, T0, 0.0)
    assert (release.detail["reason"], release.detail["bounce_class"]) == (reason, bounce_class)
    assert release.detail["code"] == code  # what the attempt recorded stays


def test_a_connection_that_failed_is_a_network_error_whatever_its_words() -> None:
    release = decide(claimed(), result(Verdict.DEFERRED, "mx.example.org: connection refused"), POLICY, T0, 0.0)
    assert (release.detail["reason"], release.detail["bounce_class"]) == ("networkerror", "soft")
    greeted = decide(claimed(), result(Verdict.DEFERRED, "mx.example.org greeted with 554 5.7.1 Client host blocked"),
                     POLICY, T0, 0.0)  # fmt: skip
    assert greeted.detail["reason"] == "blocked"  # an SMTP reply, even without a recorded code


def test_a_delivery_carries_no_reason() -> None:
    release = decide(claimed(), result(Verdict.DELIVERED, "250 2.0.0 ok", code=250), POLICY, T0, 0.0)
    assert release.detail == {"code": 250}


@pytest.mark.parametrize(
    ("verdict", "state"), [(Verdict.DELIVERED, DeliveryState.DELIVERED),
                           (Verdict.BOUNCED, DeliveryState.BOUNCED)],
)  # fmt: skip
def test_final_verdicts_past_max_age_are_not_expiries(verdict: Verdict, state: DeliveryState) -> None:
    now = T0 + 3 * POLICY.max_age
    release = decide(claimed(attempts=30), result(verdict, "250 ok"), POLICY, now, 0.0)
    assert (release.state, release.next_attempt_at, release.reply) == (state, None, "250 ok")


@given(
    attempts=st.integers(min_value=0, max_value=60),
    age=st.integers(min_value=0, max_value=3 * int(POLICY.max_age)),
    draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_a_deferral_is_scheduled_within_max_age_or_expires(
    attempts: int, age: int, draw: float
) -> None:
    now = T0 + age
    release = decide(claimed(attempts=attempts), result(Verdict.DEFERRED), POLICY, now, draw)
    wait = min(POLICY.cap, POLICY.base * 2 ** min(attempts, 32))  # jitter_floor 1: no jitter
    if age + wait <= POLICY.max_age:
        assert release.state is DeliveryState.DEFERRED
        assert release.next_attempt_at == now + wait
    else:
        assert release.state is DeliveryState.EXPIRED
        assert release.next_attempt_at is None
        assert release.reply == f"expired after {attempts + 1} attempts; last reply: 451 4.3.0 later"
