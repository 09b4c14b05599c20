"""`next_attempt_at`: exponential backoff with bounded jitter, a cap, and expiry after max_age."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from postroom.queue.retry import RetryPolicy, next_attempt_at

POLICY = RetryPolicy(base=60.0, cap=3600.0, max_age=5 * 86400.0, jitter_floor=0.5)
T0 = 1_750_000_000.0
ALMOST_ONE = 1.0 - 2**-53  # the largest draw random.random() can return


def wait(attempts: int, draw: float, policy: RetryPolicy = POLICY) -> float:
    when = next_attempt_at(policy, attempts, accepted_at=0.0, now=0.0, draw=draw)
    assert when is not None
    return when


def test_wait_doubles_with_each_failure_until_the_cap() -> None:
    waits = [wait(n, ALMOST_ONE) for n in range(1, 10)]
    assert waits[:6] == pytest.approx([60, 120, 240, 480, 960, 1920])
    assert waits[6:] == pytest.approx([3600, 3600, 3600])  # capped


def test_draw_zero_gives_the_jitter_floor() -> None:
    assert wait(1, 0.0) == pytest.approx(30.0)
    assert wait(3, 0.0) == pytest.approx(120.0)
    assert wait(20, 0.0) == pytest.approx(1800.0)


def test_huge_attempt_counts_do_not_overflow() -> None:
    assert wait(10_000, 0.5) == pytest.approx(3600 * 0.75)


def test_next_attempt_counts_from_now_not_from_acceptance() -> None:
    when = next_attempt_at(POLICY, 2, accepted_at=T0, now=T0 + 1000, draw=0.0)
    assert when == pytest.approx(T0 + 1000 + 60)


def test_a_retry_that_would_land_past_max_age_expires() -> None:
    policy = RetryPolicy(base=60.0, cap=3600.0, max_age=1000.0)
    assert next_attempt_at(policy, 1, accepted_at=T0, now=T0 + 900, draw=0.0) == T0 + 930
    assert next_attempt_at(policy, 1, accepted_at=T0, now=T0 + 980, draw=0.0) is None
    assert next_attempt_at(policy, 1, accepted_at=T0, now=T0 + 5000, draw=0.0) is None


def test_landing_exactly_on_max_age_still_retries() -> None:
    policy = RetryPolicy(base=100.0, cap=100.0, max_age=1000.0, jitter_floor=1.0)
    assert next_attempt_at(policy, 1, accepted_at=T0, now=T0 + 900, draw=0.3) == T0 + 1000


@pytest.mark.parametrize("attempts", [0, -1])
def test_attempts_below_one_is_a_caller_error(attempts: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        next_attempt_at(POLICY, attempts, accepted_at=T0, now=T0, draw=0.5)


@given(
    attempts=st.integers(min_value=1, max_value=200),
    draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    base=st.floats(min_value=1.0, max_value=600.0),
    cap=st.floats(min_value=1.0, max_value=86400.0),
    floor=st.floats(min_value=0.0, max_value=1.0),
)
def test_wait_stays_within_floor_and_exponential_ceiling(
    attempts: int, draw: float, base: float, cap: float, floor: float
) -> None:
    policy = RetryPolicy(base=base, cap=cap, max_age=1e12, jitter_floor=floor)
    ceiling = min(cap, base * 2 ** (attempts - 1))
    waited = wait(attempts, draw, policy)
    assert floor * ceiling * (1 - 1e-9) <= waited <= ceiling * (1 + 1e-9)
    assert waited <= cap * (1 + 1e-9)


@given(
    attempts=st.integers(min_value=1, max_value=60),
    low=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    high=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_wait_grows_with_the_draw_and_never_shrinks_with_attempts(
    attempts: int, low: float, high: float
) -> None:
    low, high = sorted((low, high))
    assert wait(attempts, low) <= wait(attempts, high)
    assert wait(attempts, low) <= wait(attempts + 1, low)


@given(
    now_offset=st.floats(min_value=0.0, max_value=10 * 86400.0),
    attempts=st.integers(min_value=1, max_value=50),
    draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_a_scheduled_retry_never_lands_after_max_age(
    now_offset: float, attempts: int, draw: float
) -> None:
    when = next_attempt_at(POLICY, attempts, accepted_at=T0, now=T0 + now_offset, draw=draw)
    if when is None:  # expired, and only because the retry would have landed past the deadline
        assert now_offset + wait(attempts, draw) > POLICY.max_age * (1 - 1e-12)
    else:
        assert T0 + now_offset < when <= T0 + POLICY.max_age
