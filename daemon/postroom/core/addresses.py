"""Mailbox syntax checks shared by every ingress (syntax only: a DNS check would block the loop).

Special-use names (RFC 6761) such as `.localhost` and `.invalid` are refused because nothing can be
delivered there; `.test` is allowed, since labs and the quickstart use it, as are single-label
domains on private networks.
"""

import functools

from email_validator import EmailNotValidError, validate_email


@functools.lru_cache(maxsize=65536)  # pure; ingest sees the same senders and recipients again
def valid_mailbox(address: str) -> bool:
    try:
        validate_email(
            address,
            check_deliverability=False,
            allow_smtputf8=True,
            globally_deliverable=False,
            test_environment=True,
        )
    except EmailNotValidError:
        return False
    return True
