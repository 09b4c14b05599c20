"""`SqlDkimKeys`: which DKIM selectors exist per domain and where each is in its rotation.

The private keys themselves are files (mode 0600) under the key directory; rows hold their paths.
A domain signs with its `active` selectors (one per algorithm). `rotate` adds `pending` ones; the
rotation monitor activates a pending selector once its record is seen in DNS, which turns the one
it replaces into `retiring` until `retire_at`, after which it is `retired` and no longer listed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.core.errors import ConflictError, NotFoundError
from postroom.store.engine import read_only, translate_errors
from postroom.store.tables import dkim_keys


class SelectorState(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    RETIRING = "retiring"
    RETIRED = "retired"


@dataclass(frozen=True)
class SelectorRecord:
    domain: str
    selector: str
    algorithm: str
    key_path: str
    state: SelectorState
    created_at: float
    activated_at: float | None
    retire_at: float | None

    @property
    def published(self) -> bool:
        """Whether its DNS record must exist now."""
        return self.state is not SelectorState.RETIRED


def _record(row: sa.Row) -> SelectorRecord:  # type: ignore[type-arg]
    return SelectorRecord(
        row.domain, row.selector, row.algorithm, row.key_path, SelectorState(row.state),
        row.created_at, row.activated_at, row.retire_at,
    )  # fmt: skip


class SqlDkimKeys:
    def __init__(self, engine: AsyncEngine):
        self._engine = engine
        self._reads = read_only(engine)

    async def add(
        self, domain: str, selector: str, algorithm: str, key_path: str, now: float
    ) -> SelectorRecord:
        """Register a new selector: active if the domain has no active key of this algorithm yet
        (a first key signs at once), else pending until `activate`."""
        try:
            with translate_errors("registering a DKIM selector"):
                async with self._engine.begin() as conn:
                    active = await conn.scalar(
                        sa.select(sa.func.count()).where(
                            dkim_keys.c.domain == domain,
                            dkim_keys.c.algorithm == algorithm,
                            dkim_keys.c.state == SelectorState.ACTIVE.value,
                        )
                    )
                    state = SelectorState.PENDING if active else SelectorState.ACTIVE
                    await conn.execute(
                        dkim_keys.insert().values(
                            domain=domain, selector=selector, algorithm=algorithm,
                            key_path=key_path, state=state.value, created_at=now,
                            activated_at=None if state is SelectorState.PENDING else now,
                            retire_at=None,
                        )
                    )  # fmt: skip
        except IntegrityError:
            raise ConflictError(f"selector {selector} already exists for {domain}") from None
        return SelectorRecord(domain, selector, algorithm, key_path, state, now,
                              None if state is SelectorState.PENDING else now, None)  # fmt: skip

    async def list(self, domain: str | None = None, include_retired: bool = False) -> list[SelectorRecord]:
        query = sa.select(dkim_keys).order_by(dkim_keys.c.domain, dkim_keys.c.created_at)
        if domain is not None:
            query = query.where(dkim_keys.c.domain == domain)
        if not include_retired:
            query = query.where(dkim_keys.c.state != SelectorState.RETIRED.value)
        with translate_errors("listing DKIM selectors"):
            async with self._reads.connect() as conn:
                return [_record(row) for row in (await conn.execute(query)).all()]

    async def activate(self, domain: str, selector: str, now: float, overlap: float) -> None:
        """Make a pending selector active; the active one of the same algorithm starts retiring."""
        with translate_errors("activating a DKIM selector"):
            async with self._engine.begin() as conn:
                row = (
                    await conn.execute(
                        sa.select(dkim_keys).where(
                            dkim_keys.c.domain == domain, dkim_keys.c.selector == selector
                        )
                    )
                ).first()
                if row is None:
                    raise NotFoundError(f"no selector {selector} for {domain}")
                if row.state != SelectorState.PENDING.value:
                    raise ConflictError(f"selector {selector} of {domain} is {row.state}, not pending")
                await conn.execute(
                    dkim_keys.update()
                    .where(
                        dkim_keys.c.domain == domain,
                        dkim_keys.c.algorithm == row.algorithm,
                        dkim_keys.c.state == SelectorState.ACTIVE.value,
                    )
                    .values(state=SelectorState.RETIRING.value, retire_at=now + overlap)
                )
                await conn.execute(
                    dkim_keys.update()
                    .where(dkim_keys.c.domain == domain, dkim_keys.c.selector == selector)
                    .values(state=SelectorState.ACTIVE.value, activated_at=now)
                )

    async def retire_due(self, now: float) -> int:
        """Retire the selectors whose overlap has passed; return how many."""
        with translate_errors("retiring DKIM selectors"):
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    dkim_keys.update()
                    .where(
                        dkim_keys.c.state == SelectorState.RETIRING.value,
                        dkim_keys.c.retire_at <= now,
                    )
                    .values(state=SelectorState.RETIRED.value)
                )
        return int(result.rowcount)
