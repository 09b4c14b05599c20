"""`load_settings`: TOML, `POSTROOM_SECTION__KEY` overrides, `*_file` secrets, and every
problem reported at once with its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from postroom.config import Settings, find_config_path, load_settings
from postroom.core.errors import ConfigError
from pydantic import ValidationError

VALID = """
state_dir = "/srv/postroom"

[database]
url = "sqlite+aiosqlite:////srv/postroom/postroom.db"

[http]
listen = "127.0.0.1:8025"

[smtp]
hostname = "mail.example.com"
submission_listen = "0.0.0.0:587"
trusted_networks = ["10.0.0.0/8"]

[delivery]
mode = "smarthost"
smarthost = "relay.example.com:587"
smarthost_username = "postroom"

[[domains]]
name = "example.com"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "postroom.toml"
    path.write_text(text)
    return path


def problems_of(path: Path | None, environ: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ or {})
    return dict(caught.value.problems)


def test_a_valid_file_is_loaded_into_typed_frozen_sections(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, VALID), {})
    assert settings.state_dir == "/srv/postroom"
    assert settings.smtp.hostname == "mail.example.com"
    assert settings.smtp.trusted_networks == ("10.0.0.0/8",)
    assert settings.delivery.mode == "smarthost"
    assert settings.delivery.smarthost == "relay.example.com:587"
    assert settings.domains[0].name == "example.com"
    assert settings.database.is_sqlite
    with pytest.raises(ValidationError):  # frozen: validated once, never changed afterwards
        settings.smtp.hostname = "other"  # type: ignore[misc]


def test_env_overrides_are_parsed_as_toml_literals(tmp_path: Path) -> None:
    environ = {
        "POSTROOM_DELIVERY__HOLD": "true",
        "POSTROOM_SMTP__MAX_RECIPIENTS": "25",
        "POSTROOM_DELIVERY__RETRY_BASE": "1.5",
        "POSTROOM_SMTP__TRUSTED_NETWORKS": '["192.168.0.0/16", "::1/128"]',
        "POSTROOM_HTTP__LISTEN": "0.0.0.0:9000",  # not a TOML literal: kept as a string
        "POSTROOM_STATE_DIR": "/var/tmp/pr",  # a top-level key
        "POSTROOM_CONFIG": "/ignored.toml",  # names the file, is not a setting
        "OTHER_SMTP__HOSTNAME": "ignored.example",
    }
    settings = load_settings(write(tmp_path, VALID), environ)
    assert settings.delivery.hold is True
    assert settings.smtp.max_recipients == 25
    assert settings.delivery.retry_base == 1.5
    assert settings.smtp.trusted_networks == ("192.168.0.0/16", "::1/128")
    assert settings.http.listen == "0.0.0.0:9000"
    assert settings.state_dir == "/var/tmp/pr"
    assert settings.smtp.hostname == "mail.example.com"


def test_env_overrides_create_sections_absent_from_the_file(tmp_path: Path) -> None:
    environ = {"POSTROOM_LOG__LEVEL": "debug", "POSTROOM_LOG__FORMAT": "text"}
    settings = load_settings(write(tmp_path, VALID), environ)
    assert (settings.log.level, settings.log.format) == ("debug", "text")


def test_trusted_networks_from_env_may_be_comma_separated(tmp_path: Path) -> None:
    environ = {"POSTROOM_SMTP__TRUSTED_NETWORKS": "127.0.0.1/32, 10.1.0.0/16,,fd00::/8"}
    settings = load_settings(write(tmp_path, VALID), environ)
    assert settings.smtp.trusted_networks == ("127.0.0.1/32", "10.1.0.0/16", "fd00::/8")


def test_env_without_a_file_is_enough(tmp_path: Path) -> None:
    environ = {
        "POSTROOM_DELIVERY__MODE": "capture",
        "POSTROOM_DELIVERY__CAPTURE_DIR": str(tmp_path / "outbox"),
    }
    settings = load_settings(None, environ)
    assert settings.delivery.mode == "capture"
    assert settings.delivery.capture_dir == str(tmp_path / "outbox")


@pytest.mark.parametrize(
    ("name", "raw", "read"),
    [
        ("POSTROOM_DELIVERY__SMARTHOST_PASSWORD", "12345", lambda s: s.delivery.smarthost_password),
        ("POSTROOM_DELIVERY__SMARTHOST_PASSWORD", "true", lambda s: s.delivery.smarthost_password),
        ("POSTROOM_SMTP__HOSTNAME", "2025-01-01", lambda s: s.smtp.hostname),
        (
            "POSTROOM_DELIVERY__SMARTHOST_PASSWORD",
            '"quoted"',
            lambda s: s.delivery.smarthost_password,
        ),
    ],
)
def test_env_values_for_string_keys_are_kept_as_text(
    tmp_path: Path, name: str, raw: str, read: Any
) -> None:
    # a numeric password must not become an int that a str field refuses
    settings = load_settings(write(tmp_path, VALID), {name: raw})
    assert read(settings) == raw


def test_unrelated_postroom_variables_are_not_settings(tmp_path: Path) -> None:
    environ = {"POSTROOM_TEST_PG": "postgresql://x", "POSTROOM_CONFIG": "/x.toml"}
    settings = load_settings(write(tmp_path, VALID), environ)
    assert settings.smtp.hostname == "mail.example.com"


def test_secret_file_is_read_into_the_key_without_suffix(tmp_path: Path) -> None:
    secret = tmp_path / "smarthost-password"
    secret.write_text("s3cret pass\n")  # the trailing newline editors add is not part of it
    text = VALID.replace(
        'smarthost_username = "postroom"',
        f'smarthost_username = "postroom"\nsmarthost_password_file = "{secret}"',
    )
    settings = load_settings(write(tmp_path, text), {})
    assert settings.delivery.smarthost_password == "s3cret pass"
    assert "s3cret" not in repr(settings.delivery)  # secrets stay out of logs


def test_secret_file_may_be_named_by_env(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-a-credential")
    environ = {"POSTROOM_DELIVERY__SMARTHOST_PASSWORD_FILE": str(secret)}
    settings = load_settings(write(tmp_path, VALID), environ)
    assert settings.delivery.smarthost_password == "from-a-credential"


def test_unreadable_secret_file_is_reported_with_its_key(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    text = VALID.replace(
        'smarthost_username = "postroom"',
        f'smarthost_username = "postroom"\nsmarthost_password_file = "{missing}"',
    )
    problems = problems_of(write(tmp_path, text))
    assert list(problems) == ["delivery.smarthost_password_file"]
    assert str(missing) in problems["delivery.smarthost_password_file"]


def test_every_problem_is_reported_at_once_with_its_key(tmp_path: Path) -> None:
    text = """
[http]
listen = "nonsense"
colour = "blue"

[smtp]
trusted_networks = ["10.0.0.0/8", "not-a-network"]

[delivery]
mode = "smarthost"

[log]
level = "loud"
"""
    problems = problems_of(write(tmp_path, text), {"POSTROOM_SMTP__BOGUS": "1"})
    assert problems["http.listen"] == "'nonsense' is not host:port"
    assert problems["http.colour"] == "unknown key"
    assert problems["smtp.bogus"] == "unknown key"
    assert "'not-a-network' is not a network" in problems["smtp.trusted_networks"]
    assert "log.level" in problems
    delivery = [reason for key, reason in problems.items() if key.split(".")[0] == "delivery"]
    assert len(delivery) == 1 and "smarthost" in delivery[0]
    assert len(problems) == 6


@pytest.mark.parametrize(
    ("section", "values", "mentions"),
    [
        ("delivery", 'mode = "smarthost"', "smarthost = 'host:port'"),
        ("delivery", 'mode = "capture"', "capture_dir"),
        ("delivery", 'tls_ca = "/nonexistent/ca.pem"', "cannot read tls_ca"),
        ("delivery", '[[delivery.destinations]]\nmatch = "*"\nmax_rate = "fast"', "is not a rate"),
        ("delivery", '[[delivery.destinations]]\nmatch = "*"\nwarmup = [100, 200]', "warmup_start"),
        ("delivery",
         '[[delivery.destinations]]\nmatch = "*"\nwarmup = [100]\nwarmup_start = "soon"', "is not a date"),
        ("delivery", 'mode = "capture"\ncapture_dir = "/o"\nsmarthost_password = "p"', "username"),
        ("smtp", 'tls_cert = "/etc/hostname"', "tls_cert and tls_key must be set together"),
        ("smtp", 'submissions_listen = "0.0.0.0:465"', "needs tls_cert"),
        (
            "smtp",
            'tls_cert = "/no/such/cert"\ntls_key = "/no/such/key"',
            "cannot read /no/such/cert",
        ),
    ],
)
def test_section_rules_are_reported_under_their_section(
    tmp_path: Path, section: str, values: str, mentions: str
) -> None:
    base = '[delivery]\nmode = "capture"\ncapture_dir = "/o"\n' if section != "delivery" else ""
    problems = problems_of(write(tmp_path, f"{base}[{section}]\n{values}\n"))
    [(key, reason)] = problems.items()
    assert key.split(".")[0] == section
    assert mentions in reason


@pytest.mark.parametrize("listen", ["localhost", ":25", "host:port", "host:70000", "[::1]:x"])
def test_bad_listen_addresses_are_refused(tmp_path: Path, listen: str) -> None:
    problems = problems_of(write(tmp_path, VALID), {"POSTROOM_SMTP__MX_LISTEN": listen})
    assert list(problems) == ["smtp.mx_listen"]


def test_ipv6_listen_address_is_accepted(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, VALID), {"POSTROOM_HTTP__LISTEN": "[::1]:8025"})
    assert settings.http.listen == "[::1]:8025"


def test_unknown_database_driver_is_refused(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, VALID), {"POSTROOM_DATABASE__URL": "mysql://x/y"})
    assert list(problems) == ["database.url"]


def test_invalid_toml_is_reported_as_the_config(tmp_path: Path) -> None:
    path = write(tmp_path, "[http\nlisten = ")
    problems = problems_of(path)
    assert list(problems) == ["config"]
    assert "is not valid TOML" in problems["config"] and str(path) in problems["config"]


def test_missing_file_is_reported(tmp_path: Path) -> None:
    problems = problems_of(tmp_path / "absent.toml")
    assert problems == {"config": f"{tmp_path / 'absent.toml'} does not exist"}


def test_config_error_message_lists_every_problem() -> None:
    error = ConfigError([("http.listen", "bad"), ("smtp.bogus", "unknown key")])
    assert str(error) == "http.listen: bad; smtp.bogus: unknown key"


def test_find_config_path_prefers_the_explicit_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "postroom.toml").write_text("")
    environ = {"POSTROOM_CONFIG": "/from/env.toml"}
    assert find_config_path("/explicit.toml", environ) == Path("/explicit.toml")
    assert find_config_path(None, environ) == Path("/from/env.toml")
    assert find_config_path(None, {}) == Path("postroom.toml")
    assert find_config_path(None, {"POSTROOM_CONFIG": ""}) == Path("postroom.toml")


def test_find_config_path_falls_back_to_etc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./postroom.toml here
    assert find_config_path(None, {}) == Path("/etc/postroom/postroom.toml")


def test_direct_mx_delivery_is_the_default_and_destinations_parse_rates(tmp_path: Path) -> None:
    path = write(tmp_path, '[smtp]\nhostname = "mail.example.com"\n'
                 '[[delivery.destinations]]\nmatch = "*.Google.com"\nmax_rate = "600/min"\n'
                 'tls = "verify"\nwarmup = [50, 100]\nwarmup_start = "2026-11-01"\n')  # fmt: skip
    settings = load_settings(path, {})
    assert settings.delivery.mode == "mx" and settings.delivery.mx_port == 25
    [rule] = settings.delivery.destinations
    assert (rule.match, rule.max_rate, rule.tls, rule.warmup) == ("*.google.com", 10.0, "verify", (50, 100))


def test_secret_path_may_use_the_systemd_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "relay-password").write_text("from-load-credential\n")
    text = VALID.replace(
        'smarthost_username = "postroom"',
        'smarthost_username = "postroom"\nsmarthost_password_file = "%d/relay-password"',
    )
    path = write(tmp_path, text)
    settings = load_settings(path, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert settings.delivery.smarthost_password == "from-load-credential"
    problems = problems_of(path, {})  # the directory comes from the environ given, nothing else
    assert list(problems) == ["delivery.smarthost_password_file"]
    assert "CREDENTIALS_DIRECTORY" in problems["delivery.smarthost_password_file"]


def test_a_secret_and_its_file_together_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x")
    text = VALID.replace(
        'smarthost_username = "postroom"',
        f'smarthost_username = "postroom"\nsmarthost_password = "inline"\n'
        f'smarthost_password_file = "{secret}"',
    )
    problems = problems_of(write(tmp_path, text))
    assert list(problems) == ["delivery.smarthost_password_file"]
    assert "not both" in problems["delivery.smarthost_password_file"]


def test_only_the_given_environ_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTROOM_SMTP__HOSTNAME", "from-os-environ.example")
    monkeypatch.setenv("POSTROOM_STATE_DIR", "/from/os/environ")
    # ...and in the exact spelling pydantic-settings' default env source would look for here
    monkeypatch.setenv("POSTROOM_state_dir", "/from/os/environ")
    settings = load_settings(write(tmp_path, VALID), {})
    assert (settings.smtp.hostname, settings.state_dir) == ("mail.example.com", "/srv/postroom")
    # Built directly (tests/support.py does), the tree is all there is: no env, .env or secrets dir.
    direct = Settings.model_validate({"delivery": {"mode": "capture", "capture_dir": "/o"}})
    assert (direct.smtp.hostname, direct.state_dir) == ("localhost", "/var/lib/postroom")


def test_the_daemons_own_variables_are_ignored_whatever_their_value(tmp_path: Path) -> None:
    environ = {
        "POSTROOM_CONFIG": "/elsewhere.toml",
        "POSTROOM_CHILD_INDEX": "not-a-number",
        "POSTROOM_READY_FD": "{",
        "POSTROOM_SUPERVISOR_PID": "[",
        "POSTROOM_UVLOOP": "0",
        "POSTROOM_TEST_PG": "postgresql+asyncpg://x/y",
        "POSTROOM_TEST_DATA": "/tmp",
        "PROMETHEUS_MULTIPROC_DIR": "/run/postroom/metrics",
    }
    assert load_settings(write(tmp_path, VALID), environ) == load_settings(write(tmp_path, VALID), {})


def test_variable_names_match_in_any_case(tmp_path: Path) -> None:
    environ = {"postroom_smtp__hostname": "lower.example", "Postroom_Log__Level": "debug"}
    settings = load_settings(write(tmp_path, VALID), environ)
    assert (settings.smtp.hostname, settings.log.level) == ("lower.example", "debug")


def test_keys_in_the_file_match_exactly(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, f'STATE_DIR = "/x"\n{VALID}'))
    assert problems == {"STATE_DIR": "unknown key"}


def test_a_misspelt_section_in_the_environment_is_reported(tmp_path: Path) -> None:
    environ = {"POSTROOM_DELIVRY__MODE": "capture", "POSTROOM_STATE_DIR__X": "1"}
    problems = problems_of(write(tmp_path, VALID), environ)
    assert problems["delivry"] == "unknown key"
    assert sorted(problems) == ["delivry", "state_dir"]  # state_dir is text, not a table


def test_tables_of_settings_may_be_given_as_toml_inline_tables(tmp_path: Path) -> None:
    environ = {
        "POSTROOM_DOMAINS": '[{name = "a.example"}, {name = "B.example", dkim = "off"}]',
        "POSTROOM_DELIVERY__DESTINATIONS": '[{match = "*", max_rate = "600/min"}]',
    }
    settings = load_settings(write(tmp_path, VALID), environ)
    assert [(d.name, d.dkim) for d in settings.domains] == [("a.example", "required"), ("b.example", "off")]
    assert settings.delivery.destinations[0].max_rate == 10.0


def test_a_text_key_keeps_a_value_that_looks_like_a_toml_array(tmp_path: Path) -> None:
    environ = {"POSTROOM_DELIVERY__SMARTHOST_PASSWORD": "[1, 2]"}
    assert load_settings(write(tmp_path, VALID), environ).delivery.smarthost_password == "[1, 2]"


def test_a_key_starting_with_an_underscore_is_unknown_not_an_option(tmp_path: Path) -> None:
    # BaseSettings reads `_cli_parse_args` and friends as its own options; here they are just keys.
    problems = problems_of(write(tmp_path, f"_cli_parse_args = true\n_secrets_dir = '/'\n{VALID}"))
    assert problems == {"_cli_parse_args": "unknown key", "_secrets_dir": "unknown key"}


def test_secret_file_named_by_env_may_use_the_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "relay-password").write_text("from-env-credential\r\n")
    environ = {"POSTROOM_DELIVERY__SMARTHOST_PASSWORD_FILE": "%d/relay-password"}
    path = write(tmp_path, VALID)
    settings = load_settings(path, {**environ, "CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert settings.delivery.smarthost_password == "from-env-credential"
    problems = problems_of(path, environ)
    assert list(problems) == ["delivery.smarthost_password_file"]
    assert "CREDENTIALS_DIRECTORY" in problems["delivery.smarthost_password_file"]


def test_unreadable_secret_file_named_by_env_is_reported_with_its_key(tmp_path: Path) -> None:
    environ = {"POSTROOM_DATABASE__URL_FILE": str(tmp_path / "nope")}
    text = VALID.replace('url = "sqlite+aiosqlite:////srv/postroom/postroom.db"\n', "")
    problems = problems_of(write(tmp_path, text), environ)
    assert list(problems) == ["database.url_file"]
    assert str(tmp_path / "nope") in problems["database.url_file"]


def test_a_secret_in_the_file_and_its_file_form_in_env_are_refused_together(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x")
    text = VALID.replace('smarthost_username = "postroom"',
                         'smarthost_username = "postroom"\nsmarthost_password = "inline"')  # fmt: skip
    problems = problems_of(write(tmp_path, text), {"POSTROOM_DELIVERY__SMARTHOST_PASSWORD_FILE": str(secret)})
    assert list(problems) == ["delivery.smarthost_password_file"]
    assert "not both" in problems["delivery.smarthost_password_file"]


def test_secret_file_problems_and_validation_problems_are_reported_together(tmp_path: Path) -> None:
    environ = {"POSTROOM_DELIVERY__SMARTHOST_PASSWORD_FILE": str(tmp_path / "nope"),
               "POSTROOM_HTTP__LISTEN": "nowhere"}  # fmt: skip
    problems = problems_of(write(tmp_path, VALID), environ)
    assert sorted(problems) == ["delivery.smarthost_password_file", "http.listen"]


# --- Destination shaping rules: `parse_rate` and `DestinationSettings` ----------------------------

from postroom.config import DestinationSettings, parse_rate  # noqa: E402  (appended section)


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("100/s", 100.0),
        ("100/sec", 100.0),
        ("100/second", 100.0),
        ("600/min", 10.0),
        ("600/m", 10.0),
        ("600/minute", 10.0),
        ("5000/h", 5000 / 3600),
        ("5000/hour", 5000 / 3600),
        ("20000/day", 20000 / 86400),
        ("20000/d", 20000 / 86400),
        ("1.5/s", 1.5),
        ("0/s", 0.0),
        (" 100 / s ", 100.0),
        ("90 /min", 1.5),
    ],
)
def test_parse_rate_turns_a_rate_into_messages_per_second(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second, rel=1e-12)


@pytest.mark.parametrize(
    "text",
    ["", "fast", "100", "/s", "100/", "100/ms", "100/week", "100/S", "100 per s", "-1/s", ".5/s",
     "1e3/s", "1,5/s", "100/s/s", "100//s", "1.5.0/s"],
)  # fmt: skip
def test_parse_rate_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="is not a rate"):
        parse_rate(text)


@pytest.mark.parametrize("number", [0, 5, 2.5, 1e-3])
def test_parse_rate_passes_numbers_through(number: float) -> None:
    assert parse_rate(number) is number


def test_destination_rates_are_parsed_and_numbers_kept() -> None:
    assert DestinationSettings.model_validate({"match": "*", "max_rate": "600/min"}).max_rate == 10.0
    assert DestinationSettings(match="*", max_rate=2.5).max_rate == 2.5
    assert DestinationSettings(match="*").max_rate == 0.0  # no cap


def test_destination_pattern_is_trimmed_and_lower_cased() -> None:
    assert DestinationSettings(match=" *.Google.COM. ").match == "*.google.com"


@pytest.mark.parametrize(
    ("values", "mentions"),
    [
        ({"warmup": [100, 200]}, "warmup needs warmup_start"),
        ({"warmup": [100], "warmup_start": "soon"}, "is not a date"),
        ({"warmup": [100], "warmup_start": "2026-02-30"}, "is not a date"),
        ({"warmup_start": "2026-13-01"}, "is not a date"),
        ({"warmup": [100, 0], "warmup_start": "2026-03-01"}, "warmup caps must be positive"),
        ({"warmup": [-5], "warmup_start": "2026-03-01"}, "warmup caps must be positive"),
        ({"daily_limit": -1}, "greater than or equal to 0"),
        ({"max_connections": 0}, "greater than or equal to 1"),
        ({"max_connections": 1001}, "less than or equal to 1000"),
        ({"messages_per_connection": 0}, "greater than or equal to 1"),
        ({"max_rate": -1.0}, "greater than or equal to 0"),
        ({"max_rate": "-1/s"}, "is not a rate"),
        ({"tls": "sometimes"}, "tls"),
        ({"match": ""}, "at least 1 character"),
        ({"colour": "blue"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_destination_settings_are_refused(values: dict[str, Any], mentions: str) -> None:
    with pytest.raises(ValidationError, match=mentions):
        DestinationSettings.model_validate({"match": "*", **values})


def test_warmup_with_a_start_date_is_accepted() -> None:
    rule = DestinationSettings(match="*", warmup=(50, 100), warmup_start="2026-03-01", daily_limit=0)
    assert (rule.warmup, rule.warmup_start, rule.daily_limit) == ((50, 100), "2026-03-01", 0)


@pytest.mark.parametrize("match", ["   ", ".", " . "])
def test_a_pattern_that_is_empty_once_trimmed_is_refused(match: str) -> None:
    with pytest.raises(ValidationError):
        DestinationSettings(match=match)


def test_a_bad_destination_is_reported_with_its_index(tmp_path: Path) -> None:
    text = ('[[delivery.destinations]]\nmatch = "*.google.com"\nmax_rate = "10/s"\n'
            '[[delivery.destinations]]\nmatch = "*"\ndaily_limit = -5\n')  # fmt: skip
    problems = problems_of(write(tmp_path, text))
    assert list(problems) == ["delivery.destinations.1.daily_limit"]


def test_report_definitions_are_checked_at_start_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "postroom.toml"
    path.write_text(
        '[reports.definitions.board]\ncron = "0 25 * * *"\nsections = ["headline", "horoscope"]\n'
        '[reports.definitions.weekly]\ntimezone = "Mars/Olympus"\nperiod = "fortnight"\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(path, {})
    problems = dict(raised.value.problems)
    assert "is not a cron expression" in problems["reports.definitions.board.cron"]
    assert "unknown section horoscope" in problems["reports.definitions.board.sections"]
    assert "is not a time zone" in problems["reports.definitions.weekly.timezone"]
    assert "is not a period kind" in problems["reports.definitions.weekly.period"]
