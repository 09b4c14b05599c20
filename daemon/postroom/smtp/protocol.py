"""`PostroomSMTP`: aiosmtpd's protocol with awaited credential checks and session accounting.

aiosmtpd's `authenticator` hook is synchronous, so a scrypt check there would stall every other
session on the loop. The AUTH PLAIN and LOGIN mechanisms (RFC 4616, draft-murchison-sasl-login) are
re-implemented here on top of aiosmtpd's `challenge_auth`, calling an async verifier instead.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
from base64 import b64decode
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult

from postroom.core.errors import PostroomError

logger = logging.getLogger(__name__)

# (peer ip, username, password) -> AuthResult
Verifier = Callable[[str, str, str], Awaitable[AuthResult]]


class PostroomSMTP(SMTP):
    def __init__(
        self,
        handler: Any,
        *,
        verifier: Verifier | None,
        on_open: Callable[[], None],
        on_close: Callable[[], None],
        **options: Any,
    ):
        super().__init__(handler, **options)
        self._verifier = verifier
        self._on_open = on_open
        self._on_close = on_close
        if verifier is None:
            self._auth_methods.clear()  # the MX listener offers no AUTH at all

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            self._on_open()

    def connection_lost(self, error: Exception | None) -> None:
        self._on_close()
        super().connection_lost(error)

    async def _check(self, login: bytes, password: bytes) -> AuthResult:
        assert self._verifier is not None and self.session is not None
        peer = self.session.peer[0] if isinstance(self.session.peer, tuple) else str(self.session.peer)
        try:
            return await self._verifier(
                peer, login.decode("utf-8", "strict"), password.decode("utf-8", "strict")
            )
        except UnicodeDecodeError:
            return AuthResult(success=False, handled=False)
        except PostroomError:
            logger.exception("credential check failed")
            return AuthResult(
                success=False, handled=False, message="454 4.7.0 Temporary authentication failure"
            )

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if not isinstance(blob, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await self.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:  # authzid NUL authcid NUL passwd (RFC 4616 §2)
            await self.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        return await self._check(parts[1], parts[2])

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await self.challenge_auth(self.AuthLoginUsernameChallenge)
            if not isinstance(login, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                login = b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await self.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        return await self._check(login, password)
