"""`PostroomSMTP`: aiosmtpd's protocol with awaited credential checks, a block-reading DATA phase
and session accounting.

aiosmtpd's `authenticator` hook is synchronous, so a scrypt check there would stall every other
session on the loop. The AUTH PLAIN and LOGIN mechanisms (RFC 4616, draft-murchison-sasl-login) are
re-implemented here on top of aiosmtpd's `challenge_auth`, calling an async verifier instead.

aiosmtpd reads DATA one line per await; for a 5 KB message that is ~80 reads and was the largest
single cost of ingest. `smtp_DATA` here reads blocks, finds the end-of-data marker, and undoes dot
stuffing with one bytes.replace, keeping aiosmtpd's replies (354, 552 over size, 500 line too long).
"""

from __future__ import annotations

import asyncio
import binascii
import enum
import logging
import re
from base64 import b64decode
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, syntax

from postroom.core.errors import PostroomError

logger = logging.getLogger(__name__)

# (peer ip, username, password) -> AuthResult
Verifier = Callable[[str, str, str], Awaitable[AuthResult]]

END_OF_DATA = b"\r\n.\r\n"  # RFC 5321 §4.1.1.4
READ_BLOCK = 64 * 1024
# RFC 5321 §4.5.3.1.6: 1000 octets per line including CRLF, plus one for a transparency dot.
MAX_LINE = 999


class _DataVerdict(enum.Enum):
    OK = "ok"
    TOO_MUCH = "552 Error: Too much mail data"
    TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"


_REFLECTED_PREFIXES = ("smtp_", "auth_", "handle_")

# The common shape of a MAIL FROM / RCPT TO argument: <dot-atom@domain> and optional parameters.
# Anything else (quoted local parts, source routes, the null sender) goes to aiosmtpd's full parser.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_SIMPLE_PATH = re.compile(
    rf"\s*<({_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*)>"
    r"(?:[ \t]+([^ \t(].*)|[ \t]*)\Z",  # parameters after the path, never a (comment)
    re.DOTALL,
)


class FixedReflection:
    """Lists only the names aiosmtpd looks up by prefix when it builds a session.

    aiosmtpd's constructor reflects over `dir()` of the protocol and of the handler (through
    inspect.getmembers) to find `smtp_*`, `auth_*` and `handle_*` methods, once per connection;
    over the full attribute lists that was a fifth of ingest CPU. The names are fixed per class.
    """

    _reflected: tuple[str, ...] | None = None

    def __dir__(self) -> list[str]:
        cls = type(self)
        if cls._reflected is None:
            cls._reflected = tuple(
                name for name in object.__dir__(self) if name.startswith(_REFLECTED_PREFIXES)
            )
        return list(cls._reflected)


class PostroomSMTP(FixedReflection, SMTP):
    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """A regex fast path for plain addresses; aiosmtpd's RFC 5322 parser for the rest
        (it builds a class per call and was an eighth of ingest CPU)."""
        match = _SIMPLE_PATH.match(arg) if arg else None
        if match is None:
            return super()._getaddr(arg)
        address, rest = match.group(1), match.group(2) or ""
        local_part = address.rpartition("@")[0]
        if self.local_part_limit and len(local_part) > self.local_part_limit:
            return None, None
        return address, rest

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

    # aiosmtpd cancels and re-creates an idle timer on every command; here one timer per session
    # is re-armed only when it fires early (the deadline moved on meanwhile).
    _deadline: float = 0.0

    def _reset_timeout(self, duration: float | None = None) -> None:
        self._deadline = self.loop.time() + (duration or self._timeout_duration)
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or handle.when() > self._deadline:
            if handle is not None:
                handle.cancel()
            self._timeout_handle = self.loop.call_at(self._deadline, self._timeout_cb)

    def _timeout_cb(self) -> None:
        if self.loop.time() < self._deadline:
            self._timeout_handle = self.loop.call_at(self._deadline, self._timeout_cb)
            return
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            self._on_open()

    def connection_lost(self, error: Exception | None) -> None:
        self._on_close()
        super().connection_lost(error)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        content, verdict = await self._read_data()
        if verdict is not _DataVerdict.OK:
            # Replies wait until the whole message was read (RFC 5321 §4.2.5).
            await self.push(verdict.value)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self) -> tuple[bytes, _DataVerdict]:
        """Read up to the end-of-data line; return the unstuffed content and a verdict."""
        limit = self.data_size_limit or 0
        # A virtual CRLF in front lets one search find an end marker on the very first line.
        pending = bytearray(b"\r\n")
        verdict = _DataVerdict.OK
        scanned = 0
        while True:
            block = await self._reader.read(READ_BLOCK)
            if not block:
                raise ConnectionResetError("connection closed during DATA")
            pending += block
            end = pending.find(END_OF_DATA, scanned)
            if end < 0:
                if limit and len(pending) > limit + 2 and verdict is _DataVerdict.OK:
                    verdict = _DataVerdict.TOO_MUCH
                if verdict is not _DataVerdict.OK:
                    del pending[: len(pending) - 4]  # keep only what may start the end marker
                scanned = max(0, len(pending) - 4)
                continue
            leftover = bytes(pending[end + len(END_OF_DATA) :])
            if leftover:
                # Pipelined commands after the end marker go back to the front of the stream
                # (aiosmtpd itself manages the reader's buffer directly for STARTTLS, likewise).
                self._reader._buffer[:0] = leftover  # type: ignore[attr-defined]
            if verdict is not _DataVerdict.OK:
                return b"", verdict
            raw = pending[: end + 2]
            if limit and len(raw) - 2 > limit:
                return b"", _DataVerdict.TOO_MUCH
            if max(map(len, raw.split(b"\r\n"))) > MAX_LINE:
                return b"", _DataVerdict.TOO_LONG
            # De-transparency (RFC 5321 §4.5.2): drop the first dot of every line starting with one.
            return bytes(raw.replace(b"\r\n.", b"\r\n"))[2:], verdict

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
