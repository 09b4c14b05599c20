"""The `postroom` command in a subprocess: init, check-config, db upgrade, serve's schema guard,
send and the queue commands, API keys and SMTP users. Exit codes: 0 ok, 1 failed, 2 bad usage."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from postroom.store.credentials import Role, SqlApiKeys, SqlSmtpUsers
from postroom.store.engine import create_engine
from postroom.store.schema import head_revision
from postroom.store.tables import deliveries, messages

from tests.support import make_settings, postroom_cli

pytestmark = pytest.mark.slow  # every test shells out to the command, ~0.6 s a call

INIT_KEYS = {
    "config",
    "api_key",
    "smtp_user",
    "smtp_password",
    "domain",
    "http",
    "submission",
    "mx",
}
LOOPBACK_PORTS = {
    "POSTROOM_HTTP__LISTEN": "127.0.0.1:0",
    "POSTROOM_SMTP__SUBMISSION_LISTEN": "127.0.0.1:0",
    "POSTROOM_SMTP__MX_LISTEN": "127.0.0.1:0",
}


def write_cli_config(directory: Path, db_url: str) -> Path:
    path = directory / "postroom.toml"
    path.write_text(
        f"""state_dir = "{directory}"
[database]
url = "{db_url}"
[http]
listen = "127.0.0.1:0"
[smtp]
hostname = "mail.postroom.test"
submission_listen = "127.0.0.1:0"
mx_listen = "127.0.0.1:0"
[delivery]
mode = "capture"
capture_dir = "{directory / "outbox"}"
[log]
format = "text"
[[domains]]
name = "postroom.test"
dkim = "off"
"""
    )
    return path


class Cli:
    """The command bound to one config file."""

    def __init__(self, config: Path, db_url: str):
        self.config = config
        self.db_url = db_url

    def __call__(self, *args: str, check: bool = True, input: str | None = None,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return postroom_cli(*args, "--config", str(self.config), check=check, input=input, env=env)

    def fails(self, *args: str, code: int = 1, input: str | None = None) -> str:
        result = self(*args, check=False, input=input)
        assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
        return result.stderr

    def send(self, *recipients: str, subject: str = "Hello") -> str:
        args = ["send", "--from", "App <app@postroom.test>", "--subject", subject, "--text", "hi"]
        for recipient in recipients or ("user@example.com",):
            args += ["--to", recipient]
        message_id = self(*args).stdout.strip()
        assert len(message_id) == 26
        return message_id

    def show(self, message_id: str) -> dict[str, object]:
        detail: dict[str, object] = json.loads(self("queue", "show", message_id, "--json").stdout)
        return detail


@pytest.fixture
async def cli(tmp_path: Path, db_url: str) -> AsyncIterator[Cli]:
    """A migrated database on each engine and a config naming it."""
    command = Cli(write_cli_config(tmp_path, db_url), db_url)
    command("db", "upgrade")
    yield command


async def set_states(db_url: str, message_id: str, state: str) -> None:
    engine = create_engine(make_settings(Path("/nonexistent"), db_url).database)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                deliveries.update().where(deliveries.c.message_id == message_id).values(state=state)
            )
    finally:
        await engine.dispose()


async def count_messages(db_url: str) -> int:
    engine = create_engine(make_settings(Path("/nonexistent"), db_url).database)
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(sa.select(sa.func.count()).select_from(messages)) or 0)
    finally:
        await engine.dispose()


# -- init -------------------------------------------------------------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_init_dev_writes_a_working_quickstart(tmp_path: Path) -> None:
    root = tmp_path / "qs"
    result = json.loads(postroom_cli("init", "--dev", "--dir", str(root), "--json").stdout)
    assert set(result) == INIT_KEYS
    assert result["config"] == str((root / "postroom.toml").resolve())
    assert result["api_key"].startswith("pr_")
    assert result["smtp_user"] == "app@postroom.test"
    assert result["domain"] == "postroom.test"
    assert (result["http"], result["submission"], result["mx"]) == (
        "127.0.0.1:8025", "127.0.0.1:2587", "127.0.0.1:2525"
    )  # fmt: skip
    assert mode_of(root / "quickstart.json") == 0o600
    assert mode_of(root / "tls" / "key.pem") == 0o600
    assert json.loads((root / "quickstart.json").read_text()) == result
    assert "BEGIN CERTIFICATE" in (root / "tls" / "cert.pem").read_text()
    assert postroom_cli("check-config", "--config", result["config"]).returncode == 0

    db_url = f"sqlite+aiosqlite:///{(root / 'postroom.db').resolve()}"
    engine = create_engine(make_settings(tmp_path, db_url).database)
    try:
        key = await SqlApiKeys(engine).authenticate(result["api_key"])
        assert key is not None and key.role is Role.ADMIN
        assert await SqlSmtpUsers(engine).verify(result["smtp_user"], result["smtp_password"])
    finally:
        await engine.dispose()


def test_init_again_keeps_the_same_credentials(tmp_path: Path) -> None:
    root = tmp_path / "qs"
    first = json.loads(postroom_cli("init", "--dev", "--dir", str(root), "--json").stdout)
    config_text = (root / "postroom.toml").read_text()
    again = json.loads(postroom_cli("init", "--dev", "--dir", str(root), "--json").stdout)
    assert again == first
    assert (root / "postroom.toml").read_text() == config_text
    listing = postroom_cli("apikeys", "ls", "--config", first["config"]).stdout
    assert len(listing.strip().splitlines()) == 2  # header and the one key


async def test_init_after_the_database_was_deleted_issues_working_credentials(
    tmp_path: Path,
) -> None:
    root = tmp_path / "qs"
    first = json.loads(postroom_cli("init", "--dev", "--dir", str(root), "--json").stdout)
    for leftover in root.glob("postroom.db*"):
        leftover.unlink()
    again = json.loads(postroom_cli("init", "--dev", "--dir", str(root), "--json").stdout)
    assert again["api_key"] != first["api_key"]
    assert json.loads((root / "quickstart.json").read_text()) == again
    db_url = f"sqlite+aiosqlite:///{(root / 'postroom.db').resolve()}"
    engine = create_engine(make_settings(tmp_path, db_url).database)
    try:
        assert await SqlApiKeys(engine).authenticate(again["api_key"]) is not None
        assert await SqlSmtpUsers(engine).verify(again["smtp_user"], again["smtp_password"])
    finally:
        await engine.dispose()


def test_init_prints_a_banner_without_json(tmp_path: Path) -> None:
    out = postroom_cli("init", "--dev", "--dir", str(tmp_path / "qs")).stdout
    saved = json.loads((tmp_path / "qs" / "quickstart.json").read_text())
    assert saved["api_key"] in out
    assert "curl -s http://127.0.0.1:8025/v1/messages" in out


def test_init_without_dev_is_a_usage_error(tmp_path: Path) -> None:
    result = postroom_cli("init", "--dir", str(tmp_path / "qs"), check=False)
    assert result.returncode == 2
    assert "postroom init --dev" in result.stderr
    assert not (tmp_path / "qs").exists()


# -- check-config -----------------------------------------------------------------------------


def test_check_config_ok(tmp_path: Path) -> None:
    config = write_cli_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    result = postroom_cli("check-config", "--config", str(config))
    assert result.stdout.strip().startswith(f"{config}: ok")
    assert result.stderr == ""


def test_check_config_reports_every_problem_with_its_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[http]\nlisten = "nowhere"\ncolour = "red"\n'
        '[smtp]\ntrusted_networks = ["10.0.0.0/8", "bogus"]\n'
        '[delivery]\nmode = "smarthost"\n'
    )
    result = postroom_cli("check-config", "--config", str(config), check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert "postroom: config http.listen: 'nowhere' is not host:port" in lines
    assert "postroom: config http.colour: unknown key" in lines
    assert any(line.startswith("postroom: config smtp.trusted_networks: 'bogus'") for line in lines)
    assert any(
        line.startswith("postroom: config delivery") and "smarthost" in line for line in lines
    )
    assert len(lines) == 4


def test_check_config_reports_env_problems_and_a_missing_file(tmp_path: Path) -> None:
    config = write_cli_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    result = postroom_cli("check-config", "--config", str(config), check=False,
                          env={"POSTROOM_SMTP__MAX_RECIPIENTS": "0"})  # fmt: skip
    assert result.returncode == 2
    assert "postroom: config smtp.max_recipients:" in result.stderr
    result = postroom_cli("check-config", "--config", str(tmp_path / "absent.toml"), check=False)
    assert result.returncode == 2
    assert f"postroom: config config: {tmp_path / 'absent.toml'} does not exist" in result.stderr


def test_config_is_found_through_env_then_the_working_directory(tmp_path: Path) -> None:
    by_env = write_cli_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    result = postroom_cli("check-config", env={"POSTROOM_CONFIG": str(by_env)})
    assert result.stdout.strip().startswith(f"{by_env}: ok")
    workdir = tmp_path / "work"
    workdir.mkdir()
    write_cli_config(workdir, f"sqlite+aiosqlite:///{workdir / 'x.db'}")
    env = {k: v for k, v in os.environ.items() if k != "POSTROOM_CONFIG"}
    result = subprocess.run([sys.executable, "-m", "postroom.cli", "check-config"], cwd=workdir,
                            env=env, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("postroom.toml: ok")


# -- db upgrade, serve ------------------------------------------------------------------------


def test_db_upgrade_is_idempotent(tmp_path: Path, db_url: str) -> None:
    cli = Cli(write_cli_config(tmp_path, db_url), db_url)
    head = head_revision()
    assert cli("db", "upgrade").stdout.strip() == f"database migrated from empty to revision {head}"
    assert cli("db", "upgrade").stdout.strip() == f"database already at revision {head}"


def test_commands_refuse_an_unmigrated_database(tmp_path: Path, db_url: str) -> None:
    cli = Cli(write_cli_config(tmp_path, db_url), db_url)
    result = postroom_cli("serve", "--config", str(cli.config), env=LOOPBACK_PORTS, check=False)
    assert result.returncode != 0
    assert "postroom db upgrade" in result.stderr
    assert "not initialised" in result.stderr
    assert "postroom db upgrade" in cli.fails("queue", "ls")


def test_serve_on_an_empty_sqlite_file_from_env_refuses(tmp_path: Path) -> None:
    root = tmp_path / "qs"
    config = json.loads(postroom_cli("init", "--dev", "--dir", str(root), "--json").stdout)[
        "config"
    ]
    empty = tmp_path / "empty.db"
    empty.touch()
    env = {**LOOPBACK_PORTS, "POSTROOM_DATABASE__URL": f"sqlite+aiosqlite:///{empty}"}
    result = postroom_cli("serve", "--config", config, env=env, check=False)
    assert result.returncode == 1
    assert "run `postroom db upgrade`" in result.stderr


# -- send and queue ---------------------------------------------------------------------------


def test_send_then_list_and_show(cli: Cli) -> None:
    message_id = cli.send("a@example.com", "b@example.com", subject="From the CLI")
    listing = cli("queue", "ls").stdout
    [row] = [line for line in listing.splitlines() if line.startswith(message_id)]
    assert "app@postroom.test" in row and "queued=2" in row

    shown = cli("queue", "show", message_id).stdout
    assert f"message   {message_id}" in shown
    assert "via cli" in shown
    assert "subject   From the CLI" in shown
    assert "a@example.com: queued, 0 attempt(s)" in shown
    assert "b@example.com: queued, 0 attempt(s)" in shown

    detail = cli.show(message_id)
    assert detail["id"] == message_id and detail["source"] == "cli"
    assert detail["subject"] == "From the CLI"
    assert detail["from"] == "App <app@postroom.test>"
    assert detail["recipients"] == {"queued": 2}
    assert [(d["recipient"], d["state"]) for d in detail["deliveries"]] == [  # type: ignore[attr-defined]
        ("a@example.com", "queued"), ("b@example.com", "queued"),
    ]  # fmt: skip
    assert [e["type"] for e in detail["events"]] == ["accepted"]  # type: ignore[attr-defined]

    content = cli("queue", "show", message_id, "--content").stdout
    assert "Subject: From the CLI" in content
    assert f"Message-ID: <{message_id}@mail.postroom.test>" in content


def test_queue_ls_filters_by_state_and_emits_json(cli: Cli) -> None:
    assert cli("queue", "ls").stdout.strip() == "queue is empty"
    first, second = cli.send(), cli.send()
    listed = json.loads(cli("queue", "ls", "--json").stdout)
    assert [m["id"] for m in listed] == sorted([first, second], reverse=True)
    assert (
        cli("queue", "ls", "--state", "dead").stdout.strip() == "no messages with dead deliveries"
    )
    assert cli.fails("queue", "ls", "--state", "lost", code=2)


def test_send_raw_from_stdin(cli: Cli) -> None:
    raw = "From: Raw <raw@postroom.test>\nTo: u@example.com\nSubject: raw one\n\nbody line\n"
    message_id = cli("send", "--from", "raw@postroom.test", "--to", "u@example.com", "--raw", "-",
                     input=raw).stdout.strip()  # fmt: skip
    detail = cli.show(message_id)
    assert detail["subject"] == "raw one" and detail["from"] == "Raw <raw@postroom.test>"
    content = cli("queue", "show", message_id, "--content").stdout
    assert "body line" in content


def test_send_refuses_a_domain_that_is_not_ours(cli: Cli) -> None:
    error = cli.fails("send", "--from", "a@elsewhere.example", "--to", "u@example.com", "--text", "x")
    assert "elsewhere.example is not a sending domain" in error


def test_send_refuses_bad_input(cli: Cli) -> None:
    assert "not an email address" in cli.fails("send", "--from", "nobody", "--to", "u@example.com",
                                               code=2)  # fmt: skip
    assert "CR or LF" in cli.fails("send", "--from", "a@postroom.test", "--to", "u@example.com",
                                   "--subject", "x\r\nBcc: v@example.com", code=2)  # fmt: skip
    assert cli.fails("send", "--from", "a@postroom.test", code=2)  # --to is required
    assert cli("queue", "ls").stdout.strip() == "queue is empty"


async def test_retry_brings_dead_deliveries_back(cli: Cli) -> None:
    message_id = cli.send("a@example.com", "b@example.com")
    assert "has no dead or deferred deliveries" in cli.fails("queue", "retry", message_id)
    await set_states(cli.db_url, message_id, "dead")
    assert cli("queue", "ls", "--state", "dead").stdout.count(message_id) == 1
    assert cli("queue", "retry", message_id).stdout.strip() == "2 deliveries queued again"
    assert cli.show(message_id)["recipients"] == {"queued": 2}
    await set_states(cli.db_url, message_id, "dead")
    assert cli("queue", "retry", "--all-dead").stdout.strip() == "2 deliveries queued again"
    assert cli.show(message_id)["recipients"] == {"queued": 2}


def test_retry_needs_exactly_one_target(cli: Cli) -> None:
    assert "MESSAGE_ID or --all-dead" in cli.fails("queue", "retry", code=2)
    assert "MESSAGE_ID or --all-dead" in cli.fails("queue", "retry", "X", "--all-dead", code=2)


async def test_purge_deletes_one_message(cli: Cli) -> None:
    keep, purge = cli.send(), cli.send()
    assert "nothing deleted" in cli.fails("queue", "purge", purge, input="n\n")
    assert await count_messages(cli.db_url) == 2
    assert cli("queue", "purge", purge, "--yes").stdout.strip() == "1 messages deleted"
    assert f"no message {purge}" in cli.fails("queue", "show", purge)
    assert cli.show(keep)["id"] == keep
    assert await count_messages(cli.db_url) == 1
    assert "MESSAGE_ID or --state" in cli.fails("queue", "purge", "--yes", code=2)


async def test_purge_by_state(cli: Cli) -> None:
    dead, queued = cli.send(), cli.send()
    await set_states(cli.db_url, dead, "dead")
    assert cli("queue", "purge", "--state", "dead", "--yes").stdout.strip() == "1 messages deleted"
    assert cli.show(queued)["id"] == queued
    assert await count_messages(cli.db_url) == 1


async def test_purge_refuses_a_message_being_sent(cli: Cli) -> None:
    message_id = cli.send()
    await set_states(cli.db_url, message_id, "sending")
    assert "being sent" in cli.fails("queue", "purge", message_id, "--yes")
    assert await count_messages(cli.db_url) == 1


def test_unknown_message_id_is_exit_1_with_a_clear_message(cli: Cli) -> None:
    unknown = "01JZZZZZZZZZZZZZZZZZZZZZZZ"
    for args in (("queue", "show", unknown), ("queue", "show", unknown, "--json"),
                 ("queue", "show", unknown, "--content"), ("queue", "purge", unknown, "--yes"),
                 ("queue", "retry", unknown)):  # fmt: skip
        stderr = cli.fails(*args)
        assert unknown in stderr and stderr.startswith("postroom: ")
        assert "Traceback" not in stderr


# -- apikeys, smtp-users ----------------------------------------------------------------------


async def test_apikeys_create_list_revoke(cli: Cli) -> None:
    token = cli("apikeys", "create", "--name", "reporting", "--role", "viewer").stdout.strip()
    assert token.startswith("pr_")
    key_id = token.split("_")[1]
    [row] = [line for line in cli("apikeys", "ls").stdout.splitlines() if line.startswith(key_id)]
    assert row.split()[1] == "viewer" and row.endswith("reporting") and " - " in row

    engine = create_engine(make_settings(Path("/nonexistent"), cli.db_url).database)
    try:
        key = await SqlApiKeys(engine).authenticate(token)
        assert key is not None and key.role is Role.VIEWER and key.name == "reporting"
        assert cli("apikeys", "revoke", key_id).stdout.strip() == f"revoked {key_id}"
        assert await SqlApiKeys(engine).authenticate(token) is None
    finally:
        await engine.dispose()
    [row] = [line for line in cli("apikeys", "ls").stdout.splitlines() if line.startswith(key_id)]
    assert " - " not in row  # the revocation time is shown
    assert f"no live API key {key_id}" in cli.fails("apikeys", "revoke", key_id)
    assert "no live API key" in cli.fails("apikeys", "revoke", "000000000000")


def test_apikeys_default_role_is_sender_and_roles_are_checked(cli: Cli) -> None:
    token = cli("apikeys", "create", "--name", "app").stdout.strip()
    [row] = [line for line in cli("apikeys", "ls").stdout.splitlines()
             if line.startswith(token.split("_")[1])]  # fmt: skip
    assert row.split()[1] == "sender"
    assert cli.fails("apikeys", "create", "--name", "x", "--role", "root", code=2)


async def test_smtp_users_add_list_remove(cli: Cli) -> None:
    assert (
        cli("smtp-users", "add", "alice", "--password", "pw-alice").stdout.strip() == "added alice"
    )
    generated = cli("smtp-users", "add", "bob").stdout.strip()
    assert generated.startswith("added bob with password ")
    bob_password = generated.rsplit(" ", 1)[1]
    cli("smtp-users", "add", "carol", "--password-stdin", input="from stdin\n")

    users = [line.split("\t")[0] for line in cli("smtp-users", "ls").stdout.splitlines()]
    assert users == ["alice", "bob", "carol"]
    engine = create_engine(make_settings(Path("/nonexistent"), cli.db_url).database)
    try:
        store = SqlSmtpUsers(engine)
        assert await store.verify("alice", "pw-alice")
        assert await store.verify("bob", bob_password)
        assert await store.verify("carol", "from stdin")
        assert "already exists" in cli.fails("smtp-users", "add", "alice", "--password", "other")
        assert await store.verify("alice", "pw-alice")  # the duplicate did not change it
    finally:
        await engine.dispose()

    assert cli("smtp-users", "rm", "alice").stdout.strip() == "removed alice"
    assert "no SMTP user alice" in cli.fails("smtp-users", "rm", "alice")
    assert [line.split("\t")[0] for line in cli("smtp-users", "ls").stdout.splitlines()] == [
        "bob", "carol",
    ]  # fmt: skip


def test_smtp_users_refuse_an_empty_password(cli: Cli) -> None:
    assert "empty" in cli.fails("smtp-users", "add", "dave", "--password-stdin", input="\n", code=2)
    assert cli("smtp-users", "ls").stdout.strip() == ""


def test_smtp_users_can_be_limited_to_sender_domains(cli: Cli) -> None:
    cli("smtp-users", "add", "shop", "--password", "pw", "--allow", "postroom.test",
        "--allow", "Billing@postroom.test")  # fmt: skip
    [row] = cli("smtp-users", "ls").stdout.splitlines()
    assert row.split("\t")[2] == "postroom.test,billing@postroom.test"
    error = cli.fails("smtp-users", "add", "x", "--password", "pw", "--allow", "elsewhere.example", code=2)
    assert "not a sending domain" in error
