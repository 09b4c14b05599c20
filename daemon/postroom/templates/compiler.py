"""A template version compiled with its layout and partials, and rendering it. Pure and CPU-bound:
the service runs `render` in a thread and keeps one `CompiledTemplate` per version.

Rendering: the data is validated against the version's schema (defaults filled in); the subject,
From and Reply-To render without escaping and are refused if the result holds CR, LF, NUL or any
other line break (header injection is refused, never stripped); the HTML renders with autoescape
(`<` in data becomes `&lt;`), goes into the layout where it says `{{ content }}`, gets the
preheader as a hidden first element, and has its CSS inlined by css-inline (`@media` rules kept
in a `<style>` block, nothing fetched). The text part renders from the version's text template or,
when it has none, from a text template derived once from its HTML with inscriptis (links kept as
`[text](url)`, lists and tables readable): converting each rendered message instead would cost
~4 ms a message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import css_inline
import jinja2
from inscriptis import get_text
from inscriptis.model.config import ParserConfig
from jinja2 import meta
from markupsafe import Markup

from postroom.core.compose import check_header_value
from postroom.core.errors import InvalidMessageError, TemplateError
from postroom.templates.model import Rendered, TemplateVersion
from postroom.templates.sandbox import BudgetExceeded, GuardedEnvironment, RenderBudget, budgeted
from postroom.templates.validation import DataValidator

# Names the layout and the renderer give values to; never data variables.
RESERVED = frozenset({"content", "preheader"})
_BODY = re.compile(r"<body\b[^>]*>", re.IGNORECASE)
_TEXT_CONFIG = ParserConfig(display_links=True)
_INLINER = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False, keep_style_tags=False)


# Table markup becomes plain blocks before the conversion: an HTML parser moves text that stands
# between table tags (a `{% for %}` around rows) out of the table ("foster parenting"), which would
# tear a loop apart. Rows become lines, cells are separated by two spaces.
_TABLE_TAGS = [
    (re.compile(r"<(table|thead|tbody|tfoot|tr)\b[^>]*>", re.IGNORECASE), "<div>"),
    (re.compile(r"</(table|thead|tbody|tfoot|tr)\s*>", re.IGNORECASE), "</div>"),
    (re.compile(r"<t[dh]\b[^>]*>", re.IGNORECASE), "<span>"),
    (re.compile(r"</t[dh]\s*>", re.IGNORECASE), "</span><span>  </span>"),
    # An ordered list's items usually come from a loop over one <li>: numbered once, they would
    # all say "1."; bullets stay true.
    (re.compile(r"<ol\b[^>]*>", re.IGNORECASE), "<ul>"),
    (re.compile(r"</ol\s*>", re.IGNORECASE), "</ul>"),
]


def derive_text(html: str) -> str:
    """A text template from an HTML template: its Jinja tags are plain text to the converter, so
    they survive where they stand; block structure becomes lines, links `[text](url)`."""
    for pattern, replacement in _TABLE_TAGS:
        html = pattern.sub(replacement, html)
    return str(get_text(html, _TEXT_CONFIG)).strip() + "\n"


def hidden_preheader(text: str) -> str:
    return (
        '<div style="display:none;font-size:1px;line-height:1px;max-height:0;max-width:0;'
        f'opacity:0;overflow:hidden;mso-hide:all" aria-hidden="true">{Markup.escape(text)}</div>'
    )


class _Sources(jinja2.BaseLoader):
    """Every source of one compiled template by name: its parts and the partials it may include.
    No file system: a name that is not here is an error."""

    def __init__(self, sources: Mapping[str, str]):
        self._sources = dict(sources)

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, None]:
        if template not in self._sources:
            raise jinja2.TemplateNotFound(template)
        return self._sources[template], template, None


class CompiledTemplate:
    def __init__(
        self,
        version: TemplateVersion,
        layout: TemplateVersion | None = None,
        partials: Mapping[str, TemplateVersion] | None = None,
        budget: RenderBudget | None = None,
    ):
        source = version.source
        self.version = version
        self.layout = layout
        self._budget = budget or RenderBudget()
        self._validator = DataValidator(source.schema)
        parts = {
            "subject": source.subject,
            "html.j2": source.html,
            "text.j2": source.text if source.text is not None else derive_text(source.html),
            "preheader": source.preheader or "",
            "from": source.sender or "",
            "reply_to": source.reply_to or "",
        }
        if layout is not None:
            parts["layout.html.j2"] = layout.source.html
            parts["layout.text.j2"] = (
                layout.source.text if layout.source.text is not None else derive_text(layout.source.html)
            )
        included = {name: p.source.html for name, p in (partials or {}).items()}
        html_env = GuardedEnvironment(autoescape=True)
        text_env = GuardedEnvironment(autoescape=False)
        html_env.loader = _Sources({**parts, **included})
        text_env.loader = _Sources({**parts, **{n: derive_text(h) for n, h in included.items()}})
        problems: list[str] = []
        self._html = self._compile(html_env, "html.j2", problems)
        self._layout_html = self._compile(html_env, "layout.html.j2", problems) if layout else None
        self._texts = {name: self._compile(text_env, name, problems) for name in
                       ("subject", "text.j2", "preheader", "from", "reply_to")}  # fmt: skip
        self._layout_text = self._compile(text_env, "layout.text.j2", problems) if layout else None
        for name, text in {**parts, **included}.items():
            for referenced in meta.find_referenced_templates(html_env.parse(text)) if not problems else ():
                if referenced is None:
                    problems.append(f"{name}: an include must name its partial as a string literal")
                elif referenced not in included:
                    problems.append(f"{name}: includes {referenced!r}, which is not a partial")
        if problems:
            raise TemplateError("invalid_template", problems)
        self.variables = tuple(sorted(self._variables(html_env, parts, included) - RESERVED))

    @staticmethod
    def _compile(env: jinja2.Environment, name: str, problems: list[str]) -> jinja2.Template:
        try:
            return env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            problems.append(f"{exc.name or name}:{exc.lineno}: {exc.message}")
        except jinja2.TemplateNotFound as exc:
            problems.append(f"{name}: includes {exc.name!r}, which is not a partial")
        return env.from_string("")

    @staticmethod
    def _variables(env: jinja2.Environment, parts: Mapping[str, str], included: Mapping[str, str]) -> set[str]:
        found: set[str] = set()
        for text in (*parts.values(), *included.values()):
            found |= meta.find_undeclared_variables(env.parse(text))
        return found

    def render(self, data: Mapping[str, Any]) -> Rendered:
        """The message this version makes of `data`; TemplateError names what is wrong."""
        values = self._validator.validate(dict(data))
        source = self.version.source
        try:
            with budgeted(self._budget):
                subject = self._header("subject", values)
                sender = self._header("from", values) or None
                reply_to = self._header("reply_to", values) or None
                preheader = self._texts["preheader"].render(values).strip()
                content = self._html.render(values)
                text = self._texts["text.j2"].render(values)
                if self._layout_html is not None and self._layout_text is not None:
                    content = self._layout_html.render({**values, "content": Markup(content), "preheader": preheader})
                    text = self._layout_text.render({**values, "content": text, "preheader": preheader})
        except TemplateError:
            raise
        except jinja2.UndefinedError as exc:
            raise TemplateError("invalid_data", [f"data: {exc.message}"]) from None
        except BudgetExceeded as exc:
            raise TemplateError("render_failed", [f"render stopped: {exc}"]) from None
        except jinja2.TemplateError as exc:  # SecurityError and other refusals of the sandbox
            raise TemplateError("render_failed", [f"render refused: {exc}"]) from None
        except (ArithmeticError, TypeError, ValueError, LookupError, RecursionError) as exc:
            raise TemplateError("render_failed", [f"render failed: {type(exc).__name__}: {exc}"]) from None
        produced = len(subject) + len(content) + len(text)
        if produced > self._budget.max_output:
            raise TemplateError("render_failed", [f"render stopped: it produced {produced} characters, "
                                                  f"more than {self._budget.max_output}"])  # fmt: skip
        if preheader:
            content = self._with_preheader(content, preheader)
        html = _INLINER.inline(content)
        return Rendered(
            template_id=self.version.template_id, version=self.version.version, subject=subject,
            html=html, text=text, sender=sender, reply_to=reply_to, stream=source.stream,
            variables=self.variables,
        )  # fmt: skip

    def _header(self, part: str, values: Mapping[str, Any]) -> str:
        rendered = self._texts[part].render(values).strip()
        try:
            check_header_value(part, rendered)
        except InvalidMessageError as exc:
            raise TemplateError("invalid_data", [f"{part}: {exc} (refused, not stripped)"]) from None
        return rendered

    @staticmethod
    def _with_preheader(html: str, preheader: str) -> str:
        block = hidden_preheader(preheader)
        body = _BODY.search(html)
        return html[: body.end()] + block + html[body.end() :] if body else block + html
