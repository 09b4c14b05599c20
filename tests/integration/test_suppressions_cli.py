"""`postroom suppressions` as an operator runs it, on both databases: import of a Loops-style
export (bad rows named by line), add, ls, export round trip, erase, rm, and `postroom send`
reporting a suppressed recipient as a `suppressed` delivery."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tests.integration.test_cli import Cli, cli  # noqa: F401  (the fixture)


def test_import_export_erase_and_remove(cli: Cli, tmp_path: Path) -> None:
    loops_export = tmp_path / "loops.csv"
    loops_export.write_text("\ufeffEmail Address,Reason,Suppressed At\nAda@Example.com,hardBounce,2025-01-02\n"
                            "not an address,spam,2025-01-02\n\nbob@example.com,,\n")  # fmt: skip
    result = json.loads(cli("suppressions", "import", str(loops_export), "--json").stdout)
    assert (result["read"], result["written"]) == (2, 2)
    assert result["problems"] == [{"line": 3, "reason": "'not an address' is not an email address"}]

    cli("suppressions", "add", "carol@example.com", "--scope", "newsletter", "--reason", "asked by phone")
    listed = json.loads(cli("suppressions", "ls", "--json").stdout)
    assert [(e["address"], e["scope"], e["source"], e["reason"]) for e in listed] == [
        ("Ada@Example.com", "global", "import", "hardBounce"),
        ("bob@example.com", "global", "import", "imported"),
        ("carol@example.com", "stream:newsletter", "manual", "asked by phone"),
    ]

    exported = cli("suppressions", "export").stdout
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert list(rows[0]) == ["email", "scope", "reason", "source", "created_at", "expires_at"]
    assert [r["email"] for r in rows] == ["Ada@Example.com", "bob@example.com", "carol@example.com"]
    assert rows[0]["created_at"].endswith("Z") and rows[0]["expires_at"] == ""
    # Our own export imports again as it is (no change: same entries, same scopes).
    again = tmp_path / "ours.csv"
    again.write_text(exported)
    assert json.loads(cli("suppressions", "import", str(again), "--json").stdout)["problems"] == []
    assert len(json.loads(cli("suppressions", "ls", "--json").stdout)) == 3

    assert json.loads(cli("suppressions", "erase", "ADA@example.com", "--json").stdout) == {"erased": 1}
    [erased] = json.loads(cli("suppressions", "ls", "--address", "ada@example.com", "--json").stdout)
    assert erased["address"] is None and erased["erased"] is True
    assert "(erased)" in cli("suppressions", "export").stdout

    # A message to suppressed and free recipients: the suppressed one is recorded, never sent.
    message_id = cli.send("bob@example.com", "dave@example.com")
    detail = cli.show(message_id)
    states = {d["recipient"]: d["state"] for d in detail["deliveries"]}  # type: ignore[attr-defined]
    assert states == {"bob@example.com": "suppressed", "dave@example.com": "queued"}

    assert "removed 1" in cli("suppressions", "rm", "bob@example.com").stdout
    assert "not suppressed" in cli.fails("suppressions", "rm", "bob@example.com")
    assert "scope" in cli.fails("suppressions", "add", "x@example.com", "--scope", "stream:", code=2)
