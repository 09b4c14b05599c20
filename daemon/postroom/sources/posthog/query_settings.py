"""Settings of PostHog as a report source (`[posthog]`): where the Query API is, the key it is read
with, how long a query may take, the named queries reports use (`[posthog.queries.<name>]`, the
defaults below included) and what PostHog's alert webhooks trigger (`[posthog.alerts.<name>]`).

Off until both `project_id` and `personal_api_key` are set. HogQL in a named query bounds its
period with `{since}` and `{until}`, filled with explicit UTC timestamps when it runs, never with
`now()`: a report run twice for one period asks PostHog the same question.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from postroom.core.addresses import valid_mailbox
from postroom.core.setting_values import http_url, text_list

US_HOST = "https://us.posthog.com"
EU_HOST = "https://eu.posthog.com"
PLACEHOLDERS = ("since", "until")
# `{name}` in HogQL; PostHog's own placeholders look the same, so any other name is refused.
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_KIND = r"^[A-Z][A-Za-z]{1,63}Query$"


def placeholders_of(sql: str) -> list[str]:
    """The `{name}` placeholders of a HogQL text, in order."""
    return PLACEHOLDER.findall(sql)


class NamedQuery(BaseModel):
    """`[posthog.queries.<name>]`: HogQL (`hogql = "..."`), or an insight query object passed through
    as PostHog takes it (`query = {kind = "TrendsQuery", ...}`, or `kind` beside it); exactly one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    title: str = Field(default="", max_length=200)  # how a report heads the figure; "": the name
    hogql: str = ""
    kind: str = Field(default="", pattern=rf"({_KIND})|^$")  # TrendsQuery, FunnelsQuery, ...
    query: dict[str, Any] | None = None
    # A funnel's number of steps: the activation rate is persons at this level over those at level 1
    # (0: the highest level in the answer, which reads 100 % when nobody went past the first step).
    steps: int = Field(default=0, ge=0, le=50)

    @field_validator("hogql")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        unknown = sorted(set(placeholders_of(value)) - set(PLACEHOLDERS))
        if unknown:
            names = ", ".join("{" + name + "}" for name in unknown)
            raise ValueError(f"unknown placeholder(s) {names}; known: {{since}}, {{until}}")
        return value

    @model_validator(mode="after")
    def _one_form(self) -> NamedQuery:
        if bool(self.hogql.strip()) == (self.query is not None):
            raise ValueError("give exactly one of hogql or query")
        if self.hogql:
            if self.kind:
                raise ValueError("kind goes with query, not hogql")
            return self
        assert self.query is not None
        inner = self.query.get("kind")
        if inner is not None and not isinstance(inner, str):
            raise ValueError("query.kind must be text")
        if self.kind and inner and inner != self.kind:
            raise ValueError(f"kind {self.kind!r} and query.kind {inner!r} differ")
        found = self.kind or inner or ""
        if not re.match(_KIND, found):
            raise ValueError("query needs its kind (TrendsQuery, FunnelsQuery, ...): query.kind or kind")
        if found == "HogQLQuery":
            raise ValueError("HogQL goes in hogql, with {since} and {until} bounds")
        return self

    @property
    def insight(self) -> dict[str, Any]:
        """The insight query object with its kind (only for a `query` entry)."""
        assert self.query is not None
        return {**self.query, "kind": self.kind or self.query["kind"]}


def _hogql(sql: str, title: str, steps: int = 0) -> NamedQuery:
    return NamedQuery(hogql=" ".join(sql.split()), title=title, steps=steps)


# REPORTS.md 3.3, with the period's bounds in place of now(). Event names are project-specific:
# override `signups` and `activation_funnel` by name when the product calls them otherwise.
DEFAULT_QUERIES: dict[str, NamedQuery] = {
    "wau": _hogql("""
        SELECT toStartOfWeek(timestamp, 1) AS week, count(DISTINCT person_id) AS wau FROM events
        WHERE timestamp >= {since} AND timestamp < {until} AND event NOT LIKE '$feature%'
        GROUP BY week ORDER BY week""", "Weekly active users"),
    "mau": _hogql("""
        SELECT toStartOfMonth(timestamp) AS month, count(DISTINCT person_id) AS mau FROM events
        WHERE timestamp >= {since} AND timestamp < {until} AND event NOT LIKE '$feature%'
        GROUP BY month ORDER BY month""", "Monthly active users"),
    "signups": _hogql("""
        SELECT toDate(timestamp) AS day, count(DISTINCT person_id) AS signups FROM events
        WHERE event = 'user_signed_up' AND timestamp >= {since} AND timestamp < {until}
        GROUP BY day ORDER BY day""", "Signups"),
    "activation_funnel": _hogql("""
        SELECT level, count() AS persons FROM (
          SELECT person_id, windowFunnel(604800)(timestamp, event = 'user_signed_up',
            event = 'project_created', event = 'subscription_started') AS level
          FROM events WHERE timestamp >= {since} AND timestamp < {until}
            AND event IN ('user_signed_up', 'project_created', 'subscription_started')
          GROUP BY person_id)
        GROUP BY level ORDER BY level""", "Activation funnel (7-day window)", steps=3),
    "top_events": _hogql("""
        SELECT event, count() AS events, count(DISTINCT person_id) AS users FROM events
        WHERE timestamp >= {since} AND timestamp < {until}
        GROUP BY event ORDER BY events DESC LIMIT 10""", "Top events"),
}


class AlertRule(BaseModel):
    """`[posthog.alerts.<name>]`: what a PostHog alert of that name does: run a report now
    (`action = "report"`, `report = "<report name>"`) or send an alert email (`action = "email"`,
    `to = [...]`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    action: Literal["report", "email"]
    report: str = Field(default="", max_length=64)
    to: tuple[str, ...] = ()

    @field_validator("to", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return text_list(value)

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [address for address in value if not valid_mailbox(address)]
        if bad:
            raise ValueError(f"not email addresses: {', '.join(bad)}")
        return value

    @model_validator(mode="after")
    def _target(self) -> AlertRule:
        if self.action == "report" and not self.report:
            raise ValueError('action = "report" needs report = "<report name>"')
        if self.action == "email" and not self.to:
            raise ValueError('action = "email" needs to = ["address", ...]')
        return self


class PostHogSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # The app host of the private API (not the `.i.` ingestion host): US_HOST, EU_HOST, or a
    # self-hosted instance's URL.
    host: str = US_HOST
    project_id: str = Field(default="", max_length=20)  # "": PostHog is not a report source
    # A personal API key (phx_, Query Read scope) or a project secret key (phs_, query:read);
    # also readable from `personal_api_key_file`.
    personal_api_key: str = Field(default="", repr=False)
    timeout: float = Field(default=10.0, gt=0, le=300)  # seconds per request, connecting included
    budget: float = Field(default=30.0, gt=0, le=3600)  # seconds for one query, retries included
    retry_after_cap: float = Field(default=10.0, ge=0, le=600)  # the longest Retry-After honoured
    cache_ttl: float = Field(default=3600.0, ge=0)  # seconds a result is reused; 0: never
    cache_size: int = Field(default=256, ge=0, le=100_000)  # results kept at most
    # The secret `POST /webhooks/posthog` wants (header X-Postroom-Secret or `?secret=`); also
    # readable from `webhook_secret_file`. "": the endpoint is off.
    webhook_secret: str = Field(default="", repr=False)
    queries: dict[str, NamedQuery] = Field(default_factory=dict, validate_default=True)
    alerts: dict[str, AlertRule] = Field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.project_id and self.personal_api_key)

    @field_validator("host")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value, bare=True)

    @field_validator("project_id", mode="before")
    @classmethod
    def _project_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("project_id")
    @classmethod
    def _project_digits(cls, value: str) -> str:
        value = value.strip()
        if value and not value.isdigit():
            raise ValueError(f"{value!r} is not a project id (the number in /project/<id>/ of PostHog's URLs)")
        return value

    @field_validator("personal_api_key", "webhook_secret")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @field_validator("personal_api_key")
    @classmethod
    def _query_key(cls, value: str) -> str:
        if value.startswith("phc_"):
            raise ValueError("phc_ is the project key for capture; queries need a personal API key (phx_) "
                             "or a project secret key (phs_)")  # fmt: skip
        return value

    @field_validator("queries")
    @classmethod
    def _with_defaults(cls, value: dict[str, NamedQuery]) -> dict[str, NamedQuery]:
        for name in value:
            if not re.match(_NAME, name):
                raise ValueError(f"{name!r} is not a query name (letters, digits, _ and -)")
        return {**DEFAULT_QUERIES, **value}

    @field_validator("alerts")
    @classmethod
    def _alert_names(cls, value: dict[str, AlertRule]) -> dict[str, AlertRule]:
        for name in value:
            if not name.strip():
                raise ValueError("an alert name is empty")
        return value
