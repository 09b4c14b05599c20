"""Traffic shaping per destination: `rule_for`, `destination_key`, `share`, `daily_cap`,
`TokenBucket` and `Health`, all with the times passed in."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from postroom.config import DestinationSettings
from postroom.delivery.shaping import (
    BUILTIN_RULES,
    DEFAULT_RULE,
    RECOVERY_SUCCESSES,
    SLOWEST_FACTOR,
    Health,
    TokenBucket,
    daily_cap,
    destination_key,
    rule_for,
    share,
)

GMAIL_MX = ["gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com"]


def rule(match: str, **values: object) -> DestinationSettings:
    return DestinationSettings.model_validate({"match": match, **values})


def builtin(match: str) -> DestinationSettings:
    [found] = [r for r in BUILTIN_RULES if r.match == match]
    return found


# --- rule_for -------------------------------------------------------------------------------------


def test_no_rule_matching_gives_the_default_rule() -> None:
    mine = rule("*.example.net", max_connections=3)
    assert rule_for("example.org", ["mx.example.org"], [mine]) is DEFAULT_RULE
    assert rule_for("example.org", [], []) is DEFAULT_RULE
    assert DEFAULT_RULE.match == "*"


def test_a_user_rule_matches_the_recipient_domain() -> None:
    mine = rule("example.com", max_connections=3)
    assert rule_for("example.com", ["mx.hosting.example"], [mine]) is mine


def test_a_user_rule_matches_any_of_the_mx_hosts() -> None:
    mine = rule("*.mx.example.net", max_connections=3)
    hosts = ["backup.other.example", "in1.mx.example.net"]
    assert rule_for("customer.example", hosts, [mine]) is mine


def test_the_first_matching_user_rule_wins_whether_it_matched_domain_or_mx() -> None:
    by_mx = rule("*.example.net", max_connections=3)
    by_domain = rule("example.com", max_connections=7)
    assert rule_for("example.com", ["mx.example.net"], [by_mx, by_domain]) is by_mx
    assert rule_for("example.com", ["mx.example.net"], [by_domain, by_mx]) is by_domain


def test_matching_ignores_case_of_names_and_patterns() -> None:
    mine = rule("*.EXAMPLE.net", max_connections=3)
    assert mine.match == "*.example.net"
    assert rule_for("Customer.ORG", ["MX1.Example.NET"], [mine]) is mine
    assert rule_for("EXAMPLE.COM", [], [rule("Example.Com")]).match == "example.com"


@pytest.mark.parametrize(
    ("domain", "hosts", "pattern"),
    [
        ("gmail.com", GMAIL_MX, "*.google.com"),
        ("example.com", ["aspmx.l.google.com"], "*.google.com"),
        ("example.com", ["example-com.mail.protection.outlook.com"], "*.protection.outlook.com"),
        ("yahoo.com", ["mta5.am0.yahoodns.net"], "*.yahoodns.net"),
        ("icloud.com", ["mx01.mail.icloud.com"], "*.mail.icloud.com"),
        ("gmx.de", ["mx00.emig.gmx.net"], "*.gmx.net"),
        ("web.de", ["mx-ha03.web.de"], "*.web.de"),
    ],
)
def test_built_in_rules_apply_by_mx_host_when_no_user_rule_matches(
    domain: str, hosts: list[str], pattern: str
) -> None:
    unrelated = rule("*.example.net", max_connections=3)
    assert rule_for(domain, hosts, [unrelated]) is builtin(pattern)


def test_user_rules_come_before_the_built_in_rules() -> None:
    mine = rule("*.google.com", max_connections=2)
    assert rule_for("gmail.com", GMAIL_MX, [mine]) is mine
    catch_all = rule("*", max_connections=4)
    assert rule_for("gmail.com", GMAIL_MX, [catch_all]) is catch_all


def test_a_wildcard_subdomain_pattern_does_not_match_the_bare_domain() -> None:
    assert rule_for("google.com", [], []) is DEFAULT_RULE


def test_mx_hosts_may_be_any_iterable() -> None:
    mine = rule("*.example.net")
    assert rule_for("example.com", (h for h in ["mx.example.net"]), [mine]) is mine


# --- destination_key, share --------------------------------------------------------------------


def test_destination_key_is_the_sorted_lower_case_host_names() -> None:
    assert destination_key(["MX2.Example.com", "mx1.example.com"]) == (
        "mx1.example.com,mx2.example.com"
    )
    assert destination_key(["a.example", "b.example"]) != destination_key(["a.example"])


_HOSTS = st.lists(st.from_regex(r"[a-zA-Z0-9]{1,8}(\.[a-zA-Z0-9]{1,8}){1,3}", fullmatch=True),
                  min_size=1, max_size=6)  # fmt: skip


@given(data=st.data(), hosts=_HOSTS)
def test_destination_key_does_not_depend_on_the_order_of_the_hosts(
    data: st.DataObject, hosts: list[str]
) -> None:
    shuffled = data.draw(st.permutations(hosts))
    assert destination_key(shuffled) == destination_key(hosts)
    assert destination_key([h.upper() for h in hosts]) == destination_key(hosts)


@pytest.mark.parametrize(
    ("limit", "processes", "each"),
    [(100.0, 1, 100.0), (100.0, 4, 25.0), (10.0, 4, 2.5), (0.0, 4, 0.0), (100.0, 0, 100.0),
     (100.0, -3, 100.0)],
)  # fmt: skip
def test_share_divides_a_host_wide_limit_among_processes(
    limit: float, processes: int, each: float
) -> None:
    assert share(limit, processes) == each


# --- daily_cap -------------------------------------------------------------------------------------

START = datetime.date(2026, 3, 10)


def day(offset: int) -> datetime.date:
    return START + datetime.timedelta(days=offset)


def test_no_caps_means_no_daily_cap() -> None:
    assert daily_cap(rule("*"), day(0)) is None
    assert daily_cap(rule("*"), day(0), processes=8) is None


@pytest.mark.parametrize(
    ("limit", "processes", "cap"), [(1000, 1, 1000), (1000, 4, 250), (1000, 3, 333), (2, 5, 1)]
)
def test_daily_limit_is_shared_rounded_down_and_never_below_one(
    limit: int, processes: int, cap: int
) -> None:
    assert daily_cap(rule("*", daily_limit=limit), day(0), processes) == cap


WARMUP = {"warmup": [100, 200, 400], "warmup_start": START.isoformat()}


@pytest.mark.parametrize(
    ("offset", "cap"),
    [(-400, 100), (-1, 100), (0, 100), (1, 200), (2, 400), (3, None), (365, None)],
)
def test_warmup_caps_by_day_then_no_cap(offset: int, cap: int | None) -> None:
    assert daily_cap(rule("*", **WARMUP), day(offset)) == cap


@pytest.mark.parametrize(("offset", "cap"), [(-1, 100), (0, 100), (2, 400), (3, 5000), (90, 5000)])
def test_after_warmup_the_daily_limit_applies(offset: int, cap: int) -> None:
    assert daily_cap(rule("*", daily_limit=5000, **WARMUP), day(offset)) == cap


def test_warmup_caps_are_shared_among_processes_and_never_below_one() -> None:
    assert daily_cap(rule("*", **WARMUP), day(1), processes=3) == 66  # 200 / 3 rounded down
    tiny = rule("*", warmup=[1, 2], warmup_start=START.isoformat())
    assert daily_cap(tiny, day(0), processes=4) == 1
    assert daily_cap(tiny, day(1), processes=16) == 1


# --- TokenBucket -----------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_a_bucket_without_a_rate_never_waits(rate: float) -> None:
    bucket = TokenBucket(rate, burst=1.0, now=0.0)
    for _ in range(1000):
        assert bucket.wait(0.0) == 0.0
        bucket.take(0.0)
    assert bucket.wait(0.0) == 0.0


def test_a_full_bucket_lets_a_burst_through_then_spaces_messages() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0, now=100.0)
    for _ in range(3):
        assert bucket.wait(100.0) == 0.0
        bucket.take(100.0)
    assert bucket.wait(100.0) == 0.5
    assert bucket.wait(100.25) == 0.25
    assert bucket.wait(100.5) == 0.0


def test_taking_without_waiting_runs_into_debt() -> None:
    bucket = TokenBucket(rate=4.0, burst=1.0, now=0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    bucket.take(0.0)  # two tokens owed
    assert bucket.wait(0.0) == 0.75  # (1 - -2) / 4
    assert bucket.wait(0.5) == 0.25


def test_refill_is_capped_at_the_burst() -> None:
    bucket = TokenBucket(rate=8.0, burst=2.0, now=0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    # An hour idle refills 28,800 tokens' worth, but the bucket holds two.
    for _ in range(2):
        assert bucket.wait(3600.0) == 0.0
        bucket.take(3600.0)
    assert bucket.wait(3600.0) == 0.125


def test_a_burst_below_one_still_lets_one_message_through() -> None:
    bucket = TokenBucket(rate=1.0, burst=0.0, now=0.0)
    assert bucket.burst == 1.0
    assert bucket.wait(0.0) == 0.0
    bucket.take(0.0)
    assert bucket.wait(0.0) == 1.0


def test_a_clock_going_back_adds_no_tokens() -> None:
    bucket = TokenBucket(rate=1.0, burst=1.0, now=10.0)
    bucket.take(10.0)
    assert bucket.wait(5.0) == 1.0
    assert bucket.wait(10.0) == 1.0
    assert bucket.wait(10.5) == 0.5


@given(
    rate=st.sampled_from([0.5, 1.0, 2.0, 10.0, 100.0]),
    burst=st.integers(min_value=1, max_value=20),
    gaps=st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=200),
)
def test_a_bucket_never_lets_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float]
) -> None:
    bucket = TokenBucket(rate, float(burst), now=0.0)
    now, sent = 0.0, 0
    for gap in gaps:
        now += gap
        if bucket.wait(now) == 0.0:
            bucket.take(now)
            sent += 1
        assert sent <= burst + rate * now + 1e-9


# --- Health ----------------------------------------------------------------------------------------


def health(base: float = 60.0, maximum: float = 3600.0) -> Health:
    return Health(backoff_base=base, backoff_max=maximum)


def throttle_incidents(state: Health, count: int, now: float = 0.0) -> float:
    """`count` separate throttling incidents, each as the previous suspension ends."""
    for _ in range(count):
        now = state.throttled(now, "421 4.7.0 slow down")
    return now


def test_a_new_destination_is_healthy() -> None:
    state = health()
    assert (state.factor, state.reason, state.suspended(0.0)) == (1.0, "", False)
    assert (state.connections(20), state.rate(100.0)) == (20, 100.0)


def test_each_throttle_halves_the_speed_down_to_the_slowest_factor() -> None:
    state = health()
    factors = []
    for _ in range(6):
        throttle_incidents(state, 1, state.suspended_until)
        factors.append(state.factor)
    assert factors == [0.5, 0.25, 0.125, 0.0625, 0.0625, 0.0625]
    assert SLOWEST_FACTOR == 0.0625


def test_consecutive_suspensions_double_the_backoff_up_to_the_maximum() -> None:
    state = health(base=60.0, maximum=1000.0)
    untils = [state.throttled(10_000.0 * i, "421 busy") - 10_000.0 * i for i in range(6)]
    assert untils == [60.0, 120.0, 240.0, 480.0, 960.0, 1000.0]


def test_suspension_lasts_until_the_returned_time() -> None:
    state = health()
    until = state.throttled(1000.0, "421 4.7.0 slow down")
    assert until == state.suspended_until == 1060.0
    assert state.suspended(1000.0) and state.suspended(1059.5)
    assert not state.suspended(1060.0)
    assert state.reason == "throttled: 421 4.7.0 slow down"


def test_push_backs_during_a_suspension_are_the_same_incident() -> None:
    state = health()
    assert state.throttled(0.0, "421 first") == 60.0
    # The other connections that were in flight report too: no slower, no longer.
    assert state.throttled(30.0, "421 second") == 60.0
    assert state.unreachable(59.5, "refused") == 60.0
    assert (state.factor, state.reason) == (0.5, "throttled: 421 first")
    # Once the suspension is over, a push-back is a new incident: slower, suspended longer.
    assert state.throttled(60.0, "421 again") == 180.0
    assert (state.factor, state.reason) == (0.25, "throttled: 421 again")


def test_a_success_resets_the_backoff_and_the_reason() -> None:
    state = health()
    state.throttled(0.0, "421 busy")
    assert state.throttled(1000.0, "421 busy") == 1120.0
    state.succeeded()
    assert state.reason == ""
    assert state.throttled(5000.0, "421 busy") == 5060.0


def test_unreachable_suspends_without_slowing_down() -> None:
    state = health()
    assert state.unreachable(100.0, "connection refused") == 160.0
    assert (state.factor, state.reason) == (1.0, "unreachable: connection refused")
    assert state.suspended(159.0) and not state.suspended(160.0)
    assert state.unreachable(200.0, "timed out") == 320.0  # consecutive: doubled
    assert state.factor == 1.0


def test_a_throttle_after_an_unreachable_continues_the_backoff() -> None:
    state = health()
    state.unreachable(0.0, "no route")
    assert state.throttled(100.0, "421 busy") == 220.0
    assert state.factor == 0.5


def test_a_late_report_never_shortens_a_suspension() -> None:
    state = health()
    state.throttled(0.0, "421 busy")
    assert state.throttled(1000.0, "421 busy") == 1120.0
    assert state.throttled(10.0, "421 from an older connection") == 1120.0
    assert state.suspended_until == 1120.0


def test_speed_doubles_back_after_enough_successes_and_not_before() -> None:
    state = health()
    throttle_incidents(state, 2)
    assert state.factor == 0.25
    for _ in range(RECOVERY_SUCCESSES - 1):
        state.succeeded()
    assert state.factor == 0.25
    state.succeeded()
    assert state.factor == 0.5
    for _ in range(RECOVERY_SUCCESSES - 1):
        state.succeeded()
    assert state.factor == 0.5  # the count started again after the first doubling
    state.succeeded()
    assert state.factor == 1.0
    for _ in range(3 * RECOVERY_SUCCESSES):
        state.succeeded()
    assert state.factor == 1.0


def test_successes_before_a_throttle_do_not_count_towards_recovery() -> None:
    state = health()
    for _ in range(RECOVERY_SUCCESSES - 1):
        state.succeeded()
    state.throttled(0.0, "421 busy")
    state.succeeded()
    assert state.factor == 0.5
    for _ in range(RECOVERY_SUCCESSES - 2):
        state.succeeded()
    assert state.factor == 0.5
    state.succeeded()
    assert state.factor == 1.0


def test_connections_scale_with_the_factor_but_never_below_one() -> None:
    state = health()
    assert state.connections(20) == 20
    assert state.connections(20 / 3) == 6  # a process's share, rounded down
    assert state.connections(0.5) == 1  # a share below one connection is still one
    state.throttled(0.0, "421 busy")
    assert state.connections(20) == 10
    assert state.connections(1) == 1
    throttle_incidents(state, 5, state.suspended_until)
    assert state.factor == SLOWEST_FACTOR
    assert state.connections(20) == 1  # 20 / 16 rounded down
    assert state.connections(10) == 1


def test_rate_scales_with_the_factor_and_no_cap_stays_no_cap() -> None:
    state = health()
    throttle_incidents(state, 2)
    assert state.rate(100.0) == 25.0
    assert state.rate(0.0) == 0.0


_EVENTS = st.lists(
    st.tuples(st.sampled_from(["throttled", "unreachable", "succeeded"]),
              st.floats(min_value=0.0, max_value=1e6)),
    max_size=300,
)  # fmt: skip


@given(events=_EVENTS, base=st.floats(1.0, 600.0), maximum=st.floats(1.0, 7200.0))
def test_health_stays_within_its_bounds_whatever_happens(
    events: list[tuple[str, float]], base: float, maximum: float
) -> None:
    state = health(base, maximum)
    for event, now in events:
        was_suspended, previous_until, previous_factor = (
            state.suspended(now), state.suspended_until, state.factor
        )
        if event == "succeeded":
            state.succeeded()
        else:
            push_back = state.throttled if event == "throttled" else state.unreachable
            until = push_back(now, "421 busy")
            assert until == state.suspended_until
            if was_suspended:  # the same incident
                assert (until, state.factor) == (previous_until, previous_factor)
            else:  # a new one: suspended for a backoff in [min(base, max), max]
                assert now + min(base, maximum) <= until <= now + maximum + 1e-6
        assert SLOWEST_FACTOR <= state.factor <= 1.0
        assert state.suspended_until >= previous_until
        assert state.connections(1) == 1 and state.connections(16) >= 1
