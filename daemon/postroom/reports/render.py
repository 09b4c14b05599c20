"""A report rendered for people: the HTML part with its charts inline by Content-ID, a text part
that carries every figure in words, and (when asked) the figures as a CSV attachment. The
templates (`subject.txt`, `report.html`, `report.txt`) go through the template engine's sandboxed
Jinja and CSS inlining; an operator overrides them with `[reports] template_dir`."""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from postroom.core.compose import Attachment
from postroom.reports import formatting
from postroom.reports.model import Figure, Report, Section, Unit
from postroom.templates.compiler import CompiledTemplate
from postroom.templates.model import TemplateSource, TemplateVersion

TEMPLATE_FILES = ("subject.txt", "report.html", "report.txt")


@dataclass(frozen=True)
class RenderedReport:
    subject: str
    html: str
    text: str
    attachments: tuple[Attachment, ...]  # inline charts (with a content_id), then the CSV if asked


def load_templates(directory: str = "") -> dict[str, str]:
    """The three templates: from `directory` where it has them, else the shipped ones."""
    shipped = resources.files("postroom.reports") / "templates"
    found = {}
    for name in TEMPLATE_FILES:
        own = Path(directory) / name if directory else None
        found[name] = own.read_text(encoding="utf-8") if own and own.is_file() else str((shipped / name).read_text("utf-8"))
    return found


def compile_templates(templates: dict[str, str], name: str) -> CompiledTemplate:
    source = TemplateSource(subject=templates["subject.txt"].strip(), html=templates["report.html"],
                            text=templates["report.txt"], stream="reports")  # fmt: skip
    return CompiledTemplate(TemplateVersion(f"report-{name}", 1, source, "postroom", 0.0))


def _value(figure: Figure, currency: str, locale: str) -> str:
    value = figure.value
    if value is None:
        return "n/a"
    if figure.unit is Unit.MONEY and isinstance(value, int):
        return formatting.money(value, currency, locale)
    if figure.unit is Unit.RATE and isinstance(value, int | float):
        return formatting.percent(Decimal(str(value)), locale, digits=2)
    if figure.unit is Unit.SECONDS and isinstance(value, int | float):
        return f"{formatting.number(Decimal(str(round(value, 1))), locale)} s"
    if figure.unit is Unit.COUNT and isinstance(value, int):
        return formatting.number(value, locale)
    return str(value)


def _tone(change: float | int | None, figure: Figure) -> str:
    if not change:
        return "flat"
    return "bad" if (change > 0) == figure.rise_is_bad else "good"


def _compare(figure: Figure, reference: float | int | None, currency: str, locale: str,
             what: str) -> tuple[str, str, str]:  # fmt: skip
    """(text with an arrow, the same in words, tone) of `figure` against a reference value (empty
    when there is nothing to compare)."""
    value = figure.value
    if reference is None or not isinstance(value, int | float) or figure.unit in (Unit.TEXT, Unit.SECONDS):
        return "", "", "flat"
    if figure.unit is Unit.RATE:
        points = (float(value) - float(reference)) * 100
        if points == 0:
            return f"= no change {what}", f"no change {what}", "flat"
        arrow, word = ("▲", "up") if points > 0 else ("▼", "down")
        return f"{arrow} {points:+.2f} pp {what}", f"{word} {abs(points):.2f} points {what}", _tone(points, figure)
    change = formatting.delta(int(value), int(round(reference)),
                              currency=currency if figure.unit is Unit.MONEY else None, locale=locale)  # fmt: skip
    return f"{change.text} {what}", f"{change.words} {what}", _tone(change.abs, figure)


def _section(section: Section, currency: str, locale: str) -> dict[str, Any]:
    figures = []
    for f in section.figures:
        delta, delta_words, tone = _compare(f, f.previous, currency, locale, "vs the previous period")
        average, average_words, _ = _compare(f, f.average, currency, locale, "vs the 4-period average")
        shown = _value(f, currency, locale)
        words = "; ".join(w for w in (delta_words, average_words) if w)
        figures.append({"label": f.label, "value": shown, "delta": delta, "tone": tone, "vs_average": average,
                        "line": f"{f.label}: {shown}" + (f" ({words})" if words else "")})  # fmt: skip
    tables = []
    for caption, table in section.tables:
        rows = []
        for row in table.rows:
            cells = []
            for i, cell in enumerate(row):
                unit = table.units[i] if i < len(table.units) else Unit.TEXT
                cells.append(_value(Figure("", "", cell, unit), currency, locale))
            rows.append(cells)
        numeric = [i for i, unit in enumerate(table.units) if unit is not Unit.TEXT]
        tables.append({"caption": caption, "columns": list(table.columns), "rows": rows, "numeric": numeric,
                       "lines": ["  " + "  ".join(row) for row in rows]})  # fmt: skip
    return {"title": section.title, "unavailable": section.unavailable, "figures": figures, "tables": tables,
            "charts": [{"cid": c.content_id, "alt": c.alt} for c in section.charts], "notes": list(section.notes)}  # fmt: skip


def figures_csv(report: Report) -> bytes:
    """Every figure, one row each: section, key, label, value (raw), previous, average, unit."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["report", "period", "section", "key", "label", "value", "previous", "average", "unit", "currency"])
    for section in report.sections:
        if not section.available:
            writer.writerow([report.name, report.period.label, section.name, "", "unavailable", section.unavailable,
                             "", "", "", ""])  # fmt: skip
            continue
        for f in section.figures:
            writer.writerow([report.name, report.period.label, section.name, f.key, f.label,
                             "" if f.value is None else f.value, "" if f.previous is None else f.previous,
                             "" if f.average is None else round(f.average, 2), f.unit.value,
                             report.currency if f.unit is Unit.MONEY else ""])  # fmt: skip
    return out.getvalue().encode("utf-8")


def render(report: Report, template: CompiledTemplate, *, with_csv: bool = False) -> RenderedReport:
    currency, locale = report.currency, report.locale
    headline = next((f for s in report.sections if s.available for f in s.figures if f.key == "mrr"), None)
    fresh = report.freshness
    data = {
        "title": report.title,
        "lang": locale.split("_")[0],
        "period_label": report.period.label,
        "period_range": formatting.date_range_label(report.period.start, report.period.end, locale),
        "headline": _value(headline, currency, locale) if headline else "",
        "sections": [_section(s, currency, locale) for s in report.sections],
        "freshness": [f"{k}: {v}" for k, v in fresh.items()],
        "policies": ", ".join(f"{k}={v}" for k, v in report.policies.items()),
        "generated_at": dt.datetime.fromtimestamp(report.generated_at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    rendered = template.render(data)
    attachments = [Attachment(f"{c.content_id.split('@')[0]}.png", c.png, "image/png", c.content_id)
                   for s in report.sections for c in s.charts]  # fmt: skip
    if with_csv:
        attachments.append(Attachment(f"{report.name}-{report.period.label}.csv", figures_csv(report), "text/csv"))
    return RenderedReport(rendered.subject, rendered.html, rendered.text, tuple(attachments))
