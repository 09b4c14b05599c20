"""Which path delivers each recipient: the route settings and the choice. Pure.

A `RouteSetting` applies to a stream, or to one template of a stream (the more specific wins). Its
mode:

- `legacy`: Loops delivers, for real;
- `shadow`: Loops delivers for real, and the in-house path also renders, signs and sends a copy,
  but only to the shadow sink (never to the recipient);
- `split`: `percent` percent of recipients in-house, the rest through Loops. Who goes in-house is a
  keyed hash of the address (`bucket`), so a recipient always takes the same path at a given
  percentage, and raising it only moves recipients from Loops to in-house;
- `inhouse`: all in-house (with `fallback`, a sender-side failure is handed to Loops).

Mail Loops cannot send (no template, or a template without a Loops transactionalId) goes in-house
whatever the setting: Loops' API sends templates only.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from postroom.core.types import INHOUSE_ROUTE, LOOPS_ROUTE

BUCKETS = 10_000  # a recipient's bucket is one of these; `split N` takes those below N * 100


class Mode(enum.StrEnum):
    LEGACY = "legacy"
    SHADOW = "shadow"
    SPLIT = "split"
    INHOUSE = "inhouse"


@dataclass(frozen=True)
class RouteSetting:
    stream: str
    template: str  # "": every template of the stream
    mode: Mode
    percent: int = 0  # the in-house share of `split`, 0..100
    fallback: bool = False
    ramp: bool = False

    @property
    def inhouse_share(self) -> int:
        """Percent of recipients the in-house path delivers to for real."""
        if self.mode is Mode.SPLIT:
            return self.percent
        return 100 if self.mode is Mode.INHOUSE else 0

    def describe(self) -> str:
        text = f"split {self.percent}%" if self.mode is Mode.SPLIT else self.mode.value
        return text + (" with fallback" if self.fallback and self.mode is Mode.INHOUSE else "")


def checked(setting: RouteSetting) -> RouteSetting:
    """The setting, or ValueError saying what is wrong with it."""
    if not 0 <= setting.percent <= 100:
        raise ValueError("percent must be between 0 and 100")
    if setting.mode is not Mode.SPLIT and setting.percent not in (0, setting.inhouse_share):
        raise ValueError(f"percent applies to mode split only, not {setting.mode.value}")
    if setting.fallback and setting.mode is not Mode.INHOUSE:
        raise ValueError("fallback applies to mode inhouse only")
    if setting.ramp and setting.mode is not Mode.SPLIT:
        raise ValueError("a ramp plan moves a split route; set mode split")
    return setting


def bucket(key: bytes, address: str) -> int:
    """The recipient's place in 0..BUCKETS-1: HMAC-SHA256 of the case-folded address under the
    daemon's routing key (so nobody outside can pick which path an address takes)."""
    digest = hmac.new(key, address.strip().lower().encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


@dataclass(frozen=True)
class Choice:
    route: str  # the delivery that reaches the recipient: "inhouse" or "loops"
    shadow_copy: bool = False  # also an in-house copy to the shadow sink


INHOUSE = Choice(INHOUSE_ROUTE)


def choose(setting: RouteSetting | None, address: str, key: bytes) -> Choice:
    if setting is None or setting.mode is Mode.INHOUSE:
        return INHOUSE
    if setting.mode is Mode.LEGACY:
        return Choice(LOOPS_ROUTE)
    if setting.mode is Mode.SHADOW:
        return Choice(LOOPS_ROUTE, shadow_copy=True)
    return INHOUSE if bucket(key, address) < setting.percent * (BUCKETS // 100) else Choice(LOOPS_ROUTE)


def setting_for(
    settings: Mapping[tuple[str, str], RouteSetting], stream: str, template: str | None
) -> RouteSetting | None:
    """The template's own setting, else the stream's, else None (in-house)."""
    if template and (stream, template) in settings:
        return settings[(stream, template)]
    return settings.get((stream, ""))

