"""Value readers shared by settings sections: a list of secrets given as text, an http(s) URL."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit


def text_list(value: Any) -> Any:
    """A TOML array as it is; text (an env variable, an `X_file`) split at whitespace and commas,
    one item per line or comma-separated."""
    if isinstance(value, str):
        return tuple(part for part in re.split(r"[\s,]+", value) if part)
    return value


def http_url(value: str, *, bare: bool = False) -> str:
    """An http:// or https:// URL without its trailing slash; `bare`: no query or fragment either.
    ValueError naming what is wrong."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    if bare and (parts.query or parts.fragment):
        raise ValueError("the URL takes no query or fragment")
    return value.rstrip("/")
