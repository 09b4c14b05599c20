"""The typed settings tree: loaded once from TOML, `POSTROOM_SECTION__KEY` env and `*_file` secrets.

`load_settings` returns a frozen `Settings` or raises `ConfigError` listing every problem with its
key, so `postroom check-config` and `postroom serve` report the same thing. Each component is given
only its own section. Where the values come from is `config_sources`; this module says what they
must be.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from postroom.billing.settings import StripeSettings
from postroom.bounces.settings import BounceSettings
from postroom.config_sources import EnvironSource, SecretFileSource, TomlFileSource
from postroom.contacts.settings import ContactsSettings
from postroom.loops.settings import EventRule, LoopsSettings
from postroom.mrr.settings import MrrSettings
from postroom.ratelimit.settings import RateLimitSettings
from postroom.reports.settings import ReportsSettings
from postroom.shadow.settings import ShadowSettings
from postroom.sources.posthog.query_settings import PostHogSettings
from postroom.sources.posthog.settings import PostHogCaptureSettings
from postroom.stats.settings import StatsSettings
from postroom.webhooks.settings import WebhookSettings
from postroom.core.addresses import normalise_domain, valid_mailbox
from postroom.core.errors import ConfigError

ENV_PREFIX = "POSTROOM_"
CONFIG_SEARCH_PATH = ("./postroom.toml", "/etc/postroom/postroom.toml")


def parse_hostport(value: str, default_port: int | None = None) -> tuple[str, int]:
    """Split "host:port" or "[v6]:port"; raise ValueError with a readable reason."""
    host, sep, port = value.rpartition(":")
    if not sep:
        if default_port is None:
            raise ValueError(f"{value!r} is not host:port")
        return value, default_port
    host = host.strip("[]")
    if not host:
        raise ValueError(f"{value!r} has no host")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} has no valid port")
    return host, int(port)


def _comma_list(value: Any) -> Any:
    """A list key may also be given as "a, b" (handy in environment variables)."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _check_listen(value: str) -> str:
    if value:
        parse_hostport(value)
    return value


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DatabaseSettings(_Section):
    url: str = "sqlite+aiosqlite:////var/lib/postroom/postroom.db"
    pool_size: int = Field(default=10, ge=1, le=200)
    echo: bool = False

    @field_validator("url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")


class HttpSettings(_Section):
    listen: str = "127.0.0.1:8025"
    max_body_size: int = Field(default=40 * 1024 * 1024, ge=1024)
    # Connection limits (http.server): the whole request head must arrive within header_timeout
    # seconds of its first byte (of the connection, for the first request); an idle keep-alive
    # connection is closed after keepalive_timeout; one client address holds at most
    # max_connections_per_client connections per process (more get 429 and are closed).
    header_timeout: float = Field(default=10.0, gt=0)
    keepalive_timeout: float = Field(default=15.0, gt=0)
    max_connections_per_client: int = Field(default=64, ge=1)
    # Requests per API key (postroom.ratelimit): Loops' 10/s by default.
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    # Where recipients reach this API from outside (the one-click unsubscribe links are
    # <public_url>/u/<token>); "" = no List-Unsubscribe header is added.
    public_url: str = ""

    @field_validator("public_url")
    @classmethod
    def _valid_public_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str) -> str:
        if not value:
            raise ValueError("the HTTP API needs an address (host:port)")
        return _check_listen(value)


class SmtpSettings(_Section):
    hostname: str = "localhost"
    submission_listen: str = "0.0.0.0:587"
    submissions_listen: str = ""  # implicit TLS (port 465), off when empty
    mx_listen: str = "0.0.0.0:25"
    tls_cert: str = ""
    tls_key: str = ""
    max_message_size: int = Field(default=25 * 1024 * 1024, ge=1024)
    max_recipients: int = Field(default=1000, ge=1)
    trusted_networks: tuple[str, ...] = ()
    session_timeout: float = Field(default=300.0, gt=0)
    # Where the MX sends mail to postmaster (smtp.postmaster): this address, forwarded from
    # postmaster@<first sending domain>; "" = into the Maildir <state_dir>/postmaster.
    postmaster_forward: str = ""
    # Failed AUTH throttle (postroom.smtp.throttle): per login and source network, per network,
    # per login from anywhere; blocks double up to login_backoff_max; a login that succeeded from
    # a network is spared the per-login limit there for login_trust_period (0: never).
    login_failure_limit: int = Field(default=5, ge=1)
    login_failure_window: float = Field(default=300.0, gt=0)
    login_network_failure_limit: int = Field(default=20, ge=1)
    login_user_failure_limit: int = Field(default=20, ge=1)
    login_backoff_max: float = Field(default=3600.0, gt=0)
    login_trust_period: float = Field(default=7 * 86400.0, ge=0)
    # RFC 3464 delivery status notifications to the envelope sender of mail submitted over SMTP
    # (postroom.bounces.dsn_notify): "failures" sends one when a recipient bounces or expires;
    # "off" sends none. API submissions never get one (their channel is webhooks).
    dsn: Literal["off", "failures"] = "off"

    @field_validator("submission_listen", "submissions_listen", "mx_listen")
    @classmethod
    def _valid_listen(cls, value: str) -> str:
        return _check_listen(value)

    @field_validator("postmaster_forward")
    @classmethod
    def _valid_forward(cls, value: str) -> str:
        value = value.strip()
        if value and not valid_mailbox(value):
            raise ValueError(f"{value!r} is not a mailbox address")
        return value

    _split_networks = field_validator("trusted_networks", mode="before")(
        classmethod(lambda cls, value: _comma_list(value))
    )

    @field_validator("trusted_networks")
    @classmethod
    def _valid_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(f"{network!r} is not a network: {exc}") from None
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> SmtpSettings:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key must be set together")
        if self.submissions_listen and not self.tls_cert:
            raise ValueError("submissions_listen (implicit TLS) needs tls_cert and tls_key")
        for path in (self.tls_cert, self.tls_key):
            if path and not os.access(path, os.R_OK):
                raise ValueError(f"cannot read {path}")
        return self


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$")
_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
        "d": 86400, "day": 86400}  # fmt: skip


def parse_rate(value: Any) -> Any:
    """"100/s", "600/min", "5000/h", "20000/day" -> messages per second; numbers pass as they are."""
    if isinstance(value, str):
        match = _RATE.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a rate such as '100/s', '600/min' or '5000/h'")
        return float(match.group(1)) / _PER[match.group(2)]
    return value


class DestinationSettings(_Section):
    """Shaping for the destinations a pattern matches (`[[delivery.destinations]]`).

    `match` is a shell-style pattern tried against the recipient domain and against each of its
    MX host names ("gmail.com", "*.google.com"); the first rule that matches wins, then the
    built-in rules for the big mailbox providers, then the catch-all "*". Limits are for the whole
    host: with several processes each takes its share.
    """

    match: str = Field(min_length=1, max_length=253)
    max_connections: int = Field(default=20, ge=1, le=1000)
    messages_per_connection: int = Field(default=100, ge=1)
    max_rate: float = Field(default=0.0, ge=0)  # messages per second ("100/s", "600/min"); 0 = no cap
    tls: Literal["opportunistic", "required", "verify"] = "opportunistic"
    daily_limit: int = Field(default=0, ge=0)  # messages per UTC day; 0 = no cap
    warmup: tuple[int, ...] = ()  # per-day caps for the days from warmup_start (IP warm-up)
    warmup_start: str = ""  # "YYYY-MM-DD": day one of `warmup`

    _rate = field_validator("max_rate", mode="before")(classmethod(lambda cls, v: parse_rate(v)))

    @field_validator("match")
    @classmethod
    def _lower_pattern(cls, value: str) -> str:
        pattern = value.strip().lower().rstrip(".")
        if not pattern:
            raise ValueError("match must name a domain or pattern, e.g. 'example.com' or '*'")
        return pattern

    @model_validator(mode="after")
    def _warmup_needs_start(self) -> DestinationSettings:
        if self.warmup and not self.warmup_start:
            raise ValueError("warmup needs warmup_start = 'YYYY-MM-DD'")
        if self.warmup_start:
            try:
                datetime.date.fromisoformat(self.warmup_start)
            except ValueError:
                raise ValueError(f"warmup_start {self.warmup_start!r} is not a date (YYYY-MM-DD)") from None
        if any(cap < 1 for cap in self.warmup):
            raise ValueError("warmup caps must be positive")
        return self


class DeliverySettings(_Section):
    mode: Literal["mx", "smarthost", "capture"] = "mx"
    mx_port: int = Field(default=25, ge=1, le=65535)  # the port of recipients' MX hosts (labs: other)
    tls_ca: str = ""  # extra CA file trusted for tls = "verify" destinations (default: system CAs)
    destinations: tuple[DestinationSettings, ...] = ()
    max_in_flight: int = Field(default=2000, ge=1, le=100_000)  # deliveries held in memory
    greeting_timeout: float = Field(default=300.0, gt=0)  # RFC 5321 §4.5.3.2.1: 5 minutes
    data_timeout: float = Field(default=600.0, gt=0)  # RFC 5321 §4.5.3.2.6: 10 minutes for "."
    idle_timeout: float = Field(default=30.0, gt=0)  # an unused pooled connection is closed after
    throttle_backoff: float = Field(default=60.0, gt=0)  # first suspension of a throttling destination
    throttle_backoff_max: float = Field(default=3600.0, gt=0)
    smarthost: str = ""
    smarthost_tls: Literal["none", "opportunistic", "required", "implicit"] = "opportunistic"
    smarthost_verify: bool = True
    smarthost_ca: str = ""  # a private CA for the relay's certificate (default: system CAs)
    smarthost_username: str = ""
    smarthost_password: str = Field(default="", repr=False)
    capture_dir: str = ""
    hold: bool = False
    concurrency: int = Field(default=20, ge=1, le=1000)
    batch_size: int = Field(default=200, ge=1, le=5000)
    messages_per_connection: int = Field(default=100, ge=1)
    lease_seconds: float = Field(default=60.0, ge=1)
    poll_interval: float = Field(default=1.0, gt=0)
    connect_timeout: float = Field(default=30.0, gt=0)
    command_timeout: float = Field(default=300.0, gt=0)
    retry_base: float = Field(default=60.0, gt=0)
    retry_max: float = Field(default=4 * 3600.0, gt=0)
    max_age: float = Field(default=5 * 86400.0, gt=0)
    drain_grace: float = Field(default=10.0, ge=0)
    dns_resolver: str = ""  # "host:port" of the DNS server to ask; "" = the system resolver
    sending_ips: tuple[str, ...] = ()  # the public addresses mail leaves from (for SPF checks)

    _split_ips = field_validator("sending_ips", mode="before")(
        classmethod(lambda cls, value: _comma_list(value))
    )

    @field_validator("sending_ips")
    @classmethod
    def _valid_ips(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"{address!r} is not an IP address") from None
        return value

    @field_validator("dns_resolver")
    @classmethod
    def _valid_resolver(cls, value: str) -> str:
        if value:
            host, _ = parse_hostport(value, default_port=53)
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(f"{host!r} is not an IP address (a resolver is named by its address)") from None
        return value

    @model_validator(mode="after")
    def _mode_needs(self) -> DeliverySettings:
        if self.mode == "smarthost":
            if not self.smarthost:
                raise ValueError("mode = 'smarthost' needs smarthost = 'host:port'")
            parse_hostport(self.smarthost, default_port=25)
        if self.mode == "capture" and not self.capture_dir:
            raise ValueError("mode = 'capture' needs capture_dir")
        if self.tls_ca and not os.access(self.tls_ca, os.R_OK):
            raise ValueError(f"cannot read tls_ca {self.tls_ca}")
        if self.smarthost_password and not self.smarthost_username:
            raise ValueError("smarthost_password is set but smarthost_username is not")
        return self


class LimitsSettings(_Section):
    # Bytes of messages being received (SMTP DATA, HTTP request bodies) one daemon process holds at
    # once; past it new uploads get a temporary refusal (SMTP 452, HTTP 503) until room frees up.
    bytes_in_flight: int = Field(default=32 * 1024 * 1024, ge=1024 * 1024)


class ProcessSettings(_Section):
    # How many daemon processes share the listening sockets (bound once by the supervisor) and the
    # queue; 0 = one per CPU core (the default): one asyncio process fills one core; see
    # docs/benchmarks.md.
    count: int = Field(default=0, ge=0, le=64)
    restart_delay: float = Field(default=1.0, ge=0)

    def resolved(self, cpus: int | None) -> int:
        return self.count or max(1, cpus or 1)


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


class DomainSettings(_Section):
    name: str = Field(min_length=1, max_length=253)
    # The envelope-sender (return-path) domain whose MX must point to us, for bounces; "" = name.
    bounce_domain: str = ""
    # "required": every message from this domain is DKIM-signed, and refused at submission while
    # the domain has no usable key. "off": not signed here (a relay that signs, a lab).
    dkim: Literal["required", "off"] = "required"

    @field_validator("name", "bounce_domain")
    @classmethod
    def _lower_domain(cls, value: str) -> str:
        value = normalise_domain(value)
        if value and (" " in value or "@" in value or "." not in value.strip(".")):
            raise ValueError(f"{value!r} is not a domain name")
        return value

    @property
    def return_path_domain(self) -> str:
        return self.bounce_domain or self.name


class DkimSettings(_Section):
    key_dir: str = ""  # where `postroom dkim keygen` writes keys; "" = <state_dir>/dkim
    # How long a replaced selector's record stays published (and listed by `dkim dns`) after the
    # switch, so mail signed with it in flight still verifies. Default: 7 days.
    rotation_overlap: float = Field(default=7 * 86400.0, ge=0)
    # How often the daemon looks for pending selectors in DNS and retires old ones.
    rotation_check_interval: float = Field(default=600.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        # Keys in the file (and given to the constructor) match exactly, as in every section;
        # variable names match in any case, which EnvironSource asks for itself.
        case_sensitive=True,
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    log: LogSettings = Field(default_factory=LogSettings)
    processes: ProcessSettings = Field(default_factory=ProcessSettings)
    domains: tuple[DomainSettings, ...] = ()
    dkim: DkimSettings = Field(default_factory=DkimSettings)
    contacts: ContactsSettings = Field(default_factory=ContactsSettings)
    loops: LoopsSettings = Field(default_factory=LoopsSettings)
    events: dict[str, EventRule] = Field(default_factory=dict)
    bounces: BounceSettings = Field(default_factory=BounceSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    stats: StatsSettings = Field(default_factory=StatsSettings)
    posthog_capture: PostHogCaptureSettings = Field(default_factory=PostHogCaptureSettings)
    posthog: PostHogSettings = Field(default_factory=PostHogSettings)
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)
    stripe: StripeSettings = Field(default_factory=StripeSettings)
    mrr: MrrSettings = Field(default_factory=MrrSettings)
    reports: ReportsSettings = Field(default_factory=ReportsSettings)

    @model_validator(mode="after")
    def _unique_domains(self) -> Settings:
        names = [d.name for d in self.domains]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"domains listed twice: {', '.join(duplicates)}")
        return self

    @model_validator(mode="after")
    def _postmaster_forward(self) -> Settings:
        forward = self.smtp.postmaster_forward
        if not forward:
            return self
        if not self.domains:
            raise ValueError("smtp.postmaster_forward needs a [[domains]] entry to send from")
        local, _, domain = forward.rpartition("@")
        if local.lower() == "postmaster" and normalise_domain(domain) in self.postmaster_domains:
            raise ValueError(f"smtp.postmaster_forward {forward!r} is postmaster here: it would loop")
        return self

    @property
    def postmaster_domains(self) -> frozenset[str]:
        """Where the MX takes mail to postmaster: the sending and bounce domains, the hostname."""
        names = [self.smtp.hostname, *(name for d in self.domains for name in (d.name, d.bounce_domain))]
        return frozenset(normalise_domain(name) for name in names if name)

    def domain(self, name: str) -> DomainSettings | None:
        wanted = normalise_domain(name)
        return next((d for d in self.domains if d.name == wanted), None)

    @property
    def dkim_key_dir(self) -> str:
        return self.dkim.key_dir or str(Path(self.state_dir) / "dkim")
    state_dir: str = "/var/lib/postroom"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only the values handed over: `load_settings` runs the file and environ sources itself,
        # with the environ it was given, and `Settings.model_validate(tree)` in tests must not
        # pick up os.environ, a .env file or a secrets directory behind the caller's back.
        return (init_settings,)


def find_config_path(explicit: str | None, environ: Mapping[str, str]) -> Path:
    """--config, then $POSTROOM_CONFIG, then ./postroom.toml, then /etc/postroom/postroom.toml."""
    if explicit:
        return Path(explicit)
    if environ.get("POSTROOM_CONFIG"):
        return Path(environ["POSTROOM_CONFIG"])
    for candidate in CONFIG_SEARCH_PATH:
        if Path(candidate).exists():
            return Path(candidate)
    return Path(CONFIG_SEARCH_PATH[-1])


def load_settings(path: Path | None, environ: Mapping[str, str]) -> Settings:
    """Read, merge and validate; raise ConfigError with every problem found.

    The file, then the environment over it, then the secret files either names (see
    config_sources). `environ` is the only environment looked at.
    """
    sources = SecretFileSource(
        Settings,
        layers=(TomlFileSource(Settings, path), EnvironSource(Settings, environ)),
        environ=environ,
    )
    values = sources()
    problems = list(sources.problems)
    # BaseSettings takes `_`-prefixed keywords as its own options (`_env_prefix`, `_cli_parse_args`);
    # no setting starts with "_", so in the file such a key is only unknown, never an option.
    for key in [key for key in values if key.startswith("_")]:
        del values[key]
        problems.append((key, "unknown key"))
    for section, field in Settings.model_fields.items():
        # Validate absent sections too, so their errors carry their own key ("delivery.mode").
        if isinstance(field.default_factory, type) and issubclass(field.default_factory, BaseModel):
            values.setdefault(section, {})
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"]) or "config"
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append((key, message))
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return settings
