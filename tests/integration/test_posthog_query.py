"""PostHogQueries against the fake Query API on 127.0.0.1: the request PostHog gets (HogQL with the
period's bounds as UTC literals, the name, blocking refresh, the Bearer key), results parsed
whatever the shape of `types`, the cache (per period, never errors), and every way PostHog fails:
429 with Retry-After, 500 and a hang within the budget, a HogQL error named, a refused key that is
never shown."""

from __future__ import annotations

import asyncio
import datetime
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from postroom.core.clock import FakeClock
from postroom.sources.posthog.query import (
    PostHogAuthFailed,
    PostHogQueries,
    PostHogQueryError,
    PostHogUnavailable,
    QueryResult,
)
from postroom.sources.posthog.query_settings import DEFAULT_QUERIES, NamedQuery, PostHogSettings
from tests.posthog_fake import (
    API_KEY,
    PROJECT_ID,
    SERVER_ERROR,
    Answer,
    FakePostHog,
    fake_posthog,
    hang,
    hogql_error,
    hogql_response,
    rate_limited,
)

UTC = datetime.UTC
WEEK = (datetime.datetime(2026, 11, 16, tzinfo=UTC), datetime.datetime(2026, 11, 23, tzinfo=UTC))
NEXT_WEEK = (datetime.datetime(2026, 11, 23, tzinfo=UTC), datetime.datetime(2026, 11, 30, tzinfo=UTC))


class Seen:
    def __init__(self) -> None:
        self.outcomes: list[tuple[str, str]] = []

    def observe(self, name: str, outcome: str, seconds: float) -> None:
        assert seconds >= 0
        self.outcomes.append((name, outcome))


@pytest.fixture
async def fake() -> AsyncIterator[FakePostHog]:
    async with fake_posthog() as running:
        yield running


def client(fake: FakePostHog, key: str = API_KEY, **kwargs: Any) -> PostHogQueries:
    kwargs.setdefault("timeout", 1.0)
    kwargs.setdefault("budget", 3.0)
    kwargs.setdefault("backoff", 0.01)
    return PostHogQueries(fake.url, PROJECT_ID, key, rng=random.Random(7), **kwargs)


async def test_a_hogql_query_is_sent_named_blocking_with_the_period_as_utc_literals(fake: FakePostHog) -> None:
    queries = client(fake)
    try:
        result = await queries.named("wau", DEFAULT_QUERIES["wau"], WEEK)
    finally:
        await queries.aclose()

    (request,) = fake.requests
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.body["name"] == "postroom:wau"
    assert request.body["refresh"] == "blocking"
    assert request.body["query"]["kind"] == "HogQLQuery"
    sql = request.body["query"]["query"]
    assert "timestamp >= toDateTime('2026-11-16 00:00:00', 'UTC') AND timestamp < toDateTime('2026-11-23 00:00:00', 'UTC')" in sql
    assert "{" not in sql and "now()" not in sql
    assert result.columns == ("week", "wau")
    assert result.types == ("Date", "UInt64")
    assert result.rows == (["2026-11-02", 1840], ["2026-11-09", 1902], ["2026-11-16", 2051])
    assert (result.is_cached, result.last_refresh) == (False, "2026-11-23T07:00:03Z")
    assert result.period == WEEK


async def test_bounds_in_another_timezone_are_sent_in_utc(fake: FakePostHog) -> None:
    paris = datetime.timezone(datetime.timedelta(hours=1))
    period = (datetime.datetime(2026, 11, 16, 1, 0, tzinfo=paris), datetime.datetime(2026, 11, 16, 13, 30, tzinfo=paris))
    queries = client(fake)
    try:
        await queries.hogql("x", "SELECT 1 WHERE t >= {since} AND t < {until}", period)
    finally:
        await queries.aclose()
    assert fake.requests[0].sql == ("SELECT 1 WHERE t >= toDateTime('2026-11-16 00:00:00', 'UTC') "
                                    "AND t < toDateTime('2026-11-16 12:30:00', 'UTC')")  # fmt: skip


@pytest.mark.parametrize(("types", "expected"), [
    (["Date", "UInt64"], ("Date", "UInt64")),
    ([["week", "Date"], ["wau", "UInt64"]], ("Date", "UInt64")),
    (None, ()),
    ([5, ["x"]], ("", "")),
])  # fmt: skip
async def test_types_are_read_as_pairs_or_strings_or_not_at_all(
    fake: FakePostHog, types: Any, expected: tuple[str, ...]
) -> None:
    body = hogql_response(["week", "wau"], types, [["2026-11-16", 3]])
    if types is None:
        del body["types"]
    fake.answer(Answer(body=body))
    queries = client(fake)
    try:
        result = await queries.hogql("wau", "SELECT 1", WEEK)
    finally:
        await queries.aclose()
    assert result.types == expected
    assert result.rows == (["2026-11-16", 3],)


async def test_an_insight_query_is_passed_through_with_the_period_as_its_date_range(fake: FakePostHog) -> None:
    spec = NamedQuery(query={"kind": "TrendsQuery", "series": [{"kind": "EventsNode", "event": None, "math": "dau"}],
                             "interval": "week"})  # fmt: skip
    queries = client(fake)
    try:
        result = await queries.named("trend", spec, WEEK)
    finally:
        await queries.aclose()
    sent = fake.requests[0].body["query"]
    assert sent["kind"] == "TrendsQuery" and sent["interval"] == "week"
    assert sent["dateRange"] == {"date_from": "2026-11-16T00:00:00+00:00", "date_to": "2026-11-23T00:00:00+00:00",
                                 "explicitDate": True}  # fmt: skip
    assert result.columns == () and result.rows[0]["label"] == "trend"
    assert result.is_cached is True


async def test_the_cache_answers_the_same_period_and_asks_again_for_another(fake: FakePostHog) -> None:
    clock, seen = FakeClock(), Seen()
    queries = client(fake, clock=clock, observer=seen, cache_ttl=60)
    try:
        first = await queries.named("wau", DEFAULT_QUERIES["wau"], WEEK)
        again = await queries.named("wau", DEFAULT_QUERIES["wau"], WEEK)
        assert again is first and len(fake.requests) == 1
        await queries.named("wau", DEFAULT_QUERIES["wau"], NEXT_WEEK)
        assert len(fake.requests) == 2
        await queries.named("mau", DEFAULT_QUERIES["mau"], WEEK)
        assert len(fake.requests) == 3
        clock.advance(61)  # past the TTL: asked again
        await queries.named("wau", DEFAULT_QUERIES["wau"], WEEK)
        assert len(fake.requests) == 4
    finally:
        await queries.aclose()
    assert seen.outcomes == [("wau", "ok"), ("wau", "cached"), ("wau", "ok"), ("mau", "ok"), ("wau", "ok")]


async def test_the_same_query_asked_twice_at_once_is_sent_once(fake: FakePostHog) -> None:
    fake.answer(Answer(delay=0.2))
    seen = Seen()
    queries = client(fake, observer=seen)
    try:
        first, second = await asyncio.gather(queries.named("wau", DEFAULT_QUERIES["wau"], WEEK),
                                             queries.named("wau", DEFAULT_QUERIES["wau"], WEEK))  # fmt: skip
    finally:
        await queries.aclose()
    assert first is second and len(fake.requests) == 1
    assert sorted(seen.outcomes) == [("wau", "ok"), ("wau", "shared")]


async def test_one_waiter_giving_up_does_not_cancel_the_query_for_the_other(fake: FakePostHog) -> None:
    fake.answer(Answer(delay=0.3))
    queries = client(fake)
    try:
        impatient = asyncio.create_task(queries.named("wau", DEFAULT_QUERIES["wau"], WEEK))
        await asyncio.sleep(0.05)
        patient = asyncio.create_task(queries.named("wau", DEFAULT_QUERIES["wau"], WEEK))
        await asyncio.sleep(0.05)
        impatient.cancel()
        result = await patient
    finally:
        await queries.aclose()
    assert impatient.cancelled() and result.columns == ("week", "wau") and len(fake.requests) == 1


async def test_errors_are_never_cached(fake: FakePostHog) -> None:
    fake.answer(hogql_error())
    queries = client(fake)
    try:
        with pytest.raises(PostHogQueryError):
            await queries.named("wau", DEFAULT_QUERIES["wau"], WEEK)
        result = await queries.named("wau", DEFAULT_QUERIES["wau"], WEEK)
    finally:
        await queries.aclose()
    assert len(fake.requests) == 2 and result.rows


async def test_a_429_waits_its_retry_after_then_succeeds(fake: FakePostHog) -> None:
    fake.answer(rate_limited("0.3"), rate_limited("0.3"))
    queries = client(fake)
    try:
        result = await queries.named("signups", DEFAULT_QUERIES["signups"], WEEK)
    finally:
        await queries.aclose()
    assert result.columns == ("day", "signups")
    first, second, third = (request.at for request in fake.requests)
    assert second - first >= 0.29 and third - second >= 0.29


async def test_a_retry_after_beyond_the_cap_is_capped(fake: FakePostHog) -> None:
    fake.answer(rate_limited("3600"))
    queries = client(fake, retry_after_cap=0.2)
    try:
        await queries.hogql("x", "SELECT 1", WEEK)
    finally:
        await queries.aclose()
    first, second = (request.at for request in fake.requests)
    assert 0.19 <= second - first < 1.0


async def test_rate_limiting_that_outlasts_the_budget_is_unavailable(fake: FakePostHog) -> None:
    fake.always(rate_limited("5"))
    queries = client(fake, budget=1.0, retry_after_cap=10)
    try:
        with pytest.raises(PostHogUnavailable, match="rate limiting"):
            await queries.hogql("x", "SELECT 1", WEEK)
    finally:
        await queries.aclose()
    assert len(fake.requests) == 1  # a wait that cannot fit in the budget is not waited


async def test_a_persistent_500_is_unavailable_within_the_budget(fake: FakePostHog) -> None:
    fake.always(SERVER_ERROR)
    seen = Seen()
    queries = client(fake, budget=0.5, backoff=0.05, observer=seen)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(PostHogUnavailable) as caught:
            await queries.named("wau", DEFAULT_QUERIES["wau"], WEEK)
    finally:
        await queries.aclose()
    assert loop.time() - started < 0.5 + 0.2
    assert len(fake.requests) >= 3  # retried with backoff
    assert "PostHog answered 500" in caught.value.reason and caught.value.name == "wau"
    assert seen.outcomes == [("wau", "unavailable")]


async def test_a_500_then_success_is_retried(fake: FakePostHog) -> None:
    fake.answer(SERVER_ERROR)
    queries = client(fake)
    try:
        result = await queries.named("mau", DEFAULT_QUERIES["mau"], WEEK)
    finally:
        await queries.aclose()
    assert len(fake.requests) == 2 and result.columns == ("month", "mau")


async def test_a_hang_is_unavailable_after_the_timeout_and_never_past_the_budget(fake: FakePostHog) -> None:
    fake.always(hang(30))
    queries = client(fake, timeout=0.2, budget=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(PostHogUnavailable, match="no answer within") as caught:
            await queries.named("wau", DEFAULT_QUERIES["wau"], WEEK)
    finally:
        await queries.aclose()
    assert 0.2 <= loop.time() - started < 0.5 + 0.2
    assert "wau" in str(caught.value)


async def test_nothing_listening_is_unavailable(fake: FakePostHog) -> None:
    queries = PostHogQueries("http://127.0.0.1:9", PROJECT_ID, API_KEY, timeout=0.2, budget=0.3, backoff=0.05)
    try:
        with pytest.raises(PostHogUnavailable, match="cannot connect"):
            await queries.hogql("x", "SELECT 1", WEEK)
    finally:
        await queries.aclose()


async def test_a_hogql_error_names_the_query_and_posthogs_detail_without_retrying(fake: FakePostHog) -> None:
    fake.answer(hogql_error())
    seen = Seen()
    queries = client(fake, observer=seen)
    try:
        with pytest.raises(PostHogQueryError) as caught:
            await queries.hogql("top_events", "SELEC event FROM events", WEEK)
    finally:
        await queries.aclose()
    error = caught.value
    assert (error.name, error.code) == ("top_events", "invalid_input")
    assert error.detail.startswith("Syntax error at line 1, column 8")
    assert "'top_events'" in str(error) and "Syntax error at line 1, column 8" in str(error)
    assert len(fake.requests) == 1 and seen.outcomes == [("top_events", "query_error")]


async def test_an_error_in_a_200_answer_is_a_query_error(fake: FakePostHog) -> None:
    fake.answer(Answer(body={"results": [], "error": "Unknown table `evnts`."}))
    queries = client(fake)
    try:
        with pytest.raises(PostHogQueryError, match="Unknown table"):
            await queries.hogql("x", "SELECT 1 FROM evnts", WEEK)
    finally:
        await queries.aclose()


async def test_a_refused_key_is_auth_failed_and_never_shown(fake: FakePostHog, caplog: pytest.LogCaptureFixture) -> None:
    wrong = "phx_the_wrong_key_that_must_not_leak"
    seen = Seen()
    queries = client(fake, key=wrong, observer=seen)
    try:
        with pytest.raises(PostHogAuthFailed) as caught:
            await queries.hogql("wau", "SELECT 1", WEEK)
    finally:
        await queries.aclose()
    assert "Invalid Personal API key." in str(caught.value) and "401" in str(caught.value)
    assert wrong not in str(caught.value) and wrong not in repr(queries) and wrong not in caplog.text
    assert len(fake.requests) == 1 and seen.outcomes == [("wau", "auth_failed")]


async def test_an_unknown_placeholder_is_a_query_error_before_any_request(fake: FakePostHog) -> None:
    queries = client(fake)
    try:
        with pytest.raises(PostHogQueryError, match=r"\{today\}"):
            await queries.hogql("x", "SELECT 1 WHERE t > {today}", WEEK)
    finally:
        await queries.aclose()
    assert fake.requests == []


async def test_from_settings_runs_every_default_query(fake: FakePostHog) -> None:
    settings = PostHogSettings(host=fake.url, project_id=int(PROJECT_ID), personal_api_key=API_KEY)
    queries = PostHogQueries.from_settings(settings)
    try:
        results: list[QueryResult] = [await queries.named(name, spec, WEEK) for name, spec in settings.queries.items()]
    finally:
        await queries.aclose()
    assert [request.name for request in fake.requests] == [f"postroom:{name}" for name in DEFAULT_QUERIES]
    assert all(result.rows for result in results)
