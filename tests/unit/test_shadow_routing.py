"""Shadow mode's pure core: the choice per recipient, the keyed split, the guard's limits and
where a breach or a healthy ramp moves a route."""

from __future__ import annotations

import pytest

from postroom.core.types import INHOUSE_ROUTE, LOOPS_ROUTE
from postroom.shadow.compare import Figures, merged
from postroom.shadow.guard import breaches, stepped_back, stepped_up
from postroom.shadow.routing import BUCKETS, Mode, RouteSetting, bucket, checked, choose, setting_for
from postroom.shadow.settings import GuardSettings, RampSettings

KEY = b"routing-key-for-tests"
ADDRESSES = [f"user{n}@example.com" for n in range(5000)]


def split(percent: int, **fields: object) -> RouteSetting:
    return RouteSetting("news", "", Mode.SPLIT, percent, **fields)  # type: ignore[arg-type]


def test_modes_choose_the_path_and_the_shadow_copy() -> None:
    assert choose(None, "a@example.com", KEY).route == INHOUSE_ROUTE
    assert choose(RouteSetting("s", "", Mode.INHOUSE), "a@example.com", KEY).route == INHOUSE_ROUTE
    legacy = choose(RouteSetting("s", "", Mode.LEGACY), "a@example.com", KEY)
    assert (legacy.route, legacy.shadow_copy) == (LOOPS_ROUTE, False)
    shadow = choose(RouteSetting("s", "", Mode.SHADOW), "a@example.com", KEY)
    assert (shadow.route, shadow.shadow_copy) == (LOOPS_ROUTE, True)


@pytest.mark.parametrize("percent", [0, 1, 5, 25, 50, 100])
def test_split_sends_about_its_share_in_house(percent: int) -> None:
    inhouse = sum(choose(split(percent), address, KEY).route == INHOUSE_ROUTE for address in ADDRESSES)
    assert abs(inhouse / len(ADDRESSES) * 100 - percent) <= 2.0
    if percent in (0, 100):
        assert inhouse == len(ADDRESSES) * percent // 100


def test_raising_the_share_only_moves_recipients_from_loops_to_in_house() -> None:
    previous: set[str] = set()
    for percent in (1, 5, 25, 50, 100):
        now = {a for a in ADDRESSES if choose(split(percent), a, KEY).route == INHOUSE_ROUTE}
        assert previous <= now
        previous = now


def test_the_split_is_stable_per_address_and_keyed() -> None:
    assert bucket(KEY, "Ada@Example.com") == bucket(KEY, "ada@example.com") == bucket(KEY, " ada@example.com")
    assert 0 <= bucket(KEY, "ada@example.com") < BUCKETS
    other = [bucket(b"another-key", a) for a in ADDRESSES[:200]]
    assert other != [bucket(KEY, a) for a in ADDRESSES[:200]]


def test_the_template_setting_wins_over_the_stream_setting() -> None:
    stream = RouteSetting("news", "", Mode.LEGACY)
    template = RouteSetting("news", "welcome", Mode.INHOUSE)
    settings = {("news", ""): stream, ("news", "welcome"): template}
    assert setting_for(settings, "news", "welcome") is template
    assert setting_for(settings, "news", "digest") is stream
    assert setting_for(settings, "news", None) is stream
    assert setting_for(settings, "billing", "welcome") is None


@pytest.mark.parametrize("setting, problem", [
    (split(101), "between 0 and 100"),
    (RouteSetting("s", "", Mode.LEGACY, 30), "split only"),
    (RouteSetting("s", "", Mode.SPLIT, 10, fallback=True), "inhouse only"),
    (RouteSetting("s", "", Mode.INHOUSE, ramp=True), "ramp"),
])  # fmt: skip
def test_bad_settings_are_refused_with_the_reason(setting: RouteSetting, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        checked(setting)


def figures(route: str, sent: int, **counts: int) -> Figures:
    return Figures("news", "", route, sent, **counts)  # type: ignore[arg-type]


def test_the_guard_judges_excess_over_loops_only_past_the_minimum() -> None:
    limits = GuardSettings(min_messages=100, max_hard_bounce_excess=1.0, max_complaint_excess=0.1)
    loops = figures(LOOPS_ROUTE, 1000, bounced_hard=10)  # 1 %
    assert breaches(figures(INHOUSE_ROUTE, 99, bounced_hard=50), loops, limits) == []  # too few to judge
    assert breaches(figures(INHOUSE_ROUTE, 200, bounced_hard=4), loops, limits) == []  # 2 % = 1 % + 1 point
    [breach] = breaches(figures(INHOUSE_ROUTE, 200, bounced_hard=5), loops, limits)  # 2.5 %
    assert (breach.limit, breach.inhouse_rate, breach.loops_rate) == ("hard_bounce", 2.5, 1.0)
    found = breaches(figures(INHOUSE_ROUTE, 1000, complained=3, failed=30), figures(LOOPS_ROUTE, 0), limits)
    assert [b.limit for b in found] == ["complaint", "failed"]


def test_a_breach_steps_back_down_the_ramp_then_to_legacy() -> None:
    ramp, guard = RampSettings(steps=(1, 5, 25, 50, 100)), GuardSettings()
    assert stepped_back(split(50), ramp, guard).percent == 25
    assert stepped_back(split(30), ramp, guard).percent == 25
    assert stepped_back(split(1), ramp, guard).mode is Mode.LEGACY
    back = stepped_back(RouteSetting("news", "", Mode.INHOUSE, fallback=True), ramp, guard)
    assert (back.mode, back.percent, back.fallback) == (Mode.SPLIT, 50, False)
    assert stepped_back(split(50), ramp, GuardSettings(step_back="legacy")).mode is Mode.LEGACY


def test_a_ramp_route_goes_up_one_step_and_ends_in_house() -> None:
    ramp = RampSettings(steps=(1, 5, 25, 50, 100))
    assert stepped_up(split(5), ramp) is None  # not a ramp route
    assert stepped_up(split(5, ramp=True), ramp) == split(25, ramp=True)
    top = stepped_up(split(50, ramp=True), ramp)
    assert top is not None and (top.mode, top.ramp) == (Mode.INHOUSE, False)


def test_figures_merge_per_route_and_give_percentiles() -> None:
    a = figures(INHOUSE_ROUTE, 10, delivered=9)
    a.latencies = [1.0, 2.0, 3.0]
    b = figures(INHOUSE_ROUTE, 10, delivered=10)
    b.latencies = [4.0]
    total = merged([a, b, figures(LOOPS_ROUTE, 50)], INHOUSE_ROUTE)
    assert (total.sent, total.delivered, total.rate(total.delivered)) == (20, 19, 95.0)
    assert total.p50 == 2.5 and total.p95 is not None and 3.8 <= total.p95 <= 4.0
    assert figures(LOOPS_ROUTE, 0).rate(0) == 0.0 and figures(LOOPS_ROUTE, 0).p50 is None
