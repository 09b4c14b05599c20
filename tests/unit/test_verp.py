"""VERP return paths and unsubscribe tokens: round trips, forged, expired and rotated keys, and
case-folding by remote MTAs."""

from __future__ import annotations

import pytest

from postroom.bounces.settings import BounceSettings
from postroom.bounces.return_path import VerpReturnPaths
from postroom.bounces.verp import (
    ReturnPath, TokenProblem, Unsubscribe, decode_unsubscribe, decode_verp, encode_unsubscribe, encode_verp,
    verp_token,
)
from postroom.config import DomainSettings
from postroom.core.clock import FakeClock
from postroom.queue.models import QueuedMessage

OLD, NEW = "old-key-0123456789abcdef", "new-key-0123456789abcdef"
NOW = 1_760_000_000.0
DAY = 86400.0


def test_a_token_names_its_delivery_and_survives_upper_casing() -> None:
    token = encode_verp(123456789, NOW, [NEW])
    assert len(token) == 32 and token == token.lower() and token.isalnum()
    found = decode_verp(token, NOW + 60, [NEW], 30 * DAY)
    assert isinstance(found, ReturnPath) and found.delivery_id == 123456789
    assert decode_verp(token.upper(), NOW + 60, [NEW], 30 * DAY) == found


def test_a_token_signed_with_another_key_or_changed_is_forged() -> None:
    token = encode_verp(42, NOW, ["attacker-key-0123456789"])
    assert decode_verp(token, NOW, [NEW], 30 * DAY) is TokenProblem.FORGED
    good = encode_verp(42, NOW, [NEW])
    # Another delivery id with the same MAC: the MAC covers the id.
    other = encode_verp(43, NOW, [NEW])
    spliced = other[:19] + good[19:]
    assert decode_verp(spliced, NOW, [NEW], 30 * DAY) in (TokenProblem.FORGED, TokenProblem.MALFORMED)
    assert decode_verp("not-a-token!", NOW, [NEW], 30 * DAY) is TokenProblem.MALFORMED
    assert decode_verp(good[:-2], NOW, [NEW], 30 * DAY) is TokenProblem.MALFORMED


def test_a_token_expires_after_the_maximum_age() -> None:
    token = encode_verp(7, NOW, [NEW])
    assert isinstance(decode_verp(token, NOW + 29 * DAY, [NEW], 30 * DAY), ReturnPath)
    assert decode_verp(token, NOW + 31 * DAY, [NEW], 30 * DAY) is TokenProblem.EXPIRED
    assert decode_verp(token, NOW - 3 * DAY, [NEW], 30 * DAY) is TokenProblem.EXPIRED  # from the future


def test_rotation_the_first_key_signs_and_every_key_verifies() -> None:
    before = encode_verp(9, NOW, [OLD])
    after = encode_verp(9, NOW, [NEW, OLD])
    assert before != after
    assert isinstance(decode_verp(before, NOW, [NEW, OLD], 30 * DAY), ReturnPath)
    assert isinstance(decode_verp(after, NOW, [NEW], 30 * DAY), ReturnPath)
    assert decode_verp(before, NOW, [NEW], 30 * DAY) is TokenProblem.FORGED  # the old key retired


def test_return_paths_are_recognised_by_prefix_and_domain() -> None:
    domains = frozenset({"bounce.example.com"})
    assert verp_token("Bounces+ABC@Bounce.Example.com", "bounces", domains) == "ABC"
    assert verp_token("<bounces+abc@bounce.example.com>", "bounces", domains) == "abc"
    assert verp_token("bounces@bounce.example.com", "bounces", domains) is None
    assert verp_token("other+abc@bounce.example.com", "bounces", domains) is None
    assert verp_token("bounces+abc@example.com", "bounces", domains) is None


def test_the_return_path_uses_the_bounce_domain_of_the_sending_domain() -> None:
    paths = VerpReturnPaths(
        [DomainSettings(name="example.com", bounce_domain="rp.example.com"), DomainSettings(name="other.org")],
        BounceSettings(verp_keys=(NEW,)), FakeClock(NOW),
    )
    message = QueuedMessage("m1", "app@example.com", b"", "transactional", "inhouse", NOW, "app@example.com")
    address = paths(message, 55)
    assert address is not None and address.startswith("bounces+") and address.endswith("@rp.example.com")
    found = paths.verify(address)
    assert isinstance(found, ReturnPath) and found.delivery_id == 55
    assert paths.verify(address.replace("@rp.example.com", "@other.org")) == found  # either bounce domain
    assert paths.verify("someone@rp.example.com") is None
    other = QueuedMessage("m2", "app@other.org", b"", "transactional", "inhouse", NOW, "app@other.org")
    assert (paths(other, 1) or "").endswith("@other.org")
    stranger = QueuedMessage("m3", "app@elsewhere.net", b"", "transactional", "inhouse", NOW, "app@elsewhere.net")
    assert paths(stranger, 1) is None


def test_unsubscribe_tokens_round_trip_and_refuse_tampering() -> None:
    item = Unsubscribe("01J0000000000000000000000A", "Ada@example.com", "newsletter")
    token = encode_unsubscribe(item, [NEW])
    assert decode_unsubscribe(token, [NEW, OLD]) == item
    assert decode_unsubscribe(token, [OLD]) is TokenProblem.FORGED
    other = encode_unsubscribe(Unsubscribe(item.message_id, "eve@example.com", "newsletter"), [NEW])
    spliced = other.partition(".")[0] + "." + token.partition(".")[2]
    assert decode_unsubscribe(spliced, [NEW]) is TokenProblem.FORGED
    assert decode_unsubscribe("garbage", [NEW]) is TokenProblem.MALFORMED


@pytest.mark.parametrize("keys", [("short",), ("x" * 15,)])
def test_short_keys_are_refused_by_the_settings(keys: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        BounceSettings(verp_keys=keys)


def test_keys_can_come_as_text_one_per_line_or_comma_separated() -> None:
    assert BounceSettings.model_validate({"verp_keys": f"{NEW}\n{OLD}\n"}).verp_keys == (NEW, OLD)
    assert BounceSettings.model_validate({"verp_keys": f"{NEW}, {OLD}"}).verp_keys == (NEW, OLD)
