"""`[reports]` and `[reports.definitions.<name>]`: what is reported, to whom, on which schedule.

`weekly` (Monday 08:00) and `monthly` (the 1st, 08:00) exist unless configured otherwise; every
other name is a custom report. A cron expression that does not parse, a time zone that does not
exist, an unknown section or period kind is refused at start with the key that holds it.
"""

from __future__ import annotations

import zoneinfo
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from postroom.core.addresses import valid_mailbox
from postroom.reports.cron import trigger
from postroom.reports.periods import check_kind

SECTIONS = ("headline", "mrr-movements", "customers", "revenue-risk", "cash", "product", "delivery-health",
            "hogql", "data-freshness")  # fmt: skip
FORMATS = ("email", "csv")


def _zone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not a time zone (e.g. Europe/Berlin, UTC)") from None
    return value


class ReportDefinition(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    title: str = Field(default="", max_length=200)  # "": the report's name
    # Five fields (minute hour day month weekday, 0 or 7 = Sunday), in `timezone`; "": on demand only.
    cron: str = "0 8 * * mon"
    timezone: str = ""  # "": [reports] timezone
    recipients: tuple[str, ...] = ()  # none: the run is recorded and previewable, not mailed
    sections: tuple[str, ...] = ("headline", "mrr-movements", "customers", "revenue-risk", "cash", "product",
                                 "delivery-health", "data-freshness")  # fmt: skip
    period: str = "week"  # week, month, quarter or "trailing N" (days)
    formats: tuple[str, ...] = ("email",)  # email, and csv (the figures attached)
    hogql: str = ""  # for the `hogql` section: the name of a [posthog.queries.<name>] to show as a table
    enabled: bool = True

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if value:
            try:
                trigger(value, zoneinfo.ZoneInfo("UTC"))  # as the scheduler reads it: 0 or 7 is Sunday
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a cron expression (minute hour day month weekday): {exc}") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return _zone(value) if value else value

    @field_validator("sections")
    @classmethod
    def _sections(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [s for s in value if s not in SECTIONS]
        if unknown:
            raise ValueError(f"unknown section {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
        return value

    @field_validator("formats")
    @classmethod
    def _formats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [f for f in value if f not in FORMATS]
        if unknown:
            raise ValueError(f"unknown format {', '.join(unknown)}; known: {', '.join(FORMATS)}")
        return value

    @field_validator("period")
    @classmethod
    def _period(cls, value: str) -> str:
        return check_kind(value)

    @field_validator("recipients")
    @classmethod
    def _recipients(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [r for r in value if not valid_mailbox(r)]
        if bad:
            raise ValueError(f"not an email address: {', '.join(bad)}")
        return value

    @model_validator(mode="after")
    def _hogql_named(self) -> ReportDefinition:
        if "hogql" in self.sections and not self.hogql:
            raise ValueError("the hogql section needs `hogql`: the name of a [posthog.queries.<name>]")
        return self


def default_definitions() -> dict[str, ReportDefinition]:
    return {
        "weekly": ReportDefinition(title="Weekly summary", cron="0 8 * * mon", period="week"),
        "monthly": ReportDefinition(title="Monthly executive report", cron="0 8 1 * *", period="month"),
    }


class ReportsSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True  # false: no report is scheduled (they still run on demand)
    timezone: str = "UTC"
    locale: str = "en_US"  # numbers, money and dates (Babel)
    sender: str = ""  # From of report mail; "": reports@<first sending domain>
    # How late a run missed while no daemon was up is still sent; later than that it is recorded
    # as missed and alerted. Seconds.
    grace: float = Field(default=6 * 3600.0, ge=0)
    # How long one section may take (PostHog included) before it is shown as unavailable. Seconds.
    section_timeout: float = Field(default=30.0, gt=0)
    template_dir: str = ""  # "": the templates shipped in postroom/reports/templates
    definitions: dict[str, ReportDefinition] = Field(default_factory=default_definitions)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return _zone(value)

    @field_validator("locale")
    @classmethod
    def _locale(cls, value: str) -> str:
        from babel import Locale, UnknownLocaleError

        try:
            Locale.parse(value)
        except (UnknownLocaleError, ValueError):
            raise ValueError(f"{value!r} is not a locale (e.g. en_US, de_DE)") from None
        return value

    @field_validator("definitions", mode="before")
    @classmethod
    def _with_defaults(cls, value: Any) -> Any:
        """The configured definitions over the defaults: `weekly` and `monthly` stay unless named."""
        if isinstance(value, dict):
            return {**default_definitions(), **value}
        return value

    @field_validator("definitions")
    @classmethod
    def _names(cls, value: dict[str, ReportDefinition]) -> dict[str, ReportDefinition]:
        import re

        bad = [name for name in value if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", name)]
        if bad:
            raise ValueError(f"report names are lower-case letters, digits, - and _: {', '.join(bad)}")
        return value

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        if value and not valid_mailbox(value.rpartition("<")[2].rstrip(">").strip()):
            raise ValueError(f"{value!r} is not an email address")
        return value

    def zone(self, definition: ReportDefinition) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(definition.timezone or self.timezone)
