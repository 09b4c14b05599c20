"""The daemon's listening sockets: bound once, by the process `postroom serve` starts, handed down.

One owner per port is what refuses a double start: a second `postroom serve` on the same ports
fails at bind with a one-line reason, where SO_REUSEPORT let it take half the connections. With
several processes, `postroom serve` binds before it execs the supervisor; the sockets survive the
exec and the supervisor passes them to each child as inherited descriptors named in
`$POSTROOM_LISTEN_FDS` ("submission=3,mx=4,http=5", as systemd socket activation names them in
LISTEN_FDNAMES). Children never bind, and all processes accept from one queue per socket. Port 0
works: the kernel picks the port once.

The supervisor imports this module and must not load the settings machinery (see supervisor.main),
so `postroom.config` is imported for type checking and inside `bind_listener` only.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from postroom.core.errors import PostroomError

if TYPE_CHECKING:
    from postroom.config import HttpSettings, SmtpSettings

logger = logging.getLogger(__name__)

LISTEN_FDS_ENV = "POSTROOM_LISTEN_FDS"
# One accept queue is shared by every process, so it is deeper than asyncio's default of 100.
BACKLOG = 1024

ListenSockets = Mapping[str, Sequence[socket.socket]]  # listener name -> its sockets


class ListenError(PostroomError):
    """A listening socket could not be bound or was not handed over; the text is for operators."""


@dataclass(frozen=True)
class Listener:
    name: str  # "submission", "submissions", "mx", "http": the key of the socket mapping
    key: str  # the config key that sets it, for error messages
    address: str  # "host:port" as configured


def configured_listeners(smtp: SmtpSettings, http: HttpSettings) -> list[Listener]:
    """Every listener the settings ask for (an empty SMTP address turns that listener off)."""
    listeners = [
        Listener("submission", "smtp.submission_listen", smtp.submission_listen),
        Listener("submissions", "smtp.submissions_listen", smtp.submissions_listen),
        Listener("mx", "smtp.mx_listen", smtp.mx_listen),
        Listener("http", "http.listen", http.listen),
    ]
    return [listener for listener in listeners if listener.address]


def bind_listeners(listeners: Sequence[Listener]) -> dict[str, list[socket.socket]]:
    """Bind and listen on every listener, or close what was bound and raise ListenError."""
    seen: dict[str, Listener] = {}
    for listener in listeners:
        other = seen.setdefault(listener.address, listener)
        if other is not listener and not listener.address.endswith(":0"):
            raise ListenError(f"{other.key} and {listener.key} both listen on {listener.address}")
    bound: dict[str, list[socket.socket]] = {}
    try:
        for listener in listeners:
            bound[listener.name] = bind_listener(listener)
    except BaseException:
        close_sockets(bound)
        raise
    return bound


def bind_listener(listener: Listener) -> list[socket.socket]:
    """One socket per address the host resolves to, set up as asyncio's create_server does, except
    that SO_REUSEPORT is never set: a busy port must fail here."""
    from postroom.config import parse_hostport

    host, port = parse_hostport(listener.address)
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                   socket.AI_PASSIVE)  # fmt: skip
    except socket.gaierror as exc:
        reason = f"cannot resolve {listener.address} ({listener.key}): {exc.strerror}"
        raise ListenError(reason) from exc
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart over TIME_WAIT
            if family == socket.AF_INET6:
                # As asyncio does: "[::]" is IPv6 only; list 0.0.0.0 too for both families.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(sockaddr)
                # Listen at once: on Linux two SO_REUSEADDR sockets may bind one address while
                # neither listens, so only a listening socket makes the port ours.
                sock.listen(BACKLOG)
            except OSError as exc:
                raise ListenError(_bind_failure(listener, port, exc)) from exc
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind_failure(listener: Listener, port: int, exc: OSError) -> str:
    address = listener.address
    if exc.errno == errno.EADDRINUSE:
        return f"address already in use: {address} (is another postroom running?)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        hint = "; ports below 1024 need root or CAP_NET_BIND_SERVICE" if 0 < port < 1024 else ""
        return f"permission denied: cannot listen on {address} ({listener.key}{hint})"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"address not available on this host: {address} ({listener.key})"
    return f"cannot listen on {address} ({listener.key}): {exc.strerror or exc}"


def describe(sock: socket.socket) -> tuple[str, int]:
    """The address a socket is bound to (the real port when the config said 0)."""
    name = sock.getsockname()
    return str(name[0]), int(name[1])


def describe_fds(fds: Mapping[str, Sequence[int]]) -> str:
    """"submission 0.0.0.0:587, http 127.0.0.1:8025" for descriptors this process holds."""
    parts = []
    for name, numbers in fds.items():
        for fd in numbers:
            with socket.socket(fileno=os.dup(fd)) as sock:  # a copy: closing it keeps `fd`
                host, port = describe(sock)
            parts.append(f"{name} {host}:{port}")
    return ", ".join(parts)


def close_sockets(sockets: ListenSockets) -> None:
    for socks in sockets.values():
        for sock in socks:
            sock.close()


def hand_down(sockets: ListenSockets) -> str:
    """Make the sockets survive exec and fork, and return their `$POSTROOM_LISTEN_FDS` value."""
    for socks in sockets.values():
        for sock in socks:
            sock.set_inheritable(True)
    return encode_fds({name: [sock.fileno() for sock in socks] for name, socks in sockets.items()})


def encode_fds(fds: Mapping[str, Sequence[int]]) -> str:
    return ",".join(f"{name}={fd}" for name, numbers in fds.items() for fd in numbers)


def decode_fds(value: str) -> dict[str, list[int]]:
    """Parse "submission=3,mx=4,http=5" (a name may repeat); raise ListenError if malformed."""
    fds: dict[str, list[int]] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, number = item.partition("=")
        if not sep or not name or not number.isdigit():
            raise ListenError(f"${LISTEN_FDS_ENV} is malformed at {item!r}")
        fds.setdefault(name, []).append(int(number))
    return fds


def inherited_fds(environ: Mapping[str, str]) -> dict[str, list[int]] | None:
    """The listening descriptors inherited here, checked to be sockets; None if there are none."""
    value = environ.get(LISTEN_FDS_ENV)
    if value is None:
        return None
    fds = decode_fds(value)
    for name, numbers in fds.items():
        for fd in numbers:
            try:
                is_socket = stat.S_ISSOCK(os.fstat(fd).st_mode)
            except OSError:
                is_socket = False
            if not is_socket:
                raise ListenError(
                    f"${LISTEN_FDS_ENV} names fd {fd} for {name}, which is not an open socket"
                )
    return fds


def adopt_inherited(environ: Mapping[str, str]) -> dict[str, list[socket.socket]] | None:
    """In a daemon process under the supervisor: the inherited sockets as socket objects, kept
    from any program this process might start."""
    fds = inherited_fds(environ)
    if fds is None:
        return None
    sockets: dict[str, list[socket.socket]] = {}
    for name, numbers in fds.items():
        for fd in numbers:
            sock = socket.socket(fileno=fd)
            sock.set_inheritable(False)
            sockets.setdefault(name, []).append(sock)
    return sockets


def sockets_for(
    sockets: ListenSockets | None, listener: Listener
) -> tuple[list[socket.socket], bool]:
    """The sockets a listener serves from: handed over, or (in-process, in tests) bound here.

    Returns them with True when bound here (the caller closes them if it cannot use them)."""
    if sockets is None:
        return bind_listener(listener), True
    found = list(sockets.get(listener.name, ()))
    if not found:
        raise ListenError(
            f"no listening socket was handed over for {listener.key} ({listener.address})"
        )
    return found, False
