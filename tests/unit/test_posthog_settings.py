"""`[posthog]`: defaults, named queries merged over the defaults, the refusals that name their key
(unknown placeholder, both or neither of hogql and query, a capture key, a bad host), alert rules,
and the pure pieces of the client (binding the period, Retry-After, parsing an answer)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from pydantic import ValidationError

from postroom.sources.posthog.query import (
    PostHogQueryError,
    PostHogUnavailable,
    bind_period,
    parse_result,
    retry_after_seconds,
)
from postroom.sources.posthog.query_settings import DEFAULT_QUERIES, EU_HOST, PostHogSettings

UTC = datetime.UTC
WEEK = (datetime.datetime(2026, 11, 16, tzinfo=UTC), datetime.datetime(2026, 11, 23, tzinfo=UTC))


def refusal(**values: Any) -> tuple[str, str]:
    """(location, message) of the one validation error."""
    with pytest.raises(ValidationError) as caught:
        PostHogSettings(**values)
    (error,) = caught.value.errors()
    return ".".join(str(part) for part in error["loc"]), error["msg"]


def test_defaults_are_off_on_the_us_host_with_the_five_default_queries() -> None:
    settings = PostHogSettings()
    assert settings.host == "https://us.posthog.com" and not settings.enabled
    assert (settings.timeout, settings.budget, settings.cache_ttl, settings.webhook_secret) == (10.0, 30.0, 3600.0, "")
    assert set(settings.queries) == {"wau", "mau", "signups", "activation_funnel", "top_events"}
    for spec in settings.queries.values():
        assert "{since}" in spec.hogql and "{until}" in spec.hogql and "now()" not in spec.hogql


def test_enabled_takes_a_project_and_a_key_and_hides_the_key() -> None:
    assert not PostHogSettings(project_id=12345).enabled
    assert not PostHogSettings(personal_api_key="phx_abc").enabled
    settings = PostHogSettings(host=EU_HOST + "/", project_id=12345, personal_api_key="phx_abc", webhook_secret="s3")
    assert settings.enabled and settings.project_id == "12345" and settings.host == EU_HOST
    assert "phx_abc" not in repr(settings) and "s3" not in repr(settings)
    assert PostHogSettings(host="http://posthog.internal:8000", project_id="1", personal_api_key="phs_x").enabled


def test_configured_queries_override_and_add_to_the_defaults_by_name() -> None:
    settings = PostHogSettings(queries={
        "signups": {"hogql": "SELECT count() FROM persons WHERE created_at >= {since} AND created_at < {until}"},
        "trials": {"title": "Trials", "query": {"kind": "TrendsQuery", "series": []}},
        "paths": {"kind": "PathsQuery", "query": {"pathsFilter": {}}},
    })  # fmt: skip
    assert settings.queries["signups"].hogql.startswith("SELECT count() FROM persons")
    assert settings.queries["wau"] == DEFAULT_QUERIES["wau"]
    assert settings.queries["trials"].insight == {"kind": "TrendsQuery", "series": []}
    assert settings.queries["paths"].insight == {"kind": "PathsQuery", "pathsFilter": {}}
    assert len(settings.queries) == 7


def test_an_unknown_placeholder_is_refused_naming_the_query() -> None:
    where, why = refusal(queries={"churned": {"hogql": "SELECT 1 WHERE t >= {since} AND t < {today}"}})
    assert where == "queries.churned.hogql" and "{today}" in why


@pytest.mark.parametrize(("entry", "reason"), [
    ({}, "exactly one of hogql or query"),
    ({"hogql": "SELECT 1", "query": {"kind": "TrendsQuery"}}, "exactly one of hogql or query"),
    ({"query": {"series": []}}, "needs its kind"),
    ({"kind": "TrendsQuery", "query": {"kind": "FunnelsQuery"}}, "differ"),
    ({"query": {"kind": "HogQLQuery", "query": "SELECT 1"}}, "HogQL goes in hogql"),
    ({"hogql": "SELECT 1", "kind": "TrendsQuery"}, "kind goes with query"),
])  # fmt: skip
def test_a_query_entry_needs_one_form(entry: dict[str, Any], reason: str) -> None:
    where, why = refusal(queries={"q": entry})
    assert where.startswith("queries.q") and reason in why


@pytest.mark.parametrize(("values", "key", "reason"), [
    ({"host": "us.posthog.com"}, "host", "not an http:// or https:// URL"),
    ({"project_id": "my-project"}, "project_id", "not a project id"),
    ({"personal_api_key": "phc_public"}, "personal_api_key", "phc_ is the project key for capture"),
    ({"timeout": 0}, "timeout", "greater than 0"),
    ({"queries": {"bad name": {"hogql": "SELECT 1"}}}, "queries", "not a query name"),
    ({"alerts": {"spike": {"action": "report"}}}, "alerts.spike", 'needs report = "<report name>"'),
    ({"alerts": {"spike": {"action": "email"}}}, "alerts.spike", "needs to ="),
    ({"alerts": {"spike": {"action": "email", "to": ["nobody"]}}}, "alerts.spike.to", "not email addresses: nobody"),
    ({"alerts": {"spike": {"action": "page"}}}, "alerts.spike.action", "'report' or 'email'"),
    ({"extra": 1}, "extra", "Extra inputs"),
])  # fmt: skip
def test_bad_values_are_refused_naming_the_key(values: dict[str, Any], key: str, reason: str) -> None:
    where, why = refusal(**values)
    assert where == key and reason in why


def test_alert_rules_read_addresses_as_a_list_or_text() -> None:
    settings = PostHogSettings(alerts={
        "signups dropped": {"action": "email", "to": "ops@example.com, cto@example.com"},
        "wau spike": {"action": "report", "report": "weekly"},
    })  # fmt: skip
    assert settings.alerts["signups dropped"].to == ("ops@example.com", "cto@example.com")
    assert settings.alerts["wau spike"].report == "weekly"


def test_bind_period_fills_both_bounds_and_refuses_an_empty_period() -> None:
    assert bind_period("a >= {since} AND a < {until} AND b = '{x'", WEEK) == (
        "a >= toDateTime('2026-11-16 00:00:00', 'UTC') AND a < toDateTime('2026-11-23 00:00:00', 'UTC') AND b = '{x'"
    )
    naive = (datetime.datetime(2026, 1, 1), datetime.datetime(2026, 2, 1))
    assert "toDateTime('2026-01-01 00:00:00', 'UTC')" in bind_period("{since}", naive)
    with pytest.raises(ValueError, match="before it starts"):
        bind_period("{since}", (WEEK[1], WEEK[0]))


@pytest.mark.parametrize(("header", "seconds"), [("3", 3.0), (" 1.5 ", 1.5), ("-2", 0.0), (None, None),
                                                 ("Wed, 21 Oct 2026 07:28:00 GMT", None), ("nan", None)])  # fmt: skip
def test_retry_after_is_read_in_seconds(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header) == seconds


def test_an_answer_without_results_is_unavailable_and_one_with_an_error_is_a_query_error() -> None:
    with pytest.raises(PostHogUnavailable, match="still running"):
        parse_result("wau", WEEK, {}, {"query_status": {"id": "q1", "complete": False}})
    with pytest.raises(PostHogUnavailable, match="no results"):
        parse_result("wau", WEEK, {}, {"columns": []})
    with pytest.raises(PostHogQueryError, match="Unknown table"):
        parse_result("wau", WEEK, {}, {"results": [], "error": "Unknown table"})
