"""`postroom contacts import|export|erase` in a subprocess on both databases: a realistic audience
file in and out again, a round trip into an empty database, a bad row refusing the whole file (line
and column named, nothing written), --skip-invalid, --dry-run, --json, files that are not audiences,
and erasure (contact gone, message bodies blanked, other people's mail untouched, confirmation
asked on a terminal and refused off one). Progress is shown on a terminal only."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from postroom.contacts.model import MailingList, contact_json
from postroom.contacts.service import ContactService
from postroom.contacts.sql_store import SqlContactStore
from postroom.core.clock import SystemClock
from postroom.store.engine import create_engine
from postroom.store.tables import deliveries, messages

from tests.integration.test_cli import Cli, write_cli_config
from tests.support import create_pg_database, drop_pg_database, make_settings

pytestmark = pytest.mark.slow  # every test shells out to the command, ~0.6 s a call

LISTS = """
[[contacts.lists]]
id = "news"
name = "Newsletter"

[[contacts.lists]]
id = "beta-testers"
name = "Beta testers"
"""
TYPES = ("--type", "seats=number", "--type", "trialEnds=date")
# Four people as an application's export has them: a quoted comma, a line break inside a field, an
# address in mixed case, a row that only unsubscribes, ISO dates with and without a time.
AUDIENCE = (
    "email,firstName,lastName,userId,userGroup,source,subscribed,news,beta-testers,plan,seats,trialEnds\r\n"
    "ada@example.com,Ada,Lovelace,u-1,admins,signup,true,true,false,pro,12,2025-03-01\r\n"
    'grace@example.org,Grace,"Hopper, Rear Adm.",u-2,,import,true,false,true,team,2.5,2025-03-01T10:00:00+02:00\r\n'
    "linus@example.net,Linus,,,,,false,,,,,\r\n"
    'Emile@Example.COM,Émile,"Zola\r\n(the writer)",,,,,true,,free,0,2024-05-01\r\n'
)
EXPECTED = {
    "ada@example.com": {
        "firstName": "Ada", "lastName": "Lovelace", "userId": "u-1", "userGroup": "admins", "source": "signup",
        "subscribed": True, "mailingLists": {"news": True}, "optInStatus": None,
        "plan": "pro", "seats": 12, "trialEnds": "2025-03-01"},
    "grace@example.org": {
        "firstName": "Grace", "lastName": "Hopper, Rear Adm.", "userId": "u-2", "userGroup": "", "source": "import",
        "subscribed": True, "mailingLists": {"beta-testers": True}, "optInStatus": None,
        "plan": "team", "seats": 2.5, "trialEnds": "2025-03-01T08:00:00Z"},
    "linus@example.net": {
        "firstName": "Linus", "lastName": None, "userId": None, "userGroup": "", "source": "API",
        "subscribed": False, "mailingLists": {}, "optInStatus": None},
    "Emile@Example.COM": {
        "firstName": "Émile", "lastName": "Zola\r\n(the writer)", "userId": None, "userGroup": "", "source": "API",
        "subscribed": True, "mailingLists": {"news": True}, "optInStatus": None,
        "plan": "free", "seats": 0, "trialEnds": "2024-05-01"},
}  # fmt: skip


def contacts_cli(directory: Path, db_url: str) -> Cli:
    directory.mkdir(parents=True, exist_ok=True)
    config = write_cli_config(directory, db_url)
    config.write_text(config.read_text() + LISTS)
    command = Cli(config, db_url)
    command("db", "upgrade")
    return command


@pytest.fixture
async def cli(tmp_path: Path, db_url: str) -> AsyncIterator[Cli]:
    yield contacts_cli(tmp_path / "first", db_url)


@pytest.fixture
async def empty_cli(tmp_path: Path, db_url: str) -> AsyncIterator[Cli]:
    """A second, empty database on the same engine."""
    if db_url.startswith("sqlite"):
        yield contacts_cli(tmp_path / "second", f"sqlite+aiosqlite:///{tmp_path / 'second.db'}")
        return
    url = await create_pg_database()
    try:
        yield contacts_cli(tmp_path / "second", url)
    finally:
        await drop_pg_database(url)


async def stored(db_url: str) -> dict[str, dict[str, Any]]:
    """Every contact in the database by address (without its id), and the property types."""
    engine = create_engine(make_settings(Path("/nonexistent"), db_url).database)
    try:
        service = ContactService(SqlContactStore(engine), [MailingList("news", "N")], SystemClock())
        found = {c.email: {k: v for k, v in contact_json(c).items() if k not in ("id", "email")}
                 async for c in service.all()}  # fmt: skip
        found["(properties)"] = {p.key: p.type.value for p in await service.properties("custom")}
        return found
    finally:
        await engine.dispose()


def exported_json(cli: Cli) -> dict[str, dict[str, Any]]:
    lines = cli("contacts", "export", "--json").stdout.splitlines()
    return {c["email"]: {k: v for k, v in c.items() if k not in ("id", "email")} for c in map(json.loads, lines)}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


async def test_a_realistic_file_imports_exports_and_round_trips_into_an_empty_database(
    cli: Cli, empty_cli: Cli, tmp_path: Path
) -> None:
    source = write(tmp_path, "audience.csv", AUDIENCE)
    result = cli("contacts", "import", str(source), *TYPES)
    assert result.stdout == "created 4, updated 0, skipped 0 of 4 rows\n"
    assert "importing" not in result.stderr  # no progress off a terminal
    assert exported_json(cli) == EXPECTED
    assert (await stored(cli.db_url))["(properties)"] == {"seats": "number", "trialEnds": "date", "plan": "string"}

    exported = tmp_path / "export.csv"
    assert cli("contacts", "export", "--output", str(exported)).stdout == f"exported 4 contacts to {exported}\n"
    lines = exported.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "email,firstName,lastName,userId,userGroup,source,subscribed,news,beta-testers,seats,trialEnds,plan"
    assert "ada@example.com,Ada,Lovelace,u-1,admins,signup,true,true,false,12,2025-03-01,pro" in lines
    assert cli("contacts", "export").stdout == exported.read_text(encoding="utf-8")  # stdout: the same bytes
    assert [p.name for p in tmp_path.joinpath().iterdir() if p.name.startswith(".")] == []  # no partial file left

    imported = json.loads(empty_cli("contacts", "import", str(exported), *TYPES, "--json").stdout)
    assert imported == {"rows": 4, "created": 4, "updated": 0, "skipped": 0, "errors": [], "dry_run": False,
                        "refused": False}  # fmt: skip
    assert exported_json(empty_cli) == EXPECTED
    assert await stored(empty_cli.db_url) == await stored(cli.db_url)

    # Importing the export again changes nothing and needs no --type: the properties exist now.
    before = await stored(cli.db_url)
    assert cli("contacts", "import", str(exported)).stdout == "created 0, updated 4, skipped 0 of 4 rows\n"
    assert await stored(cli.db_url) == before


async def test_a_bad_row_refuses_the_whole_import_with_line_and_column(cli: Cli, tmp_path: Path) -> None:
    cli("contacts", "import", "-", *TYPES[:2], input="email,firstName,seats\nkeep@example.com,Keep,1\n")
    before = await stored(cli.db_url)
    bad = write(tmp_path, "bad.csv", AUDIENCE + "new@example.com,New,,,,,yes,true,,,lots,\r\n"
                                                "not-an-address,,,,,,,,,,,\r\n"
                                                "keep@example.com,Changed,,,,,,,,,,\r\n"
                                                "short@example.com,Short\r\n")  # fmt: skip
    stderr = cli.fails("contacts", "import", str(bad), "--type", "trialEnds=date")
    # Émile's row spans lines 5 and 6, so the rows after it start on lines 7 to 10.
    assert f"postroom: {bad}: line 7, column seats: seats must be a number\n" in stderr
    assert f"postroom: {bad}: line 8, column email: Invalid email address.\n" in stderr
    assert f"postroom: {bad}: line 10: 2 fields where the header has 12\n" in stderr
    assert "line 9" not in stderr and "line 2," not in stderr
    assert f"import refused: 3 of 8 rows are invalid; nothing was written" in stderr
    assert await stored(cli.db_url) == before  # not even the valid rows, nor the new properties

    summary = json.loads(cli("contacts", "import", str(bad), "--json", "--type", "trialEnds=date", check=False).stdout)
    assert summary["refused"] is True and (summary["created"], summary["updated"], summary["skipped"]) == (0, 0, 3)
    assert [(e["line"], e["column"]) for e in summary["errors"]] == [(7, "seats"), (8, "email"), (10, "")]
    assert await stored(cli.db_url) == before


async def test_skip_invalid_imports_the_other_rows_and_reports_the_bad_ones(cli: Cli, tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.csv", "email,firstName,seats,news\n"
                                     "a@example.com,A,1,true\n"
                                     "b@example.com,B,two,true\n"
                                     "c@example.com,C,3,perhaps\n"
                                     "d@example.com,D,4,false\n")  # fmt: skip
    result = cli("contacts", "import", str(bad), "--skip-invalid", "--type", "seats=number")
    assert result.stdout == "created 2, updated 0, skipped 2 of 4 rows\n"
    assert f"postroom: {bad}: line 3, column seats: seats must be a number" in result.stderr
    assert f"postroom: {bad}: line 4, column news: news must be true or false" in result.stderr
    after = await stored(cli.db_url)
    assert sorted(after) == ["(properties)", "a@example.com", "d@example.com"]
    assert after["a@example.com"]["seats"] == 1 and after["a@example.com"]["mailingLists"] == {"news": True}

    again = json.loads(cli("contacts", "import", str(bad), "--skip-invalid", "--json").stdout)
    assert (again["created"], again["updated"], again["skipped"]) == (0, 2, 2)
    assert again["errors"] == [{"line": 3, "column": "seats", "message": "seats must be a number"},
                               {"line": 4, "column": "news", "message": "news must be true or false"}]  # fmt: skip


async def test_dry_run_counts_what_would_change_and_writes_nothing(cli: Cli, tmp_path: Path) -> None:
    cli("contacts", "import", "-", input="email,firstName\nada@example.com,Ada\n")
    before = await stored(cli.db_url)
    source = write(tmp_path, "audience.csv", AUDIENCE)
    result = cli("contacts", "import", str(source), "--dry-run", *TYPES)
    assert result.stdout == "dry run: would create 3, update 1 and skip 0 of 4 rows; nothing written\n"
    assert await stored(cli.db_url) == before  # no contact, no property definition
    summary = json.loads(cli("contacts", "import", str(source), "--dry-run", "--json", *TYPES).stdout)
    assert summary == {"rows": 4, "created": 3, "updated": 1, "skipped": 0, "errors": [], "dry_run": True,
                       "refused": False}  # fmt: skip
    assert await stored(cli.db_url) == before


async def test_user_ids_that_would_overwrite_another_contact_are_refused_before_writing(cli: Cli, tmp_path: Path) -> None:
    cli("contacts", "import", "-", input="email,userId\na@example.com,u1\nb@example.com,\n")
    before = await stored(cli.db_url)
    clash = write(tmp_path, "clash.csv", "email,userId\n"
                                         "b@example.com,u1\n"  # u1 is a@'s, and b@ is another contact
                                         "c@example.com,u7\n"
                                         "d@example.com,u7\n"
                                         "e@example.com,\n"
                                         "e@example.com,u1\n")  # u1 would move a@ onto the e@ line 5 creates
    stderr = cli.fails("contacts", "import", str(clash))
    assert "line 2, column userId: userId 'u1' belongs to the contact a@example.com, and b@example.com is another contact" in stderr
    assert "line 4, column userId: userId 'u7' is also on line 3, with another address" in stderr
    assert "line 6, column userId: userId 'u1' would move the contact a@example.com to e@example.com, which line 5 creates" in stderr
    assert "import refused: 3 of 5 rows are invalid" in stderr
    assert await stored(cli.db_url) == before
    # A userId on a new address moves its contact there (Loops' rule), which is no clash.
    cli("contacts", "import", "-", input="email,userId,firstName\nnew-a@example.com,u1,A\n")
    after = await stored(cli.db_url)
    assert "a@example.com" not in after and after["new-a@example.com"]["firstName"] == "A"


async def test_files_that_are_not_audiences_exit_2_and_write_nothing(cli: Cli, tmp_path: Path) -> None:
    before = await stored(cli.db_url)
    cases = {
        "email,mailingLists\na@example.com,x\n": "column 'mailingLists': a reserved name",
        "mail,firstName\na@example.com,A\n": "the header has no 'email' column",
        'email,firstName\na@example.com,"A\n': "line 2: not valid CSV: unexpected end of data",
        "": "the file is empty",
        "email,seats\na@example.com,1\n": "--type seats: the property exists as",  # after the first import below
    }
    cli("contacts", "import", "-", "--type", "seats=number", input="email,seats\nz@example.com,1\n")
    for text, reason in cases.items():
        extra = ("--type", "seats=date") if "seats" in text else ()
        stderr = cli.fails("contacts", "import", "-", *extra, code=2, input=text)
        assert reason in stderr and stderr.startswith("postroom: stdin: "), stderr
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(("email,firstName\n" + "a@example.com,A\n" * 5000 + "b@example.com,Zoë\n").encode("latin-1"))
    assert "line 5002: not UTF-8 text" in cli.fails("contacts", "import", str(latin1), code=2)
    assert "does not exist" in cli.fails("contacts", "import", str(tmp_path / "missing.csv"), code=2)
    assert "--type seats=huge: 'huge' is not string, number" in cli.fails("contacts", "import", str(latin1), "--type", "seats=huge", code=2)
    assert sorted(await stored(cli.db_url)) == sorted([*before, "z@example.com"])


async def test_erase_removes_the_contact_and_blanks_its_messages_and_leaves_others(cli: Cli) -> None:
    cli("contacts", "import", "-", input="email,firstName\nada@example.com,Ada\nbob@example.com,Bob\n")
    to_ada = cli.send("Ada@Example.com", subject="Your invoice")
    to_both = cli.send("bob@example.com", "ada@example.com", subject="News")
    to_bob = cli.send("bob@example.com", subject="For Bob only")

    cli("suppressions", "add", "ada@example.com", "--reason", "complaint")
    stderr = cli.fails("contacts", "erase", "ada@example.com", code=2, input="y\n")  # stdin is not a terminal
    assert "add --yes" in stderr and "ada@example.com" in await stored(cli.db_url)

    erased = json.loads(cli("contacts", "erase", "ADA@example.com", "--yes", "--json").stdout)
    assert erased == {"email": "ADA@example.com", "contact_found": True, "messages_erased": 2}
    after = await stored(cli.db_url)
    assert "ada@example.com" not in after and "bob@example.com" in after
    engine = create_engine(make_settings(Path("/nonexistent"), cli.db_url).database)
    try:
        async with engine.connect() as conn:
            bodies = {r.id: (r.content, r.subject) for r in await conn.execute(sa.select(messages))}
            recipients = sorted(r.recipient for r in await conn.execute(sa.select(deliveries.c.recipient)))
    finally:
        await engine.dispose()
    assert bodies[to_ada] == (b"", None) and bodies[to_both] == (b"", None)
    assert bodies[to_bob][1] == "For Bob only" and b"For Bob only" in bodies[to_bob][0]
    assert recipients[:2] == ["bob@example.com", "bob@example.com"]
    assert [r.startswith("erased:") for r in recipients[2:]] == [True, True]

    # The suppression stays, kept only as the address's hash: still blocking, no longer naming it.
    entries = cli("suppressions", "ls", "--json").stdout
    assert "ada@example.com" not in entries.lower()
    [entry] = json.loads(entries)
    assert (entry["address"], entry["erased"], entry["reason"]) == (None, True, "complaint")
    assert json.loads(cli("suppressions", "ls", "--address", "Ada@example.com", "--json").stdout) == [entry]

    again = cli("contacts", "erase", "ada@example.com", "--yes")
    assert again.stdout == ("no contact ada@example.com (nothing to remove)\n"
                            "erased the content of 0 messages sent to ada@example.com\n")  # fmt: skip
    assert "Invalid email address" in cli.fails("contacts", "erase", "not an address", "--yes", code=2)


def on_terminal(cli: Cli, *args: str, answer: str = "") -> tuple[int, str, str]:
    """Run the command with stdin and stderr on a pseudo-terminal and stdout on a pipe: (exit code,
    stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "postroom.cli", *args, "--config", str(cli.config)],
                               stdin=slave, stdout=subprocess.PIPE, stderr=slave, env=os.environ.copy())  # fmt: skip
    os.close(slave)
    if answer:
        os.write(master, answer.encode())
    shown = b""
    try:
        while select.select([master], [], [], 60)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the command exited and closed the terminal
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
    assert process.stdout is not None
    stdout = process.stdout.read().decode()
    process.stdout.close()
    return process.wait(timeout=60), stdout, shown.decode()


async def test_on_a_terminal_import_and_export_show_progress_and_erase_asks(cli: Cli, tmp_path: Path) -> None:
    source = write(tmp_path, "audience.csv", AUDIENCE)
    code, stdout, shown = on_terminal(cli, "contacts", "import", str(source), *TYPES, "--batch-size", "2")
    assert code == 0 and stdout == "created 4, updated 0, skipped 0 of 4 rows\n"
    assert "checking 4 rows" in shown and "\rimporting 4/4 rows" in shown
    code, stdout, shown = on_terminal(cli, "contacts", "import", str(source), "--json")
    assert code == 0 and json.loads(stdout)["updated"] == 4 and "rows" not in shown  # --json: no progress
    code, stdout, shown = on_terminal(cli, "contacts", "export", "--output", str(tmp_path / "out.csv"))
    assert code == 0 and "exporting 4/4 rows" in shown

    code, stdout, shown = on_terminal(cli, "contacts", "erase", "ada@example.com", answer="n\n")
    assert code == 1 and "erase ada@example.com and the content of every message sent to it?" in shown
    assert "nothing erased" in shown and "ada@example.com" in await stored(cli.db_url)
    code, stdout, shown = on_terminal(cli, "contacts", "erase", "ada@example.com", answer="y\n")
    assert code == 0 and stdout.startswith("removed the contact ada@example.com\n")
    assert "ada@example.com" not in await stored(cli.db_url)
