"""The ingest fast paths in PostroomSMTP give the same answers as aiosmtpd's own code."""

from __future__ import annotations

import asyncio

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.smtp.protocol import PostroomSMTP


class _Handler:
    async def handle_DATA(self, *args: object) -> str:
        return "250 OK"


@pytest.fixture
def protocols() -> tuple[PostroomSMTP, SMTP]:
    loop = asyncio.new_event_loop()
    ours = PostroomSMTP(_Handler(), verifier=None, on_open=lambda: None, on_close=lambda: None, loop=loop)
    stock = SMTP(_Handler(), loop=loop)
    yield ours, stock
    loop.close()


ADDRESSES = [
    "<a@b.com>",
    "<first.last+tag@sub-domain.example.org> SIZE=5120 BODY=8BITMIME",
    "<>",
    '<"quoted local"@example.com>',
    "<@route:a@b.com>",
    "a@b.com",
    "<a..b@c.com>",
    "<a@-bad.com>",
    "<unterminated@example.com",
    "  <spaced@example.com>",
    "<ü@exämple.de>",
]


@pytest.mark.parametrize("argument", ADDRESSES)
def test_getaddr_matches_aiosmtpd(protocols: tuple[PostroomSMTP, SMTP], argument: str) -> None:
    ours, stock = protocols
    assert ours._getaddr(argument) == stock._getaddr(argument)


atom = st.text(alphabet="abcXYZ019!#$%&'*+/=?^_`{|}~-.", min_size=1, max_size=12)
domain = st.from_regex(r"[a-z0-9.-]{1,14}", fullmatch=True)
params = st.sampled_from(["", " SIZE=100", " BODY=8BITMIME SMTPUTF8", "  x"])


@settings(max_examples=1000, deadline=None)
@given(local=atom, host=domain, rest=params)
def test_getaddr_fast_path_agrees_on_generated_paths(local: str, host: str, rest: str) -> None:
    loop = asyncio.new_event_loop()
    try:
        ours = PostroomSMTP(_Handler(), verifier=None, on_open=lambda: None, on_close=lambda: None, loop=loop)
        stock = SMTP(_Handler(), loop=loop)
        argument = f"<{local}@{host}>{rest}"
        assert ours._getaddr(argument) == stock._getaddr(argument)
    finally:
        loop.close()


def test_reflection_finds_the_same_commands(protocols: tuple[PostroomSMTP, SMTP]) -> None:
    ours, stock = protocols
    assert set(ours._smtp_methods) == set(stock._smtp_methods)
    assert set(ours._auth_methods) == set()  # no verifier: the MX offers no AUTH
