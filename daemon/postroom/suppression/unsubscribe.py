"""One-click unsubscribe (RFC 8058) for mail on non-transactional streams.

`ListUnsubscribeHeaders` is a submission step, after the suppression check: a message on a stream
that is not transactional, to one recipient, gets `List-Unsubscribe: <{public_url}/u/{token}>` and
`List-Unsubscribe-Post: List-Unsubscribe=One-Click` at the top of its header, before it is stored,
so the one DKIM signature covers both (RFC 8058 §4 requires it; `dkim.signing` signs them). The
token (`bounces.verp.encode_unsubscribe`) names the message, the recipient and the stream.

A message with several envelope recipients gets no header: one stored copy cannot carry a link per
recipient, and a shared link would let one recipient unsubscribe the others. Streams named
`transactional` or `transactional-*`/`transactional_*` are transactional: their mail carries none.
A message whose submitter already wrote a List-Unsubscribe keeps it as it is.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from postroom.bounces.verp import Unsubscribe, encode_unsubscribe
from postroom.core.clock import Clock
from postroom.core.ids import new_message_id
from postroom.core.types import Submission
from postroom.submission.outcome import Caller, Refusal

_HAS_LIST_UNSUBSCRIBE = re.compile(rb"(?im)^list-unsubscribe\s*:")
_END_OF_HEADER = re.compile(rb"\r?\n\r?\n")


def is_transactional(stream: str) -> bool:
    return stream == "transactional" or re.match(r"^transactional[-_]", stream) is not None


class ListUnsubscribeHeaders:
    name = "list_unsubscribe"

    def __init__(self, public_url: str, keys: Sequence[str], clock: Clock):
        self._base = public_url.rstrip("/")
        self._keys = tuple(keys)
        self._clock = clock

    async def __call__(self, submission: Submission, caller: Caller) -> Submission | Refusal:
        if is_transactional(submission.stream) or len(submission.recipients) != 1:
            return submission
        end = _END_OF_HEADER.search(submission.content)
        header = submission.content[: end.start()] if end else submission.content
        if _HAS_LIST_UNSUBSCRIBE.search(header):
            return submission
        message_id = submission.message_id or new_message_id(self._clock.now())
        token = encode_unsubscribe(Unsubscribe(message_id, submission.recipients[0], submission.stream), self._keys)
        eol = "\r\n" if b"\r\n" in header[:1000] or not header else "\n"  # as the message writes lines
        added = (f"List-Unsubscribe: <{self._base}/u/{token}>{eol}"
                 f"List-Unsubscribe-Post: List-Unsubscribe=One-Click{eol}").encode()
        return dataclasses.replace(submission, content=added + submission.content, message_id=message_id,
                                   added_bytes=submission.added_bytes + len(added))  # fmt: skip
