"""`LoginThrottle`: a sliding window of failed logins per client address."""

from __future__ import annotations

from postroom.core.clock import FakeClock
from postroom.smtp.throttle import LoginThrottle


def test_blocks_after_the_limit_and_only_that_address() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(clock, limit=3, window=60.0)
    for _ in range(2):
        throttle.record_failure("192.0.2.1")
        assert not throttle.blocked("192.0.2.1")
    throttle.record_failure("192.0.2.1")
    assert throttle.blocked("192.0.2.1")
    assert not throttle.blocked("192.0.2.2")


def test_window_slides_failures_out_one_by_one() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(clock, limit=3, window=60.0)
    throttle.record_failure("a")
    clock.advance(20)
    throttle.record_failure("a")
    clock.advance(20)
    throttle.record_failure("a")
    assert throttle.blocked("a")
    clock.advance(20)  # the first failure is exactly at the horizon: still counted
    assert throttle.blocked("a")
    clock.advance(0.001)  # now it is out; two remain
    assert not throttle.blocked("a")
    throttle.record_failure("a")
    assert throttle.blocked("a")
    clock.advance(60.1)
    assert not throttle.blocked("a")


def test_success_resets_the_count() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(clock, limit=2, window=60.0)
    throttle.record_failure("a")
    throttle.record_success("a")
    throttle.record_failure("a")
    assert not throttle.blocked("a")
    throttle.record_failure("a")
    assert throttle.blocked("a")
    throttle.record_success("a")
    assert not throttle.blocked("a")


def test_success_for_an_unknown_address_is_harmless() -> None:
    throttle = LoginThrottle(FakeClock(), limit=1, window=60.0)
    throttle.record_success("never-seen")
    assert not throttle.blocked("never-seen")


def test_memory_is_bounded_by_forgetting_the_oldest_address() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(clock, limit=1, window=3600.0, max_tracked=3)
    for address in ("a", "b", "c"):
        throttle.record_failure(address)
    assert all(throttle.blocked(a) for a in ("a", "b", "c"))
    throttle.record_failure("d")
    assert not throttle.blocked("a")  # forgotten to make room
    assert all(throttle.blocked(a) for a in ("b", "c", "d"))
    assert len(throttle._failures) == 3


def test_a_tracked_address_adds_failures_without_evicting_others() -> None:
    throttle = LoginThrottle(FakeClock(), limit=2, window=3600.0, max_tracked=2)
    throttle.record_failure("a")
    throttle.record_failure("b")
    throttle.record_failure("a")
    assert throttle.blocked("a")
    assert len(throttle._failures) == 2


def test_expired_addresses_are_dropped_when_checked() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(clock, limit=5, window=10.0)
    throttle.record_failure("a")
    clock.advance(11)
    assert not throttle.blocked("a")
    assert "a" not in throttle._failures
