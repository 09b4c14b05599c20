"""The Jinja2 environment templates render in: sandboxed, strict, and on a budget.

`ImmutableSandboxedEnvironment` refuses attribute access to internals (`__class__`, `__globals__`,
`mro`, function and frame attributes) and calls to unsafe callables, and forbids mutating lists
and dicts, so a template cannot reach the file system, the environment, Python internals or the
network; there are no globals but `range`, and no loader can read files (templates and partials
come from the database or a bundle as strings). `StrictUndefined` makes a missing variable an
error, not an empty string.

What the sandbox does not bound is work: `{% for a in range(99999) %}{% for b in range(99999) %}`
or `'x' * 10**9`. Every render therefore runs under a `RenderBudget` (a deadline and a maximum
output size): `range` is a guarded iterator that checks the deadline as it goes, `*`, `**` and `+`
are intercepted so no single result can outgrow the output limit, calls check the deadline, and
the renderer checks the size of what a render produced. A render past its budget raises
`BudgetExceeded`; it is stopped, not waited for. (Counting every output expression as well cost a
fifth of a render; the loops that could make a long output all check the deadline.)
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from jinja2 import StrictUndefined
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_RANGE = 10_000  # items one range() may produce


class BudgetExceeded(Exception):
    """The render ran past its time or size budget and was stopped."""


@dataclass
class RenderBudget:
    seconds: float = 1.0
    max_output: int = 2 * 1024 * 1024  # characters of output (and of any single value made)
    deadline: float = field(init=False, default=0.0)

    def start(self) -> None:
        self.deadline = time.monotonic() + self.seconds

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise BudgetExceeded(f"the render took longer than {self.seconds:g} s")


_BUDGET: contextvars.ContextVar[RenderBudget | None] = contextvars.ContextVar("render_budget", default=None)


def current_budget() -> RenderBudget:
    budget = _BUDGET.get()
    if budget is None:  # rendering outside `budgeted` (a bug): still bounded
        budget = RenderBudget()
        budget.start()
        _BUDGET.set(budget)
    return budget


@contextlib.contextmanager
def budgeted(budget: RenderBudget) -> Iterator[RenderBudget]:
    """Renders inside the block are bounded by `budget` (started afresh)."""
    budget.start()
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


def guarded_range(*args: int) -> Iterator[int]:
    """`range` for templates: at most MAX_RANGE items, the deadline checked as it goes."""
    values = range(*args)
    if len(values) > MAX_RANGE:
        raise SecurityError(f"range() of more than {MAX_RANGE} items is not allowed in templates")
    budget = current_budget()
    for index, value in enumerate(values):
        if index % 256 == 0:
            budget.check_time()
        yield value


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else 0


# Calls that allocate their result from an argument rather than from their input: padding to a
# width, repeating by a count, replacing with a longer string. Checked before they run.
_PADDING = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})
_WIDE_FORMAT = re.compile(r"\d{6,}")  # a format width or precision of a million or more


def check_growth(name: str, subject: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse, before it runs, a string operation whose result would exceed the output limit."""
    limit = current_budget().max_output
    numbers = [v for v in (*args, *kwargs.values()) if isinstance(v, int) and not isinstance(v, bool)]
    if name in _PADDING | {"indent", "wordwrap", "truncate"} and any(abs(n) > limit for n in numbers):
        raise BudgetExceeded(f"{name}() with a width over the render's output limit")
    if name == "replace" and isinstance(subject, str) and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        occurrences = subject.count(old) if old else len(subject) + 1
        if len(subject) + occurrences * max(0, len(new) - len(old)) > limit:
            raise BudgetExceeded("replace() would exceed the render's output limit")
    if name in ("format", "format_map"):
        texts = [subject, *args] if isinstance(subject, str) else list(args)
        if any(isinstance(t, str) and _WIDE_FORMAT.search(t) for t in texts):
            raise BudgetExceeded("a format width over the render's output limit")


def guarded_filter(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    """A built-in filter that may grow its input, with `check_growth` before and a size check
    after (filters are not routed through the sandbox's `call`)."""

    def guarded(*args: Any, **kwargs: Any) -> Any:
        values = [a for a in args if not isinstance(a, (Context, EvalContext))]
        subject = values[0] if values else None
        check_growth(name, subject, tuple(values[1:]), kwargs)
        result = original(*args, **kwargs)
        if _size(result) > current_budget().max_output:
            raise BudgetExceeded(f"the {name} filter exceeded the render's output limit")
        return result

    for attribute in ("jinja_pass_arg",):  # keep how Jinja passes the context / eval context
        if hasattr(original, attribute):
            setattr(guarded, attribute, getattr(original, attribute))
    return guarded


_GROWING_FILTERS = ("center", "indent", "wordwrap", "format", "replace", "join", "truncate")


class GuardedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *, autoescape: bool):
        super().__init__(
            autoescape=autoescape,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            auto_reload=False,
            cache_size=64,  # one environment per compiled version: its parts and partials
        )
        self.globals.clear()
        self.globals["range"] = guarded_range
        for name in _GROWING_FILTERS:
            self.filters[name] = guarded_filter(name, self.filters[name])

    def getattr(self, obj: Any, attribute: str) -> Any:
        """`order.number` on the data: a dict's key wins over a method of the same name (`items`,
        `values` and `keys` are common variable names), and is read without the sandbox's checks,
        which are for attributes. Everything else goes through the sandbox."""
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget = current_budget()
        budget.check_time()
        name = getattr(__obj, "__name__", "")
        check_growth(name, getattr(__obj, "__self__", None), args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        if _size(result) > budget.max_output:
            raise BudgetExceeded(f"{name or 'a call'} exceeded the render's output limit")
        return result

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = current_budget()
        if operator == "**":
            if isinstance(right, int) and isinstance(left, int) and abs(right) > 64:
                raise SecurityError("exponents over 64 are not allowed in templates")
        if operator == "*" and isinstance(right, int) and _size(left) * abs(right) > budget.max_output:
            raise BudgetExceeded("a repetition would exceed the render's output limit")
        if operator == "*" and isinstance(left, int) and _size(right) * abs(left) > budget.max_output:
            raise BudgetExceeded("a repetition would exceed the render's output limit")
        if operator == "%" and isinstance(left, str) and _WIDE_FORMAT.search(left):
            raise BudgetExceeded("a format width over the render's output limit")
        if operator == "+" and _size(left) + _size(right) > budget.max_output:
            raise BudgetExceeded("a concatenation would exceed the render's output limit")
        budget.check_time()
        return super().call_binop(context, operator, left, right)
