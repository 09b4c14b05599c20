"""The shipped templates render with their examples exactly as the committed golden files say,
through the real command line (`postroom templates render --bundle`), and a change shows up as a
readable diff. To accept a deliberate change: POSTROOM_UPDATE_GOLDEN=1 pytest this file, then
review `git diff tests/golden`."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from postroom.templates.bundle import read_bundle
from postroom.templates.model import TemplateKind
from tests.support import ROOT, postroom_cli

SHIPPED = ROOT / "templates"
GOLDEN = ROOT / "tests" / "golden" / "templates"
TEMPLATE_IDS = sorted(e.template_id for e in read_bundle(SHIPPED) if e.source.kind is TemplateKind.TEMPLATE)


def readable_diff(expected: str, actual: str, name: str) -> str:
    return "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                        f"golden/{name}", f"rendered/{name}"))  # fmt: skip


@pytest.mark.parametrize("template_id", TEMPLATE_IDS)
def test_shipped_templates_render_as_their_golden_files(template_id: str, tmp_path: Path) -> None:
    out = tmp_path / template_id
    postroom_cli("templates", "render", template_id, "--bundle", str(SHIPPED),
                 "--data", str(SHIPPED / template_id / "example.json"), "--out", str(out))  # fmt: skip
    for name in ("subject.txt", "body.html", "body.txt"):
        actual = (out / name).read_text()
        golden = GOLDEN / template_id / name
        if os.environ.get("POSTROOM_UPDATE_GOLDEN"):
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(actual)
        expected = golden.read_text()
        assert actual == expected, "rendered output differs from the golden file:\n" + readable_diff(expected, actual, name)


def test_a_changed_template_shows_up_as_a_readable_diff(tmp_path: Path) -> None:
    bundle = tmp_path / "templates"
    for entry in read_bundle(SHIPPED):
        (bundle / entry.directory.relative_to(SHIPPED)).mkdir(parents=True)
        for file in entry.directory.iterdir():
            (bundle / entry.directory.relative_to(SHIPPED) / file.name).write_bytes(file.read_bytes())
    html = bundle / "receipt" / "html.j2"
    html.write_text(html.read_text().replace("Thanks for your payment", "Payment received"))
    out = tmp_path / "out"
    postroom_cli("templates", "render", "receipt", "--bundle", str(bundle),
                 "--data", str(SHIPPED / "receipt" / "example.json"), "--out", str(out))  # fmt: skip
    diff = readable_diff((GOLDEN / "receipt" / "body.txt").read_text(), (out / "body.txt").read_text(), "body.txt")
    assert "-Thanks for your payment\n+Payment received\n" in diff
