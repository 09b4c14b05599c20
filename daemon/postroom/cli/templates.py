"""`postroom templates push|ls|show|render|publish|diff|pull|import-loops`: templates kept in git.

`push DIR` creates a version of each changed template below DIR (layouts and partials are
published at once; `--publish` publishes templates too) and says what changed; `render` writes
subject, HTML and text for a person or a CI to diff; `--bundle DIR` renders straight from files,
with no database, which is how a template repository's CI checks its golden files.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.cli.common import config_option, fail, run_db, settings_from, when
from postroom.core.clock import SystemClock
from postroom.core.errors import TemplateError
from postroom.templates.bundle import BundleEntry, load_bundle, read_bundle, write_entry
from postroom.templates.compiler import CompiledTemplate
from postroom.templates.loops_import import import_loops
from postroom.templates.model import Rendered, TemplateKind, TemplateVersion
from postroom.templates.service import TemplateService, diff_versions
from postroom.templates.sql_store import SqlTemplateStore


def service(engine: AsyncEngine) -> TemplateService:
    return TemplateService(SqlTemplateStore(engine), SystemClock())


def who() -> str:
    return f"cli:{os.getenv('USER', 'unknown')}"


def report_template_error(exc: TemplateError) -> None:
    for problem in exc.problems:
        click.echo(f"postroom: {problem}", err=True)
    sys.exit(1)


@click.group()
def templates() -> None:
    """Email templates: versions, publishing, rendering, import."""


@templates.command("push")
@config_option
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--publish", is_flag=True, help="Publish the new versions of templates too.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def push(ctx: click.Context, directory: Path, publish: bool, as_json: bool) -> None:
    """Create a version of every changed template below DIRECTORY (unchanged ones create nothing)."""
    settings = settings_from(ctx)
    try:
        entries, problems = load_bundle(directory)
        results = run_db(settings, lambda e: service(e).push(entries, who(), publish=publish,
                                                             known_problems=problems))  # fmt: skip
    except TemplateError as exc:
        report_template_error(exc)
    if as_json:
        click.echo(json.dumps([{"id": r.template_id, "kind": r.kind.value, "version": r.version,
                                "previous": r.previous} for r in results]))  # fmt: skip
        return
    for r in results:
        if r.version is None:
            click.echo(f"unchanged  {r.template_id} ({r.kind}, version {r.previous})")
        else:
            was = f"was {r.previous}" if r.previous else "new"
            published = " published" if publish or r.kind is not TemplateKind.TEMPLATE else " draft"
            click.echo(f"created    {r.template_id} ({r.kind}) version {r.version} ({was}),{published}")


@templates.command("ls")
@config_option
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ls(ctx: click.Context, as_json: bool) -> None:
    """Every template with its latest and published version."""
    settings = settings_from(ctx)
    found = run_db(settings, lambda e: service(e).summaries())
    if as_json:
        click.echo(json.dumps([{"id": s.template_id, "kind": s.kind.value, "published": s.published,
                                "latest": s.latest, "updated_at": s.updated_at} for s in found]))  # fmt: skip
        return
    click.echo(f"{'ID':32}  {'KIND':8}  {'PUBLISHED':>9}  {'LATEST':>6}  UPDATED (UTC)")
    for s in found:
        click.echo(f"{s.template_id:32}  {s.kind.value:8}  {s.published or '-':>9}  {s.latest:>6}  {when(s.updated_at)}")


@templates.command("show")
@config_option
@click.argument("template_id")
@click.option("--version", "version", type=int, default=None, help="Default: the published one.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, template_id: str, version: int | None, as_json: bool) -> None:
    """One version's content and the list of versions."""
    settings = settings_from(ctx)

    async def load(engine: AsyncEngine) -> tuple[TemplateVersion, list[TemplateVersion]]:
        templates_ = service(engine)
        versions = await templates_.versions(template_id)
        chosen = await templates_.get(template_id, version) if version else None
        if chosen is None:
            try:
                chosen = await templates_.get(template_id, None)
            except Exception:
                chosen = versions[-1]
        return chosen, versions

    chosen, versions = run_db(settings, load)
    source = chosen.source
    if as_json:
        from postroom.http.templates import version_json

        click.echo(json.dumps({"id": template_id, **version_json(chosen),
                               "versions": [v.version for v in versions]}, indent=2))  # fmt: skip
        return
    click.echo(f"template  {template_id} ({source.kind}), version {chosen.version} of {versions[-1].version}, "
               f"by {chosen.created_by} at {when(chosen.created_at)} UTC")  # fmt: skip
    for label, value in (("subject", source.subject), ("from", source.sender), ("layout", source.layout),
                         ("stream", source.stream), ("preheader", source.preheader)):  # fmt: skip
        if value:
            click.echo(f"{label:9} {value}")
    click.echo("\n--- html.j2\n" + source.html)
    if source.text is not None:
        click.echo("--- text.j2\n" + source.text)


@templates.command("render")
@config_option
@click.argument("template_id")
@click.option("--data", "data_file", type=click.File("r"), required=True, help="JSON data ('-' for stdin).")
@click.option("--version", "version", type=int, default=None)
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Render from this directory of template files instead of the database.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write subject.txt, body.html and body.txt here (golden files).")
@click.pass_context
def render(ctx: click.Context, template_id: str, data_file: Any, version: int | None,
           bundle: Path | None, out: Path | None) -> None:  # fmt: skip
    """Render a template with the data in a JSON file."""
    try:
        data = json.load(data_file)
    except json.JSONDecodeError as exc:
        fail(f"--data: not JSON: line {exc.lineno}: {exc.msg}", 2)
    if not isinstance(data, dict):
        fail("--data: must hold a JSON object", 2)
    try:
        if bundle is not None:
            rendered = render_bundle(read_bundle(bundle), template_id, data)
        else:
            settings = settings_from(ctx)
            rendered = run_db(settings, lambda e: service(e).render(template_id, data, version))
    except TemplateError as exc:
        report_template_error(exc)
    if out is None:
        click.echo(f"Subject: {rendered.subject}\n\n--- text\n{rendered.text}\n--- html\n{rendered.html}")
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "subject.txt").write_text(rendered.subject + "\n")
    (out / "body.html").write_text(rendered.html)
    (out / "body.txt").write_text(rendered.text)
    click.echo(f"wrote {out / 'subject.txt'}, {out / 'body.html'}, {out / 'body.txt'}")


def render_bundle(entries: list[BundleEntry], template_id: str, data: dict[str, Any]) -> Rendered:
    """Render from files: the bundle's layouts and partials, no database."""
    versions = {e.template_id: TemplateVersion(e.template_id, 0, e.source, "bundle", 0.0) for e in entries}
    chosen = versions.get(template_id)
    if chosen is None or chosen.source.kind is not TemplateKind.TEMPLATE:
        raise TemplateError("invalid_template", [f"no template {template_id!r} in the bundle"])
    partials = {i: v for i, v in versions.items() if v.source.kind is TemplateKind.PARTIAL}
    layout = versions.get(chosen.source.layout) if chosen.source.layout else None
    if chosen.source.layout and layout is None:
        raise TemplateError("invalid_template", [f"layout {chosen.source.layout!r} is not in the bundle"])
    return CompiledTemplate(chosen, layout, partials).render(data)


@templates.command("publish")
@config_option
@click.argument("template_id")
@click.argument("version", type=int)
@click.pass_context
def publish(ctx: click.Context, template_id: str, version: int) -> None:
    """Make VERSION the one sending uses."""
    settings = settings_from(ctx)
    run_db(settings, lambda e: service(e).publish(template_id, version))
    click.echo(f"published {template_id} version {version}")


@templates.command("diff")
@config_option
@click.argument("template_id")
@click.argument("first", type=int)
@click.argument("second", type=int)
@click.pass_context
def diff(ctx: click.Context, template_id: str, first: int, second: int) -> None:
    """A unified diff of two versions, field by field."""
    settings = settings_from(ctx)

    async def both(engine: AsyncEngine) -> str:
        templates_ = service(engine)
        return diff_versions(await templates_.get(template_id, first), await templates_.get(template_id, second))

    click.echo(run_db(settings, both), nl=False)


@templates.command("pull")
@config_option
@click.argument("template_id")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--version", "version", type=int, default=None, help="Default: the latest one.")
@click.pass_context
def pull(ctx: click.Context, template_id: str, directory: Path, version: int | None) -> None:
    """Write a version as files (the directory format `push` reads)."""
    settings = settings_from(ctx)

    async def load(engine: AsyncEngine) -> TemplateVersion:
        templates_ = service(engine)
        return await templates_.get(template_id, version) if version else (await templates_.versions(template_id))[-1]

    found = run_db(settings, load)
    write_entry(directory, template_id, found.source)
    click.echo(f"wrote {template_id} version {found.version} to {directory}")


@templates.command("import-loops")
@config_option
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("templates-imported"),
              show_default=True, help="Where to write the template directories (then review and push).")
@click.option("--subject", default=None, help="Subject for every file (default: its <title>).")
def import_loops_command(files: tuple[Path, ...], out: Path, subject: str | None) -> None:
    """Turn exported Loops HTML or MJML (.mjml) into template directories."""
    problems = 0
    for path in files:
        template_id = "".join(c if c.isalnum() or c in "-_" else "-" for c in path.stem.lower()).strip("-_")
        try:
            imported = import_loops(path.read_text(encoding="utf-8"), subject=subject,
                                    mjml=path.suffix.lower() == ".mjml")  # fmt: skip
        except (TemplateError, UnicodeDecodeError) as exc:
            click.echo(f"postroom: {path}: {exc}", err=True)
            problems += 1
            continue
        write_entry(out / template_id, template_id, imported.source)
        names = ", ".join(imported.variables) or "none"
        click.echo(f"imported {path} -> {out / template_id} (variables: {names})")
    if problems:
        sys.exit(1)
