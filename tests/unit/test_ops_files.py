"""The operator files stay true to the code: the example config documents and passes every key of
the settings tree, the Docker demo config loads and matches docker-compose.yml, the systemd unit
keeps its contract and hardening, and the alert rules only use metrics the daemon exports."""

from __future__ import annotations

import inspect
import re
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from postroom.config import DeliverySettings, Settings, load_settings
from postroom.core.errors import ConfigError
from postroom.core.types import DeliveryState
from postroom.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "postroom.example.toml"
DOCKER_CONFIG = ROOT / "config" / "docker" / "postroom.toml"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "config" / "prometheus.yml"
UNIT = ROOT / "systemd" / "postroom.service"
ALERTS = ROOT / "config" / "alerts.yml"


# -- the settings tree --------------------------------------------------------------------------


def _nested_model(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """("table", Model) for a section, ("array", Model) for a list of tables like [[domains]]."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return "table", annotation
    if typing.get_origin(annotation) in (tuple, list):
        for arg in typing.get_args(annotation):
            if inspect.isclass(arg) and issubclass(arg, BaseModel):
                return "array", arg
    return None


KeyAndEnv = tuple[tuple[str, ...], str]


def settings_keys(
    model: type[BaseModel] = Settings, prefix: tuple[str, ...] = ()
) -> Iterator[KeyAndEnv]:
    """Every leaf key as (path, env variable); "[]" in a path marks an array of tables."""
    for name, field in model.model_fields.items():
        nested = _nested_model(field.annotation)
        if nested is None:
            path = (*prefix, name)
            yield path, "POSTROOM_" + "__".join(p for p in path if p != "[]").upper()
        elif nested[0] == "table":
            yield from settings_keys(nested[1], (*prefix, name))
        else:
            # A list of tables is overridden as a whole: POSTROOM_DOMAINS='[{name = "..."}]'.
            for path, _ in settings_keys(nested[1], (*prefix, name, "[]")):
                yield path, "POSTROOM_" + "__".join((*prefix, name)).upper()


def lookup(tree: Any, path: tuple[str, ...]) -> list[Any]:
    """The values at `path` (several under an array of tables); [] when the key is absent."""
    if not path:
        return [tree]
    head, rest = path[0], path[1:]
    if head == "[]":
        items = tree if isinstance(tree, list) else []
        return [value for item in items for value in lookup(item, rest)]
    if isinstance(tree, dict) and head in tree:
        return lookup(tree[head], rest)
    return []


def test_the_settings_walk_sees_every_section() -> None:
    paths = {path for path, _ in settings_keys()}
    assert ("database", "url") in paths
    assert ("delivery", "drain_grace") in paths
    assert ("domains", "[]", "name") in paths
    assert ("state_dir",) in paths
    assert {path[0] for path in paths} == set(Settings.model_fields)


def test_example_config_has_every_key_of_the_settings_tree() -> None:
    tree = tomllib.loads(EXAMPLE.read_text())
    missing = [".".join(path) for path, _ in settings_keys() if not lookup(tree, path)]
    assert missing == []


def test_example_config_names_the_env_override_of_every_key() -> None:
    text = EXAMPLE.read_text()
    missing = sorted({env for _, env in settings_keys() if env not in text})
    assert missing == []


def test_example_config_documents_the_file_form_of_secrets() -> None:
    tree = tomllib.loads(EXAMPLE.read_text())
    text = EXAMPLE.read_text()
    for needle in ("password_file", "url_file", "LoadCredential=", "%d/", "$CREDENTIALS_DIRECTORY"):
        assert needle in text
    # Documented in comments only: active, they would need the credential files to exist.
    assert "smarthost_password_file" not in tree["delivery"]
    assert "url_file" not in tree["database"]


# -- the example and the demo configs load -------------------------------------------------------


@pytest.fixture
def tls_env(tmp_path: Path) -> dict[str, str]:
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    cert.write_text("certificate\n")
    key.write_text("key\n")
    return {"POSTROOM_SMTP__TLS_CERT": str(cert), "POSTROOM_SMTP__TLS_KEY": str(key)}


def test_example_config_loads_with_readable_tls_files(tls_env: dict[str, str]) -> None:
    settings = load_settings(EXAMPLE, tls_env)
    assert settings.delivery.mode == "smarthost"
    assert settings.delivery.smarthost == "relay.example.com:587"
    assert settings.smtp.tls_cert == tls_env["POSTROOM_SMTP__TLS_CERT"]
    assert settings.database.url == "sqlite+aiosqlite:////var/lib/postroom/postroom.db"
    assert [d.name for d in settings.domains] == ["example.com"]


def test_example_config_fails_only_on_the_tls_files_it_points_at() -> None:
    tree = tomllib.loads(EXAMPLE.read_text())
    paths = [tree["smtp"]["tls_cert"], tree["smtp"]["tls_key"]]
    assert all(p.startswith("/etc/postroom/tls/") for p in paths)
    if all(Path(p).is_file() for p in paths):
        pytest.skip("this machine has the example's TLS files")
    with pytest.raises(ConfigError) as caught:
        load_settings(EXAMPLE, {})
    assert caught.value.problems
    for key, reason in caught.value.problems:
        assert key == "smtp"
        assert reason.startswith("cannot read /etc/postroom/tls/")


def test_example_config_takes_the_smarthost_password_from_a_credential(
    tls_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The systemd path: LoadCredential= puts the file in $CREDENTIALS_DIRECTORY; %d names it."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "smarthost-password").write_text("s3cret-from-file\n")
    env = {
        **tls_env,
        "CREDENTIALS_DIRECTORY": str(credentials),
        "POSTROOM_DELIVERY__SMARTHOST_USERNAME": "postroom@example.com",
        "POSTROOM_DELIVERY__SMARTHOST_PASSWORD_FILE": "%d/smarthost-password",
    }
    settings = load_settings(EXAMPLE, env)
    assert settings.delivery.smarthost_password == "s3cret-from-file"


def test_docker_config_loads() -> None:
    settings = load_settings(DOCKER_CONFIG, {})
    assert settings.database.url == "postgresql+asyncpg://postroom:postroom@postgres:5432/postroom"
    assert settings.delivery.mode == "capture"
    assert settings.delivery.capture_dir.startswith(settings.state_dir)
    assert settings.http.listen.startswith("0.0.0.0:")


def test_compose_publishes_the_ports_the_docker_config_listens_on() -> None:
    settings = load_settings(DOCKER_CONFIG, {})
    listened = {
        int(address.rpartition(":")[2])
        for address in (
            settings.http.listen,
            settings.smtp.submission_listen,
            settings.smtp.mx_listen,
        )
    }
    published = re.findall(r'"(\d+\.\d+\.\d+\.\d+):(\d+):(\d+)"', COMPOSE.read_text())
    assert published
    assert {host for host, _, _ in published} == {"127.0.0.1"}
    container_ports = {int(port) for _, _, port in published}
    assert listened <= container_ports
    http_port = settings.http.listen.rpartition(":")[2]
    assert f'"postroom:{http_port}"' in PROMETHEUS.read_text()
    assert "condition: service_healthy" in COMPOSE.read_text()


# -- the systemd unit ------------------------------------------------------------------------------


def unit_directives() -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line!r}"
        directives.setdefault(key.strip(), []).append(value.strip())
    return directives


def test_systemd_unit_keeps_its_contract_and_hardening() -> None:
    unit = unit_directives()
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "StateDirectory": "postroom",
        "User": "postroom",
    }
    for key, value in expected.items():
        assert unit.get(key) == [value], key
    for key in ("WatchdogSec", "LoadCredential", "ExecStartPre", "TimeoutStopSec"):
        assert unit.get(key), key
    assert "serve" in unit["ExecStart"][0]
    assert "check-config" in unit["ExecStartPre"][0]


def test_systemd_stop_timeout_outlasts_the_drain() -> None:
    unit = unit_directives()
    timeout = float(unit["TimeoutStopSec"][0].removesuffix("s"))
    smtp_session_grace = 10.0  # SmtpListeners.run
    assert timeout > DeliverySettings.model_fields["drain_grace"].default + smtp_session_grace


def test_systemd_credential_is_the_one_the_example_config_names() -> None:
    credential_ids = [value.partition(":")[0] for value in unit_directives()["LoadCredential"]]
    text = EXAMPLE.read_text()
    for credential_id in credential_ids:
        assert f"%d/{credential_id}" in text


# -- the alert rules -------------------------------------------------------------------------------


SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}


def exported_metric_names() -> set[str]:
    """Every series name the daemon can export, including labelled metrics with no child yet."""
    registry = CollectorRegistry()
    Metrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def alert_expressions() -> list[str]:
    """The `expr:` of every rule, including block scalars (`expr: |` and its indented lines)."""
    expressions: list[str] = []
    lines = ALERTS.read_text().splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if not match:
            continue
        indent, rest = len(match.group(1)), match.group(2).strip()
        if rest not in ("|", ">", "|-", ">-"):
            expressions.append(rest)
            continue
        block = []
        for following in lines[index + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            block.append(following.strip())
        expressions.append(" ".join(block))
    return expressions


def test_every_alert_has_an_expression() -> None:
    alerts = re.findall(r"^\s*- alert:\s*(\S+)", ALERTS.read_text(), flags=re.MULTILINE)
    expressions = alert_expressions()
    assert len(alerts) >= 4
    assert len(expressions) == len(alerts)
    assert all(expressions)


def test_alert_rules_use_only_exported_metrics() -> None:
    exported = exported_metric_names()
    used = {
        name
        for expression in alert_expressions()
        for name in re.findall(r"\b(postroom_[a-z0-9_]+)", expression)
    }
    assert {"postroom_ready", "postroom_queue_depth", "postroom_delivery_attempts_total"} <= used
    assert used - exported == set()


SELECTOR = r"postroom_(?:queue_depth|delivery_attempts_total)\{([^}]*)\}"


def test_alert_rules_match_real_delivery_states() -> None:
    """queue_depth{state=...} and delivery_attempts_total{result=...} carry DeliveryState values."""
    states = {state.value for state in DeliveryState}
    matchers = [
        (label, value)
        for expression in alert_expressions()
        for selector in re.findall(SELECTOR, expression)
        for label, value in re.findall(r'(\w+)\s*=~?\s*"([^"]*)"', selector)
    ]
    assert matchers
    for label, value in matchers:
        assert label in ("state", "result")
        assert value in states
