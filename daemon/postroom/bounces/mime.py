"""Reading a returned message into flat, decoded parts, with guards on size and shape.

A bounce is untrusted input from anyone on the internet, so this module never recurses on the
message's structure and stops at fixed limits: the bytes it reads, the number of parts, the depth
of nesting and the length of any one decoded text. What it hands on is a list of `Part` values in
document order, each saying whether it sits inside a returned copy of the original message
(`message/rfc822` or `text/rfc822-headers`, RFC 3462 §1), because addresses found there belong
to the original message, not to the report.
"""

from __future__ import annotations

import codecs
import email
import email.header
import email.parser
import re
from dataclasses import dataclass
from email.message import Message

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # a bounce quotes the original; beyond 4 MB it is only attachment
MAX_PARTS = 256
MAX_DEPTH = 16
MAX_TEXT_CHARS = 512 * 1024

# Content types whose body is another message: what follows is the original, not the report.
ATTACHED_MESSAGE_TYPES = frozenset(
    {"message/rfc822", "text/rfc822-headers", "message/rfc822-headers", "message/partial",
     "message/global", "message/global-headers"}
)  # fmt: skip

# Content types whose body is groups of header-like fields (RFC 3464 §2.1, RFC 5965 §3.1).
FIELD_GROUP_TYPES = frozenset(
    {"message/delivery-status", "message/global-delivery-status", "message/feedback-report"}
)


@dataclass(frozen=True)
class Part:
    """One leaf of the message: its content type, its decoded text and where it sits."""

    content_type: str  # lower-cased "type/subtype"
    text: str
    depth: int
    in_original: bool  # inside a returned copy of the original message


@dataclass(frozen=True)
class ReadMessage:
    """The top-level headers (decoded, lower-cased names; first occurrence wins, all kept in
    `header_list`) and the leaves."""

    headers: dict[str, str]
    header_list: tuple[tuple[str, str], ...]
    parts: tuple[Part, ...]

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


def read_message(raw: bytes) -> ReadMessage:
    """Parse `raw` (truncated to MAX_MESSAGE_BYTES) into headers and decoded leaves."""
    raw = raw[:MAX_MESSAGE_BYTES]
    try:
        message = email.message_from_bytes(raw)
    except RecursionError:
        # The email package parses nested multiparts recursively; a message nested deeper than
        # the interpreter's stack is read as headers and one plain-text body instead.
        message = email.parser.BytesParser().parsebytes(raw, headersonly=True)
        message.set_type("text/plain")
    header_list = tuple((name.lower(), decode_header_value(value)) for name, value in
                        _raw_items(message))  # fmt: skip
    headers: dict[str, str] = {}
    for name, value in header_list:
        headers.setdefault(name, value)
    return ReadMessage(headers, header_list, tuple(_leaves(message)))


def _raw_items(message: Message) -> list[tuple[str, str]]:
    return [(str(name), str(value)) for name, value in message.items()]


def _leaves(root: Message) -> list[Part]:
    """Depth-first leaves, without recursion: a stack of (message, depth, inside-original)."""
    parts: list[Part] = []
    stack: list[tuple[Message, int, bool]] = [(root, 0, False)]
    visited = 0
    while stack and visited < MAX_PARTS:
        message, depth, in_original = stack.pop()
        visited += 1
        content_type = message.get_content_type().lower()
        payload = message.get_payload()
        if content_type in FIELD_GROUP_TYPES and isinstance(payload, list):
            # The email package reads these as a list of header blocks: put the text back together.
            blocks = [_header_text(block) for block in payload if isinstance(block, Message)]
            parts.append(Part(content_type, "\n\n".join(blocks), depth, in_original))
            continue
        if isinstance(payload, list):
            if depth >= MAX_DEPTH:
                continue
            inner_original = in_original or content_type in ATTACHED_MESSAGE_TYPES
            children = [child for child in payload if isinstance(child, Message)]
            if content_type in ATTACHED_MESSAGE_TYPES and children:
                parts.append(Part(content_type, _header_text(children[0]), depth, True))
            stack.extend((child, depth + 1, inner_original) for child in reversed(children))
            continue
        parts.append(Part(content_type, decode_text(message), depth, in_original))
    return parts


def _header_text(message: Message) -> str:
    return "\n".join(f"{name}: {decode_header_value(value)}" for name, value in _raw_items(message))


def decode_text(message: Message) -> str:
    """The body of a leaf as text: transfer-decoded, then charset-decoded with a lenient fallback."""
    try:
        body = message.get_payload(decode=True)
    except Exception:  # noqa: BLE001 - a broken transfer encoding: read the body as it stands
        body = None
    if not isinstance(body, bytes):
        raw = message.get_payload()
        return raw[:MAX_TEXT_CHARS] if isinstance(raw, str) else ""
    body = body[: MAX_TEXT_CHARS * 2]
    charset = _known_charset(message.get_content_charset())
    if charset is None:
        # Undeclared charsets are common in bounces: UTF-8 first, then ISO-2022-JP, then Latin-1.
        charset = "iso-2022-jp" if b"\x1b$B" in body else "utf-8"
    text = body.decode(charset, errors="replace")
    if charset == "utf-8" and "\ufffd" in text:
        text = body.decode("latin-1")
    return text[:MAX_TEXT_CHARS]


def _known_charset(name: str | None) -> str | None:
    if not name:
        return None
    name = name.strip().strip('"').lower()
    if name in ("us-ascii", "ascii", "unknown-8bit", "x-unknown"):
        return "utf-8"
    try:
        codecs.lookup(name)
    except LookupError:
        return None
    return name


_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bqBQ]\?[^?\s]*\?=")


def decode_header_value(value: str) -> str:
    """A header value with RFC 2047 encoded words decoded and folding removed."""
    value = " ".join(value.split())[:MAX_TEXT_CHARS]
    if not _ENCODED_WORD.search(value):
        return value
    try:
        pieces = email.header.decode_header(value)
    except Exception:  # noqa: BLE001 - a malformed encoded word: keep it as written
        return value
    out: list[str] = []
    for piece, charset in pieces:
        if isinstance(piece, bytes):
            out.append(piece.decode(_known_charset(charset) or "utf-8", errors="replace"))
        else:
            out.append(piece)
    return "".join(out)


def html_to_text(html: str) -> str:
    """Just enough of HTML to read a provider's bounce written only in HTML: tags out, breaks in."""
    text = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", html)
    text = re.sub(r"(?i)<\s*(br|/p|/div|/tr|/li|/h\d)\b[^>]*>", "\n", text)
    text = re.sub(r"<[^>]{0,2000}>", " ", text)
    for entity, char in (("&nbsp;", " "), ("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'),
                         ("&#39;", "'"), ("&amp;", "&")):  # fmt: skip
        text = text.replace(entity, char)
    return text


def original_headers(parts: tuple[Part, ...]) -> dict[str, str]:
    """The headers of the returned original message, when the bounce attaches it."""
    for part in parts:
        if part.in_original or part.content_type in ATTACHED_MESSAGE_TYPES:
            return parse_header_block(part.text)
    return {}


def parse_header_block(text: str, limit: int = 200) -> dict[str, str]:
    """RFC 5322 header fields at the start of `text` (folded lines joined; first one wins)."""
    fields: dict[str, str] = {}
    name = ""
    for count, line in enumerate(text.splitlines()):
        if count > limit * 4 or not line.strip():
            break
        if line[:1] in (" ", "\t") and name:
            fields[name] += " " + line.strip()
            continue
        match = re.match(r"([!-9;-~]{1,80}):\s?(.*)", line)
        if not match:
            break
        name = match.group(1).lower()
        if name in fields:
            name = ""  # keep the first one; continuation lines of later copies are dropped
            continue
        fields[name] = match.group(2).strip()
    return {key: value for key, value in fields.items() if key}
