"""Settings of delivery analytics (`[stats]`): the rolling window of the bounce and complaint rate
gauges and how often they are refreshed."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StatsSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Gmail's and Yahoo's sender guidelines judge spam (complaint) and bounce rates per day.
    rate_window: float = Field(default=86400.0, gt=0)
    refresh_interval: float = Field(default=60.0, gt=0)
