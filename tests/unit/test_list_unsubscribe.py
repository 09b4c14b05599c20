"""The List-Unsubscribe step (RFC 8058): which messages get the one-click header, and that the link
names the message, the recipient and the stream it was sent on."""

from __future__ import annotations

import asyncio
import re

import pytest

from postroom.bounces.verp import Unsubscribe, decode_unsubscribe
from postroom.core.clock import FakeClock
from postroom.core.types import Submission
from postroom.submission.outcome import Caller
from postroom.suppression.unsubscribe import ListUnsubscribeHeaders, is_transactional

KEY = "unsubscribe-key-0123456789"
CONTENT = b"From: app@postroom.test\r\nTo: ada@example.org\r\nSubject: news\r\n\r\nbody\r\n"


def step_on(submission: Submission) -> Submission:
    step = ListUnsubscribeHeaders("https://mail.example.com/", [KEY], FakeClock())
    result = asyncio.run(step(submission, Caller("api")))
    assert isinstance(result, Submission)
    return result


def test_a_newsletter_to_one_recipient_gets_both_headers_before_everything_else() -> None:
    result = step_on(Submission("app@postroom.test", ("ada@example.org",), CONTENT, "api", stream="newsletter"))
    head, rest = result.content.split(b"\r\n", 2)[:2], result.content
    assert head[1] == b"List-Unsubscribe-Post: List-Unsubscribe=One-Click"
    assert rest.endswith(CONTENT) and result.added_bytes == len(result.content) - len(CONTENT)
    match = re.fullmatch(rb"List-Unsubscribe: <https://mail\.example\.com/u/([A-Za-z0-9_.-]+)>", head[0])
    assert match is not None and result.message_id is not None
    assert decode_unsubscribe(match.group(1).decode(), [KEY]) == Unsubscribe(result.message_id, "ada@example.org",
                                                                              "newsletter")  # fmt: skip


@pytest.mark.parametrize("stream", ["transactional", "transactional-receipts", "transactional_2fa"])
def test_transactional_mail_carries_none(stream: str) -> None:
    assert is_transactional(stream)
    submission = Submission("app@postroom.test", ("ada@example.org",), CONTENT, "api", stream=stream)
    assert step_on(submission) == submission


def test_several_recipients_or_a_header_of_the_submitter_leave_the_message_as_it_is() -> None:
    several = Submission("app@postroom.test", ("a@example.org", "b@example.org"), CONTENT, "api", stream="news")
    assert step_on(several) == several
    own = Submission("app@postroom.test", ("ada@example.org",),
                     b"List-Unsubscribe: <mailto:u@postroom.test>\r\n" + CONTENT, "api", stream="news")  # fmt: skip
    assert step_on(own) == own
    assert not is_transactional("transactionally")


def test_a_message_written_with_bare_lf_gets_lf_lines() -> None:
    bare = CONTENT.replace(b"\r\n", b"\n")
    result = step_on(Submission("app@postroom.test", ("ada@example.org",), bare, "cli", stream="news"))
    assert b"\r" not in result.content and result.content.startswith(b"List-Unsubscribe: <")
