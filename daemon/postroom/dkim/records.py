"""DKIM key records as published in DNS: reading tag=value lists, and judging a published record.

`parse_tag_list` (strict, for DKIM key records) and `parse_tag_specs` (lenient, for DMARC records,
which borrow the syntax: RFC 7489 §6.3) are postroom's only readers of the RFC 6376 §3.2 tag=value
syntax; the syntax work is dkimpy's `parse_tag_value`, this module only adapts it to `str` and
our error. `compare_published_key` is
the one judgement of whether the TXT values at a selector publish our key: `domains.checks` reports
it, `dkim.rotation.KeyMonitor` activates a pending selector on it, so the two cannot disagree.
Everything here is a pure function of strings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from dkim.util import DuplicateTag, InvalidTagValueList, parse_tag_value  # type: ignore[import-untyped]

KeyVerdict: TypeAlias = Literal["ok", "missing", "wrong"]

# dkimpy checks a tag name with `re.match` and no end anchor, so it takes "a-b" or "p x" as names;
# RFC 6376 §3.2 says tag-name = ALPHA *ALNUMPUNC, and postroom has always refused the rest.
_TAG_NAME = re.compile(rb"[A-Za-z][A-Za-z0-9_]*")
# Surrogates survive the trip to bytes and back, so no str (even one DNS decoding left odd) fails.
_ENCODING, _ERRORS = "utf-8", "surrogatepass"


class MalformedTagList(ValueError):
    """Text that is not an RFC 6376 §3.2 tag=value list; the message says which part is wrong."""


def parse_tag_list(text: str) -> dict[str, str]:
    """The tags of a tag=value list, by name as written (names are case-sensitive, RFC 6376 §3.2).

    Values lose the whitespace around them, not inside them: a folded p= still holds its spaces,
    which `compare_published_key` removes. Raises MalformedTagList for a spec without "=", a name
    that is not ALPHA *(ALPHA / DIGIT / "_") or a name given twice (which voids the whole list).
    Empty specs (";;", a leading ";") are skipped, as postroom always has, though the grammar has
    no place for them and dkimpy alone would refuse them.
    """
    return _parse(b";".join(_specs(text)))


def parse_tag_specs(text: str) -> list[tuple[str, str]]:
    """The well-formed (name, value) specs of a tag=value list in order, for readers that must
    ignore what they cannot parse (DMARC, RFC 7489 §6.3) instead of refusing the whole list;
    a repeated name is kept each time, for the caller to choose which wins."""
    pairs: list[tuple[str, str]] = []
    for spec in _specs(text):
        try:
            pairs += _parse(spec).items()
        except MalformedTagList:
            continue
    return pairs


def parse_key_record(value: str) -> tuple[str, str]:
    """The key type (k=, default rsa, lower-cased) and public key (p=, whitespace removed) of a
    DKIM key record. Raises ValueError (MalformedTagList when the list is malformed) when the
    record publishes no key."""
    kind, key = _key_of(parse_tag_list(value))
    if not key:
        raise ValueError("DKIM key record without a public key (p=)")
    return kind, key


@dataclass(frozen=True)
class KeyComparison:
    """How the TXT values at a selector compare with our key record, and why in words."""

    verdict: KeyVerdict
    detail: str

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


def compare_published_key(name: str, found: Sequence[str], expected: str) -> KeyComparison:
    """Do the TXT values `found` at `name` publish the key of our record `expected`?

    Compares k= (default rsa, any case) and p= with whitespace removed, so tag order, spacing and
    how the record was cut into strings do not matter (RFC 6376 §3.6.2.2); tag names are
    case-sensitive (RFC 6376 §3.2), so "P=" publishes no key. Raises ValueError when `expected`
    publishes no key.
    """
    try:
        wanted_kind, wanted_key = parse_key_record(expected)
    except ValueError:
        raise ValueError(f"expected DKIM record for {name} has no public key (p=)") from None
    if not found:
        return KeyComparison("missing", f"no TXT record at {name}")
    if len(found) > 1:
        # RFC 6376 §3.6.2.2: with several TXT records at a selector the result is undefined.
        return KeyComparison("wrong", f"{len(found)} TXT records at {name}; publish exactly one")
    try:
        published = parse_tag_list(found[0])
    except MalformedTagList:
        return KeyComparison("wrong", "not a DKIM key record (malformed tag=value list)")
    if published.get("v", "DKIM1") != "DKIM1":
        return KeyComparison("wrong", f"v={published['v']}, expected v=DKIM1")
    kind, key = _key_of(published)
    if not key:
        return KeyComparison("wrong", "no public key (empty p= means revoked, RFC 6376 §3.6.1)")
    if kind != wanted_kind:
        return KeyComparison("wrong", f"key type k={kind}, expected k={wanted_kind}")
    if key != wanted_key:
        return KeyComparison("wrong", "the published key is not the public half of our key")
    testing = "y" in published.get("t", "").split(":")
    return KeyComparison("ok", "key matches" + ("; testing mode (t=y)" if testing else ""))


def _key_of(tags: dict[str, str]) -> tuple[str, str]:
    # RFC 6376 §3.6.1: whitespace inside p= is ignored (it is where long records get folded).
    return tags.get("k", "rsa").lower(), "".join(tags.get("p", "").split())


def _specs(text: str) -> list[bytes]:
    return [spec for spec in text.encode(_ENCODING, _ERRORS).split(b";") if spec.strip()]


def _parse(tag_list: bytes) -> dict[str, str]:
    try:
        tags: dict[bytes, bytes] = parse_tag_value(tag_list)
    except DuplicateTag as exc:
        raise MalformedTagList(f"tag {_show(exc)} given twice") from None
    except InvalidTagValueList as exc:
        raise MalformedTagList(f"{_show(exc)} is not a tag=value spec") from None
    for tag in tags:
        if not _TAG_NAME.fullmatch(tag):
            raise MalformedTagList(f"{_show(tag)} is not a tag name")
    return {tag.decode("ascii"): value.decode(_ENCODING, _ERRORS) for tag, value in tags.items()}


def _show(part: bytes | Exception) -> str:
    # dkimpy's exceptions carry the offending spec or name as their only argument.
    if isinstance(part, Exception):
        part = part.args[0] if part.args and isinstance(part.args[0], bytes) else b""
    return repr(part.decode(_ENCODING, "backslashreplace").strip())
