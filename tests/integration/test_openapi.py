"""`GET /v1/openapi.json` on the daemon as it runs: a valid OpenAPI 3.1 document of the native API
and the Loops-compatible API, every route of the served app documented, and request schemas that
are those of the models that validate the requests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from openapi_spec_validator import validate
from prometheus_client import CollectorRegistry

from postroom.config import HttpSettings
from postroom.http.app import Mount, build_app
from postroom.http.auth import requires
from postroom.http.openapi import REF_TEMPLATE, operation, undocumented_routes
from postroom.loops.transactional import TransactionalIn
from postroom.metrics import Metrics
from postroom.store.credentials import ApiKey, Role
from postroom.submission.fields import MessageIn
from tests.conftest import RunningDaemon, running
from tests.support import make_settings


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[RunningDaemon]:
    async with running(make_settings(tmp_path)) as daemon:
        yield daemon


async def fetched(daemon: RunningDaemon) -> tuple[int, str, Any]:
    """(status, content type, document) of `GET /v1/openapi.json` without an API key."""
    async with aiohttp.ClientSession(daemon.http) as session, session.get("/v1/openapi.json") as response:
        return response.status, response.content_type, await response.json()


def body_schema(document: dict[str, Any], path: str, method: str = "post") -> Any:
    return document["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]


def response_schema(document: dict[str, Any], path: str, method: str, status: str) -> Any:
    return document["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]


def assert_components_hold(document: dict[str, Any], model: type[Any]) -> None:
    """The model's own JSON Schema, and each schema it uses, are in components under their names."""
    expected = model.model_json_schema(ref_template=REF_TEMPLATE)
    defs = expected.pop("$defs", {})
    schemas = document["components"]["schemas"]
    assert schemas[model.__name__] == expected
    for name, schema in defs.items():
        assert schemas[name] == schema, name


async def test_the_document_is_valid_openapi_3_1_and_needs_no_key(daemon: RunningDaemon) -> None:
    status, content_type, document = await fetched(daemon)
    assert (status, content_type) == (200, "application/json")
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema
    assert document["openapi"] == "3.1.0"
    assert {"/v1/messages", "/v1/messages/{id}", "/api/v1/transactional", "/api/v1/contacts/create"} <= set(
        document["paths"]
    )
    assert document["paths"]["/v1/openapi.json"]["get"]["security"] == []


async def test_every_route_of_the_served_app_is_documented(daemon: RunningDaemon) -> None:
    app = daemon.daemon.http_app
    assert app is not None
    assert undocumented_routes(app) == []
    _, _, document = await fetched(daemon)
    # The walk reaches the mounted Loops API, its catch-all included (any method, a path parameter).
    assert {"get", "post", "put", "patch", "delete"} <= set(document["paths"]["/api/{tail}"])
    assert "/api/v1/transactional-emails/{id}/publish" in document["paths"]


async def test_the_loops_transactional_body_is_the_schema_of_transactional_in(daemon: RunningDaemon) -> None:
    _, _, document = await fetched(daemon)
    assert body_schema(document, "/api/v1/transactional") == {"$ref": "#/components/schemas/TransactionalIn"}
    assert_components_hold(document, TransactionalIn)
    transactional = document["components"]["schemas"]["TransactionalIn"]
    assert "transactionalId" in transactional["properties"] and "transactionalId" in transactional["required"]
    assert body_schema(document, "/v1/messages") == {"$ref": "#/components/schemas/MessageIn"}
    assert_components_hold(document, MessageIn)


async def test_roles_and_error_shapes_are_each_apis_own(daemon: RunningDaemon) -> None:
    _, _, document = await fetched(daemon)
    send = document["paths"]["/v1/messages"]["post"]
    assert send["security"] == [{"apiKey": []}] and send["x-postroom-role"] == "sender"
    assert document["paths"]["/v1/templates"]["post"]["x-postroom-role"] == "templates"
    assert document["paths"]["/api/v1/contacts/suppression"]["delete"]["x-postroom-role"] == "admin"
    assert document["paths"]["/healthz"]["get"]["security"] == []
    native_error = {"$ref": "#/components/schemas/ErrorBody"}
    assert response_schema(document, "/v1/messages", "post", "401") == native_error
    assert response_schema(document, "/v1/messages", "post", "409") == native_error
    loops_error = {"anyOf": [{"$ref": "#/components/schemas/LoopsFailure"},
                             {"$ref": "#/components/schemas/LoopsFieldFailure"}]}  # fmt: skip
    assert response_schema(document, "/api/v1/transactional", "post", "404") == loops_error
    assert response_schema(document, "/api/v1/transactional", "post", "401") == {
        "$ref": "#/components/schemas/InvalidApiKey"
    }


async def test_query_parameters_come_from_the_validating_model(daemon: RunningDaemon) -> None:
    _, _, document = await fetched(daemon)
    parameters = {p["name"]: p for p in document["paths"]["/v1/messages"]["get"]["parameters"]}
    assert set(parameters) == {"limit", "before", "state", "recipient", "from", "stream", "since", "until"}
    assert parameters["limit"]["schema"]["maximum"] == 500
    inspect = document["paths"]["/v1/messages/{id}"]["get"]["parameters"]
    assert inspect == [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]


class OneKey:
    async def authenticate(self, token: str) -> ApiKey | None:
        return None


class Mixed:
    """One documented route, one not."""

    def register(self, app: web.Application) -> None:
        app.router.add_get("/v1/documented", self.documented)
        app.router.add_post("/v1/bare", self.bare)

    @requires(Role.VIEWER)
    @operation(summary="documented", responses={200: ("ok", None)})
    async def documented(self, request: web.Request) -> web.Response:
        return web.json_response({})

    @requires(Role.VIEWER)
    async def bare(self, request: web.Request) -> web.Response:
        return web.json_response({})


async def test_a_route_without_operation_is_listed_in_a_mounted_app_too() -> None:
    async def hidden(request: web.Request) -> web.Response:
        return web.json_response({})

    mounted = web.Application()
    mounted.router.add_get("/hidden/{name}", hidden)
    app = build_app(HttpSettings(listen="127.0.0.1:0"), OneKey(), Metrics(CollectorRegistry()), [Mixed()],
                    [Mount("/other", mounted)])  # fmt: skip
    assert undocumented_routes(app) == ["POST /v1/bare", "GET /other/hidden/{name}"]
