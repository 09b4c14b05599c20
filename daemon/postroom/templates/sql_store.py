"""`SqlTemplateStore`: template versions in the database (`templates`, `template_versions`).

A version's content is one JSON document (the `TemplateSource`), never updated; `templates` holds
each template's kind and published pointer. A new version takes the next number in the same
transaction that reads the current one; on PostgreSQL the template row is locked for it, so two
pushes of one template at once get consecutive numbers rather than a conflict.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from postroom.core.errors import NotFoundError
from postroom.store.engine import read_only, translate_errors
from postroom.store.tables import template_versions, templates
from postroom.templates.model import TemplateKind, TemplateSource, TemplateSummary, TemplateVersion


def _source(document: dict[str, Any]) -> TemplateSource:
    return TemplateSource(**{**document, "kind": TemplateKind(document.get("kind", "template"))})


def _version(row: Any) -> TemplateVersion:
    return TemplateVersion(row.template_id, int(row.version), _source(row.source), row.created_by, float(row.created_at))


class SqlTemplateStore:
    def __init__(self, engine: AsyncEngine):
        self._engine = engine
        self._reads = read_only(engine)

    async def add_version(self, template_id: str, source: TemplateSource, created_by: str, now: float) -> TemplateVersion:
        with translate_errors("storing a template version"):
            async with self._engine.begin() as conn:
                row = (await conn.execute(
                    sa.select(templates.c.id).where(templates.c.id == template_id).with_for_update()
                )).first()  # fmt: skip
                if row is None:
                    await conn.execute(templates.insert().values(
                        id=template_id, kind=source.kind.value, published_version=None,
                        created_at=now, updated_at=now))  # fmt: skip
                latest = await conn.scalar(
                    sa.select(sa.func.max(template_versions.c.version)).where(template_versions.c.template_id == template_id)
                )
                version = int(latest or 0) + 1
                await conn.execute(template_versions.insert().values(
                    template_id=template_id, version=version, source=_document(source),
                    digest=source.digest(), created_by=created_by, created_at=now))  # fmt: skip
                await conn.execute(templates.update().where(templates.c.id == template_id).values(updated_at=now))
        return TemplateVersion(template_id, version, source, created_by, now)

    async def get(self, template_id: str, version: int | None = None) -> TemplateVersion:
        with translate_errors("reading a template"):
            async with self._reads.connect() as conn:
                if version is None:
                    version = await conn.scalar(
                        sa.select(templates.c.published_version).where(templates.c.id == template_id)
                    )
                    if version is None:
                        exists = await conn.scalar(sa.select(templates.c.id).where(templates.c.id == template_id))
                        raise NotFoundError(f"template {template_id} has no published version" if exists
                                            else f"no template {template_id}")  # fmt: skip
                row = await self._row(conn, template_id, version)
        if row is None:
            raise NotFoundError(f"template {template_id} has no version {version}")
        return _version(row)

    @staticmethod
    async def _row(conn: AsyncConnection, template_id: str, version: int) -> Any:
        return (await conn.execute(sa.select(template_versions).where(
            template_versions.c.template_id == template_id, template_versions.c.version == version))).first()  # fmt: skip

    async def latest(self, template_id: str) -> TemplateVersion | None:
        with translate_errors("reading a template"):
            async with self._reads.connect() as conn:
                row = (await conn.execute(
                    sa.select(template_versions).where(template_versions.c.template_id == template_id)
                    .order_by(template_versions.c.version.desc()).limit(1))).first()  # fmt: skip
        return _version(row) if row is not None else None

    async def versions(self, template_id: str) -> list[TemplateVersion]:
        with translate_errors("reading a template"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(
                    sa.select(template_versions).where(template_versions.c.template_id == template_id)
                    .order_by(template_versions.c.version))).all()  # fmt: skip
        return [_version(row) for row in rows]

    async def summaries(self) -> list[TemplateSummary]:
        latest = (
            sa.select(template_versions.c.template_id, sa.func.max(template_versions.c.version).label("latest"))
            .group_by(template_versions.c.template_id).subquery()
        )  # fmt: skip
        statement = (
            sa.select(templates.c.id, templates.c.kind, templates.c.published_version, templates.c.updated_at, latest.c.latest)
            .join(latest, latest.c.template_id == templates.c.id).order_by(templates.c.id)
        )  # fmt: skip
        with translate_errors("listing templates"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(statement)).all()
        return [TemplateSummary(r.id, TemplateKind(r.kind), r.published_version, int(r.latest), float(r.updated_at))
                for r in rows]  # fmt: skip

    async def publish(self, template_id: str, version: int, now: float) -> None:
        with translate_errors("publishing a template"):
            async with self._engine.begin() as conn:
                if await self._row(conn, template_id, version) is None:
                    raise NotFoundError(f"template {template_id} has no version {version}")
                await conn.execute(templates.update().where(templates.c.id == template_id)
                                   .values(published_version=version, updated_at=now))  # fmt: skip

    async def published(self, kind: TemplateKind) -> dict[str, TemplateVersion]:
        statement = sa.select(template_versions).join(templates, sa.and_(
            templates.c.id == template_versions.c.template_id,
            templates.c.published_version == template_versions.c.version,
        )).where(templates.c.kind == kind.value)  # fmt: skip
        with translate_errors("reading published templates"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(statement)).all()
        return {row.template_id: _version(row) for row in rows}


def _document(source: TemplateSource) -> dict[str, Any]:
    return {**asdict(source), "kind": source.kind.value}
