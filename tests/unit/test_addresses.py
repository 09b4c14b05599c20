"""`core.addresses`: the one normaliser, and the strict reading of mailbox-list header fields."""

from __future__ import annotations

import pytest

from postroom.core.addresses import address_allowed, domain_of, mailboxes, normalise_address
from postroom.core.errors import InvalidMessageError


def test_the_domain_is_normalised_and_the_local_part_kept() -> None:
    assert normalise_address(" Ada@Example.COM. ") == "Ada@example.com"
    assert domain_of("Ada@Example.COM.") == "example.com"
    assert domain_of("no-at-sign") == ""


def test_allowed_senders_match_whole_addresses_or_domains_case_insensitively() -> None:
    assert address_allowed("anyone@example.com", ())
    assert address_allowed("Billing@Example.com", ("billing@example.com",))
    assert address_allowed("x@Example.COM.", ("example.com",))
    assert not address_allowed("ceo@example.com", ("billing@example.com",))
    assert not address_allowed("a@evil.example", ("example.com",))


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("a@postroom.test", ("a@postroom.test",)),
        ("Ada <a@Postroom.TEST>", ("a@postroom.test",)),
        ('"Ada, Countess" <ada@example.com>', ("ada@example.com",)),
        ("=?utf-8?q?Ad=C3=A9?= <a@x.test>", ("a@x.test",)),
        ("a@x.test (a comment)", ("a@x.test",)),
        ("a@postroom.test, ceo@evil.example", ("a@postroom.test", "ceo@evil.example")),
        ('"a@postroom.test" <ceo@evil.example>', ("ceo@evil.example",)),  # the real address counts
        ("Group: a@x.test, b@y.test;", ("a@x.test", "b@y.test")),
        ("undisclosed-recipients:;", ()),
    ],
)
def test_every_address_of_a_field_is_read(value: str, found: tuple[str, ...]) -> None:
    assert mailboxes(value) == found


@pytest.mark.parametrize(
    "value",
    [
        "a@postroom.test <ceo@evil.example>",  # one address to a lenient reader, another on screen
        "Shop <a@shop.example",
        "x <a@b.test> y",
        "<>",
        "a@x.test\x00",
        "Ada <a@example.com.>",
    ],
)
def test_a_field_the_parser_had_to_repair_is_refused(value: str) -> None:
    with pytest.raises(InvalidMessageError, match="not a valid address list"):
        mailboxes(value, "From")
