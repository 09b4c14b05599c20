"""`[bounces]`: the VERP return path (its signing keys, prefix and token lifetime), the
feedback-loop addresses the MX accepts, and when soft failures suppress a recipient."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from postroom.core.addresses import valid_mailbox
from postroom.core.setting_values import text_list

MIN_KEY_LENGTH = 16


def _key_list(value: Any) -> Any:
    """Keys may be given as a TOML array, or as text (an env variable, a `verp_keys_file`) with one
    key per line or separated by commas."""
    return text_list(value)


class BounceSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # HMAC keys of VERP return paths and unsubscribe links: the FIRST signs, every one verifies
    # (rotation: put a new key first, drop the old one once its tokens have expired).
    verp_keys: tuple[str, ...] = Field(default=(), repr=False)
    verp_prefix: str = Field(default="bounces", min_length=1, max_length=20, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    verp_max_age: float = Field(default=30 * 86400.0, gt=0)  # a token older than this is refused
    feedback_addresses: tuple[str, ...] = ()  # feedback-loop (ARF) addresses the MX accepts
    soft_failure_limit: int = Field(default=3, ge=1)  # mailboxfull, suspend, filtered: this many...
    soft_failure_window: float = Field(default=7 * 86400.0, gt=0)  # ...within this many seconds
    soft_suppression_days: float = Field(default=30.0, gt=0)  # and the entry expires after this
    max_stored_bounce: int = Field(default=256 * 1024, ge=1024)  # raw bytes kept per bounce record

    _split_keys = field_validator("verp_keys", mode="before")(classmethod(lambda cls, v: _key_list(v)))
    _split_feedback = field_validator("feedback_addresses", mode="before")(
        classmethod(lambda cls, v: _key_list(v))
    )

    @field_validator("verp_keys")
    @classmethod
    def _long_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(len(key) < MIN_KEY_LENGTH for key in value):
            raise ValueError(f"each key must be at least {MIN_KEY_LENGTH} characters (use `openssl rand -hex 32`)")
        return value

    @field_validator("feedback_addresses")
    @classmethod
    def _mailboxes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            if not valid_mailbox(address):
                raise ValueError(f"{address!r} is not a mailbox address")
        return tuple(address.lower() for address in value)
