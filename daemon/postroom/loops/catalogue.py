"""`TransactionalCatalogue`: transactional emails as the Loops API shows them, mapped onto templates.

A transactional email is a template. Its Loops id is, in order: the id `[loops.templates]` maps the
template to (so an application keeps sending the transactionalId it has), the id it was created
with through this API, or the template's own id. Its draft is the template's newest version when
that is not the published one; publishing it publishes that version. Names and ids are read again
at most every `ttl` seconds, so a send costs no extra query.
"""

from __future__ import annotations

import base64
import datetime
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from postroom.core.clock import Clock
from postroom.core.errors import NotFoundError
from postroom.loops.errors import LoopsError
from postroom.loops.sql_store import TransactionalName
from postroom.templates.model import TemplateKind, TemplateSource, TemplateSummary
from postroom.templates.service import TemplateService

PER_PAGE_MIN, PER_PAGE_MAX = 10, 50


class TransactionalNames(Protocol):
    async def all(self) -> list[TransactionalName]: ...
    async def add(self, name: TransactionalName) -> None: ...
    async def rename(self, transactional_id: str, *, name: str | None, group_id: str | None, now: float) -> None: ...


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    total: int
    per_page: int
    next_cursor: str | None


def iso(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, tz=datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def slug(name: str) -> str:
    cleaned = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:56]
    return cleaned or "transactional"


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise LoopsError(400, "Invalid cursor.", "cursor") from None


class TransactionalCatalogue:
    def __init__(self, templates: TemplateService, names: TransactionalNames, mapping: Mapping[str, str],
                 clock: Clock, base_url: str = "", ttl: float = 5.0):  # fmt: skip
        self._templates = templates
        self._names = names
        self._mapping = dict(mapping)  # template id -> Loops id, from config
        self._clock = clock
        self._base_url = base_url.rstrip("/")
        self._ttl = ttl
        self._loaded: tuple[float, dict[str, TransactionalName], dict[str, TransactionalName]] | None = None

    async def template_of(self, transactional_id: str) -> str:
        """The template a Loops id names (its own id when nothing maps it)."""
        for template_id, mapped in self._mapping.items():
            if mapped == transactional_id:
                return template_id
        by_id, _ = await self._known()
        named = by_id.get(transactional_id)
        return named.template_id if named else transactional_id

    async def loops_id(self, template_id: str) -> str:
        if template_id in self._mapping:
            return self._mapping[template_id]
        _, by_template = await self._known()
        named = by_template.get(template_id)
        return named.id if named else template_id

    async def page(self, per_page: int, cursor: str | None) -> Page:
        if not PER_PAGE_MIN <= per_page <= PER_PAGE_MAX:
            raise LoopsError(400, f"perPage must be between {PER_PAGE_MIN} and {PER_PAGE_MAX}.", "perPage")
        summaries = [s for s in await self._templates.summaries() if s.kind is TemplateKind.TEMPLATE]
        entries = sorted([(await self.loops_id(s.template_id), s) for s in summaries], key=lambda e: e[0])
        after = decode_cursor(cursor) if cursor else None
        remaining = [e for e in entries if after is None or e[0] > after]
        chosen = remaining[:per_page]
        items = [await self._resource(loops_id, summary) for loops_id, summary in chosen]
        more = len(remaining) > per_page
        return Page(items, len(entries), per_page, encode_cursor(chosen[-1][0]) if more and chosen else None)

    async def get(self, transactional_id: str) -> dict[str, Any]:
        return await self._resource(transactional_id, await self._summary(transactional_id))

    async def create(self, name: Any, group_id: Any, created_by: str) -> dict[str, Any]:
        if not isinstance(name, str) or not name.strip() or len(name) > 255:
            raise LoopsError(400, "name is required (at most 255 characters).", "name")
        group = self._group(group_id)
        existing = {s.template_id for s in await self._templates.summaries()}
        template_id, n = slug(name), 1
        while template_id in existing:
            n += 1
            template_id = f"{slug(name)[:56]}-{n}"
        source = TemplateSource(subject=name.strip(), html="<p></p>")
        await self._templates.create(template_id, source, created_by)
        now = self._clock.now()
        await self._names.add(TransactionalName(template_id, template_id, name.strip(), group, now, now))
        self._loaded = None
        return await self.draft(template_id, created_by)

    async def update(self, transactional_id: str, name: Any, group_id: Any) -> dict[str, Any]:
        if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > 255):
            raise LoopsError(400, "name must be a non-empty string (at most 255 characters).", "name")
        group = self._group(group_id)
        summary = await self._summary(transactional_id)
        by_id, by_template = await self._known()
        now = self._clock.now()
        if summary.template_id in by_template:
            await self._names.rename(by_template[summary.template_id].id, name=name, group_id=group, now=now)
        else:
            await self._names.add(TransactionalName(transactional_id, summary.template_id, name or summary.template_id,
                                                    group, now, now))  # fmt: skip
        self._loaded = None
        return await self.get(transactional_id)

    async def draft(self, transactional_id: str, created_by: str) -> dict[str, Any]:
        """Make sure there is a draft (a version newer than the published one) and show it."""
        summary = await self._summary(transactional_id)
        if summary.published is not None and summary.latest == summary.published:
            current = await self._templates.get(summary.template_id, summary.latest)
            await self._templates.create(summary.template_id, current.source, created_by)
            summary = await self._summary(transactional_id)
        resource = await self._resource(transactional_id, summary)
        resource["draftEmailMessageContentRevisionId"] = resource["draftEmailMessageId"]
        return resource

    async def publish(self, transactional_id: str) -> dict[str, Any]:
        summary = await self._summary(transactional_id)
        if summary.published == summary.latest:
            raise LoopsError(400, "This transactional email has no draft to publish.", "transactionalId")
        await self._templates.publish(summary.template_id, summary.latest)
        return await self.get(transactional_id)

    async def _summary(self, transactional_id: str) -> TemplateSummary:
        template_id = await self.template_of(transactional_id)
        for summary in await self._templates.summaries():
            if summary.template_id == template_id and summary.kind is TemplateKind.TEMPLATE:
                return summary
        raise LoopsError(404, "Transactional email not found.", "transactionalId")

    async def _resource(self, transactional_id: str, summary: TemplateSummary) -> dict[str, Any]:
        versions = await self._templates.versions(summary.template_id)
        newest = versions[-1]
        _, by_template = await self._known()
        named = by_template.get(summary.template_id)
        draft = newest.version if newest.version != summary.published else None
        shown = next((v for v in versions if v.version == summary.published), newest)
        return {
            "id": transactional_id,
            "url": f"{self._base_url}/v1/templates/{summary.template_id}" if self._base_url else "",
            "name": named.name if named else summary.template_id,
            "draftEmailMessageId": f"{summary.template_id}@{draft}" if draft else None,
            "publishedEmailMessageId": f"{summary.template_id}@{summary.published}" if summary.published else None,
            "transactionalGroupId": named.group_id if named else None,
            "createdAt": iso(versions[0].created_at),
            "updatedAt": iso(summary.updated_at),
            "lastUpdated": iso(summary.updated_at),
            "dataVariables": list(await self._templates.variables(shown)),
        }

    @staticmethod
    def _group(group_id: Any) -> str | None:
        if group_id is None:
            return None
        if not isinstance(group_id, str) or not group_id or len(group_id) > 64:
            raise LoopsError(400, "transactionalGroupId must be a string.", "transactionalGroupId")
        return group_id

    async def _known(self) -> tuple[dict[str, TransactionalName], dict[str, TransactionalName]]:
        now = time.monotonic()
        if self._loaded is None or now - self._loaded[0] > self._ttl:
            names = await self._names.all()
            self._loaded = (now, {n.id: n for n in names}, {n.template_id: n for n in names})
        return self._loaded[1], self._loaded[2]


def unknown_template(exc: NotFoundError) -> LoopsError:
    return LoopsError(404, "Transactional email not found.", "transactionalId")
