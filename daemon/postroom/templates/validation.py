"""The data a template version is rendered with, checked against the version's JSON Schema.

Compiled once per version: fastjsonschema (generated Python, fast) decides valid or not and fills
in defaults; only when the data is invalid does `jsonschema` walk it again to name every problem
with its path (`items.0.price: 'x' is not of type 'number'`), since the fast validator stops at the
first. Formats (email, date, uri...) are checked by both.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import SchemaError

from postroom.core.errors import TemplateError

MAX_PROBLEMS = 20


def check_schema(schema: dict[str, Any]) -> list[str]:
    """What is wrong with a schema itself (empty when it is a valid JSON Schema)."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "schema"
        return [f"{where}: {exc.message}"]
    return []


class DataValidator:
    def __init__(self, schema: dict[str, Any]):
        problems = check_schema(schema)
        if problems:
            raise TemplateError("invalid_template", problems)
        self._schema = schema or {"type": "object"}
        self._fast: Callable[[Any], Any] = fastjsonschema.compile(self._schema, use_default=True)
        self._full = Draft202012Validator(self._schema, format_checker=FormatChecker())
        self._has_defaults = '"default"' in json.dumps(self._schema)

    def validate(self, data: Any) -> Any:
        """The data with defaults filled in; TemplateError naming every invalid path."""
        # Defaults are filled in place: work on a copy (a JSON round trip, several times faster
        # than deepcopy for data that came from JSON anyway), and only when there are defaults.
        candidate = data
        if self._has_defaults:
            try:
                candidate = json.loads(json.dumps(data))
            except (TypeError, ValueError):  # not JSON data (a caller's own values): copy it
                candidate = copy.deepcopy(data)
        try:
            return self._fast(candidate)
        except fastjsonschema.JsonSchemaException:
            pass
        problems = []
        for error in sorted(self._full.iter_errors(data), key=lambda e: list(map(str, e.path)))[:MAX_PROBLEMS]:
            where = ".".join(str(p) for p in error.absolute_path) or "data"
            problems.append(f"{where}: {error.message}")
        if not problems:  # the two validators disagree (a format only one knows): the fast one's word
            problems = ["data: does not match the template's schema"]
        raise TemplateError("invalid_data", problems)
