"""Settings of PostHog capture (`[posthog_capture]`): off by default."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CAPTURABLE = ("accepted", "delivered", "deferred", "bounced", "expired", "dead", "complained",
              "suppressed", "unsubscribed")  # fmt: skip


class PostHogCaptureSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    host: str = "https://us.i.posthog.com"
    api_key: str = Field(default="", repr=False)  # the project API key (phc_...); or api_key_file
    event_types: tuple[str, ...] = ("delivered", "bounced", "complained", "unsubscribed")
    batch_size: int = Field(default=100, ge=1, le=1000)  # events per flush to PostHog
    poll_interval: float = Field(default=5.0, gt=0)
    timeout: float = Field(default=10.0, gt=0)  # per HTTP request
    max_retries: int = Field(default=3, ge=0, le=10)  # the SDK's retries of one batch
    retry_max: float = Field(default=300.0, gt=0)  # cap of the wait between failed rounds

    @field_validator("event_types", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("event_types")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(CAPTURABLE))
        if unknown:
            raise ValueError(f"unknown event types {', '.join(unknown)}; known: {', '.join(CAPTURABLE)}")
        return value

    @field_validator("host")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _key_when_enabled(self) -> PostHogCaptureSettings:
        if self.enabled and not self.api_key:
            raise ValueError("enabled capture needs api_key (or api_key_file)")
        return self
