"""Provider rules: where a mailbox provider's wording is systematic enough to say more than the
generic phrase families. Each rule names the provider by the host that refused or the domain that
sent the bounce, never by anything in one particular message.
"""

from __future__ import annotations


def adjust_for_provider(
    reason: str, bounce_from: str, remote_host: str | None, diagnostic: str, status: str | None
) -> str:
    """The reason after the provider's own conventions (unchanged when no rule applies)."""
    return reason
