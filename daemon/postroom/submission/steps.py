"""The steps a submission passes through before it is queued, and the simplest of them.

A step takes the submission and its caller and returns the submission to hand on (the same, or a
changed one: a later suppression step drops recipients, routing sets their routes, VERP their
envelope senders) or a `Refusal`, which ends the pipeline.
"""

from __future__ import annotations

from typing import Protocol

from postroom.core.types import Submission
from postroom.dkim.keyring import SigningKeys
from postroom.submission.outcome import Caller, Refusal
from postroom.submission.policy import SendingPolicy


class Step(Protocol):
    name: str

    async def __call__(self, submission: Submission, caller: Caller) -> Submission | Refusal: ...


class SizeLimit:
    """Refuses a message larger than the configured limit (`smtp.max_message_size`), whichever
    door it came through; SMTP also announces the limit (RFC 1870 SIZE) and stops a DATA upload
    past it before it gets here."""

    name = "size"

    def __init__(self, max_bytes: int):
        self._max_bytes = max_bytes

    async def __call__(self, submission: Submission, caller: Caller) -> Submission | Refusal:
        # What ingress added (the trace field, Date, Message-ID) is not the submitter's to count.
        size = len(submission.content) - submission.added_bytes
        if size > self._max_bytes:
            return Refusal(True, "too_large", f"the message is {size} bytes; the limit is "
                           f"{self._max_bytes} (smtp.max_message_size)")  # fmt: skip
        return submission


def standard_steps(keys: SigningKeys, max_message_size: int) -> list[Step]:
    """The steps every door runs today, in order: whose name the message carries, then its size."""
    return [SendingPolicy(keys), SizeLimit(max_message_size)]
