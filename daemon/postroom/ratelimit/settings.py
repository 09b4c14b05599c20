"""`[http.rate_limit]`: the quotas of the HTTP API, per API key."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from postroom.ratelimit.quota import parse_quota

ROUTE_CLASSES = ("send", "read", "write")


class RateLimitSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    # Every API key's quota for all its requests together, like Loops' 10 requests per second.
    default: str = "10/s"
    # Route classes with a quota of their own, counted apart from `default`: "send" (sending
    # mail, events), "read" (GET) and "write" (the other changes).
    classes: dict[str, str] = Field(default_factory=dict)
    # A key's own quota in place of `default`, by the key's name or id.
    keys: dict[str, str] = Field(default_factory=dict)

    @field_validator("default")
    @classmethod
    def _quota(cls, value: str) -> str:
        parse_quota(value)
        return value

    @field_validator("classes")
    @classmethod
    def _class_quotas(cls, value: dict[str, str]) -> dict[str, str]:
        for name, quota in value.items():
            if name not in ROUTE_CLASSES:
                raise ValueError(f"unknown route class {name!r}; the classes are {', '.join(ROUTE_CLASSES)}")
            parse_quota(quota)
        return value

    @field_validator("keys")
    @classmethod
    def _key_quotas(cls, value: dict[str, str]) -> dict[str, str]:
        for quota in value.values():
            parse_quota(quota)
        return value
