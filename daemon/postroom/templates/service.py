"""`TemplateService`: what the API, the CLI and message sending ask of templates.

Versions are immutable and numbered per template; a template's published pointer says which
version sending uses by default. Creating a version compiles it first (with the layout and
partials it would render with), so a template that does not compile is never stored; pushing a
directory also renders each template's example. A compiled template is kept per (version, layout
version, partial versions), so a render costs validation, Jinja and CSS inlining only; which
versions are published is looked up again at most every `pointer_ttl` seconds, so a publish takes
effect everywhere within that time. Rendering runs in a thread: the event loop only waits.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from postroom.core.clock import Clock
from postroom.core.errors import NotFoundError, TemplateError
from postroom.templates.bundle import BundleEntry, valid_template_id
from postroom.templates.compiler import CompiledTemplate
from postroom.templates.model import Rendered, TemplateKind, TemplateSource, TemplateSummary, TemplateVersion

CACHE_SIZE = 512


class TemplateStore(Protocol):
    async def add_version(self, template_id: str, source: TemplateSource, created_by: str, now: float) -> TemplateVersion: ...

    async def get(self, template_id: str, version: int | None = None) -> TemplateVersion:
        """A version (None: the published one); NotFoundError when there is none."""
        ...

    async def latest(self, template_id: str) -> TemplateVersion | None: ...

    async def versions(self, template_id: str) -> list[TemplateVersion]: ...

    async def summaries(self) -> list[TemplateSummary]: ...

    async def publish(self, template_id: str, version: int, now: float) -> None: ...

    async def published(self, kind: TemplateKind) -> dict[str, TemplateVersion]:
        """The published version of every template of a kind, by id."""
        ...


@dataclass(frozen=True)
class PushResult:
    template_id: str
    kind: TemplateKind
    version: int | None  # the new version, or None when unchanged
    previous: int | None  # the latest version before the push


class TemplateService:
    def __init__(self, store: TemplateStore, clock: Clock, executor: Executor | None = None, pointer_ttl: float = 5.0):
        self._store = store
        self._clock = clock
        self._executor = executor
        self._pointer_ttl = pointer_ttl
        self._compiled: OrderedDict[tuple[Any, ...], CompiledTemplate] = OrderedDict()
        self._parts: tuple[float, dict[str, TemplateVersion], dict[str, TemplateVersion]] | None = None

    # -- reading -----------------------------------------------------------------------------

    async def summaries(self) -> list[TemplateSummary]:
        return await self._store.summaries()

    async def versions(self, template_id: str) -> list[TemplateVersion]:
        found = await self._store.versions(template_id)
        if not found:
            raise NotFoundError(f"no template {template_id}")
        return found

    async def get(self, template_id: str, version: int | None = None) -> TemplateVersion:
        return await self._store.get(template_id, version)

    async def diff(self, template_id: str, a: int, b: int) -> str:
        """A unified diff of two versions, field by field."""
        first, second = await self._store.get(template_id, a), await self._store.get(template_id, b)
        return diff_versions(first, second)

    # -- rendering ---------------------------------------------------------------------------

    async def render(
        self, template_id: str, data: Mapping[str, Any], version: int | None = None, *, published_only: bool = False
    ) -> Rendered:
        """Render a version (None: the published one) with `data`. `published_only` (send keys)
        refuses a version other than the published one."""
        chosen = await self._store.get(template_id, version)
        if chosen.source.kind is not TemplateKind.TEMPLATE:
            raise TemplateError("invalid_template", [f"{template_id} is a {chosen.source.kind}, not a template"])
        if published_only and version is not None:
            try:
                published: int | None = (await self._store.get(template_id, None)).version
            except NotFoundError:
                published = None
            if published != version:
                raise TemplateError("not_published", [f"{template_id} version {version} is not published"])
        compiled = await self._compiled_for(chosen)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, compiled.render, dict(data))

    async def variables(self, version: TemplateVersion) -> tuple[str, ...]:
        """The data variables a version uses: its schema's properties, else what its text names."""
        declared = version.source.schema.get("properties")
        if isinstance(declared, dict) and declared:
            return tuple(declared)
        if version.source.kind is not TemplateKind.TEMPLATE:
            return ()
        try:
            return (await self._compiled_for(version)).variables
        except TemplateError:
            return ()

    async def _compiled_for(self, version: TemplateVersion) -> CompiledTemplate:
        layouts, partials = await self._published_parts()
        layout = None
        if version.source.layout:
            layout = layouts.get(version.source.layout)
            if layout is None:
                raise TemplateError("invalid_template", [f"layout {version.source.layout!r} is not published"])
        key = (version.template_id, version.version, layout and layout.version,
               tuple(sorted((i, p.version) for i, p in partials.items())))  # fmt: skip
        compiled = self._compiled.get(key)
        if compiled is None:
            loop = asyncio.get_running_loop()
            compiled = await loop.run_in_executor(self._executor, CompiledTemplate, version, layout, partials)
            self._compiled[key] = compiled
            if len(self._compiled) > CACHE_SIZE:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(key)
        return compiled

    async def _published_parts(self) -> tuple[dict[str, TemplateVersion], dict[str, TemplateVersion]]:
        now = time.monotonic()
        if self._parts is None or now - self._parts[0] > self._pointer_ttl:
            layouts = await self._store.published(TemplateKind.LAYOUT)
            partials = await self._store.published(TemplateKind.PARTIAL)
            self._parts = (now, layouts, partials)
        return self._parts[1], self._parts[2]

    # -- writing -----------------------------------------------------------------------------

    async def create(self, template_id: str, source: TemplateSource, created_by: str,
                     example: Mapping[str, Any] | None = None,
                     pending: Mapping[str, TemplateVersion] | None = None) -> TemplateVersion:  # fmt: skip
        """A new version (a draft until published), after checking that it compiles with the
        layout and partials it would render with (`pending`: ones being pushed with it) and that
        its example, if given, renders."""
        if not valid_template_id(template_id):
            raise TemplateError("invalid_template", [f"id {template_id!r} must be 1-64 of a-z, 0-9, '-', '_'"])
        existing = await self._store.latest(template_id)
        if existing is not None and existing.source.kind is not source.kind:
            raise TemplateError("invalid_template", [f"{template_id} is a {existing.source.kind}; it cannot become a {source.kind}"])
        await self.check(template_id, source, example, pending or {})
        self._parts = None  # a new layout or partial: look again
        return await self._store.add_version(template_id, source, created_by, self._clock.now())

    async def check(self, template_id: str, source: TemplateSource, example: Mapping[str, Any] | None,
                    pending: Mapping[str, TemplateVersion]) -> None:  # fmt: skip
        layouts, partials = await self._published_parts()
        layouts = {**layouts, **{i: v for i, v in pending.items() if v.source.kind is TemplateKind.LAYOUT}}
        partials = {**partials, **{i: v for i, v in pending.items() if v.source.kind is TemplateKind.PARTIAL}}
        candidate = TemplateVersion(template_id, 0, source, "", 0.0)
        if source.kind is TemplateKind.PARTIAL:
            partials = {**partials, template_id: candidate}
        layout = None
        if source.layout:
            layout = layouts.get(source.layout)
            if layout is None:
                raise TemplateError("invalid_template", [f"layout {source.layout!r} does not exist or is not published"])
        loop = asyncio.get_running_loop()
        compiled = await loop.run_in_executor(self._executor, CompiledTemplate, candidate, layout, partials)
        if example is not None and source.kind is TemplateKind.TEMPLATE:
            await loop.run_in_executor(self._executor, compiled.render, dict(example))

    async def publish(self, template_id: str, version: int) -> None:
        await self._store.get(template_id, version)  # NotFoundError when there is no such version
        await self._store.publish(template_id, version, self._clock.now())
        self._parts = None

    async def push(self, entries: Sequence[BundleEntry], created_by: str, *, publish: bool = False,
                   known_problems: Sequence[str] = ()) -> list[PushResult]:  # fmt: skip
        """A new version of each changed entry (unchanged ones create nothing), layouts and
        partials first and published at once (templates render with published ones); every entry
        is checked before anything is stored, and nothing is stored while there is any problem
        (`known_problems`: those found reading the files)."""
        pending: dict[str, TemplateVersion] = {}
        checked: list[tuple[BundleEntry, TemplateVersion | None]] = []
        problems: list[str] = list(known_problems)
        for entry in entries:
            latest = await self._store.latest(entry.template_id)
            if latest is not None and latest.source.kind is not entry.source.kind:
                problems.append(f"{entry.directory}: {entry.template_id} is a {latest.source.kind}, "
                                f"not a {entry.source.kind}")  # fmt: skip
                continue
            if entry.source.kind is not TemplateKind.TEMPLATE:
                pending[entry.template_id] = TemplateVersion(entry.template_id, 0, entry.source, created_by, 0.0)
            try:
                await self.check(entry.template_id, entry.source, entry.example, pending)
            except TemplateError as exc:
                problems.extend(f"{entry.directory}: {p}" for p in exc.problems)
            checked.append((entry, latest))
        if problems:
            raise TemplateError("invalid_template", problems)
        results = []
        for entry, latest in checked:
            before = latest.version if latest else None
            if latest is not None and latest.source.digest() == entry.source.digest():
                results.append(PushResult(entry.template_id, entry.source.kind, None, before))
                continue
            made = await self._store.add_version(entry.template_id, entry.source, created_by, self._clock.now())
            if publish or entry.source.kind is not TemplateKind.TEMPLATE:
                await self._store.publish(entry.template_id, made.version, self._clock.now())
            results.append(PushResult(entry.template_id, entry.source.kind, made.version, before))
        self._parts = None
        return results


def diff_versions(first: TemplateVersion, second: TemplateVersion) -> str:
    """Field by field, a unified diff of what changed between two versions."""
    a, b = asdict(first.source), asdict(second.source)
    out: list[str] = []
    for field in a:
        if a[field] == b[field]:
            continue
        left = _lines(a[field])
        right = _lines(b[field])
        out.extend(difflib.unified_diff(left, right, f"{first.template_id}@{first.version}/{field}",
                                        f"{second.template_id}@{second.version}/{field}", lineterm=""))  # fmt: skip
    return "\n".join(out) + ("\n" if out else "")


def _lines(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (dict, list)):
        value = json.dumps(value, indent=2, sort_keys=True)
    return str(value).splitlines()
