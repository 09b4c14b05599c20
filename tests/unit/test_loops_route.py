"""Loops as a delivery route, its pure parts: what Loops' answers mean, the attachments taken from a
stored message, the idempotency key of a delivery, the recorded result of each answer, the shared
rate gate on a fake clock, and the settings."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from email.message import EmailMessage
from email.utils import format_datetime
import datetime

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from postroom.core.clock import FakeClock
from postroom.core.compose import Attachment, Draft, compose
from postroom.core.types import DeliveryState, RecipientResult, Verdict
from postroom.delivery.outcomes import decide
from postroom.config import load_settings
from postroom.core.errors import ConfigError
from postroom.loops.settings import LoopsSettings
from postroom.metrics import Metrics
from postroom.queue.models import ClaimedDelivery
from postroom.queue.retry import RetryPolicy
from postroom.ratelimit.quota import Quota
from postroom.ratelimit.table import RateTable, create_table_file
from postroom.shadow.loops_attachments import attachments_of
from postroom.shadow.loops_client import (
    LoopsAnswer,
    LoopsAttachment,
    Outcome,
    TransactionalRequest,
    classify_response,
    parse_retry_after,
    request_body,
)
from postroom.shadow.loops_rate import BUCKET, LoopsRateGate
from postroom.shadow.loops_transport import address_refused, idempotency_key, recipient_result
from postroom.suppression.rules import Action, SoftPolicy
from postroom.suppression.rules import decide as suppression_decision

NOW = 1_750_000_000.0
MESSAGE_ID = "01JMSGID0000000000000000000"


# -- classify_response ----------------------------------------------------------------------

def test_a_success_is_sent() -> None:
    assert classify_response(200, {"success": True}, None, NOW) == LoopsAnswer(Outcome.SENT, 200, "sent")


def test_a_2xx_without_success_is_tried_again_not_taken_as_sent() -> None:
    answer = classify_response(200, {"success": False, "message": "hm"}, None, NOW)
    assert (answer.outcome, answer.message) == (Outcome.RETRY, "hm")
    assert classify_response(200, None, None, NOW).outcome is Outcome.RETRY


def test_a_used_idempotency_key_means_sent_before() -> None:
    answer = classify_response(409, {"success": False, "message": "Idempotency key used"}, None, NOW)
    assert answer.outcome is Outcome.DUPLICATE


def test_429_is_retried_after_retry_after_or_a_second() -> None:
    assert classify_response(429, {}, "7", NOW).retry_after == 7.0
    answer = classify_response(429, None, None, NOW)
    assert (answer.outcome, answer.retry_after) == (Outcome.RETRY, 1.0)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_retried_with_their_retry_after(status: int) -> None:
    answer = classify_response(status, {"message": "down"}, "30", NOW)
    assert (answer.outcome, answer.retry_after, answer.message) == (Outcome.RETRY, 30.0, "down")
    assert classify_response(status, None, None, NOW).retry_after is None


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_other_4xx_are_final_with_loops_message(status: int) -> None:
    answer = classify_response(status, {"success": False, "message": "Transactional email not found"}, None, NOW)
    assert (answer.outcome, answer.status, answer.message) == (Outcome.FAILED, status,
                                                               "Transactional email not found")  # fmt: skip


def test_a_refused_api_key_is_retried_not_failed_for_every_message() -> None:
    assert classify_response(401, {"message": "Invalid API key"}, None, NOW).outcome is Outcome.RETRY
    assert classify_response(403, None, None, NOW).outcome is Outcome.RETRY


def test_loops_message_is_found_in_its_error_shapes_and_kept_to_one_bounded_line() -> None:
    assert classify_response(400, {"error": {"message": "bad\n data"}}, None, NOW).message == "bad data"
    assert classify_response(400, {"error": "nope"}, None, NOW).message == "nope"
    assert classify_response(400, "<html>", None, NOW).message == "refused with 400"
    assert len(classify_response(400, {"message": "x" * 5000}, None, NOW).message) == 500


def test_a_redirect_is_not_followed_but_retried() -> None:
    assert classify_response(301, None, None, NOW).outcome is Outcome.RETRY


def test_retry_after_takes_seconds_or_an_http_date_and_is_capped() -> None:
    later = format_datetime(datetime.datetime.fromtimestamp(NOW + 90, datetime.UTC), usegmt=True)
    assert parse_retry_after(later, NOW) == 90.0
    assert parse_retry_after("  5 ", NOW) == 5.0
    assert parse_retry_after("999999", NOW) == 3600.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None
    earlier = format_datetime(datetime.datetime.fromtimestamp(NOW - 90, datetime.UTC), usegmt=True)
    assert parse_retry_after(earlier, NOW) == 0.0


# -- the request ----------------------------------------------------------------------------

def test_the_body_is_loops_documented_shape_with_base64_files() -> None:
    request = TransactionalRequest("cltx1", "a@example.com", "k1", {"name": "Ada", "n": 3},
                                   [LoopsAttachment("r.pdf", "application/pdf", b"%PDF")])  # fmt: skip
    assert request_body(request) == {
        "transactionalId": "cltx1", "email": "a@example.com", "dataVariables": {"name": "Ada", "n": 3},
        "addToAudience": False,
        "attachments": [{"filename": "r.pdf", "contentType": "application/pdf",
                         "data": base64.b64encode(b"%PDF").decode()}],
    }  # fmt: skip
    assert "attachments" not in request_body(TransactionalRequest("cltx1", "a@example.com", "k1"))


def test_an_idempotency_key_longer_than_loops_allows_is_refused() -> None:
    with pytest.raises(ValueError):
        TransactionalRequest("cltx1", "a@example.com", "k" * 101)


def test_the_idempotency_key_is_stable_per_delivery_and_fits_loops_limit() -> None:
    key = idempotency_key(MESSAGE_ID, "a@example.com")
    assert key == f"postroom-{MESSAGE_ID}-a@example.com"
    assert key == idempotency_key(MESSAGE_ID, "a@example.com")
    assert key != idempotency_key(MESSAGE_ID, "b@example.com")
    long = "x" * 80 + "@example.com"
    hashed = idempotency_key(MESSAGE_ID, long)
    assert len(hashed) <= 100 and hashed == idempotency_key(MESSAGE_ID, long)
    assert hashed != idempotency_key(MESSAGE_ID, "y" * 80 + "@example.com")
    assert idempotency_key(MESSAGE_ID, "jörg@example.com").isascii()


# -- attachments ----------------------------------------------------------------------------

def test_attachments_are_the_non_inline_files_decoded() -> None:
    draft = Draft(
        sender="app@example.com", to=("a@example.com",), subject="Report", text="see attached",
        html='<p>see attached <img src="cid:logo"></p>',
        attachments=(Attachment("report.pdf", b"%PDF-1.7 \x00\xff", "application/pdf"),
                     Attachment("data.csv", b"a,b\r\n1,2\r\n", "text/csv"),
                     Attachment("logo.png", b"\x89PNG", "image/png", "logo")),
    )  # fmt: skip
    content = compose(draft, message_id=MESSAGE_ID, hostname="example.com", now=NOW)
    found = attachments_of(content)
    assert [(a.filename, a.content_type) for a in found] == [("report.pdf", "application/pdf"),
                                                             ("data.csv", "text/csv")]  # fmt: skip
    assert found[0].data == b"%PDF-1.7 \x00\xff"
    assert found[1].data.replace(b"\r\n", b"\n") == b"a,b\n1,2\n"


def test_a_message_without_files_has_no_attachments() -> None:
    draft = Draft(sender="app@example.com", to=("a@example.com",), subject="Hi", text="hi", html="<p>hi</p>")
    assert attachments_of(compose(draft, message_id=MESSAGE_ID, hostname="example.com", now=NOW)) == []
    assert attachments_of(b"Subject: plain\r\n\r\nhello\r\n") == []


def test_a_forwarded_email_is_attached_as_the_email() -> None:
    inner = EmailMessage()
    inner["Subject"] = "original"
    inner.set_content("the original")
    outer = EmailMessage()
    outer["Subject"] = "Fwd"
    outer.set_content("see below")
    outer.add_attachment(inner, filename="original.eml")
    [found] = attachments_of(outer.as_bytes())
    assert (found.filename, found.content_type) == ("original.eml", "message/rfc822")
    assert b"Subject: original" in found.data and b"the original" in found.data


# -- what the worker records ----------------------------------------------------------------

KEY = f"postroom-{MESSAGE_ID}-a@example.com"
POLICY = RetryPolicy(base=60.0, cap=3600.0, max_age=86400.0)
SOFT = SoftPolicy(limit=3, window=86400.0, lasts=86400.0)


def recorded(answer: LoopsAnswer, attempts: int = 0) -> tuple[RecipientResult, DeliveryState, float | None,
                                                               dict[str, object]]:  # fmt: skip
    result = recipient_result("a@example.com", answer, "cltx1", KEY, NOW)
    claimed = ClaimedDelivery(7, MESSAGE_ID, "a@example.com", attempts, NOW - 10, route="loops")
    release = decide(claimed, result, POLICY, NOW, 0.0)
    return result, release.state, release.next_attempt_at, release.detail


def test_sent_and_duplicate_are_delivered() -> None:
    result, state, _, _ = recorded(LoopsAnswer(Outcome.SENT, 200, "sent"))
    assert (state, result.reply) == (DeliveryState.DELIVERED, "Loops 200: sent as cltx1")
    result, state, _, _ = recorded(LoopsAnswer(Outcome.DUPLICATE, 409, "used"))
    assert state is DeliveryState.DELIVERED and KEY in result.reply


def test_a_retry_defers_no_earlier_than_retry_after() -> None:
    _, state, when, detail = recorded(LoopsAnswer(Outcome.RETRY, 429, "Rate limit exceeded.", 600.0))
    assert state is DeliveryState.DEFERRED
    assert when == NOW + 600.0  # the policy alone would have said NOW + 30
    assert (detail["reason"], detail["bounce_class"]) == ("speeding", "soft")
    _, _, when, _ = recorded(LoopsAnswer(Outcome.RETRY, 500, "down"))
    assert when == NOW + 30.0  # no Retry-After: the retry policy's own time


def test_a_retry_after_past_max_age_expires_the_delivery() -> None:
    _, state, _, _ = recorded(LoopsAnswer(Outcome.RETRY, 503, "down", 86400.0 * 2))
    assert state is DeliveryState.EXPIRED


def test_no_answer_at_all_is_a_network_error_deferral() -> None:
    result, state, _, detail = recorded(LoopsAnswer(Outcome.RETRY, None, "no answer from Loops in time"))
    assert (state, result.reply, detail["reason"]) == (DeliveryState.DEFERRED, "Loops: no answer from Loops in time",
                                                       "networkerror")  # fmt: skip


def test_a_final_refusal_bounces_with_loops_message_and_does_not_suppress() -> None:
    result, state, _, detail = recorded(LoopsAnswer(Outcome.FAILED, 400, "Missing required dataVariables: name"))
    assert (state, result.reply) == (DeliveryState.BOUNCED, "Loops 400: Missing required dataVariables: name")
    assert (detail["reason"], detail["bounce_class"]) == ("undefined", "soft")
    decision = suppression_decision("bounced", str(detail["reason"]), str(detail["bounce_class"]), SOFT)
    assert decision.action is Action.NOTHING


def test_a_refused_address_is_a_hard_bounce_that_suppresses() -> None:
    _, state, _, detail = recorded(LoopsAnswer(Outcome.FAILED, 400, "Invalid email address"))
    assert (state, detail["reason"], detail["bounce_class"]) == (DeliveryState.BOUNCED, "userunknown", "hard")
    decision = suppression_decision("bounced", str(detail["reason"]), str(detail["bounce_class"]), SOFT)
    assert decision.action is Action.SUPPRESS


@pytest.mark.parametrize(("message", "about_the_address"), [
    ("Invalid email address", True), ("email is not valid", True), ("Email address is invalid", True),
    ("Invalid dataVariables for email", False), ("Invalid email template", False),
    ("Transactional email not found", False), ("Missing required dataVariables", False),
])  # fmt: skip
def test_only_refusals_about_the_address_count_as_such(message: str, about_the_address: bool) -> None:
    assert address_refused(message) is about_the_address


def test_an_smtp_result_is_still_classified_by_its_reply() -> None:
    result = RecipientResult("a@example.com", Verdict.BOUNCED, "550 5.1.1 user unknown", {"code": 550})
    claimed = ClaimedDelivery(7, MESSAGE_ID, "a@example.com", 0, NOW)
    assert decide(claimed, result, POLICY, NOW, 0.0).detail["reason"] == "userunknown"


# -- the rate gate --------------------------------------------------------------------------

class SleepingClock(FakeClock):
    """A fake clock whose sleep moves it, recording the sleeps."""

    def __init__(self) -> None:
        super().__init__(NOW)
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)


def gate(clock: SleepingClock, quota: Quota, max_wait: float = 30.0) -> tuple[LoopsRateGate, CollectorRegistry]:
    registry = CollectorRegistry()
    table = RateTable.in_memory(clock.now)
    return LoopsRateGate(table, quota, clock, Metrics(registry), max_wait, clock.sleep), registry


async def test_the_gate_lets_the_quota_through_then_sleeps_for_each_token() -> None:
    clock = SleepingClock()
    limiter, registry = gate(clock, Quota(10, 1.0))
    for _ in range(10):
        assert await limiter.acquire() == 0.0
    assert clock.sleeps == []
    waited = await limiter.acquire()
    assert waited == pytest.approx(0.1, abs=1e-3) and clock.sleeps == [pytest.approx(0.1, abs=1e-3)]
    assert registry.get_sample_value("postroom_loops_rate_limited_total") == 1.0


async def test_twenty_requests_at_ten_a_second_take_a_second() -> None:
    clock = SleepingClock()
    limiter, _ = gate(clock, Quota(10, 1.0))
    for _ in range(20):
        assert await limiter.acquire() is not None
    assert clock.now() - NOW == pytest.approx(1.0, abs=1e-3)


async def test_the_gate_gives_up_rather_than_wait_past_max_wait() -> None:
    clock = SleepingClock()
    limiter, _ = gate(clock, Quota(1, 60.0), max_wait=5.0)
    assert await limiter.acquire() == 0.0
    assert await limiter.acquire() is None
    assert clock.sleeps == []  # a wait it would give up on anyway is not slept


async def test_a_hold_stops_every_request_until_retry_after() -> None:
    clock = SleepingClock()
    limiter, _ = gate(clock, Quota(10, 1.0))
    limiter.hold(2.5)
    assert await limiter.acquire() == pytest.approx(2.5, abs=1e-3)
    for _ in range(9):  # the bucket refills from the end of the hold, not all at once
        await limiter.acquire()
    assert clock.now() - NOW == pytest.approx(2.5 + 0.9, abs=1e-3)


def test_processes_mapping_one_table_file_share_one_limit_and_one_hold(tmp_path: Path) -> None:
    path = tmp_path / "buckets"
    create_table_file(path)
    clock = SleepingClock()
    tables = [RateTable.shared(path, clock.now) for _ in range(2)]  # as two processes map it
    try:
        gates = [LoopsRateGate(t, Quota(5, 1.0), clock, Metrics(CollectorRegistry()), 30.0, clock.sleep)
                 for t in tables]  # fmt: skip

        async def alternate() -> None:
            for n in range(10):
                assert await gates[n % 2].acquire() is not None

        asyncio.run(alternate())
        assert clock.now() - NOW == pytest.approx(1.0, abs=1e-3)  # 10 at 5/s together, not 10/s
        gates[0].hold(60.0)
        assert not tables[1].spend(BUCKET, Quota(5, 1.0)).allowed  # the other process holds too
    finally:
        for table in tables:
            table.close()


# -- settings -------------------------------------------------------------------------------

def test_the_route_settings_have_loops_defaults() -> None:
    settings = LoopsSettings()
    assert (settings.api_key, settings.base_url, settings.rate_limit, settings.timeout) == (
        "", "https://app.loops.so/api/v1", "10/s", 10.0)
    assert "secret-key" not in repr(LoopsSettings(api_key="secret-key"))  # never in logs


@pytest.mark.parametrize(("key", "value"), [
    ("base_url", "ftp://loops.example"), ("base_url", "app.loops.so/api/v1"), ("base_url", "https://x/?a=1"),
    ("rate_limit", "ten a second"), ("rate_limit", "0/s"), ("timeout", 0),
])  # fmt: skip
def test_bad_route_settings_are_refused(key: str, value: object) -> None:
    with pytest.raises(ValidationError):
        LoopsSettings.model_validate({key: value})


def test_the_api_key_is_read_from_its_file_and_checked_at_load(tmp_path: Path) -> None:
    secret = tmp_path / "loops-key"
    secret.write_text("key-from-a-credential\n")
    config = tmp_path / "postroom.toml"
    config.write_text(f'[loops]\napi_key_file = "{secret}"\nrate_limit = "600/min"\n')
    settings = load_settings(config, {})
    assert (settings.loops.api_key, settings.loops.rate_limit) == ("key-from-a-credential", "600/min")
    config.write_text('[loops]\nrate_limit = "fast"\n')
    with pytest.raises(ConfigError, match="loops.rate_limit"):
        load_settings(config, {})


def test_a_base_url_loses_its_trailing_slash() -> None:
    assert LoopsSettings(base_url="http://127.0.0.1:8080/api/v1/").base_url == "http://127.0.0.1:8080/api/v1"
