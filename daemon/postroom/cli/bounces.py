"""`postroom bounces parse FILE...`: read returned messages and print what each says.

One JSON object per file, one line each, in the order given (the DESIGN contract):
`{"file", "recipients": [{"recipient", "reason", "bounce_class", "status", "replycode",
"feedbacktype", "diagnosticcode"}]}`. A file that cannot be read is reported on stderr and the
command exits 1 after printing the others. Parsing is a pure function of the bytes: the command
takes `--config` like every other but reads neither the configuration nor the database.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from postroom.bounces.model import ParsedBounce
from postroom.bounces.parser import parse_bounce
from postroom.cli.common import config_option


def bounce_json(file: str, parsed: ParsedBounce) -> dict[str, Any]:
    """The JSON object `bounces parse` prints for one file."""
    return {
        "file": file,
        "recipients": [
            {
                "recipient": r.address,
                "reason": r.reason,
                "bounce_class": r.bounce_class.value,
                "status": r.status,
                "replycode": r.reply_code,
                "feedbacktype": r.feedback_type,
                "diagnosticcode": r.diagnostic,
            }
            for r in parsed.recipients
        ],
    }


@click.group()
def bounces() -> None:
    """Bounces, feedback reports and auto-replies."""


@bounces.command("parse")
@config_option
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def parse(files: tuple[Path, ...]) -> None:
    """Parse each FILE (one message, as received) and print one JSON line per file."""
    unreadable = 0
    for path in files:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            click.echo(f"postroom: cannot read {path}: {exc.strerror or exc}", err=True)
            unreadable += 1
            continue
        click.echo(json.dumps(bounce_json(str(path), parse_bounce(raw)), ensure_ascii=False))
    if unreadable:
        raise SystemExit(1)
