"""`POST /webhooks/posthog` on a bare aiohttp app on 127.0.0.1 with the route group alone: the secret
(header or `?secret=`, 401 without it or wrong, 503 when none is configured), 400 for a body that is
not a JSON object, and an alert handed to the handler with its rule when it has one, ignored when
not; PostHog's default webhook body and hand-written ones are both read."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from postroom.http.errors import json_errors
from postroom.http.openapi import openapi_document, undocumented_routes
from postroom.metrics import Metrics
from postroom.sources.posthog.alerts import PostHogAlert, PostHogAlertRoutes, parse_alert
from postroom.sources.posthog.query_settings import AlertRule, PostHogSettings

SECRET = "posthog-webhook-secret-0123456789"
SETTINGS = PostHogSettings(webhook_secret=SECRET, alerts={
    "Signups dropped": {"action": "email", "to": ["ops@example.com"]},
    "WAU spike": {"action": "report", "report": "weekly"},
})  # fmt: skip

# What PostHog's webhook destination sends by default for an insight alert ({"event": "{event}", ...}).
DEFAULT_BODY = {
    "event": {"uuid": "0192f3a4-0000-0000-0000-000000000001", "event": "$insight_alert_firing",
              "distinct_id": "team_1", "timestamp": "2026-11-23T07:00:00Z",
              "properties": {"alert_id": "a1", "alert_name": "Signups dropped", "insight_name": "Signups per day",
                             "breaches": ["The insight value (12) is below 30"]}},
    "person": {"id": "p1", "properties": {}},
}  # fmt: skip


class Recorder:
    def __init__(self) -> None:
        self.alerts: list[PostHogAlert] = []

    async def handle(self, alert: PostHogAlert) -> str:
        self.alerts.append(alert)
        assert alert.rule is not None
        return f"report:{alert.rule.report}" if alert.rule.action == "report" else "alert_email"


Client = TestClient[Any, Any]


@pytest.fixture
async def served(aiohttp_client: Any) -> Callable[..., Awaitable[tuple[Client, Recorder, CollectorRegistry]]]:
    async def serve(secret: str = SECRET) -> tuple[Client, Recorder, CollectorRegistry]:
        recorder, registry = Recorder(), CollectorRegistry()
        app = web.Application(middlewares=[json_errors])
        PostHogAlertRoutes(recorder, secret, SETTINGS.alerts, Metrics(registry)).register(app)
        assert undocumented_routes(app) == []
        described = openapi_document(app)["paths"]["/webhooks/posthog"]["post"]
        assert {p["name"] for p in described["parameters"]} >= {"secret", "X-Postroom-Secret"}
        return await aiohttp_client(app), recorder, registry

    return serve


async def post(client: Client, body: Any, headers: dict[str, str] | None = None, path: str = "/webhooks/posthog",
               raw: bytes | None = None) -> tuple[int, Any]:  # fmt: skip
    data = raw if raw is not None else json.dumps(body).encode()
    async with client.post(path, data=data, headers={"Content-Type": "application/json", **(headers or {})}) as resp:
        return resp.status, await resp.json()


def counted(registry: CollectorRegistry, result: str) -> float:
    return registry.get_sample_value("postroom_posthog_alerts_total", {"result": result}) or 0.0


async def test_the_right_secret_in_the_header_hands_the_alert_to_the_handler(served: Any) -> None:
    client, recorder, registry = await served()
    status, answer = await post(client, DEFAULT_BODY, {"X-Postroom-Secret": SECRET})
    assert (status, answer) == (200, {"action": "alert_email", "alert": "Signups dropped"})
    (alert,) = recorder.alerts
    assert alert.rule == AlertRule(action="email", to=("ops@example.com",))
    assert (alert.alert_name, alert.insight_name, alert.event) == ("Signups dropped", "Signups per day",
                                                                   "$insight_alert_firing")  # fmt: skip
    assert alert.properties["breaches"] == ["The insight value (12) is below 30"]
    assert json.loads(alert.raw) == DEFAULT_BODY and alert.body == DEFAULT_BODY
    assert counted(registry, "alert_email") == 1


async def test_the_secret_may_be_given_in_the_url_instead(served: Any) -> None:
    client, recorder, _ = await served()
    status, answer = await post(client, {"alert": {"name": "WAU spike"}, "insight": "WAU"},
                                path=f"/webhooks/posthog?secret={SECRET}")  # fmt: skip
    assert (status, answer) == (200, {"action": "report:weekly", "alert": "WAU spike"})
    assert recorder.alerts[0].insight_name == "WAU"


@pytest.mark.parametrize("headers, path", [
    ({}, "/webhooks/posthog"),
    ({"X-Postroom-Secret": "wrong"}, "/webhooks/posthog"),
    ({}, "/webhooks/posthog?secret=wrong"),
    ({"X-Postroom-Secret": ""}, "/webhooks/posthog"),
    ({"X-Postroom-Secret": "wrong"}, f"/webhooks/posthog?secret={SECRET}"),  # the header is the one read
])  # fmt: skip
async def test_a_missing_or_wrong_secret_is_401_and_nothing_is_handled(
    served: Any, headers: dict[str, str], path: str
) -> None:
    client, recorder, registry = await served()
    status, answer = await post(client, DEFAULT_BODY, headers, path)
    assert status == 401 and answer["error"]["code"] == "invalid_secret"
    assert SECRET not in json.dumps(answer)
    assert recorder.alerts == [] and counted(registry, "invalid_secret") == 1


async def test_without_a_configured_secret_the_endpoint_is_off(served: Any) -> None:
    client, recorder, _ = await served(secret="")
    status, answer = await post(client, DEFAULT_BODY, {"X-Postroom-Secret": ""})
    assert status == 503 and answer["error"]["code"] == "not_configured"
    assert recorder.alerts == []


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b"\xff\xfe", b""])
async def test_a_body_that_is_not_a_json_object_is_400(served: Any, raw: bytes) -> None:
    client, recorder, registry = await served()
    status, answer = await post(client, None, {"X-Postroom-Secret": SECRET}, raw=raw)
    assert status == 400 and answer["error"]["code"] == "malformed"
    assert recorder.alerts == [] and counted(registry, "malformed") == 1


async def test_an_alert_without_a_rule_is_ignored_without_the_handler(served: Any) -> None:
    client, recorder, registry = await served()
    body = {"event": {"event": "$insight_alert_firing", "properties": {"alert_name": "Something else"}}}
    status, answer = await post(client, body, {"X-Postroom-Secret": SECRET})
    assert (status, answer) == (200, {"action": "ignored", "alert": "Something else"})
    assert recorder.alerts == [] and counted(registry, "ignored") == 1


def test_a_rule_may_name_the_insight_or_the_event_when_the_alert_has_no_rule() -> None:
    rules = {"Signups per day": AlertRule(action="report", report="daily"),
             "signups_dropped": AlertRule(action="email", to=("a@example.com",))}  # fmt: skip
    by_insight = parse_alert(json.dumps(DEFAULT_BODY).encode(), rules)
    assert by_insight.name == "Signups per day" and by_insight.rule == rules["Signups per day"]
    by_event = parse_alert(b'{"event": "signups_dropped", "properties": {"value": 3}}', rules)
    assert by_event.name == "signups_dropped" and by_event.rule is not None and by_event.properties == {"value": 3}
    nameless = parse_alert(b"{}", rules)
    assert (nameless.name, nameless.rule) == ("", None)
