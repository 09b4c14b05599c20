"""Settings of outbound webhooks (`[webhooks]`): the sender's limits, retries and when an endpoint
that keeps failing is disabled."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class WebhookSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True  # the consumer and the sender run (endpoints still need subscribing)
    timeout: float = Field(default=10.0, gt=0)  # seconds for a whole request, connect to last byte
    max_in_flight: int = Field(default=20, ge=1, le=1000)  # requests at once, this process
    max_per_endpoint: int = Field(default=4, ge=1, le=100)  # connections to one endpoint host
    batch_size: int = Field(default=100, ge=1, le=5000)  # due deliveries claimed at once
    poll_interval: float = Field(default=1.0, gt=0)
    lease_seconds: float = Field(default=60.0, ge=1)  # a claimed row returns to others after this
    # Attempt n waits retry_base * 2^(n-1) seconds (capped at retry_max), +-jitter of it.
    retry_base: float = Field(default=5.0, gt=0)
    retry_max: float = Field(default=3600.0, gt=0)
    retry_jitter: float = Field(default=0.2, ge=0, le=1)
    max_attempts: int = Field(default=15, ge=1, le=100)  # then the delivery is failed
    # Failed attempts in a row (over all of an endpoint's deliveries) after which it is disabled.
    disable_after: int = Field(default=100, ge=1)
    # Delivered and failed deliveries are kept this long (seconds) for `webhooks ls` and replay
    # bookkeeping, then deleted. 0 = keep forever.
    retention: float = Field(default=7 * 86400.0, ge=0)

    @model_validator(mode="after")
    def _retry_order(self) -> WebhookSettings:
        if self.retry_max < self.retry_base:
            raise ValueError("retry_max must be >= retry_base")
        return self
