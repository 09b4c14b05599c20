"""Templates from Loops exports: HTML (or MJML, compiled with mrml) with `{DATA_VARIABLE:name}`
tokens becomes a template whose HTML says `{{ name }}` and whose schema lists each variable (a
required string, as Loops' data variables are). Pure: text in, a `TemplateSource` out.

Everything else in the export is kept as it is but made inert for Jinja: `{{`, `{%` and `{#` that
an export happens to contain are escaped, so the template renders what Loops would have shown.
"""

from __future__ import annotations

import html as html_lib
import re
from dataclasses import dataclass

from postroom.core.errors import TemplateError
from postroom.templates.model import TemplateSource

# Loops' data variable token; the name may arrive HTML-escaped inside attributes.
_TOKEN = re.compile(r"\{DATA_VARIABLE:\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}")
_JINJA_OPENERS = re.compile(r"(\{\{|\{%|\{#)")
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Imported:
    source: TemplateSource
    variables: tuple[str, ...]


def compile_mjml(text: str) -> str:
    import mrml  # imported here: only the MJML path needs it

    try:
        return str(mrml.to_html(text).content)
    except Exception as exc:  # mrml raises its own error types for invalid MJML
        raise TemplateError("invalid_template", [f"MJML: {exc}"]) from None


def import_loops(text: str, *, subject: str | None = None, mjml: bool = False) -> Imported:
    html = compile_mjml(text) if mjml else text
    variables: list[str] = []

    def jinja_escape(segment: str) -> str:
        return _JINJA_OPENERS.sub(lambda m: "{{ '" + m.group(1) + "' }}", segment)

    parts, position = [], 0
    for match in _TOKEN.finditer(html):
        parts.append(jinja_escape(html[position : match.start()]))
        name = match.group(1)
        if name not in variables:
            variables.append(name)
        parts.append("{{ " + name + " }}")
        position = match.end()
    parts.append(jinja_escape(html[position:]))
    title = _TITLE.search(html)
    chosen_subject = subject or (html_lib.unescape(title.group(1)).strip() if title else "")
    if not chosen_subject:
        raise TemplateError("invalid_template", ["no subject: the export has no <title>; pass one"])
    for match in _TOKEN.finditer(chosen_subject):
        if match.group(1) not in variables:
            variables.append(match.group(1))
    schema = {
        "type": "object",
        "required": variables,
        "properties": {name: {"type": "string"} for name in variables},
    }
    source = TemplateSource(subject=_TOKEN.sub(lambda m: "{{ " + m.group(1) + " }}", chosen_subject),
                            html="".join(parts), schema=schema)  # fmt: skip
    return Imported(source, tuple(variables))
