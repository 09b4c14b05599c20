"""`postroom bounces parse FILE...` in a subprocess: one JSON line per readable file in the DESIGN
contract's shape, unreadable files on stderr and exit code 1 after the others are printed."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import postroom_cli

BOUNCE = (
    "From: MAILER-DAEMON@mx.example.org\nTo: sender@example.com\nSubject: failure notice\n\n"
    "Hi. This is the qmail-send program at mx.example.org.\n"
    "I'm afraid I wasn't able to deliver your message to the following addresses.\n\n"
    "<gone@example.net>:\n192.0.2.1 does not like recipient.\n"
    "Remote host said: 550 5.1.1 <gone@example.net>... User unknown\n\n"
    "--- Below this line is a copy of the message.\n\nFrom: sender@example.com\n"
)
RECIPIENT_KEYS = {"recipient", "reason", "bounce_class", "status", "replycode", "feedbacktype", "diagnosticcode"}


def test_parse_prints_one_line_per_file_and_fails_at_the_end_for_unreadable_ones(tmp_path: Path) -> None:
    bounce = tmp_path / "bounce.eml"
    bounce.write_text(BOUNCE)
    letter = tmp_path / "letter.eml"
    letter.write_text("From: friend@example.org\nSubject: lunch\n\nnoon?\n")
    missing = tmp_path / "missing.eml"

    result = postroom_cli("bounces", "parse", str(bounce), str(missing), str(letter), check=False)

    assert result.returncode == 1
    assert "missing.eml" in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(bounce), str(letter)]
    assert all(set(line) == {"file", "recipients"} for line in lines)
    (recipient,) = lines[0]["recipients"]
    assert set(recipient) == RECIPIENT_KEYS
    assert (recipient["recipient"], recipient["reason"], recipient["bounce_class"], recipient["status"],
            recipient["replycode"]) == ("gone@example.net", "userunknown", "hard", "5.1.1", 550)  # fmt: skip
    assert lines[1]["recipients"] == []


def test_parse_exits_0_when_every_file_was_read(tmp_path: Path) -> None:
    bounce = tmp_path / "bounce.eml"
    bounce.write_text(BOUNCE)
    result = postroom_cli("bounces", "parse", "--config", str(tmp_path / "unused.toml"), str(bounce))
    assert result.returncode == 0 and result.stderr == ""
    assert len(result.stdout.splitlines()) == 1
