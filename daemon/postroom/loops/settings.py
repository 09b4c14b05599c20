"""Settings of the Loops-compatible API and of Loops as a delivery route (`[loops]`), and of the
event rules (`[events.<name>]`)."""

from __future__ import annotations

import binascii

from pydantic import BaseModel, ConfigDict, Field, field_validator
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

from postroom.core.addresses import valid_mailbox
from postroom.core.setting_values import http_url, text_list
from postroom.ratelimit.quota import parse_quota

_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class LoopsSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # What `GET /api/v1/api-key` answers as the team's name.
    team_name: str = Field(default="postroom", min_length=1, max_length=255)
    # postroom template id -> Loops transactionalId: an application keeps sending the id it knows.
    templates: dict[str, str] = Field(default_factory=dict)
    # From, for templates that set none (Loops keeps the From in the email itself).
    default_from: str = ""
    # Attachments of a transactional send, decoded: each file, and all of one message together.
    max_attachment_size: int = Field(default=5 * 1024 * 1024, ge=1024)
    max_attachments_size: int = Field(default=10 * 1024 * 1024, ge=1024)
    # Loops as a delivery route (`postroom.shadow`): mail whose route is "loops" is sent with Loops'
    # transactional API under this key. "" (the default): this daemon runs no Loops route.
    # Also readable from `api_key_file`.
    api_key: str = Field(default="", repr=False)
    base_url: str = "https://app.loops.so/api/v1"
    # Loops' limit for the team (10 requests per second), shared by every process of the daemon.
    rate_limit: str = "10/s"
    timeout: float = Field(default=10.0, gt=0, le=300)  # seconds per request, connecting included
    # The signing secret(s) of Loops' webhooks (`whsec_...`, Settings -> Webhooks) that
    # `POST /webhooks/loops` accepts; both keys together while one is rolled. None: the endpoint is off.
    webhook_secret: str = Field(default="", repr=False)
    webhook_secrets: tuple[str, ...] = Field(default=(), repr=False)
    # How far back a Loops event looks for the delivery it is about (postroom.shadow.loops_events_store).
    webhook_match_window: float = Field(default=30 * 86400.0, gt=0)

    @property
    def webhook_signing_secrets(self) -> tuple[str, ...]:
        """Every secret a Loops webhook may be signed with, the single key first."""
        found = (self.webhook_secret, *self.webhook_secrets) if self.webhook_secret else self.webhook_secrets
        return tuple(dict.fromkeys(found))

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _secret_list(cls, value: object) -> object:
        """A TOML array, or text (an env variable, a `webhook_secrets_file`): one per line or comma-separated."""
        return text_list(value)

    @field_validator("webhook_secret", "webhook_secrets")
    @classmethod
    def _usable_secrets(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        for secret in (value,) if isinstance(value, str) else value:
            if not secret:
                continue
            try:
                Webhook(secret.strip())
            except (binascii.Error, EmptyWebhookSecretError, ValueError):
                raise ValueError("not a Standard Webhooks secret (`whsec_` and base64, as Loops shows it)") from None
        return value.strip() if isinstance(value, str) else tuple(item.strip() for item in value)

    @field_validator("templates")
    @classmethod
    def _unique_ids(cls, value: dict[str, str]) -> dict[str, str]:
        seen: dict[str, str] = {}
        for template_id, transactional_id in value.items():
            if not transactional_id.strip():
                raise ValueError(f"{template_id}: the transactionalId is empty")
            if transactional_id in seen:
                raise ValueError(f"transactionalId {transactional_id!r} is mapped to both {seen[transactional_id]} "
                                 f"and {template_id}")  # fmt: skip
            seen[transactional_id] = template_id
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value, bare=True)

    @field_validator("rate_limit")
    @classmethod
    def _quota(cls, value: str) -> str:
        parse_quota(value)
        return value

    @field_validator("default_from")
    @classmethod
    def _address(cls, value: str) -> str:
        bare = value.rpartition("<")[2].rstrip(">").strip() if "<" in value else value.strip()
        if value and not valid_mailbox(bare):
            raise ValueError(f"{value!r} is not an email address")
        return value


class EventRule(BaseModel):
    """`[events.<name>]`: an event of that name sends a template to its contact, with the event's
    properties as the data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    template: str = Field(min_length=1, max_length=64, pattern=_ID)
    stream: str = Field(default="", max_length=64)  # "": the template's own stream
