"""The DKIM branch of the error tree.

Kept beside the code that raises it rather than in `core.errors`. Every message names the file or
domain and the reason, and never contains key material: these errors reach logs and the command line.
"""

from postroom.core.errors import PostroomError


class DkimKeyError(PostroomError):
    """A DKIM private key could not be loaded, generated or written; the text is safe to log."""


class DkimSigningError(PostroomError):
    """A message could not be signed (no From header, malformed header block, unknown domain)."""
