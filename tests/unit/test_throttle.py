"""The rules of the failed-login throttle: source networks, the keys of an attempt, the backoff."""

from __future__ import annotations

import pytest

from postroom.smtp.throttle import LoginLimits, block_for, block_schedule, source_network

LIMITS = LoginLimits(limit=5, network_limit=20, user_limit=30, window=300.0, backoff_max=3600.0,
                     trust_period=86400.0)  # fmt: skip


@pytest.mark.parametrize(
    ("peer", "network"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:192.0.2.9", "192.0.2.9"),  # an IPv4 client on a dual-stack socket
        ("fe80::1%eth0", "fe80::/64"),
        ("/run/postroom.sock", "/run/postroom.sock"),  # no IP address: itself
    ],
)
def test_source_network_is_the_ipv4_address_or_the_ipv6_64(peer: str, network: str) -> None:
    assert source_network(peer) == network


def test_ipv6_addresses_in_one_64_share_every_network_key() -> None:
    one = LIMITS.keys("2001:db8::1", "app")
    other = LIMITS.keys("2001:db8::ffff:1234:5678:9abc", "app")
    next_64 = LIMITS.keys("2001:db8:0:1::1", "app")
    assert [k.name for k in one] == [k.name for k in other]
    assert one[0].name != next_64[0].name and one[1].name != next_64[1].name
    assert one[2].name == next_64[2].name  # the user key is the same from anywhere


def test_an_attempt_has_a_login_key_a_network_key_and_a_user_key() -> None:
    login, network, user = LIMITS.keys("192.0.2.1", "app@example.com")
    assert (login.name, login.limit) == ("login:192.0.2.1|app@example.com", 5)
    assert login.clears_on_success and not login.waived_when_trusted
    assert (network.name, network.limit) == ("net:192.0.2.1", 20)
    assert not network.clears_on_success and not network.waived_when_trusted
    assert (user.name, user.limit) == ("user:app@example.com", 30)
    assert user.waived_when_trusted and not user.clears_on_success


def test_usernames_are_made_storable() -> None:
    login, _, user = LIMITS.keys("192.0.2.1", "a\x00b" + "x" * 1000)
    assert "\x00" not in login.name and "\x00" not in user.name
    assert len(user.name) == len("user:") + 256
    assert len(login.name) <= 320  # the width of login_throttle.key


def test_blocks_double_from_the_window_up_to_the_maximum() -> None:
    assert block_schedule(300.0, 3600.0) == (300.0, 600.0, 1200.0, 2400.0, 3600.0)
    assert [block_for(n, 300.0, 3600.0) for n in range(7)] == [
        300.0, 600.0, 1200.0, 2400.0, 3600.0, 3600.0, 3600.0,
    ]  # fmt: skip
    assert LIMITS.blocks == block_schedule(300.0, 3600.0)


def test_a_maximum_below_the_window_caps_the_first_block_too() -> None:
    assert block_schedule(300.0, 60.0) == (60.0,)
    assert block_schedule(300.0, 300.0) == (300.0,)
    assert block_for(5, 300.0, 60.0) == 60.0


def test_the_schedule_stays_short_for_a_tiny_window() -> None:
    blocks = block_schedule(1e-9, 1e12)
    assert len(blocks) <= 65 and blocks[-1] == 1e12
