"""RFC 3834 automatic responses: vacation notices and other auto-replies. Never a bounce.

An auto-reply is recognised by the headers RFC 3834 §5 defines (`Auto-Submitted: auto-replied`)
and by the de-facto ones of common responders (`X-Autoreply`, `X-Autorespond`,
`Precedence: auto_reply`, Exchange's `X-Auto-Response-Suppress` together with an
"Automatic reply" subject), or by subjects in the usual out-of-office wording. Delivery status
notifications also say `Auto-Submitted`, so callers look for a DSN first.
"""

from __future__ import annotations

import re

from postroom.bounces.mime import ReadMessage

_AUTO_SUBJECT = re.compile(
    r"^\s*(?:auto(?:matic)?[ -]?(?:reply|response|antwort|réponse)|autoreply|auto:|out of (?:the )?office|"
    r"away from (?:the )?office|on vacation|vacation|abwesenheit|absence|自動応答|自動返信|不在)",
    re.IGNORECASE,
)


def is_auto_reply(message: ReadMessage) -> bool:
    """Whether the message says it is an automatic response (RFC 3834 §5 and de-facto headers)."""
    auto_submitted = message.header("auto-submitted").lower()
    if auto_submitted.startswith("auto-replied"):
        return True
    for name in ("x-autoreply", "x-autorespond", "x-autoresponder", "x-vacation"):
        if message.header(name):
            return True
    if message.header("precedence").lower() in ("auto_reply", "auto-reply"):
        return True
    return bool(_AUTO_SUBJECT.match(message.header("subject")))
