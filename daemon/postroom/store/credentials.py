"""Repositories for API keys and SMTP users. Secrets are stored hashed (see `core.secrets`)."""

from __future__ import annotations

import asyncio
import enum
from concurrent.futures import Executor
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.core.errors import ConflictError, NotFoundError
from postroom.core.secrets import (
    NewApiKey,
    api_secret_matches,
    hash_password,
    new_api_key,
    password_matches,
    split_api_key,
)
from postroom.store.engine import read_only, translate_errors
from postroom.store.tables import api_keys, smtp_users


class Role(enum.StrEnum):
    """What an API key may do: viewer reads; sender also sends (rendering only published
    templates); templates also writes and publishes templates and renders any version; admin
    does everything."""

    ADMIN = "admin"
    TEMPLATES = "templates"
    SENDER = "sender"
    VIEWER = "viewer"

    def allows(self, needed: Role) -> bool:
        return needed in _GRANTS[self]


_GRANTS = {
    Role.ADMIN: frozenset(Role),
    Role.TEMPLATES: frozenset({Role.TEMPLATES, Role.VIEWER}),
    Role.SENDER: frozenset({Role.SENDER, Role.VIEWER}),
    Role.VIEWER: frozenset({Role.VIEWER}),
}


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    role: Role
    created_at: float
    revoked_at: float | None


class SqlApiKeys:
    def __init__(self, engine: AsyncEngine):
        self._engine = engine
        self._reads = read_only(engine)

    async def create(self, name: str, role: Role, now: float) -> tuple[ApiKey, str]:
        """Return the key record and the whole token, which is shown once and never stored."""
        new: NewApiKey = new_api_key()
        with translate_errors("creating an API key"):
            async with self._engine.begin() as conn:
                await conn.execute(
                    api_keys.insert().values(
                        id=new.id, name=name, role=role.value, secret_hash=new.secret_hash,
                        created_at=now, revoked_at=None,
                    )
                )  # fmt: skip
        return ApiKey(new.id, name, role, now, None), new.token

    async def authenticate(self, token: str) -> ApiKey | None:
        """The live key this token is, or None (unknown, malformed, revoked or wrong secret)."""
        parts = split_api_key(token)
        if parts is None:
            return None
        key_id, secret = parts
        with translate_errors("checking an API key"):
            async with self._reads.connect() as conn:
                row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id))).first()
        if row is None or row.revoked_at is not None:
            return None
        if not api_secret_matches(secret, row.secret_hash):
            return None
        return ApiKey(row.id, row.name, Role(row.role), row.created_at, row.revoked_at)

    async def list(self) -> list[ApiKey]:
        with translate_errors("listing API keys"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(sa.select(api_keys).order_by(api_keys.c.created_at))).all()
        return [ApiKey(r.id, r.name, Role(r.role), r.created_at, r.revoked_at) for r in rows]

    async def revoke(self, key_id: str, now: float) -> None:
        with translate_errors("revoking an API key"):
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    api_keys.update()
                    .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
        if result.rowcount == 0:
            raise NotFoundError(f"no live API key {key_id}")


@dataclass(frozen=True)
class SmtpUser:
    username: str
    created_at: float
    allowed_senders: tuple[str, ...] = ()  # empty: any configured sending domain

    def __str__(self) -> str:
        return self.username



class SqlSmtpUsers:
    def __init__(self, engine: AsyncEngine, hashing: Executor | None = None):
        """`hashing`: the pool login checks run scrypt in (the daemon's own small one, so checks
        neither starve nor wait behind other work in the loop's default pool); None: the default."""
        self._engine = engine
        self._reads = read_only(engine)
        self._hashing = hashing

    async def _matches(self, password: str, stored: str) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._hashing, password_matches, password, stored)

    async def add(
        self, username: str, password: str, now: float, allowed_senders: tuple[str, ...] = ()
    ) -> SmtpUser:
        hashed = await asyncio.to_thread(hash_password, password)
        allowed = tuple(entry.strip().lower() for entry in allowed_senders if entry.strip())
        try:
            with translate_errors("adding an SMTP user"):
                async with self._engine.begin() as conn:
                    await conn.execute(
                        smtp_users.insert().values(
                            username=username, password_hash=hashed, created_at=now,
                            allowed_senders=list(allowed) or None,
                        )
                    )  # fmt: skip
        except IntegrityError:
            raise ConflictError(f"SMTP user {username} already exists") from None
        return SmtpUser(username, now, allowed)

    async def login(self, username: str, password: str) -> SmtpUser | None:
        """The user if the password is right, else None. Scrypt runs in a thread (of `hashing`)
        so the event loop keeps serving other sessions."""
        with translate_errors("checking an SMTP login"):
            async with self._reads.connect() as conn:
                row = (
                    await conn.execute(sa.select(smtp_users).where(smtp_users.c.username == username))
                ).first()
        if row is None:
            # Spend the same time as a real check, so timing does not reveal which users exist.
            await self._matches(password, _DUMMY_HASH)
            return None
        if not await self._matches(password, row.password_hash):
            return None
        return SmtpUser(row.username, row.created_at, tuple(row.allowed_senders or ()))

    async def verify(self, username: str, password: str) -> bool:
        return await self.login(username, password) is not None

    async def list(self) -> list[SmtpUser]:
        with translate_errors("listing SMTP users"):
            async with self._reads.connect() as conn:
                rows = (
                    await conn.execute(sa.select(smtp_users).order_by(smtp_users.c.username))
                ).all()
        return [SmtpUser(r.username, r.created_at, tuple(r.allowed_senders or ())) for r in rows]

    async def remove(self, username: str) -> None:
        with translate_errors("removing an SMTP user"):
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    smtp_users.delete().where(smtp_users.c.username == username)
                )
        if result.rowcount == 0:
            raise NotFoundError(f"no SMTP user {username}")


_DUMMY_HASH = "$scrypt$ln=14,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
