"""`[shadow]`: shadow mode beside Loops. The routing key, where shadow copies go, how fast every
process follows a route change, the guard's limits and the ramp plan."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from postroom.core.addresses import valid_mailbox


class GuardSettings(BaseModel):
    """Limits on the in-house path against Loops over the same window. Rates are percentages of
    recipients sent; an excess is in percentage points over Loops' rate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    window: float = Field(default=3600.0, gt=0)  # seconds of deliveries each check looks at
    check_interval: float = Field(default=60.0, gt=0)
    min_messages: int = Field(default=200, ge=1)  # in-house recipients in the window before judging
    max_hard_bounce_excess: float = Field(default=1.0, ge=0)
    max_complaint_excess: float = Field(default=0.1, ge=0)
    max_failed_excess: float = Field(default=1.0, ge=0)
    max_deferral_excess: float = Field(default=10.0, ge=0)
    # Where a breach steps a route back to: the ramp step below ("step"), or all the way ("legacy").
    step_back: Literal["step", "legacy"] = "step"


class RampSettings(BaseModel):
    """The ramp plan of routes set with `ramp`: each step after `min_dwell` seconds at the step
    before and a healthy window of at least the guard's `min_messages` in-house recipients."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: tuple[int, ...] = (1, 5, 25, 50, 100)
    min_dwell: float = Field(default=86400.0, ge=0)

    @field_validator("steps")
    @classmethod
    def _rising(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(not 0 < step <= 100 for step in value) or list(value) != sorted(set(value)):
            raise ValueError("steps must be rising percentages between 1 and 100")
        return value


class ShadowSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # The key of the hash that splits recipients (`split N`); keep it fixed, or recipients move.
    routing_key: str = Field(default="", repr=False)
    # Where shadow copies go: written to `capture_dir` ("capture"), or sent to `seeds` ("seeds").
    sink: Literal["capture", "seeds"] = "capture"
    capture_dir: str = ""  # default: <state directory of the database>/shadow
    seeds: tuple[str, ...] = ()
    refresh_interval: float = Field(default=2.0, gt=0)  # seconds before a route change is followed
    guard: GuardSettings = Field(default_factory=GuardSettings)
    ramp: RampSettings = Field(default_factory=RampSettings)

    @field_validator("seeds")
    @classmethod
    def _mailboxes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            if not valid_mailbox(address):
                raise ValueError(f"{address!r} is not a mailbox address")
        return value

    @model_validator(mode="after")
    def _seeds_for_the_seed_sink(self) -> ShadowSettings:
        if self.sink == "seeds" and not self.seeds:
            raise ValueError("sink = 'seeds' needs at least one address in seeds")
        return self
