"""The OpenAPI 3.1 document of the HTTP API, read off the running application: every route of the
root app and of each mounted sub-app, the role its handler is marked with (by the same function its
API's auth middleware asks), and the pydantic models that validate its body and query, which
`@operation` attaches to the handler beside `@requires`. Nothing here is a spec written beside the
code: a route whose handler has no `@operation` is listed by `undocumented_routes`, and a test
keeps that list empty.

Each API (the root's, a mounted one) says through `API_CONVENTIONS` what its routes cannot: how a
handler's role is found and what its error bodies look like (`{"error": {"code", "message"}}` for
the native API, Loops' shapes for the Loops-compatible one).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from aiohttp import web
from aiohttp.web_urldispatcher import PrefixedSubAppResource
from pydantic import BaseModel

from postroom.store.credentials import Role

F = TypeVar("F", bound=Callable[..., Any])
Model = type[BaseModel]
SchemaMode = Literal["validation", "serialization"]

REF_TEMPLATE = "#/components/schemas/{model}"
SECURITY_SCHEME = "apiKey"
_ATTRIBUTE = "openapi_operation"
# What aiohttp's "*" route answers, as OpenAPI has no wildcard method.
_ANY_METHOD = ("get", "post", "put", "patch", "delete")
_PATH_PARAMETER = re.compile(r"\{([^}/]+)\}")


@dataclass(frozen=True)
class Operation:
    """What a handler says of itself: its summary, the models that validate its body and query,
    its answers by status (a description and the model of the body, or None), its tags."""

    summary: str
    body: Model | None
    query: Model | None
    responses: Mapping[int, tuple[str, Model | None]]
    tags: tuple[str, ...]
    headers: Mapping[str, str]  # request headers the handler reads: name -> what it means


def operation(
    *,
    summary: str,
    body: Model | None = None,
    query: Model | None = None,
    responses: Mapping[int, tuple[str, Model | None]],
    tags: tuple[str, ...] = (),
    headers: Mapping[str, str] | None = None,
) -> Callable[[F], F]:
    """Attach the OpenAPI metadata of a route handler (in any order with `@requires`)."""

    def attach(handler: F) -> F:
        setattr(handler, _ATTRIBUTE, Operation(summary, body, query, dict(responses), tags, dict(headers or {})))
        return handler

    return attach


def operation_of(handler: Callable[..., Any]) -> Operation | None:
    found = getattr(handler, _ATTRIBUTE, None)
    return found if isinstance(found, Operation) else None


@dataclass(frozen=True)
class ApiConventions:
    """What one API's routes do not say: the role a handler needs (None: public), found as its
    auth middleware finds it, and the models of its error bodies (the first is the usual one)."""

    name: str
    role_of: Callable[[Callable[..., Any]], Role | None]
    errors: tuple[Model, ...]
    unauthorized: Model | None = None  # when 401 has a body of its own


API_CONVENTIONS = web.AppKey("openapi_conventions", ApiConventions)
_PUBLIC = ApiConventions("api", lambda handler: None, ())


@dataclass(frozen=True)
class Route:
    method: str  # upper case; "*" for any
    path: str  # the full path, with `{name}` for each path parameter
    handler: Callable[..., Any]
    conventions: ApiConventions


def routes_of(app: web.Application, conventions: ApiConventions = _PUBLIC) -> Iterator[Route]:
    """Every route of `app` and of its mounted sub-apps (whose paths aiohttp has prefixed when it
    mounted them); a sub-app without conventions of its own follows its parent's. HEAD routes
    that aiohttp adds beside a GET are not routes of their own."""
    conventions = app.get(API_CONVENTIONS, conventions)
    for resource in app.router.resources():
        if isinstance(resource, PrefixedSubAppResource):  # MatchedSubAppResource (by domain) too
            yield from routes_of(resource.get_info()["app"], conventions)
        else:
            # A path parameter with a pattern, `{tail:.*}`, is `{tail}` in canonical.
            path = resource.canonical
            gets = {route.handler for route in resource if route.method == "GET"}
            for route in resource:
                if route.method == "HEAD" and route.handler in gets:
                    continue
                yield Route(route.method, path, route.handler, conventions)


def undocumented_routes(app: web.Application) -> list[str]:
    """`METHOD /path` of each route whose handler has no `@operation`."""
    return [f"{r.method} {r.path}" for r in routes_of(app) if operation_of(r.handler) is None]


class Components:
    """`components.schemas`: each model's JSON Schema under its name, with the models it uses
    (pydantic's `$defs`) beside it. Two different schemas under one name are refused."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, model: Model, mode: SchemaMode = "validation") -> dict[str, Any]:
        schema = self.inline(model, mode)
        if set(schema) == {"$ref"}:  # a self-referencing model: pydantic put it in $defs
            return schema
        self._add(model.__name__, schema)
        return {"$ref": REF_TEMPLATE.format(model=model.__name__)}

    def inline(self, model: Model, mode: SchemaMode = "validation") -> dict[str, Any]:
        """The model's schema, its `$defs` moved here."""
        schema = model.model_json_schema(ref_template=REF_TEMPLATE, mode=mode)
        for name, definition in schema.pop("$defs", {}).items():
            self._add(name, definition)
        return schema

    def _add(self, name: str, schema: Any) -> None:
        if self.schemas.setdefault(name, schema) != schema:
            raise ValueError(f"two different schemas are named {name!r}")


def openapi_document(app: web.Application, *, title: str = "postroom", version: str = "0") -> dict[str, Any]:
    """The OpenAPI 3.1 document of `app` and its mounted sub-apps. Routes without `@operation`
    are left out (see `undocumented_routes`)."""
    components = Components()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes_of(app):
        described = operation_of(route.handler)
        if described is None:
            continue
        methods = _ANY_METHOD if route.method == "*" else (route.method.lower(),)
        for method in methods:
            paths.setdefault(route.path, {})[method] = _operation(route, method, described, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components.schemas,
            "securitySchemes": {SECURITY_SCHEME: {"type": "http", "scheme": "bearer",
                                                  "description": "an API key (`postroom apikeys create`)"}},
        },
    }  # fmt: skip


def _operation(route: Route, method: str, described: Operation, components: Components) -> dict[str, Any]:
    conventions = route.conventions
    role = conventions.role_of(route.handler)
    out: dict[str, Any] = {
        "operationId": method + "_" + "_".join(re.findall(r"[A-Za-z0-9]+", route.path)),
        "summary": described.summary,
        "tags": list(described.tags or (conventions.name,)),
    }
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in _PATH_PARAMETER.findall(route.path)]  # fmt: skip
    if described.query is not None:
        parameters += _query_parameters(described.query, components)
    parameters += [{"name": name, "in": "header", "required": False, "description": meaning,
                    "schema": {"type": "string"}} for name, meaning in described.headers.items()]  # fmt: skip
    if parameters:
        out["parameters"] = parameters
    if described.body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": components.ref(described.body)}}}
    if role is None:
        out["security"] = []
    else:
        out["security"] = [{SECURITY_SCHEME: []}]
        out["description"] = f"Needs an API key whose role allows `{role}`."
        out["x-postroom-role"] = role.value
    out["responses"] = _responses(described, role, conventions, components)
    return out


def _query_parameters(model: Model, components: Components) -> list[dict[str, Any]]:
    schema = components.inline(model)
    required = set(schema.get("required", ()))
    parameters = []
    for name, field in schema.get("properties", {}).items():
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": field}
        if "description" in field:
            parameter["description"] = field["description"]
        parameters.append(parameter)
    return parameters


def _responses(described: Operation, role: Role | None, conventions: ApiConventions,
               components: Components) -> dict[str, Any]:  # fmt: skip
    def error(description: str, models: tuple[Model, ...] = conventions.errors) -> dict[str, Any]:
        refs = [components.ref(m, "serialization") for m in models]
        if not refs:
            return {"description": description}
        schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    out: dict[int, dict[str, Any]] = {}
    for status, (description, model) in described.responses.items():
        if model is not None:
            content = {"application/json": {"schema": components.ref(model, "serialization")}}
            out[status] = {"description": description, "content": content}
        elif status >= 400:
            out[status] = error(description)
        else:
            out[status] = {"description": description}
    implied: dict[int, dict[str, Any]] = {}
    if described.body is not None or described.query is not None:
        implied[400] = error("the request is not valid: the message names the field")
    if described.body is not None:
        implied[413] = error("the body is larger than http.max_body_size")
        implied[415] = error("the body is not application/json")
    if role is not None:
        unauthorized = (conventions.unauthorized,) if conventions.unauthorized else conventions.errors
        implied[401] = error("no API key, or an unknown or revoked one", unauthorized)
        implied[403] = error(f"the API key's role does not allow `{role}`")
        implied[429] = {**error("the API key is over its rate limit ([http.rate_limit]); every answer to a "
                                "keyed request carries x-ratelimit-limit and x-ratelimit-remaining"),
                        "headers": {"Retry-After": {"description": "seconds until a request would pass",
                                                    "schema": {"type": "integer"}}}}  # fmt: skip
    for status, response in implied.items():
        out.setdefault(status, response)
    return {**{str(status): out[status] for status in sorted(out)},
            "default": error("an unexpected failure (503 with Retry-After: retry later)")}  # fmt: skip
