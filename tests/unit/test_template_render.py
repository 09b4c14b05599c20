"""`templates.compiler`: rendering with data validation, escaping, layouts, partials, CSS inlining,
the text part, header checks, and the sandbox against a battery of known SSTI payloads."""

from __future__ import annotations

import time
from typing import Any

import pytest

from postroom.core.errors import TemplateError
from postroom.templates.compiler import CompiledTemplate
from postroom.templates.model import TemplateKind, TemplateSource, TemplateVersion
from postroom.templates.sandbox import RenderBudget

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "items"],
    "properties": {
        "name": {"type": "string"},
        "plan": {"type": "string", "enum": ["free", "pro"], "default": "free"},
        "email": {"type": "string", "format": "email"},
        "items": {"type": "array", "items": {
            "type": "object", "required": ["title", "price"],
            "properties": {"title": {"type": "string"}, "price": {"type": "number"}}}},
    },
}  # fmt: skip


def version(html: str, *, template_id: str = "t", subject: str = "Hi {{ name }}", **fields: Any) -> TemplateVersion:
    return TemplateVersion(template_id, 1, TemplateSource(subject=subject, html=html, **fields), "test", 0.0)


LAYOUT = TemplateVersion("base", 3, TemplateSource(
    kind=TemplateKind.LAYOUT,
    html="<html><head><style>.x{color:#123456} @media (max-width: 600px) {.x{color:red}}</style></head>"
         "<body>{{ content }}</body></html>"), "test", 0.0)  # fmt: skip
FOOTER = TemplateVersion("footer", 2, TemplateSource(kind=TemplateKind.PARTIAL, html="<p>bye {{ name }}</p>"), "test", 0.0)

RECEIPT = version(
    "<p class='x'>Hello {{ name }}, plan {{ plan }}</p><table>{% for i in items %}"
    "<tr><td>{{ i.title }}</td><td>{{ i.price }}</td></tr>{% endfor %}</table>{% include 'footer' %}",
    schema=SCHEMA, layout="base", preheader="Your receipt, {{ name }}",
)
DATA = {"name": "Ada <Lovelace>", "items": [{"title": "Pen & paper", "price": 3.5}, {"title": "Ink", "price": 2}]}


def compiled(v: TemplateVersion = RECEIPT, **kwargs: Any) -> CompiledTemplate:
    return CompiledTemplate(v, LAYOUT if v.source.layout else None, {"footer": FOOTER}, **kwargs)


def test_a_template_renders_escaped_inlined_with_its_layout_partial_and_preheader() -> None:
    rendered = compiled().render(DATA)
    assert rendered.subject == "Hi Ada <Lovelace>"  # a header is text, not HTML
    assert "Hello Ada &lt;Lovelace&gt;, plan free" in rendered.html  # escaped; the default filled in
    assert "Pen &amp; paper" in rendered.html and "<p>bye Ada &lt;Lovelace&gt;</p>" in rendered.html
    assert 'class="x" style="color: #123456;"' in rendered.html  # CSS inlined into style=
    assert "@media (max-width: 600px)" in rendered.html  # media queries kept in a <style> block
    body = rendered.html.index("<body>")
    assert rendered.html.index('aria-hidden="true">Your receipt, Ada &lt;Lovelace&gt;</div>') > body
    assert "Pen & paper" in rendered.text and "Ink" in rendered.text  # the loop's items, unescaped
    assert rendered.variables == ("items", "name", "plan")


def test_missing_and_mistyped_variables_are_named_by_path() -> None:
    with pytest.raises(TemplateError) as refused:
        compiled().render({"items": [{"title": 5}], "plan": "gold"})
    assert refused.value.code == "invalid_data"
    text = " | ".join(refused.value.problems)
    for expected in ("data: 'name' is a required property", "items.0: 'price' is a required property",
                     "items.0.title: 5 is not of type 'string'", "plan: 'gold' is not one of"):  # fmt: skip
        assert expected in text


def test_a_format_is_checked() -> None:
    with pytest.raises(TemplateError, match="email: 'not-an-address' is not a 'email'"):
        compiled().render({**DATA, "email": "not-an-address"})


@pytest.mark.parametrize("value", ["Hi\r\nBcc: evil@example.com", "a\nb", "a\x00b", "a\u2028b"])
def test_a_line_break_in_a_rendered_header_is_refused_not_stripped(value: str) -> None:
    with pytest.raises(TemplateError) as refused:
        compiled().render({**DATA, "name": value})
    assert refused.value.problems[0].startswith("subject: ")


def test_a_syntax_error_is_reported_with_its_file_and_line() -> None:
    with pytest.raises(TemplateError) as refused:
        CompiledTemplate(version("<p>\n{% if name %}\n<b>{{ name }</b>\n"))
    assert refused.value.code == "invalid_template"
    assert refused.value.problems[0].startswith("html.j2:3: ")


def test_an_include_of_an_unknown_partial_is_a_compile_error() -> None:
    with pytest.raises(TemplateError, match="not a partial"):
        CompiledTemplate(version("{% include 'nope' %}"))


def test_the_text_part_is_derived_from_the_html_when_there_is_none() -> None:
    rendered = CompiledTemplate(version('<h1>Hi {{ name }}</h1><p>See <a href="{{ url }}">your account</a>.</p>'
                                        "<ul>{% for x in xs %}<li>{{ x }}</li>{% endfor %}</ul>")).render(
        {"name": "Ada", "url": "https://example.com/a", "xs": ["one", "two"]})  # fmt: skip
    assert "Hi Ada" in rendered.text
    assert "[your account](https://example.com/a)" in rendered.text
    assert "* one" in rendered.text and "* two" in rendered.text


# -- the sandbox --------------------------------------------------------------------------------

SSTI = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__init__.__globals__ }}",
    "{{ config }}",
    "{{ request }}",
    "{{ lipsum.__globals__ }}",
    "{{ range.__globals__ }}",
    "{{ ''['__cl' ~ 'ass__'] }}",
    "{{ ''|attr('__class__') }}",
    "{{ (''|attr('__class__')|attr('__mro__'))[1] }}",
    "{{ name.__class__.__base__.__subclasses__() }}",
    "{{ items.append(1) }}",
    "{{ items.pop() }}",
    "{% set x = items.clear() %}",
    "{{ ().__class__.__bases__[0].__subclasses__() }}",
    "{{ [].__class__.__base__ }}",
    "{{ name.format.__globals__ }}",
    "{{ '{0.__class__}'.format(name) }}",
    "{{ dict.__init__ }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}",
    "{{ range(10**9)|list }}",
    "{{ 'x' * 10**9 }}",
    "{{ 9**9**9 }}",
    "{{ 'x'|center(1000000000) }}",
    "{{ 'x'.ljust(1000000000) }}",
    "{{ '%1000000000d' % 1 }}",
    "{{ '{:>1000000000}'.format(1) }}",
    "{{ ('a' * 100000).replace('a', 'b' * 100000) }}",
    "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}",
    "{% for a in range(10000) %}{% for b in range(10000) %}x{% endfor %}{% endfor %}",
    "{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}",
]  # fmt: skip
SECRETS = ("root:", "<class", "__globals__", "os.", "uid=", "function", "subclass")


@pytest.mark.parametrize("payload", SSTI)
def test_known_ssti_payloads_are_refused_or_harmless(payload: str) -> None:
    started = time.monotonic()
    try:
        template = CompiledTemplate(version(payload, subject="s"), budget=RenderBudget(seconds=0.5))
        rendered = template.render({"name": "n", "items": ["a", "b"]})
    except TemplateError as refused:
        assert refused.code in ("invalid_template", "render_failed", "invalid_data"), refused
    else:
        assert not any(secret in rendered.html for secret in SECRETS), rendered.html[:200]
        assert len(rendered.html) < 3 * 1024 * 1024
    assert time.monotonic() - started < 3.0  # stopped by the budget, not waited for
