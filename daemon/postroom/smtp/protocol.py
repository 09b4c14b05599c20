"""`PostroomSMTP`: aiosmtpd's protocol with awaited credential checks, a block-reading DATA phase
and session accounting.

aiosmtpd's `authenticator` hook is synchronous, so a scrypt check there would stall every other
session on the loop. The AUTH PLAIN and LOGIN mechanisms (RFC 4616, draft-murchison-sasl-login) are
re-implemented here on top of aiosmtpd's `challenge_auth`, calling an async verifier instead.

aiosmtpd reads DATA one line per await; for a 5 KB message that is ~80 reads and was the largest
single cost of ingest. `smtp_DATA` here reads blocks, finds the end-of-data marker and undoes dot
stuffing block by block into one buffer (no second copy of the message), keeping aiosmtpd's replies
(354, 552 over size, 500 line too long). The session timeout is an idle timeout there too: every
block that arrives re-arms it, so an honest upload slower than `session_timeout` is not cut.

Every upload holds its size in the process's `ByteBudget` while it is received and submitted: the
MAIL FROM SIZE= parameter (RFC 1870) reserves at MAIL, an undeclared size reserves block by block as
the bytes arrive. When the budget is spent the client gets `452 4.3.1` (RFC 3463 §3.5, "mail system
full") at MAIL or DATA, or after its data once that was read and dropped: a temporary refusal, so
the message is sent again later, never half accepted. The reservation is released once the handler
answered (committed or refused) or the transaction ends otherwise.

A failed TLS handshake after STARTTLS is reported to `on_tls_failure` (one line, rate-limited by
the listener) instead of aiosmtpd's error path, which logs a traceback per failure.
"""

from __future__ import annotations

import asyncio
import binascii
import enum
import logging
import re
import ssl
from base64 import b64decode
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, TLSSetupException, syntax

from postroom.core.errors import PostroomError
from postroom.submission.budget import ByteBudget

logger = logging.getLogger(__name__)

# (peer ip, username, password) -> AuthResult
Verifier = Callable[[str, str, str], Awaitable[AuthResult]]
# (peer ip, reason) of a failed TLS handshake
TlsFailureReport = Callable[[str, str], None]

END_OF_DATA = b"\r\n.\r\n"  # RFC 5321 §4.1.1.4
READ_BLOCK = 64 * 1024
# RFC 5321 §4.5.3.1.6: 1000 octets per line including CRLF, plus one for a transparency dot.
MAX_LINE = 999


# RFC 3463 §3.5 X.3.1 "Mail system full"; 452 is RFC 5321's "insufficient system storage".
BUSY_REPLY = "452 4.3.1 Insufficient system storage, try again later"


class _DataVerdict(enum.Enum):
    OK = "ok"
    TOO_MUCH = "552 Error: Too much mail data"
    TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
    BUSY = BUSY_REPLY


def declared_size(mail_options: list[str]) -> int:
    """The SIZE= parameter of MAIL FROM (RFC 1870 §6; aiosmtpd checked its syntax), else 0."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0


def tls_failure_reason(error: BaseException) -> str:
    """One short line saying why a handshake failed ("WRONG_VERSION_NUMBER", "EOF")."""
    cause = error.__cause__ or error
    if isinstance(cause, ssl.SSLError) and cause.reason:
        return str(cause.reason)
    if isinstance(cause, ssl.SSLError | ConnectionError | EOFError) or not str(cause):
        return type(cause).__name__
    return " ".join(str(cause).split())[:200]


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


def _append_unstuffed(body: bytearray, lines: bytes) -> _DataVerdict:
    """Check `lines` (complete lines, each after its leading CRLF) for length, then append them to
    `body` with dot stuffing undone (RFC 5321 §4.5.2: drop the first dot of a line starting with
    one)."""
    if max(map(len, lines.split(b"\r\n"))) > MAX_LINE:
        return _DataVerdict.TOO_LONG
    body += lines.replace(b"\r\n.", b"\r\n")
    return _DataVerdict.OK


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
        budget: ByteBudget | None = None,
        on_busy: Callable[[], None] | None = None,
        on_tls_failure: TlsFailureReport | None = None,
        **options: Any,
    ):
        self._budget = budget
        self._reserved = 0  # bytes this session holds in the budget
        super().__init__(handler, **options)
        self._verifier = verifier
        self._on_open = on_open
        self._on_close = on_close
        self._on_busy = on_busy
        self._on_tls_failure = on_tls_failure
        self._open = False
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
            self._open = True
            self._on_open()

    def connection_lost(self, error: Exception | None) -> None:
        # aiosmtpd calls this itself after a failed STARTTLS handshake; count the session once.
        if self._open:
            self._open = False
            self._on_close()
        self._release()
        super().connection_lost(error)

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # A peer that cannot or will not complete TLS: its business, not an error of ours.
            # aiosmtpd closes the connection after this and sends no reply.
            if self._on_tls_failure is not None:
                assert self.session is not None
                peer = self.session.peer
                self._on_tls_failure(str(peer[0]) if isinstance(peer, tuple) else str(peer),
                                     tls_failure_reason(error))  # fmt: skip
            return "454 4.7.0 TLS not available due to temporary reason"
        status: str = await super().handle_exception(error)
        return status

    # -- the byte budget ---------------------------------------------------------------------

    def _release(self) -> None:
        if self._reserved and self._budget is not None:
            self._budget.release(self._reserved)
        self._reserved = 0

    def _busy(self) -> str:
        if self._on_busy is not None:
            self._on_busy()
        return BUSY_REPLY

    def _set_post_data_state(self) -> None:
        """The transaction is over (after DATA, RSET, HELO/EHLO): drop its envelope, and with it
        the message, then give its bytes back to the budget."""
        super()._set_post_data_state()  # type: ignore[no-untyped-call]
        self._release()

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        status = await super()._call_handler_hook(command, *args)
        if command != "MAIL" or self._budget is None:
            return status
        # MAIL passed aiosmtpd's checks and the handler's: now the declared size must fit.
        size = declared_size(args[1])
        if size and (status is MISSING or str(status).startswith("250")):
            if not self._budget.try_reserve(size):
                self._set_post_data_state()  # the handler may have started the transaction
                return self._busy()
            self._reserved = size
        return status

    # -- DATA --------------------------------------------------------------------------------

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
        if self._budget is not None and not self._reserved:
            # No SIZE was declared: the first block must fit before the client starts sending.
            if not self._budget.try_reserve(READ_BLOCK):
                await self.push(self._busy())
                return
            self._reserved = READ_BLOCK
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content, verdict = await self._read_data()
            if verdict is not _DataVerdict.OK:
                # Replies wait until the whole message was read (RFC 5321 §4.2.5).
                await self.push(self._busy() if verdict is _DataVerdict.BUSY else verdict.value)
                return
            # The envelope holds the only reference: the handler drops it once it has made the
            # message it submits, so one copy of the message is alive while it is committed.
            # (aiosmtpd types these as bytes; a bytearray reads the same, see handlers.take_content)
            self.envelope.content = self.envelope.original_content = content  # type: ignore[assignment]
            del content
            status = await self._call_handler_hook("DATA")
        finally:
            self._set_post_data_state()  # releases the reservation, whatever happened
        await self.push("250 OK" if status is MISSING else status)

    def _grow(self, received: int) -> bool:
        """Hold at least `received` bytes in the budget (False: the budget is spent)."""
        if self._budget is None or received <= self._reserved:
            return True
        extra = max(received - self._reserved, READ_BLOCK)
        if not self._budget.try_extend(self._reserved, extra):
            return False
        self._reserved += extra
        return True

    async def _read_data(self) -> tuple[bytearray, _DataVerdict]:
        """Read up to the end-of-data line; return the unstuffed content and a verdict.

        Each block is searched for the end marker, then everything up to its last line break is
        checked for long lines and unstuffed into `body`; the rest (`tail`, always starting at a
        line break) waits for the next block, so neither a marker nor a stuffed dot is ever split.
        Once the verdict is a refusal the data is only scanned for the marker and dropped.
        """
        limit = self.data_size_limit or 0
        body = bytearray()
        # A virtual CRLF in front lets one search find an end marker on the very first line.
        tail = b"\r\n"
        received = 2  # bytes of the stream so far, the virtual CRLF included
        verdict = _DataVerdict.OK
        while True:
            block = await self._reader.read(READ_BLOCK)
            if not block:
                raise ConnectionResetError("connection closed during DATA")
            self._reset_timeout()  # an idle timeout: a slow but moving upload is not cut
            start = received - len(tail)  # where `chunk` starts in the stream
            received += len(block)
            chunk = tail + block
            end = chunk.find(END_OF_DATA)
            if verdict is _DataVerdict.OK and not self._grow(received):
                verdict = _DataVerdict.BUSY
            if end >= 0:
                leftover = chunk[end + len(END_OF_DATA) :]
                if leftover:
                    # Pipelined commands after the end marker go back to the front of the stream
                    # (aiosmtpd itself manages the reader's buffer directly for STARTTLS, likewise).
                    self._reader._buffer[:0] = leftover  # type: ignore[attr-defined]
                if limit and start + end > limit:  # the message as sent, up to its last CRLF
                    verdict = _DataVerdict.TOO_MUCH
                if verdict is _DataVerdict.OK:
                    verdict = _append_unstuffed(body, chunk[: end + 2])
                if verdict is not _DataVerdict.OK:
                    return bytearray(), verdict
                del body[:2]  # the virtual CRLF (a bytearray drops a prefix without copying)
                return body, verdict
            if limit and received - 6 > limit:  # past the limit whatever the last bytes are
                verdict = _DataVerdict.TOO_MUCH
            if verdict is _DataVerdict.OK:
                cut = chunk.rfind(b"\r\n")
                tail = chunk[cut:]
                # The line being received, without its CRLF (of which a CR may have arrived).
                if len(tail) - 2 - tail.endswith(b"\r") > MAX_LINE:
                    verdict = _DataVerdict.TOO_LONG
                elif cut > 0:
                    verdict = _append_unstuffed(body, chunk[:cut])
            if verdict is not _DataVerdict.OK:
                body.clear()  # drop what was kept, and give its room back now
                self._release()
                tail = chunk[-4:]  # keep only what may start the end marker

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
