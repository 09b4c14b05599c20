"""`/v1/templates`: create versions, list, inspect, publish, preview and test-send templates.

Writing, publishing and test sends need the `templates` role (or admin); reading and previews need
a viewer key, and a preview with a key that cannot edit templates renders only the published
version. Template problems (a syntax error, data that
does not match the schema, a render stopped by its budget) are 422 with every problem listed.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from postroom.core.clock import Clock
from postroom.http.auth import caller, requires
from postroom.http.bodies import json_payload, validated
from postroom.http.errors import refusal_error
from postroom.http.ratelimit import limited_as
from postroom.http.openapi import operation
from postroom.store.credentials import Role
from postroom.submission.fields import MessageIn, build_submission
from postroom.submission.outcome import Caller, Refusal
from postroom.submission.service import SubmissionService
from postroom.templates.model import Rendered, TemplateKind, TemplateSource, TemplateSummary, TemplateVersion
from postroom.templates.service import TemplateService

TemplateId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TemplateIn(_Body):
    id: TemplateId
    kind: TemplateKind = TemplateKind.TEMPLATE
    subject: Annotated[str, Field(max_length=998)] = ""
    html: str
    text: str | None = None
    preheader: str | None = None
    sender: str | None = Field(default=None, alias="from")
    reply_to: str | None = None
    stream: Annotated[str, Field(min_length=1, max_length=64)] = "transactional"
    layout: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")

    def source(self) -> TemplateSource:
        return TemplateSource(kind=self.kind, subject=self.subject, html=self.html, text=self.text,
                              preheader=self.preheader, sender=self.sender, reply_to=self.reply_to,
                              stream=self.stream, layout=self.layout, schema=self.schema_)  # fmt: skip


class PublishIn(_Body):
    version: Annotated[int, Field(ge=1)]


class PreviewIn(_Body):
    data: dict[str, Any] = Field(default_factory=dict)
    version: Annotated[int, Field(ge=1)] | None = None


class TestSendIn(PreviewIn):
    to: str
    sender: str | None = Field(default=None, alias="from")


def version_json(version: TemplateVersion, *, content: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"version": version.version, "created_by": version.created_by,
                           "created_at": version.created_at}  # fmt: skip
    if content:
        source = asdict(version.source)
        source["from"] = source.pop("sender")
        out.update(source)
    return out


def summary_json(summary: TemplateSummary) -> dict[str, Any]:
    return {"id": summary.template_id, "kind": summary.kind.value, "published": summary.published,
            "latest": summary.latest, "updated_at": summary.updated_at}  # fmt: skip


def rendered_json(rendered: Rendered) -> dict[str, Any]:
    return {"id": rendered.template_id, "version": rendered.version, "subject": rendered.subject,
            "html": rendered.html, "text": rendered.text, "from": rendered.sender,
            "reply_to": rendered.reply_to, "stream": rendered.stream,
            "variables": list(rendered.variables)}  # fmt: skip


class TemplateRoutes:
    def __init__(self, templates: TemplateService, submissions: SubmissionService, clock: Clock, hostname: str):
        self._templates = templates
        self._submissions = submissions
        self._clock = clock
        self._hostname = hostname

    def register(self, app: web.Application) -> None:
        app.router.add_post("/v1/templates", self.create)
        app.router.add_get("/v1/templates", self.list_templates)
        app.router.add_get("/v1/templates/{id}", self.show)
        app.router.add_get("/v1/templates/{id}/versions/{version}", self.show_version)
        app.router.add_post("/v1/templates/{id}/publish", self.publish)
        app.router.add_post("/v1/templates/{id}/preview", self.preview)
        app.router.add_post("/v1/templates/{id}/test", self.test_send)

    @operation(summary="Create a template, or a new version of one", body=TemplateIn,
               responses={201: ("the new version (not published)", None),
                          422: ("the template does not compile; every problem is listed", None)},
               tags=("templates",))  # fmt: skip
    @requires(Role.TEMPLATES)
    async def create(self, request: web.Request) -> web.Response:
        body = validated(TemplateIn, await json_payload(request))
        made = await self._templates.create(body.id, body.source(), f"apikey:{caller(request).id}")
        return web.json_response({"id": made.template_id, **version_json(made, content=False),
                                  "published": False}, status=201)  # fmt: skip

    @operation(summary="Every template: kind, published and latest version",
               responses={200: ("`data`: one summary per template", None)}, tags=("templates",))  # fmt: skip
    @requires(Role.VIEWER)
    async def list_templates(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [summary_json(s) for s in await self._templates.summaries()]})

    @operation(summary="A template: its versions and its current (published, else newest) version",
               responses={200: ("the template", None), 404: ("no template has this id", None)},
               tags=("templates",))  # fmt: skip
    @requires(Role.VIEWER)
    async def show(self, request: web.Request) -> web.Response:
        template_id = request.match_info["id"]
        versions = await self._templates.versions(template_id)  # 404 when none
        summary = next(s for s in await self._templates.summaries() if s.template_id == template_id)
        current = next((v for v in versions if v.version == summary.published), versions[-1])
        return web.json_response({
            **summary_json(summary),
            "versions": [version_json(v, content=False) for v in versions],
            "current": version_json(current),
        })  # fmt: skip

    @operation(summary="One version of a template, with its content",
               responses={200: ("the version", None), 404: ("no such template or version", None)},
               tags=("templates",))  # fmt: skip
    @requires(Role.VIEWER)
    async def show_version(self, request: web.Request) -> web.Response:
        try:
            number = int(request.match_info["version"])
        except ValueError:
            raise web.HTTPNotFound() from None
        found = await self._templates.get(request.match_info["id"], number)
        return web.json_response({"id": found.template_id, **version_json(found)})

    @operation(summary="Publish a version: sends render it from now on", body=PublishIn,
               responses={200: ("`id` and the `published` version", None),
                          404: ("no such template or version", None)},
               tags=("templates",))  # fmt: skip
    @requires(Role.TEMPLATES)
    async def publish(self, request: web.Request) -> web.Response:
        body = validated(PublishIn, await json_payload(request))
        await self._templates.publish(request.match_info["id"], body.version)
        return web.json_response({"id": request.match_info["id"], "published": body.version})

    @operation(summary="Render a version with data, without sending (only the published one without "
                       "the templates role)", body=PreviewIn,
               responses={200: ("the rendering: subject, html, text, from, reply_to, stream, variables", None),
                          404: ("no such template or version", None),
                          422: ("the data does not fit the template's schema, or the render failed", None)},
               tags=("templates",))  # fmt: skip
    @requires(Role.VIEWER)
    async def preview(self, request: web.Request) -> web.Response:
        body = validated(PreviewIn, await json_payload(request))
        rendered = await self._templates.render(
            request.match_info["id"], body.data, body.version,
            published_only=not caller(request).role.allows(Role.TEMPLATES),
        )  # fmt: skip
        return web.json_response(rendered_json(rendered))

    @limited_as("send")
    @operation(summary="Send one rendering to an address, through the submission door", body=TestSendIn,
               responses={202: ("queued: `id`, `template`, `version`", None),
                          404: ("no such template or version", None),
                          422: ("the render failed, or the submission door refused the message", None)},
               tags=("templates",))  # fmt: skip
    @requires(Role.TEMPLATES)
    async def test_send(self, request: web.Request) -> web.Response:
        """Send one rendering to an address, through the submission door like any message."""
        body = validated(TestSendIn, await json_payload(request))
        key = caller(request)
        rendered = await self._templates.render(request.match_info["id"], body.data, body.version)
        message = MessageIn.model_validate({"from": body.sender, "to": [body.to], "stream": rendered.stream,
                                            "template": {"id": rendered.template_id,
                                                         "version": rendered.version},
                                            "data": body.data, "tags": ["template-test"]})  # fmt: skip
        submission = build_submission(message, submitted_by=f"apikey:{key.id}", hostname=self._hostname,
                                      now=self._clock.now(), rendered=rendered)  # fmt: skip
        outcome = await self._submissions.submit(submission, Caller("api", f"apikey:{key.id}"))
        if isinstance(outcome, Refusal):
            raise refusal_error(outcome)
        return web.json_response({"id": outcome.message_id, "template": rendered.template_id,
                                  "version": rendered.version}, status=202)  # fmt: skip
