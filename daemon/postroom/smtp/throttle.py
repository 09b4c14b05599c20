"""The rules of the failed-login throttle of SMTP AUTH: which counters an attempt is charged to,
their limits, and how long a counter that reached its limit stays blocked. Pure functions of plain
values; the counters themselves are rows of the database (`store.login_throttle`), so every process
and every daemon on one database shares them.

Every attempt is charged to three keys (docs/operations.md, "Failed logins"):

- `login:<network>|<username>`, limit `login_failure_limit`: one login from one source network,
  the tight limit. A success clears it, and makes the pair *trusted* for `login_trust_period`.
- `net:<network>`, limit `login_network_failure_limit`: every login tried from one network
  (password spraying over many usernames). A success does not clear it, or an attacker's own good
  login would buy guesses at other accounts.
- `user:<username>`, limit `login_user_failure_limit`: one login tried from any network (guessing
  spread over many addresses). Not cleared by a success either (a login that succeeds every minute
  would reset the count as fast as a botnet fills it). It is waived for a trusted pair, so guessing
  a login from elsewhere does not lock its owner out of the network it has been logging in from.

A source network is an IPv4 address or an IPv6 /64: a host picks its own addresses in its /64
(64-bit interface identifiers, RFC 4291 §2.5.1; temporary addresses, RFC 8981), so counting single
IPv6 addresses would count nothing. A key whose failures reach its limit within
`login_failure_window` is blocked for the window; each new block while the last one is remembered
(until `login_backoff_max` after it ended) lasts twice as long, up to `login_backoff_max`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from postroom.store.login_throttle import ThrottleKey

# Longer usernames cannot exist (smtp_users.username is 255); truncating merges only unknown ones.
_MAX_USERNAME = 256


def source_network(peer: str) -> str:
    """The network an address is throttled as: an IPv4 address, or the /64 of an IPv6 one (an
    IPv4-mapped IPv6 address is its IPv4 address). A peer that is no IP address is itself."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(address), 64), strict=False))
    return str(address)


def _username(username: str) -> str:
    # NUL cannot be stored in a PostgreSQL text column; such a name is no user's anyway.
    return username[:_MAX_USERNAME].replace("\x00", "\ufffd")


def block_schedule(window: float, backoff_max: float) -> tuple[float, ...]:
    """How long the 1st, 2nd, ... block in a row lasts; the last entry repeats.
    (300, 3600) -> (300, 600, 1200, 2400, 3600)."""
    blocks: list[float] = []
    block = window
    while block < backoff_max and len(blocks) < 64:
        blocks.append(block)
        block *= 2
    blocks.append(backoff_max)
    return tuple(blocks)


def block_for(strikes: int, window: float, backoff_max: float) -> float:
    """The block after `strikes` earlier blocks in a row."""
    blocks = block_schedule(window, backoff_max)
    return blocks[min(strikes, len(blocks) - 1)]


@dataclass(frozen=True)
class LoginLimits:
    limit: int  # failures per login and network
    network_limit: int  # failures per network, any login
    user_limit: int  # failures per login, any network
    window: float
    backoff_max: float
    trust_period: float

    def keys(self, peer: str, username: str) -> tuple[ThrottleKey, ...]:
        """The keys of one attempt, in the order they are locked (the login pair first: whether
        it is trusted decides whether the user key applies)."""
        network = source_network(peer)
        user = _username(username)
        return (
            ThrottleKey(f"login:{network}|{user}", self.limit, clears_on_success=True),
            ThrottleKey(f"net:{network}", self.network_limit),
            ThrottleKey(f"user:{user}", self.user_limit, waived_when_trusted=True),
        )

    @property
    def blocks(self) -> tuple[float, ...]:
        return block_schedule(self.window, self.backoff_max)
