"""Provider rules: where a mailbox provider's wording is systematic enough to say more than the
generic phrase families. Each rule names the provider by the recipient's domain, the host that
refused or the domain that sent the bounce, never by anything in one particular message.
"""

from __future__ import annotations

import re

_GOOGLE_SENDER = re.compile(r"@(?:googlemail|google)\.com\b", re.I)
# Exchange Online's directory-based edge blocking: the address is not in the tenant's directory.
_MICROSOFT_DIRECTORY_REFUSAL = re.compile(r"5\.4\.1\b.{0,80}recipient address rejected: access denied", re.I)


def adjust_for_provider(
    reason: str,
    address: str,
    bounce_from: str,
    remote_host: str | None,
    diagnostic: str,
    status: str | None,
) -> str:
    """The reason after the provider's own conventions (unchanged when no rule applies)."""
    if (address.endswith("@googlegroups.com") and _GOOGLE_SENDER.search(bounce_from)
            and not (status or "").endswith(".1.1")):  # fmt: skip
        # Google Groups refuses a post when the group does not exist or the sender may not post;
        # the notice is localised, the group address and Google's sender are not.
        return "rejected"
    if _MICROSOFT_DIRECTORY_REFUSAL.search(diagnostic):
        return "userunknown"
    return reason
