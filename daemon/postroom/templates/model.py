"""Plain values of the template domain."""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any


class TemplateKind(enum.StrEnum):
    TEMPLATE = "template"  # a message: subject, HTML, text, From...
    LAYOUT = "layout"  # wraps a template's HTML: `{{ content }}` marks where
    PARTIAL = "partial"  # a piece of HTML templates include: `{% include "footer" %}`


@dataclass(frozen=True)
class TemplateSource:
    """What one version of a template says; immutable once stored."""

    kind: TemplateKind = TemplateKind.TEMPLATE
    subject: str = ""
    html: str = ""
    text: str | None = None  # None: derived from the HTML
    preheader: str | None = None  # the inbox preview line, a hidden first element
    sender: str | None = None  # the From field; None: the message's own
    reply_to: str | None = None
    stream: str = "transactional"
    layout: str | None = None  # the id of the layout it goes in
    schema: dict[str, Any] = field(default_factory=dict)  # JSON Schema of its data

    def digest(self) -> str:
        """A hash of the content: pushing an unchanged template creates no version."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class TemplateVersion:
    template_id: str
    version: int
    source: TemplateSource
    created_by: str
    created_at: float


@dataclass(frozen=True)
class TemplateSummary:
    template_id: str
    kind: TemplateKind
    published: int | None
    latest: int
    updated_at: float


@dataclass(frozen=True)
class Rendered:
    template_id: str
    version: int
    subject: str
    html: str
    text: str
    sender: str | None
    reply_to: str | None
    stream: str
    variables: tuple[str, ...]  # the data variables the template uses
