"""`PostHogQueries`: PostHog's Query API (`POST {host}/api/projects/{id}/query/`) for reports:
HogQL with the period's bounds filled in, and insight query kinds (TrendsQuery, FunnelsQuery, ...)
passed through, each named `postroom:<name>` so it shows in PostHog's query_log.

A report must go out on time, so one query never takes longer than `budget` seconds, retries
included: a request gets at most `timeout` seconds (less when the budget is nearly spent), a 429 is
retried after its Retry-After (capped), a 5xx or a failed connection after an exponential backoff
with jitter, and whatever does not fit in the budget becomes `PostHogUnavailable` with the reason.
PostHog's verdict on the query itself (400: a HogQL syntax error, an unknown table) is
`PostHogQueryError` naming the query; a refused key (401/403) is `PostHogAuthFailed`, which never
carries the key. Results are cached in memory per (name, query, period) for `cache_ttl`; errors
never are, so a figure shown is always one PostHog answered.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from postroom.core.clock import Clock, SystemClock
from postroom.core.errors import PostroomError
from postroom.sources.posthog.query_settings import PLACEHOLDER, NamedQuery, PostHogSettings

logger = logging.getLogger(__name__)

Period = tuple[datetime.datetime, datetime.datetime]

BACKOFF_CAP = 8.0  # seconds: the longest wait between two tries after a 5xx or a failed connection
MAX_CONCURRENT = 3  # PostHog runs 3 queries of a project at once and queues the rest


class PostHogError(PostroomError):
    """A query PostHog did not answer; `name` is the query, `reason` says why in words a report can show."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason
        super().__init__(f"PostHog query {name!r}: {reason}")


class PostHogUnavailable(PostHogError):
    """PostHog timed out, could not be reached, or kept answering 5xx or 429 for the whole budget."""


class PostHogQueryError(PostHogError):
    """PostHog refused the query itself (a HogQL error, an unknown table or property): `detail` and
    `code` as PostHog gave them."""

    def __init__(self, name: str, detail: str, code: str = ""):
        self.detail = detail
        self.code = code
        super().__init__(name, f"PostHog refused the query: {detail}" + (f" ({code})" if code else ""))


class PostHogAuthFailed(PostHogError):
    """PostHog refused the key (401) or its scope for the project (403)."""


class QueryObserver(Protocol):
    """Told of every query: outcome is ok, cached (postroom's cache), shared (the answer of the same
    query already running), unavailable, query_error or auth_failed."""

    def observe(self, name: str, outcome: str, seconds: float) -> None: ...


@dataclass(frozen=True)
class QueryResult:
    name: str
    period: Period
    columns: tuple[str, ...]
    # HogQL: one list of values per row. Insight kinds: PostHog's `results` as they are (a
    # TrendsQuery series or a FunnelsQuery step is an object).
    rows: tuple[Any, ...]
    types: tuple[str, ...]  # ClickHouse type per column ("" where PostHog gave none)
    is_cached: bool  # PostHog answered from its own cache
    last_refresh: str | None  # when PostHog computed it (ISO 8601, PostHog's text)
    query: Mapping[str, Any]  # the query object sent (the HogQL with its bounds filled in)


def hogql_time(moment: datetime.datetime) -> str:
    """A HogQL DateTime literal of an instant in UTC. The timezone is explicit because HogQL reads
    a bare `toDateTime('...')` in the project's timezone. A naive datetime is taken as UTC."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.UTC)
    return f"toDateTime('{moment.strftime('%Y-%m-%d %H:%M:%S')}', 'UTC')"


def bind_period(sql: str, period: Period) -> str:
    """The HogQL with `{since}` and `{until}` replaced by the period's bounds (pure). ValueError for
    any other placeholder or an empty period."""
    since, until = period
    if _utc(until) <= _utc(since):
        raise ValueError(f"the period ends ({until.isoformat()}) before it starts ({since.isoformat()})")
    bounds = {"since": hogql_time(since), "until": hogql_time(until)}

    def fill(match: Any) -> str:
        name = match.group(1)
        if name not in bounds:
            raise ValueError(f"unknown placeholder {{{name}}}")
        return bounds[name]

    return PLACEHOLDER.sub(fill, sql)


def _utc(moment: datetime.datetime) -> datetime.datetime:
    return moment.replace(tzinfo=datetime.UTC) if moment.tzinfo is None else moment.astimezone(datetime.UTC)


def parse_result(name: str, period: Period, query: Mapping[str, Any], body: Mapping[str, Any]) -> QueryResult:
    """A QueryResult from PostHog's answer (pure). `types` may be [name, type] pairs or bare type
    names; `columns` may be missing (insight kinds). PostHogUnavailable when there are no results
    (an async answer still running), PostHogQueryError when PostHog reports an `error`."""
    error = body.get("error")
    if isinstance(error, str) and error:
        raise PostHogQueryError(name, error)
    results = body.get("results")
    if not isinstance(results, list):
        if isinstance(body.get("query_status"), Mapping):
            raise PostHogUnavailable(name, "PostHog is still running the query (no results in time)")
        raise PostHogUnavailable(name, "PostHog's answer has no results")
    columns = tuple(str(column) for column in body.get("columns") or ())
    types = tuple(_type_name(entry) for entry in body.get("types") or ())
    last_refresh = body.get("last_refresh")
    return QueryResult(
        name=name,
        period=period,
        columns=columns,
        rows=tuple(results),
        types=types,
        is_cached=bool(body.get("is_cached", False)),
        last_refresh=str(last_refresh) if last_refresh is not None else None,
        query=query,
    )


def _type_name(entry: Any) -> str:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, (list, tuple)) and len(entry) >= 2:
        return str(entry[1])
    return ""


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After in seconds (RFC 9110 §10.2.3 also allows an HTTP date, which PostHog does not send:
    None, and the caller backs off as after a 5xx)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return max(seconds, 0.0) if seconds == seconds else None  # NaN is no answer


class PostHogQueries:
    """Runs named queries against one PostHog project. The session is given (and left open) or
    created on first use (and closed by `aclose`)."""

    def __init__(
        self,
        host: str,
        project_id: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        budget: float = 30.0,
        retry_after_cap: float = 10.0,
        backoff: float = 0.5,
        cache_ttl: float = 3600.0,
        cache_size: int = 256,
        session: aiohttp.ClientSession | None = None,
        clock: Clock | None = None,
        observer: QueryObserver | None = None,
        rng: random.Random | None = None,
    ):
        self._url = f"{host.rstrip('/')}/api/projects/{project_id}/query/"
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._api_key = api_key
        self._timeout = timeout
        self._budget = budget
        self._retry_after_cap = retry_after_cap
        self._backoff = backoff
        self._cache_ttl = cache_ttl
        self._cache_size = cache_size
        self._session = session
        self._owns_session = session is None
        self._clock = clock or SystemClock()
        self._observer = observer
        self._rng = rng or random.Random()
        self._cache: OrderedDict[str, tuple[float, QueryResult]] = OrderedDict()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        self._inflight: dict[str, asyncio.Task[QueryResult]] = {}

    @classmethod
    def from_settings(cls, settings: PostHogSettings, **kwargs: Any) -> PostHogQueries:
        """From `[posthog]`; kwargs: session, clock, observer, rng, backoff."""
        return cls(settings.host, settings.project_id, settings.personal_api_key, timeout=settings.timeout,
                   budget=settings.budget, retry_after_cap=settings.retry_after_cap, cache_ttl=settings.cache_ttl,
                   cache_size=settings.cache_size, **kwargs)  # fmt: skip

    def __repr__(self) -> str:
        return f"PostHogQueries({self._url!r})"  # never the key

    async def aclose(self) -> None:
        """Cancels queries still running and closes the session if it is this client's own."""
        for task in list(self._inflight.values()):
            task.cancel()
        if self._inflight:
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def hogql(self, name: str, sql: str, period: Period) -> QueryResult:
        """Runs HogQL with `{since}` and `{until}` bound to the period."""
        try:
            bound = bind_period(sql, period)
        except ValueError as exc:
            raise PostHogQueryError(name, str(exc)) from None
        return await self._run(name, {"kind": "HogQLQuery", "query": bound}, period)

    async def insight(self, name: str, query: Mapping[str, Any], period: Period) -> QueryResult:
        """Runs an insight query object (TrendsQuery, FunnelsQuery, ...) as it is; its `dateRange` is
        set to the period unless the object has one."""
        sent = dict(query)
        if "dateRange" not in sent:
            since, until = (_utc(moment).isoformat() for moment in period)
            sent["dateRange"] = {"date_from": since, "date_to": until, "explicitDate": True}
        return await self._run(name, sent, period)

    async def named(self, name: str, spec: NamedQuery, period: Period) -> QueryResult:
        """Runs a `[posthog.queries.<name>]` entry, HogQL or insight."""
        if spec.hogql:
            return await self.hogql(name, spec.hogql, period)
        return await self.insight(name, spec.insight, period)

    async def _run(self, name: str, query: dict[str, Any], period: Period) -> QueryResult:
        started = time.monotonic()
        key = json.dumps([name, query, _utc(period[0]).isoformat(), _utc(period[1]).isoformat()],
                         sort_keys=True, default=str)  # fmt: skip
        cached = self._cached(key)
        if cached is not None:
            self._observe(name, "cached", started)
            return cached
        # The same query for the same period already on its way (two sections of one report): wait
        # for its answer instead of spending another of PostHog's requests. Shielded, so one waiter
        # giving up does not cancel it for the others.
        running = self._inflight.get(key)
        if running is not None:
            result = await asyncio.shield(running)
            self._observe(name, "shared", started)
            return result
        task = asyncio.create_task(self._fetch(name, query, period, key, started), name=f"posthog-query:{name}")
        self._inflight[key] = task
        task.add_done_callback(lambda done: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def _fetch(self, name: str, query: dict[str, Any], period: Period, key: str, started: float) -> QueryResult:
        try:
            body = await self._post(name, {"query": query, "name": f"postroom:{name}", "refresh": "blocking"})
            result = parse_result(name, period, query, body)
        except PostHogError as exc:
            outcome = {PostHogQueryError: "query_error", PostHogAuthFailed: "auth_failed"}.get(
                type(exc), "unavailable"
            )
            logger.warning("%s", exc)
            self._observe(name, outcome, started)
            raise
        self._store(key, result)
        self._observe(name, "ok", started)
        return result

    def _observe(self, name: str, outcome: str, started: float) -> None:
        if self._observer is not None:
            self._observer.observe(name, outcome, time.monotonic() - started)

    def _cached(self, key: str) -> QueryResult | None:
        found = self._cache.get(key)
        if found is None:
            return None
        stored_at, result = found
        if self._clock.now() - stored_at >= self._cache_ttl:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return result

    def _store(self, key: str, result: QueryResult) -> None:
        if self._cache_ttl <= 0 or self._cache_size <= 0:
            return
        self._cache[key] = (self._clock.now(), result)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _post(self, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._budget
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            raise PostHogUnavailable(name, f"no free query slot within {self._budget:g} s") from None
        try:
            return await self._tries(name, payload, deadline)
        finally:
            self._slots.release()

    async def _tries(self, name: str, payload: dict[str, Any], deadline: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if self._session is None:
            self._session = aiohttp.ClientSession()
        attempt = 0
        while True:
            attempt += 1
            limit = min(self._timeout, deadline - loop.time())
            if limit <= 0:
                raise PostHogUnavailable(name, f"no answer within the {self._budget:g} s budget")
            wait: float | None = None
            try:
                async with self._session.post(self._url, json=payload, headers=self._headers,
                                              timeout=aiohttp.ClientTimeout(total=limit)) as response:  # fmt: skip
                    status = response.status
                    raw = await response.read()
                    retry_after = response.headers.get("Retry-After")
            except TimeoutError:
                reason = f"no answer within {limit:g} s"
            except aiohttp.ClientError as exc:
                reason = f"cannot connect to PostHog ({type(exc).__name__})"
            else:
                body = _json(raw)
                if 200 <= status < 300:
                    if body is None:
                        raise PostHogUnavailable(name, f"PostHog answered {status} with a body that is not JSON")
                    return body
                if status in (401, 403):
                    reason = _auth_reason(status, body)
                    raise PostHogAuthFailed(name, reason.replace(self._api_key, "<key>") if self._api_key else reason)
                if status == 429:
                    reason = "PostHog is rate limiting queries (429)"
                    honoured = retry_after_seconds(retry_after)
                    wait = min(honoured, self._retry_after_cap) if honoured is not None else None
                elif status >= 500:
                    reason = f"PostHog answered {status}"
                else:
                    detail, code = _detail(body, status)
                    raise PostHogQueryError(name, detail, code)
            if wait is None:
                ceiling = min(BACKOFF_CAP, self._backoff * 2 ** (attempt - 1))
                wait = ceiling / 2 + self._rng.uniform(0, ceiling / 2)  # equal jitter: spread, never zero
            if loop.time() + wait >= deadline:
                raise PostHogUnavailable(name, f"{reason}; gave up after {attempt} tries within {self._budget:g} s")
            logger.info("PostHog query %r: %s; retrying in %.2f s", name, reason, wait)
            await asyncio.sleep(wait)


def _json(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _detail(body: Mapping[str, Any] | None, status: int) -> tuple[str, str]:
    """PostHog's `detail` and `code` of a refusal (DRF's error shape), or the status alone."""
    if body is None:
        return f"PostHog answered {status}", ""
    detail = body.get("detail")
    code = body.get("code")
    return (str(detail) if detail else f"PostHog answered {status}"), (str(code) if code else "")


def _auth_reason(status: int, body: Mapping[str, Any] | None) -> str:
    """Why the key was refused, from PostHog's own words (which never echo the key)."""
    detail, code = _detail(body, status)
    what = "the key was refused" if status == 401 else "the key may not read this project (Query Read scope?)"
    return f"{what} ({status}): {detail}" + (f" [{code}]" if code else "")
