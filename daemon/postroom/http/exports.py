"""`GET /v1/exports` (the kinds, with their columns) and `GET /v1/exports/{kind}` (one kind's rows in
a date range, as CSV or JSON lines), streamed chunk by chunk as the rows are read
(`exports.stream.export_chunks`): a million-row export holds one chunk in memory.

Errors found before the first byte are the usual JSON errors (404 for a kind no one registered,
400 for a bad date or format, 503 when the database cannot be read). A failure once the body has
begun cannot change the status any more: the connection is closed before the chunked body's end,
so the client sees a truncated download, never a complete-looking one.
"""

from __future__ import annotations

import datetime
import logging
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from postroom.core.clock import Clock
from postroom.core.errors import PostroomError
from postroom.exports.model import ExportRangeError, ExportRegistry, UnknownExportKind
from postroom.exports.range import date_range
from postroom.exports.stream import export_chunks
from postroom.exports.writers import writer_for
from postroom.http.auth import requires
from postroom.http.bodies import validated_query
from postroom.http.errors import ApiError
from postroom.http.openapi import operation
from postroom.metrics import Metrics
from postroom.store.credentials import Role

logger = logging.getLogger(__name__)


class ExportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: str | None = Field(default=None, max_length=64,
                              description="from this date or time, inclusive (2026-12-01, 2026-12-01T10:00:00Z; UTC)")
    until: str | None = Field(default=None, max_length=64, description="to this date or time, exclusive")
    format: Literal["csv", "jsonl"] = Field(default="csv", description="csv (RFC 4180) or jsonl (JSON lines)")


class ExportRoutes:
    def __init__(self, registry: ExportRegistry, metrics: Metrics, clock: Clock):
        self._registry = registry
        self._metrics = metrics
        self._clock = clock

    def register(self, app: web.Application) -> None:
        app.router.add_get("/v1/exports", self.kinds)
        app.router.add_get("/v1/exports/{kind}", self.export)

    @operation(summary="The kinds of export: name, description, columns and the column the date range filters on",
               responses={200: ("`data`: the kinds, by name", None)}, tags=("exports",))  # fmt: skip
    @requires(Role.VIEWER)
    async def kinds(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [kind.describe() for kind in self._registry.kinds()]})

    @operation(summary="One kind's rows in a date range, streamed as CSV (text/csv) or JSON lines "
                       "(application/x-ndjson), as an attachment",
               query=ExportQuery,
               responses={200: ("the rows (CSV with a header row, or one JSON object a line)", None),
                          400: ("a bad date, range or format", None), 404: ("no export kind of that name", None),
                          503: ("the database cannot be read now; retry later", None)},
               tags=("exports",))  # fmt: skip
    @requires(Role.VIEWER)
    async def export(self, request: web.Request) -> web.StreamResponse:
        try:
            kind = self._registry.get(request.match_info["kind"])
        except UnknownExportKind as exc:
            raise ApiError(404, "not_found", str(exc)) from None
        query = validated_query(ExportQuery, request)
        try:
            span = date_range(query.since, query.until)
        except ExportRangeError as exc:
            raise ApiError(400, "invalid_query", str(exc)) from None
        writer = writer_for(query.format)
        chunks = export_chunks(kind, span, writer, self._metrics, surface="http")
        try:
            # The first chunk before the answer: a database that cannot be read is still a 503.
            first = await anext(chunks)
        except BaseException:
            await chunks.aclose()
            raise
        stamp = datetime.datetime.fromtimestamp(self._clock.now(), datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        response = web.StreamResponse(headers={
            "Content-Type": writer.media_type,
            "Content-Disposition": f'attachment; filename="postroom-{kind.name}-{stamp}.{writer.extension}"',
            "Cache-Control": "no-store",
        })  # fmt: skip
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            await response.write(first.encode())
            async for chunk in chunks:
                await response.write(chunk.encode())
        except ConnectionResetError:
            logger.info("export of %s: the client went away", kind.name)
            return response
        except PostroomError as exc:
            logger.error("export of %s failed part-way: %s", kind.name, exc)
            if request.transport is not None:
                request.transport.close()  # no end chunk: the client sees the body is incomplete
            return response
        finally:
            await chunks.aclose()
        await response.write_eof()
        return response
