"""`SqlTransactionalNames`: the names (and groups) the Loops API shows for transactional emails,
kept beside the templates they name (`loops_transactionals`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.core.errors import ConflictError
from postroom.store.engine import read_only, translate_errors
from postroom.store.tables import loops_transactionals


@dataclass(frozen=True)
class TransactionalName:
    id: str
    template_id: str
    name: str
    group_id: str | None
    created_at: float
    updated_at: float


def _name(row: Any) -> TransactionalName:
    return TransactionalName(row.id, row.template_id, row.name, row.group_id, float(row.created_at), float(row.updated_at))


class SqlTransactionalNames:
    def __init__(self, engine: AsyncEngine):
        self._engine = engine
        self._reads = read_only(engine)

    async def all(self) -> list[TransactionalName]:
        with translate_errors("reading transactional email names"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(sa.select(loops_transactionals))).all()
        return [_name(r) for r in rows]

    async def add(self, name: TransactionalName) -> None:
        try:
            with translate_errors("naming a transactional email"):
                async with self._engine.begin() as conn:
                    await conn.execute(loops_transactionals.insert().values(
                        id=name.id, template_id=name.template_id, name=name.name, group_id=name.group_id,
                        created_at=name.created_at, updated_at=name.updated_at))  # fmt: skip
        except IntegrityError as exc:
            raise ConflictError(f"a transactional email {name.id!r} already exists") from exc

    async def rename(self, transactional_id: str, *, name: str | None, group_id: str | None, now: float) -> None:
        values: dict[str, Any] = {"updated_at": now}
        if name is not None:
            values["name"] = name
        if group_id is not None:
            values["group_id"] = group_id
        with translate_errors("renaming a transactional email"):
            async with self._engine.begin() as conn:
                await conn.execute(loops_transactionals.update().where(loops_transactionals.c.id == transactional_id)
                                   .values(**values))  # fmt: skip
