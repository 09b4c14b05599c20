"""The error tree: one root, one branch per boundary.

Adapters translate driver errors into these at the boundary (`raise StoreError(...) from exc`), so
callers never see an aiosqlite or asyncpg exception and peers never see exception text.
"""


class PostroomError(Exception):
    """Root of every error postroom raises on purpose."""


class ConfigError(PostroomError):
    """The configuration is invalid; `problems` lists (key, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{key}: {reason}" for key, reason in problems))


class StoreError(PostroomError):
    """The database could not do what was asked (unreachable, full disk, locked too long)."""


class SchemaNotCurrentError(StoreError):
    """The database schema is not at the version this code expects."""


class NotFoundError(PostroomError):
    """The thing asked for does not exist."""


class ConflictError(PostroomError):
    """The request conflicts with stored state (for example a reused idempotency key)."""


class InvalidMessageError(PostroomError):
    """A submitted message is malformed; the text is safe to show to the submitter."""



class TemplateError(PostroomError):
    """A template that cannot be compiled, or data it cannot be rendered with; each problem names
    its place (a file and line, or the path of a data variable). Safe to show to the submitter."""

    def __init__(self, code: str, problems: list[str]):
        self.code = code  # "invalid_template", "invalid_data", "render_failed"
        self.problems = problems
        super().__init__("; ".join(problems))
