"""`postroom templates ...` against a real database: push (new versions only for what changed),
refusal with file and line, publish, render from the database, diff, pull, import from Loops."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.integration.test_cli import Cli, cli  # noqa: F401  (the fixture)
from tests.support import ROOT

SHIPPED = ROOT / "templates"


def copy_shipped(tmp_path: Path) -> Path:
    target = tmp_path / "templates"
    shutil.copytree(SHIPPED, target)
    return target


def test_push_creates_versions_for_changes_only_and_publishes_layouts(cli: Cli, tmp_path: Path) -> None:  # noqa: F811
    bundle = copy_shipped(tmp_path)
    first = {r["id"]: r for r in json.loads(cli("templates", "push", str(bundle), "--json").stdout)}
    assert {i: (r["version"], r["previous"]) for i, r in first.items()} == {
        "footer": (1, None), "base": (1, None), "password-reset": (1, None), "receipt": (1, None), "welcome": (1, None)}
    again = cli("templates", "push", str(bundle)).stdout
    assert again.count("unchanged") == 5

    (bundle / "welcome" / "html.j2").write_text((bundle / "welcome" / "html.j2").read_text().replace("Welcome,", "Hello,"))
    changed = cli("templates", "push", str(bundle)).stdout
    assert "created    welcome (template) version 2 (was 1), draft" in changed
    assert changed.count("unchanged") == 4

    listing = {t["id"]: t for t in json.loads(cli("templates", "ls", "--json").stdout)}
    assert (listing["base"]["published"], listing["welcome"]["published"], listing["welcome"]["latest"]) == (1, None, 2)
    cli("templates", "publish", "welcome", "2")
    out = tmp_path / "rendered"
    cli("templates", "render", "welcome", "--data", str(SHIPPED / "welcome" / "example.json"), "--out", str(out))
    assert (out / "subject.txt").read_text() == "Welcome to Acme Analytics, Ada\n"
    assert "Hello, Ada!" in (out / "body.html").read_text()

    diff = cli("templates", "diff", "welcome", "1", "2").stdout
    assert "-<h1>Welcome, {{ first_name }}!</h1>\n+<h1>Hello, {{ first_name }}!</h1>" in diff
    pulled = tmp_path / "pulled"
    cli("templates", "pull", "welcome", str(pulled / "welcome"))
    assert (pulled / "welcome" / "html.j2").read_text() == (bundle / "welcome" / "html.j2").read_text()


def test_a_syntax_error_or_a_broken_example_is_refused_at_push_with_file_and_line(cli: Cli, tmp_path: Path) -> None:  # noqa: F811
    bundle = copy_shipped(tmp_path)
    (bundle / "receipt" / "html.j2").write_text("<h1>Receipt</h1>\n<p>{{ total }</p>\n")
    (bundle / "welcome" / "example.json").write_text('{"first_name": "Ada"}')
    (bundle / "password-reset" / "schema.json").write_text('{"type": "object",\n  "required": [}\n')
    stderr = cli.fails("templates", "push", str(bundle))
    assert f"{bundle / 'receipt'}: html.j2:2: unexpected '}}'" in stderr
    assert f"{bundle / 'welcome'}: data: 'product' is a required property" in stderr
    assert f"{bundle / 'password-reset' / 'schema.json'}:2: Expecting value" in stderr
    assert json.loads(cli("templates", "ls", "--json").stdout) == []  # nothing stored


def test_import_loops_html_and_mjml(cli: Cli, tmp_path: Path) -> None:  # noqa: F811
    html = tmp_path / "Order Shipped.html"
    html.write_text("<html><head><title>Your order {DATA_VARIABLE:orderId} shipped</title></head>"
                    "<body><p>Hi {DATA_VARIABLE:firstName}, track it <a href='{DATA_VARIABLE:trackingUrl}'>here</a>."
                    " {{ not jinja }}</p></body></html>")  # fmt: skip
    mjml = tmp_path / "welcome.mjml"
    mjml.write_text("<mjml><mj-body><mj-section><mj-column><mj-text>Welcome {DATA_VARIABLE:name}</mj-text>"
                    "</mj-column></mj-section></mj-body></mjml>")  # fmt: skip
    out = tmp_path / "imported"
    result = cli("templates", "import-loops", str(html), str(mjml), "--out", str(out), "--subject", "Hi")
    assert "(variables: orderId, firstName, trackingUrl)" in result.stdout and "(variables: name)" in result.stdout
    schema = json.loads((out / "order-shipped" / "schema.json").read_text())
    assert schema["required"] == ["orderId", "firstName", "trackingUrl"]
    assert 'subject = "Hi"' in (out / "order-shipped" / "template.toml").read_text()
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"orderId": "A1", "firstName": "Ada", "trackingUrl": "https://t.example/1"}))
    rendered = cli("templates", "render", "order-shipped", "--bundle", str(out), "--data", str(data)).stdout
    assert "Hi Ada, track it" in rendered and "https://t.example/1" in rendered
    assert "{{ not jinja }}" in rendered  # the export's own braces stay text
