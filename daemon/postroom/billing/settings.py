"""`[stripe]`: the account postroom reads (API key, base address) and the webhook secrets it accepts."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from postroom.core.setting_values import http_url, text_list


class StripeSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # A restricted key with read access to customers, subscriptions, invoices, prices and coupons
    # is enough (backfill, reconcile and re-fetching a subscription when a webhook is out of order).
    # "": no API access; webhooks are still applied, older snapshots are then skipped, not re-fetched.
    # Also readable from `api_key_file`.
    api_key: str = Field(default="", repr=False)
    # The endpoint secrets (`whsec_...`) `POST /webhooks/stripe` accepts: several while one is rolled.
    # Empty: the endpoint is off (503).
    webhook_secrets: tuple[str, ...] = Field(default=(), repr=False)
    # How old a signature's timestamp may be, in seconds (Stripe's libraries default to 300).
    webhook_tolerance: int = Field(default=300, ge=1, le=86400)
    api_base: str = "https://api.stripe.com"
    timeout: float = Field(default=30.0, gt=0, le=300)  # seconds per API request
    max_network_retries: int = Field(default=3, ge=0, le=10)  # the SDK's retries of 429, 5xx and resets
    # The nightly reconciliation (`postroom stripe reconcile`), as HH:MM in UTC; "" turns it off.
    reconcile_at: str = "03:30"
    # How often the daemon applies changes that come with time alone (a coupon ending, a past_due
    # grace running out) and re-tries stored events not applied yet.
    sweep_interval: float = Field(default=60.0, gt=0)

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _secret_list(cls, value: object) -> object:
        """A TOML array, or text (an env variable, a `webhook_secrets_file`): one per line or comma-separated."""
        return text_list(value)

    @field_validator("webhook_secrets")
    @classmethod
    def _whsec(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for secret in value:
            if not secret.startswith("whsec_"):
                raise ValueError("a Stripe endpoint secret starts with whsec_ (Developers -> Webhooks -> Signing secret)")
        return value

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value)

    @field_validator("reconcile_at")
    @classmethod
    def _time_of_day(cls, value: str) -> str:
        if value and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError(f"{value!r} is not HH:MM (UTC), or \"\" for off")
        return value
