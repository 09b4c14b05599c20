#!/usr/bin/env python3
"""An SMTP sink that records when each benchmark message arrived (asyncio, stdlib only).

This module owns the receiving end of the latency benchmark. It accepts any
mail on 127.0.0.1:PORT (PIPELINING, 8BITMIME, SIZE advertised; no TLS, no
AUTH), and for every message it writes one line to ``--out``::

    <X-Bench-Id> <time.monotonic() when the final "." arrived> <DKIM signature algorithms>

then answers 250. ``time.monotonic()`` is CLOCK_MONOTONIC, one clock for every
process on the machine, so the sender's timestamps (taken when its DATA got its
250) and these can be subtracted. The algorithms field lists the ``a=`` tag of
every DKIM-Signature header (``rsa-sha256,ed25519-sha256``, or ``-``), so the
harness can check that each message was dual-signed.

It runs as its own process so that the sender and the sink never share an
event loop or a GIL with each other or with the harness. At 300 msg/s it uses a
few per cent of a core (the harness reports its CPU time); it is far from being
a bottleneck.

    python3 bench/arrival_sink.py --port 10026 --out /tmp/arrivals.txt

It prints ``ready <port>`` on stdout once it listens, and exits on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
import time
from typing import IO

ID_HEADER = re.compile(rb"^X-Bench-Id:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
DKIM_ALGORITHM = re.compile(rb"^DKIM-Signature:.*?\ba=([a-z0-9-]+)", re.IGNORECASE | re.MULTILINE
                            | re.DOTALL)
DKIM_HEADER = re.compile(rb"^DKIM-Signature:", re.IGNORECASE | re.MULTILINE)
END_OF_DATA = b"\r\n.\r\n"


def describe(message: bytes) -> tuple[str, str]:
    """(bench id, DKIM algorithms) of a message; the id is '-' when there is none."""
    head = message.split(b"\r\n\r\n", 1)[0]
    found = ID_HEADER.search(head)
    bench_id = found.group(1).decode("ascii", "replace") if found else "-"
    algorithms = []
    starts = [m.start() for m in DKIM_HEADER.finditer(head)]
    for start in starts:
        algorithm = DKIM_ALGORITHM.match(head, start)
        if algorithm:
            algorithms.append(algorithm.group(1).decode("ascii"))
    return bench_id, ",".join(algorithms) or "-"


class SinkSession(asyncio.Protocol):
    """One SMTP session: commands line by line (pipelined commands work in order), then data."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.buffer = b""
        self.in_data = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"220 arrival-sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        replies: list[bytes] = []
        while True:
            if self.in_data:
                # The message may start with the "." line itself (an empty body).
                if self.buffer.startswith(b".\r\n"):
                    end, skip = 0, 3
                else:
                    end = self.buffer.find(END_OF_DATA)
                    skip = len(END_OF_DATA)
                    if end < 0:
                        break
                    end += 2  # keep the CRLF that ends the last line
                arrived = time.monotonic()
                bench_id, algorithms = describe(self.buffer[:end])
                self.buffer = self.buffer[end + skip - (2 if end else 0):]
                self.in_data = False
                self.out.write(f"{bench_id} {arrived:.6f} {algorithms}\n")
                replies.append(b"250 2.0.0 Ok: queued\r\n")
                continue
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                break
            line, self.buffer = self.buffer[:line_end], self.buffer[line_end + 2:]
            reply = self.command(line)
            if reply is None:
                self.flush(replies)
                assert self.transport is not None
                self.transport.write(b"221 2.0.0 Bye\r\n")
                self.transport.close()
                return
            replies.append(reply)
        self.flush(replies)

    def flush(self, replies: list[bytes]) -> None:
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))
            self.out.flush()
            replies.clear()

    def command(self, line: bytes) -> bytes | None:
        verb = line[:4].upper()
        if verb == b"EHLO":
            return (b"250-arrival-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                    b"250-SIZE 104857600\r\n250 ENHANCEDSTATUSCODES\r\n")
        if verb == b"HELO":
            return b"250 arrival-sink\r\n"
        if verb == b"DATA":
            self.in_data = True
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        if verb == b"QUIT":
            return None
        if verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
            return b"250 2.0.0 Ok\r\n"
        return b"502 5.5.2 Error: command not recognized\r\n"


async def serve(port: int, out: IO[str]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(lambda: SinkSession(out), "127.0.0.1", port, backlog=1000)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()
    out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument("--out", required=True, help="file to append arrival lines to")
    args = parser.parse_args(argv)
    with open(args.out, "a", encoding="ascii") as out:
        asyncio.run(serve(args.port, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
