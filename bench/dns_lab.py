#!/usr/bin/env python3
"""A tiny authoritative DNS responder on 127.0.0.1 for benchmarks (stdlib only).

This module owns the DNS that postroom's direct-MX mode sees in a benchmark:
one UDP socket on 127.0.0.1, answered from a thread, with MX and A records
from a small table (``{("example.net", "MX"): [(10, "sink.bench.test")],
("sink.bench.test", "A"): ["127.0.0.1"]}``). Any other name gets NXDOMAIN, a
known name asked for another type an empty NOERROR (NODATA). No TCP, no EDNS
options in the answer, no compression beyond what the question needs: the
answers are small. Every A record must be a loopback address, so a resolver
pointed here can never send mail off the machine.

    with DnsResponder({("example.net", "MX"): [(10, "sink.bench.test")],
                       ("sink.bench.test", "A"): ["127.0.0.1"]}) as dns:
        ...  # POSTROOM_DELIVERY__DNS_RESOLVER=f"127.0.0.1:{dns.port}"
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import threading
from collections.abc import Mapping, Sequence
from typing import Union

from lab import Lab

logger = logging.getLogger(__name__)

TYPES = {"A": 1, "MX": 15}
Value = Union[str, tuple[int, str]]
Records = Mapping[tuple[str, str], Sequence[Value]]


def encode_name(name: str) -> bytes:
    """A domain name in DNS wire format (RFC 1035 §3.1), uncompressed."""
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def read_question(packet: bytes) -> tuple[int, int, str, int, int] | None:
    """(id, flags, name, qtype, end offset of the question) of a one-question query."""
    if len(packet) < 12:
        return None
    query_id, flags, qdcount = struct.unpack("!HHH", packet[:6])
    if qdcount != 1:
        return None
    labels, offset = [], 12
    while offset < len(packet):
        length = packet[offset]
        offset += 1
        if length == 0:
            break
        if length & 0xC0:  # no compression in a question we send ourselves
            return None
        labels.append(packet[offset:offset + length].decode("ascii", "replace"))
        offset += length
    if offset + 4 > len(packet):
        return None
    qtype, _qclass = struct.unpack("!HH", packet[offset:offset + 4])
    return query_id, flags, ".".join(labels).lower(), qtype, offset + 4


def rdata(rtype: str, value: Value) -> bytes:
    if rtype == "A":
        assert isinstance(value, str)
        return ipaddress.IPv4Address(value).packed
    assert isinstance(value, tuple)
    preference, host = value
    return struct.pack("!H", preference) + encode_name(host)


def build_answer(packet: bytes, records: Records) -> bytes | None:
    """The reply to one query, or None for a packet that is not one."""
    parsed = read_question(packet)
    if parsed is None:
        return None
    query_id, flags, name, qtype, end = parsed
    question = packet[12:end]
    rtype = next((k for k, v in TYPES.items() if v == qtype), None)
    values = list(records.get((name, rtype), ())) if rtype else []
    known = any(key[0] == name for key in records)
    rcode = 0 if known else 3  # NOERROR / NXDOMAIN
    # QR, AA, and the client's RD bit echoed; RA off (we are authoritative only).
    reply_flags = 0x8000 | 0x0400 | (flags & 0x0100) | rcode
    header = struct.pack("!HHHHHH", query_id, reply_flags, 1, len(values), 0, 0)
    answers = b""
    for value in values:
        assert rtype is not None
        data = rdata(rtype, value)
        # Owner name as a pointer to the question's name at offset 12 (RFC 1035 §4.1.4).
        answers += struct.pack("!HHHIH", 0xC00C, qtype, 1, 300, len(data)) + data
    return header + question + answers


class DnsResponder(Lab):
    """Answers DNS queries on 127.0.0.1:``port`` (0 = a free port) from ``records``."""

    def __init__(self, records: Records, port: int = 0) -> None:
        for (_name, rtype), values in records.items():
            if rtype == "A":
                for value in values:
                    if not ipaddress.ip_address(str(value)).is_loopback:
                        raise ValueError(f"refusing non-loopback A record {value}")
        self.records = {(name.lower().rstrip("."), rtype): list(values)
                        for (name, rtype), values in records.items()}
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.port = int(self.sock.getsockname()[1])
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def start(self) -> None:
        self.sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._serve, name="dns-lab", daemon=True)
        self._thread.start()
        logger.info("DNS responder on 127.0.0.1:%d", self.port)

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                packet, peer = self.sock.recvfrom(1500)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = build_answer(packet, self.records)
            if reply is not None:
                self.queries += 1
                self.sock.sendto(reply, peer)

    def stop(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.sock.close()
