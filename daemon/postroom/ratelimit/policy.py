"""Which bucket a request spends from, and with which quota."""

from __future__ import annotations

from dataclasses import dataclass

from postroom.ratelimit.quota import Quota, Verdict, parse_quota
from postroom.ratelimit.settings import RateLimitSettings
from postroom.ratelimit.table import RateTable


@dataclass(frozen=True)
class Charge:
    bucket: str  # "<key id>/<class>" or "<key id>/default"
    route_class: str
    quota: Quota


class RatePolicy:
    """A key's requests all spend from one bucket with the key's quota (`keys.<name or id>`, else
    `default`), except those of a route class that has a quota of its own (`classes.<class>`)."""

    def __init__(self, settings: RateLimitSettings):
        self._default = parse_quota(settings.default)
        self._classes = {name: parse_quota(q) for name, q in settings.classes.items()}
        self._keys = {name: parse_quota(q) for name, q in settings.keys.items()}

    def charge(self, key_id: str, key_name: str, route_class: str) -> Charge:
        own = self._classes.get(route_class)
        if own is not None:
            return Charge(f"{key_id}/{route_class}", route_class, own)
        quota = self._keys.get(key_id) or self._keys.get(key_name) or self._default
        return Charge(f"{key_id}/default", route_class, quota)


class RateLimiter:
    def __init__(self, policy: RatePolicy, table: RateTable):
        self._policy = policy
        self._table = table

    def check(self, key_id: str, key_name: str, route_class: str) -> tuple[Charge, Verdict]:
        charge = self._policy.charge(key_id, key_name, route_class)
        return charge, self._table.spend(charge.bucket, charge.quota)
