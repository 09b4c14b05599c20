"""Templates as files in git: the directory format `postroom templates push|pull` reads and writes.

One directory per template, anywhere below the pushed directory, recognised by its
`template.toml`:

    welcome/
      template.toml   id (default: the directory's name), kind (template | layout | partial),
                      subject, from, reply_to, stream, layout, preheader
      html.j2         the HTML (for a layout: where the template goes is `{{ content }}`)
      text.j2         the text part (optional: derived from the HTML when absent)
      schema.json     JSON Schema of the data (optional: any object)
      example.json    example data (optional for layouts and partials): it must validate and
                      render, so CI catches a template its own example breaks

Every problem is reported with its file (and line where there is one).
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postroom.core.errors import TemplateError
from postroom.templates.model import TemplateKind, TemplateSource

MANIFEST = "template.toml"
TEMPLATE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_MANIFEST_KEYS = {"id", "kind", "subject", "from", "reply_to", "stream", "layout", "preheader"}


@dataclass(frozen=True)
class BundleEntry:
    template_id: str
    source: TemplateSource
    example: dict[str, Any] | None
    directory: Path


def valid_template_id(value: str) -> bool:
    return bool(TEMPLATE_ID.match(value))


def read_bundle(root: Path) -> list[BundleEntry]:
    """Every template below `root`, layouts and partials first (templates are checked against
    them); TemplateError listing every problem found."""
    entries, problems = load_bundle(root)
    if problems:
        raise TemplateError("invalid_template", problems)
    return entries


def load_bundle(root: Path) -> tuple[list[BundleEntry], list[str]]:
    """The templates below `root` that could be read, and the problems of those that could not
    (so a push can report every problem at once)."""
    if not root.is_dir():
        return [], [f"{root}: not a directory"]
    entries, problems = [], []
    for manifest in sorted(root.rglob(MANIFEST)):
        try:
            entries.append(read_entry(manifest.parent))
        except TemplateError as exc:
            problems.extend(exc.problems)
    seen: dict[str, Path] = {}
    for entry in entries:
        if entry.template_id in seen:
            problems.append(f"{entry.directory}: id {entry.template_id!r} is also used by {seen[entry.template_id]}")
        seen[entry.template_id] = entry.directory
    order = {TemplateKind.PARTIAL: 0, TemplateKind.LAYOUT: 1, TemplateKind.TEMPLATE: 2}
    return sorted(entries, key=lambda e: (order[e.source.kind], e.template_id)), problems


def read_entry(directory: Path) -> BundleEntry:
    manifest_path = directory / MANIFEST
    problems: list[str] = []
    try:
        manifest = tomllib.loads(manifest_path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise TemplateError("invalid_template", [f"{manifest_path}: {exc}"]) from None
    unknown = sorted(set(manifest) - _MANIFEST_KEYS)
    if unknown:
        problems.append(f"{manifest_path}: unknown keys {', '.join(unknown)}")
    template_id = str(manifest.get("id", directory.name))
    if not valid_template_id(template_id):
        problems.append(f"{manifest_path}: id {template_id!r} must be 1-64 of a-z, 0-9, '-', '_'")
    try:
        kind = TemplateKind(manifest.get("kind", "template"))
    except ValueError:
        problems.append(f"{manifest_path}: kind must be template, layout or partial")
        kind = TemplateKind.TEMPLATE
    html = _text(directory / "html.j2", problems, required=True)
    text = _text(directory / "text.j2", problems, required=False)
    schema = _json(directory / "schema.json", problems) or {}
    example = _json(directory / "example.json", problems)
    if problems:
        raise TemplateError("invalid_template", problems)
    source = TemplateSource(
        kind=kind, subject=str(manifest.get("subject", "")), html=html or "", text=text,
        preheader=manifest.get("preheader"), sender=manifest.get("from"),
        reply_to=manifest.get("reply_to"), stream=str(manifest.get("stream", "transactional")),
        layout=manifest.get("layout"), schema=schema,
    )  # fmt: skip
    if kind is TemplateKind.TEMPLATE and not source.subject:
        raise TemplateError("invalid_template", [f"{manifest_path}: a template needs a subject"])
    return BundleEntry(template_id, source, example, directory)


def _text(path: Path, problems: list[str], *, required: bool) -> str | None:
    if not path.exists():
        if required:
            problems.append(f"{path}: missing")
        return None
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        problems.append(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})")
        return None


def _json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        problems.append(f"{path}:{exc.lineno}: {exc.msg}")
        return None
    if not isinstance(value, dict):
        problems.append(f"{path}: must hold a JSON object")
        return None
    return value


def write_entry(directory: Path, template_id: str, source: TemplateSource, example: dict[str, Any] | None = None) -> None:
    """The files of one template version (`postroom templates pull`)."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {"id": template_id, "kind": source.kind.value, "subject": source.subject,
                "from": source.sender, "reply_to": source.reply_to, "stream": source.stream,
                "layout": source.layout, "preheader": source.preheader}  # fmt: skip
    lines = [f"{key} = {json.dumps(value)}" for key, value in manifest.items() if value not in (None, "")]
    (directory / MANIFEST).write_text("\n".join(lines) + "\n")
    (directory / "html.j2").write_text(source.html)
    if source.text is not None:
        (directory / "text.j2").write_text(source.text)
    if source.schema:
        (directory / "schema.json").write_text(json.dumps(source.schema, indent=2) + "\n")
    if example is not None:
        (directory / "example.json").write_text(json.dumps(example, indent=2) + "\n")
