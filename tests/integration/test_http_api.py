"""The HTTP API against the in-process daemon on both databases: send, inspect, search, errors,
authentication and roles, idempotency keys, operations endpoints."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import email.policy
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from postroom.core.clock import FakeClock
from postroom.queue.views import SqlQueueViews
from postroom.store import schema
from postroom.store.credentials import ApiKey, Role, SqlApiKeys
from postroom.store.engine import create_engine
from postroom.store.tables import deliveries, idempotency_keys, messages
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import RunningDaemon, running
from tests.support import make_settings

MESSAGE: dict[str, Any] = {
    "from": "app@postroom.test",
    "to": "user@example.com",
    "subject": "Hello",
    "text": "It works.",
}


@dataclass
class Api:
    daemon: RunningDaemon
    engine: AsyncEngine
    session: aiohttp.ClientSession
    keys: dict[Role, tuple[ApiKey, str]]

    def token(self, role: Role) -> str:
        return self.keys[role][1]

    async def send(
        self, payload: Any, *, role: Role = Role.SENDER, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        all_headers = {
            "Authorization": f"Bearer {self.token(role)}",
            "Content-Type": "application/json",
            **(headers or {}),
        }
        data = json.dumps(payload).encode()  # not json=: that sends no body at all for None
        async with self.session.post("/v1/messages", data=data, headers=all_headers) as resp:
            return resp.status, await resp.json(), dict(resp.headers)

    async def get(self, path: str, *, role: Role = Role.VIEWER, **params: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token(role)}"}
        query = {k: str(v) for k, v in params.items()}
        async with self.session.get(path, headers=headers, params=query) as resp:
            return resp.status, await resp.json()

    async def counts(self) -> tuple[int, int, int]:
        """(messages, deliveries, idempotency keys) stored."""
        async with self.engine.connect() as conn:
            found = [
                await conn.scalar(sa.select(sa.func.count()).select_from(table))
                for table in (messages, deliveries, idempotency_keys)
            ]
        return int(found[0] or 0), int(found[1] or 0), int(found[2] or 0)


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, db_url: str, *, clock: FakeClock | None = None, **sections: dict[str, Any]
) -> AsyncIterator[Api]:
    sections.setdefault("delivery", {"hold": True})
    settings = make_settings(tmp_path, db_url, **sections)
    engine = create_engine(settings.database)
    try:
        await schema.upgrade(engine)
        api_keys = SqlApiKeys(engine)
        keys = {role: await api_keys.create(f"{role} key", role, time.time()) for role in Role}
        extra: dict[str, Any] = {"clock": clock} if clock is not None else {}
        async with (
            running(settings, **extra) as daemon,
            aiohttp.ClientSession(daemon.http) as session,
        ):
            yield Api(daemon, engine, session, keys)
    finally:
        await engine.dispose()


@pytest.fixture
async def api(tmp_path: Path, db_url: str) -> AsyncIterator[Api]:
    async with serving(tmp_path, db_url) as value:
        yield value


def accepted(api: Api, stream: str) -> float:
    labels = {"source": "api", "stream": stream, "route": "inhouse"}
    return api.daemon.metric("postroom_messages_accepted_total", labels)


def assert_error(body: Any, code: str) -> str:
    """The JSON error shape every failure uses; returns the message."""
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return str(body["error"]["message"])


# -- send and inspect -------------------------------------------------------------------------


async def test_send_queues_a_delivery_per_recipient_and_keeps_bcc_out_of_the_headers(
    api: Api,
) -> None:
    payload = {
        "from": {"email": "app@postroom.test", "name": "The App"},
        "to": ["ada@example.com", {"email": "bob@example.com", "name": "Bob"}],
        "cc": "carol@example.com",
        "bcc": ["secret@example.com"],
        "reply_to": "help@postroom.test",
        "subject": "Welcome",
        "text": "Hello there",
        "html": "<p>Hello there</p>",
        "headers": {"X-Campaign": "welcome-1"},
        "tags": ["welcome", "onboarding"],
        "stream": "onboarding",
    }
    status, body, _ = await api.send(payload)
    assert status == 202
    assert body["recipients"] == 4 and body["created"] is True
    message_id = body["id"]
    assert len(message_id) == 26

    status, detail = await api.get(f"/v1/messages/{message_id}")
    assert status == 200
    assert detail["id"] == message_id
    assert detail["source"] == "api"
    assert detail["mail_from"] == "app@postroom.test"
    assert detail["from"] == "The App <app@postroom.test>"
    assert detail["subject"] == "Welcome"
    assert detail["stream"] == "onboarding"
    assert detail["tags"] == ["welcome", "onboarding"]
    assert detail["submitted_by"] == f"apikey:{api.keys[Role.SENDER][0].id}"
    assert detail["recipients"] == {"queued": 4}
    assert [d["recipient"] for d in detail["deliveries"]] == [
        "ada@example.com", "bob@example.com", "carol@example.com", "secret@example.com",
    ]  # fmt: skip
    for delivery in detail["deliveries"]:
        assert delivery["state"] == "queued"
        assert delivery["attempts"] == 0
        assert delivery["finished_at"] is None
        assert delivery["next_attempt_at"] is not None
    assert [e["type"] for e in detail["events"]] == ["accepted"]
    assert detail["events"][0]["detail"] == {"source": "api", "recipients": 4}

    stored = await SqlQueueViews(api.engine).content(message_id)
    assert b"secret@example.com" not in stored
    parsed = email.message_from_bytes(stored, policy=email.policy.default)
    assert parsed["To"] == "ada@example.com, Bob <bob@example.com>"
    assert parsed["Cc"] == "carol@example.com"
    assert parsed["Bcc"] is None
    assert parsed["Reply-To"] == "help@postroom.test"
    assert parsed["X-Campaign"] == "welcome-1"
    assert parsed["Message-ID"] == f"<{message_id}@mail.postroom.test>"
    assert parsed.get_content_type() == "multipart/alternative"
    assert accepted(api, "onboarding") == 1


async def test_bcc_only_message_gets_undisclosed_recipients(api: Api) -> None:
    status, body, _ = await api.send({**MESSAGE, "to": [], "bcc": "hidden@example.com"})
    assert status == 202
    stored = await SqlQueueViews(api.engine).content(body["id"])
    parsed = email.message_from_bytes(stored, policy=email.policy.default)
    assert "undisclosed-recipients" in str(parsed["To"])
    assert b"hidden@example.com" not in stored
    assert await api.counts() == (1, 1, 0)


async def test_duplicate_recipients_get_one_delivery(api: Api) -> None:
    status, body, _ = await api.send(
        {**MESSAGE, "to": ["a@example.com", "a@example.com"], "cc": ["a@example.com"]}
    )
    assert status == 202 and body["recipients"] == 1
    assert await api.counts() == (1, 1, 0)


async def test_attachments_are_stored_in_the_message(api: Api) -> None:
    pdf = b"%PDF-1.4 \x00\xff"
    payload = {
        **MESSAGE,
        "html": '<img src="cid:logo">',
        "attachments": [
            {"filename": "report.pdf", "content": base64.b64encode(pdf).decode(),
             "content_type": "application/pdf"},
            {"filename": "logo.png", "content": base64.b64encode(b"PNG").decode(),
             "content_type": "image/png", "content_id": "logo"},
        ],
    }  # fmt: skip
    status, body, _ = await api.send(payload)
    assert status == 202
    parsed = email.message_from_bytes(
        await SqlQueueViews(api.engine).content(body["id"]), policy=email.policy.default
    )
    found = {part.get_filename(): part for part in parsed.walk() if part.get_filename()}
    assert found["report.pdf"].get_content() == pdf
    assert found["logo.png"]["Content-ID"] == "<logo>"


async def test_sent_message_reaches_the_capture_outbox(tmp_path: Path, db_url: str) -> None:
    outbox = tmp_path / "outbox"
    async with serving(
        tmp_path, db_url, delivery={"hold": False, "capture_dir": str(outbox)}
    ) as api:
        status, body, _ = await api.send({**MESSAGE, "to": ["a@example.com", "b@example.com"]})
        assert status == 202
        message_id = body["id"]
        deadline = time.monotonic() + 15
        while True:
            _, detail = await api.get(f"/v1/messages/{message_id}")
            if detail["recipients"] == {"delivered": 2}:
                break
            assert time.monotonic() < deadline, f"not delivered in time: {detail['recipients']}"
            await asyncio.sleep(0.05)
        stored = await SqlQueueViews(api.engine).content(message_id)
    assert (outbox / f"{message_id}.eml").read_bytes() == stored
    for delivery in detail["deliveries"]:
        assert delivery["state"] == "delivered"
        assert delivery["attempts"] == 1
        assert delivery["finished_at"] is not None
        assert delivery["next_attempt_at"] is None
        assert delivery["last_reply"] == f"250 captured as {message_id}.eml"
        assert [e["type"] for e in delivery["events"]] == ["delivered"]


# -- bad input --------------------------------------------------------------------------------


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in MESSAGE.items() if k != key}


BAD_PAYLOADS = [
    pytest.param(without("from"), "invalid_request", "from", id="missing-from"),
    pytest.param(without("subject"), "invalid_request", "subject", id="missing-subject"),
    pytest.param(without("to"), "invalid_message", "to, cc, bcc", id="no-recipients"),
    pytest.param(
        {**MESSAGE, "to": [], "cc": [], "bcc": []},
        "invalid_message",
        "at least one",
        id="empty-recipients",
    ),
    pytest.param(without("text"), "invalid_message", "text or html", id="no-body"),
    pytest.param({**MESSAGE, "colour": "red"}, "invalid_request", "colour", id="unknown-field"),
    pytest.param(
        {**MESSAGE, "to": "not-an-address"}, "invalid_message", "not-an-address", id="bad-address"
    ),
    pytest.param({**MESSAGE, "to": "user@"}, "invalid_message", "'user@'", id="no-domain"),
    pytest.param(
        {**MESSAGE, "to": "user@nowhere.invalid"},
        "invalid_message",
        "valid email",
        id="special-use-domain",
    ),
    pytest.param({**MESSAGE, "from": "nobody"}, "invalid_message", "nobody", id="bad-from"),
    pytest.param(
        {**MESSAGE, "to": {"email": "x", "name": "X"}},
        "invalid_message",
        "'x'",
        id="bad-address-object",
    ),
    pytest.param(
        {**MESSAGE, "subject": "Hi\r\nBcc: victim@example.com"},
        "invalid_message",
        "CR or LF",
        id="crlf-subject",
    ),
    pytest.param(
        {**MESSAGE, "headers": {"X-Tag": "a\nBcc: victim@example.com"}},
        "invalid_message",
        "CR or LF",
        id="crlf-header-value",
    ),
    pytest.param(
        {**MESSAGE, "to": "user@example.com\r\nBcc: victim@example.com"},
        "invalid_message",
        "CR or LF",
        id="crlf-address",
    ),
    pytest.param(
        {**MESSAGE, "to": {"email": "user@example.com", "name": "U\r\nBcc: v@example.com"}},
        "invalid_message",
        "CR or LF",
        id="crlf-display-name",
    ),
    pytest.param(
        {**MESSAGE, "attachments": [{"filename": "a\r\nBcc: v@example.com", "content": "eA=="}]},
        "invalid_message",
        "CR or LF",
        id="crlf-attachment-filename",
    ),
    pytest.param(
        {**MESSAGE, "headers": {"Bcc": "victim@example.com"}},
        "invalid_message",
        "own field",
        id="reserved-header",
    ),
    pytest.param(
        {**MESSAGE, "headers": {"From": "ceo@example.com"}},
        "invalid_message",
        "own field",
        id="reserved-header-from",
    ),
    pytest.param(
        {**MESSAGE, "headers": {"X Bad": "v"}},
        "invalid_message",
        "header name",
        id="bad-header-name",
    ),
    pytest.param(
        {**MESSAGE, "attachments": [{"filename": "a.txt", "content": "not base64!"}]},
        "invalid_message",
        "base64",
        id="bad-base64",
    ),
    pytest.param(
        {
            **MESSAGE,
            "attachments": [{"filename": "a.txt", "content": "eA==", "content_type": "nonsense"}],
        },
        "invalid_message",
        "content_type",
        id="bad-content-type",
    ),
    pytest.param({**MESSAGE, "stream": "Has Spaces"}, "invalid_request", "stream", id="bad-stream"),
    pytest.param({**MESSAGE, "subject": 42}, "invalid_request", "subject", id="wrong-type"),
    pytest.param(
        {**MESSAGE, "subject": "x" * 999}, "invalid_request", "subject", id="long-subject"
    ),
    pytest.param([MESSAGE], "invalid_request", "", id="array-body"),
    pytest.param(None, "invalid_request", "", id="null-body"),
]


@pytest.mark.parametrize(("payload", "code", "mentions"), BAD_PAYLOADS)
async def test_bad_request_is_400_with_a_reason_and_stores_nothing(
    api: Api, payload: Any, code: str, mentions: str
) -> None:
    status, body, _ = await api.send(payload)
    assert status == 400
    assert mentions in assert_error(body, code)
    assert await api.counts() == (0, 0, 0)
    assert api.daemon.metric("postroom_messages_rejected_total",
                             {"source": "api", "reason": "invalid"}) == 1  # fmt: skip
    assert accepted(api, "transactional") == 0


async def test_invalid_json_is_400(api: Api) -> None:
    headers = {
        "Authorization": f"Bearer {api.token(Role.SENDER)}",
        "Content-Type": "application/json",
    }
    for raw in (b'{"from": "a@example.com", ', b"\xff\xfe not utf-8", b""):
        async with api.session.post("/v1/messages", data=raw, headers=headers) as resp:
            assert resp.status == 400
            assert_error(await resp.json(), "invalid_json")
    assert await api.counts() == (0, 0, 0)
    assert api.daemon.metric("postroom_messages_rejected_total",
                             {"source": "api", "reason": "bad_json"}) == 3  # fmt: skip


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_non_json_content_type_is_415(api: Api, content_type: str | None) -> None:
    headers = {"Authorization": f"Bearer {api.token(Role.SENDER)}"}
    if content_type:
        headers["Content-Type"] = content_type
    async with api.session.post(
        "/v1/messages", data=json.dumps(MESSAGE).encode(), headers=headers
    ) as resp:
        assert resp.status == 415
        assert_error(await resp.json(), "unsupported_media_type")
    assert await api.counts() == (0, 0, 0)


async def test_body_over_max_body_size_is_413(tmp_path: Path, db_url: str) -> None:
    async with serving(tmp_path, db_url, http={"max_body_size": 4096}) as api:
        status, body, _ = await api.send({**MESSAGE, "text": "x" * 8192})
        assert status == 413
        assert_error(body, "payload_too_large")
        status, _, _ = await api.send(
            {**MESSAGE, "text": "x" * 1024}
        )  # under the limit still works
        assert status == 202
        assert await api.counts() == (1, 1, 0)


async def test_invalid_idempotency_key_is_400(api: Api) -> None:
    for key in ("k" * 256, "tab\there"):
        status, body, _ = await api.send(MESSAGE, headers={"Idempotency-Key": key})
        assert status == 400
        assert_error(body, "invalid_idempotency_key")
    assert await api.counts() == (0, 0, 0)


async def test_store_failure_is_503_without_the_driver_text(api: Api) -> None:
    if api.engine.dialect.name == "sqlite":
        create = [
            "CREATE TRIGGER refuse BEFORE INSERT ON messages BEGIN SELECT RAISE(FAIL, 'disk full'); END"
        ]
        drop = ["DROP TRIGGER refuse"]
    else:
        create = [
            (
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'disk full'; "
                "END $$ LANGUAGE plpgsql"
            ),
            "CREATE TRIGGER refuse BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION refuse()",
        ]
        drop = ["DROP TRIGGER refuse ON messages", "DROP FUNCTION refuse()"]
    async with api.engine.begin() as conn:
        for statement in create:
            await conn.execute(sa.text(statement))
    status, body, headers = await api.send(MESSAGE)
    assert status == 503
    message = assert_error(body, "unavailable")
    assert "disk full" not in message and "refuse" not in message
    assert headers["Retry-After"] == "5"
    async with api.engine.begin() as conn:
        for statement in drop:
            await conn.execute(sa.text(statement))
    status, _, _ = await api.send(MESSAGE)  # and it recovers once the store does
    assert status == 202
    assert await api.counts() == (1, 1, 0)


# -- authentication and roles -----------------------------------------------------------------


async def post_with(api: Api, authorization: str | None) -> tuple[int, Any, dict[str, str]]:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with api.session.post("/v1/messages", json=MESSAGE, headers=headers) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("Bearer", id="no-token"),
        pytest.param("Bearer    ", id="blank-token"),
        pytest.param("Basic dXNlcjpwYXNz", id="basic-scheme"),
        pytest.param("Bearer garbage", id="malformed"),
        pytest.param("Bearer pr_", id="malformed-prefix"),
        pytest.param("Bearer pr_0123456789ab_unknownsecret", id="unknown-key"),
    ],
)
async def test_missing_or_bad_credentials_are_401(api: Api, authorization: str | None) -> None:
    status, body, headers = await post_with(api, authorization)
    assert status == 401
    assert_error(body, "unauthorized")
    assert headers["WWW-Authenticate"] == "Bearer"
    assert await api.counts() == (0, 0, 0)


async def test_wrong_secret_for_a_real_key_id_is_401(api: Api) -> None:
    key, token = api.keys[Role.ADMIN]
    status, body, _ = await post_with(api, f"Bearer pr_{key.id}_{'A' * 43}")
    assert status == 401
    assert_error(body, "unauthorized")
    status, _, _ = await post_with(api, f"bearer {token}")  # the scheme is case-insensitive
    assert status == 202


async def test_revoked_key_is_401(api: Api) -> None:
    key, token = api.keys[Role.SENDER]
    assert (await post_with(api, f"Bearer {token}"))[0] == 202
    await SqlApiKeys(api.engine).revoke(key.id, time.time())
    status, body, _ = await post_with(api, f"Bearer {token}")
    assert status == 401
    assert "revoked" in assert_error(body, "unauthorized")
    assert await api.counts() == (1, 1, 0)


async def test_viewer_cannot_send(api: Api) -> None:
    status, body, _ = await api.send(MESSAGE, role=Role.VIEWER)
    assert status == 403
    assert "viewer" in assert_error(body, "forbidden")
    assert await api.counts() == (0, 0, 0)


async def test_every_role_may_read_and_admin_may_send(api: Api) -> None:
    status, body, _ = await api.send(MESSAGE, role=Role.ADMIN)
    assert status == 202
    for role in Role:
        assert (await api.get(f"/v1/messages/{body['id']}", role=role))[0] == 200
        assert (await api.get("/v1/messages", role=role))[0] == 200


async def test_reading_needs_a_key(api: Api) -> None:
    async with api.session.get("/v1/messages") as resp:
        assert resp.status == 401
        assert_error(await resp.json(), "unauthorized")


async def test_unknown_message_is_404(api: Api) -> None:
    status, body = await api.get("/v1/messages/01JZZZZZZZZZZZZZZZZZZZZZZZ")
    assert status == 404
    assert "01JZZZZZZZZZZZZZZZZZZZZZZZ" in assert_error(body, "not_found")


async def test_unknown_route_and_wrong_method_are_json_errors(api: Api) -> None:
    async with api.session.get("/v1/nothing-here") as resp:
        assert resp.status == 404
        assert_error(await resp.json(), "not_found")
    async with api.session.delete("/v1/messages") as resp:
        assert resp.status == 405
        assert_error(await resp.json(), "method_not_allowed")


# -- idempotency ------------------------------------------------------------------------------


async def test_same_key_and_body_replays_the_first_answer(api: Api) -> None:
    headers = {"Idempotency-Key": "order-1001"}
    status, first, first_headers = await api.send(MESSAGE, headers=headers)
    assert status == 202 and first["created"] is True
    assert "Idempotent-Replayed" not in first_headers
    status, again, again_headers = await api.send(MESSAGE, headers=headers)
    assert status == 202
    assert again["id"] == first["id"] and again["created"] is False
    assert again_headers["Idempotent-Replayed"] == "true"
    assert await api.counts() == (1, 1, 1)
    assert accepted(api, "transactional") == 1


async def test_same_key_with_a_different_body_is_409(api: Api) -> None:
    headers = {"Idempotency-Key": "order-1002"}
    assert (await api.send(MESSAGE, headers=headers))[0] == 202
    status, body, _ = await api.send({**MESSAGE, "subject": "Changed"}, headers=headers)
    assert status == 409
    assert "Idempotency-Key" in assert_error(body, "conflict")
    assert await api.counts() == (1, 1, 1)


async def test_keys_are_scoped_to_the_api_key(api: Api) -> None:
    headers = {"Idempotency-Key": "shared-name"}
    status, mine, _ = await api.send(MESSAGE, headers=headers, role=Role.SENDER)
    assert status == 202
    status, theirs, _ = await api.send({**MESSAGE, "subject": "Other"}, headers=headers,
                                       role=Role.ADMIN)  # fmt: skip
    assert status == 202
    assert theirs["created"] is True and theirs["id"] != mine["id"]
    assert await api.counts() == (2, 2, 2)


async def test_different_keys_make_different_messages(api: Api) -> None:
    ids = {
        (await api.send(MESSAGE, headers={"Idempotency-Key": f"k{n}"}))[1]["id"] for n in range(3)
    }
    assert len(ids) == 3
    assert await api.counts() == (3, 3, 3)


async def test_concurrent_requests_with_one_key_create_one_message(api: Api) -> None:
    headers = {"Idempotency-Key": "burst"}
    results = await asyncio.gather(*(api.send(MESSAGE, headers=headers) for _ in range(8)))
    assert {status for status, _, _ in results} == {202}
    assert len({body["id"] for _, body, _ in results}) == 1
    assert sum(body["created"] for _, body, _ in results) == 1
    assert await api.counts() == (1, 1, 1)


async def test_a_key_older_than_24_hours_may_be_reused(tmp_path: Path, db_url: str) -> None:
    clock = FakeClock(time.time())
    async with serving(tmp_path, db_url, clock=clock) as api:
        headers = {"Idempotency-Key": "daily-report"}
        status, first, _ = await api.send(MESSAGE, headers=headers)
        assert status == 202
        clock.advance(23 * 3600)
        status, replay, _ = await api.send(MESSAGE, headers=headers)
        assert (status, replay["id"], replay["created"]) == (202, first["id"], False)
        clock.advance(3600 + 1)
        status, fresh, _ = await api.send({**MESSAGE, "subject": "next day"}, headers=headers)
        assert status == 202
        assert fresh["created"] is True and fresh["id"] != first["id"]
        status, replay, _ = await api.send({**MESSAGE, "subject": "next day"}, headers=headers)
        assert (replay["id"], replay["created"]) == (fresh["id"], False)
        assert await api.counts() == (2, 2, 1)  # the expired key row was replaced


# -- search -----------------------------------------------------------------------------------


async def seed(api: Api) -> dict[str, str]:
    sent = {}
    for name, payload in {
        "welcome": {**MESSAGE, "to": ["ada@example.com"], "subject": "welcome"},
        "digest": {**MESSAGE, "to": ["bob@example.com", "ada@example.com"], "subject": "digest",
                   "stream": "marketing"},
        "receipt": {**MESSAGE, "from": "billing@postroom.test", "to": ["bob@example.com"],
                    "subject": "receipt"},
    }.items():  # fmt: skip
        status, body, _ = await api.send(payload)
        assert status == 202
        sent[name] = body["id"]
    return sent


async def found_subjects(api: Api, **params: Any) -> set[str]:
    status, body = await api.get("/v1/messages", **params)
    assert status == 200
    return {item["subject"] for item in body["data"]}


async def test_list_filters(api: Api) -> None:
    sent = await seed(api)
    assert await found_subjects(api) == {"welcome", "digest", "receipt"}
    assert await found_subjects(api, recipient="ada@example.com") == {"welcome", "digest"}
    assert await found_subjects(api, recipient="bob@example.com") == {"digest", "receipt"}
    assert await found_subjects(api, recipient="nobody@example.com") == set()
    assert await found_subjects(api, **{"from": "billing@postroom.test"}) == {"receipt"}
    assert await found_subjects(api, stream="marketing") == {"digest"}
    assert await found_subjects(api, stream="transactional") == {"welcome", "receipt"}
    assert await found_subjects(api, state="queued") == {"welcome", "digest", "receipt"}
    assert await found_subjects(api, state="delivered") == set()
    assert await found_subjects(api, state="queued", recipient="bob@example.com",
                                stream="marketing") == {"digest"}  # fmt: skip
    _, body = await api.get("/v1/messages", stream="marketing")
    [item] = body["data"]
    assert item["id"] == sent["digest"]
    assert item["recipients"] == {"queued": 2}
    assert item["from"] == "app@postroom.test" and item["mail_from"] == "app@postroom.test"
    assert item["source"] == "api" and item["size"] > 0


async def test_list_time_window(api: Api) -> None:
    await seed(api)
    now = time.time()
    assert len(await found_subjects(api, since=now - 60)) == 3
    assert await found_subjects(api, since=now + 60) == set()
    assert await found_subjects(api, until=now - 60) == set()


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 501},
        {"limit": -1},
        {"limit": "ten"},
        {"since": "yesterday"},
        {"state": "lost"},
    ],
)
async def test_bad_list_queries_are_400(api: Api, params: dict[str, Any]) -> None:
    status, body = await api.get("/v1/messages", **params)
    assert status == 400
    assert_error(body, "invalid_query")


async def test_limit_bounds_are_inclusive(api: Api) -> None:
    await seed(api)
    for limit in (1, 500):
        status, body = await api.get("/v1/messages", limit=limit)
        assert status == 200 and len(body["data"]) == min(limit, 3)


async def test_pagination_walks_every_message_once_newest_first(api: Api) -> None:
    sent = set()
    for n in range(7):
        status, body, _ = await api.send({**MESSAGE, "subject": f"m{n}"})
        assert status == 202
        sent.add(body["id"])
    pages: list[list[str]] = []
    before: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"before": before} if before else {})
        status, body = await api.get("/v1/messages", **params)
        assert status == 200
        page = [item["id"] for item in body["data"]]
        assert page == sorted(page, reverse=True)
        pages.append(page)
        if body["next"] is None:
            break
        assert body["next"] == page[-1]
        before = body["next"]
    assert [len(p) for p in pages] == [3, 3, 1]
    walked = [message_id for page in pages for message_id in page]
    assert len(walked) == len(set(walked)) == 7
    assert set(walked) == sent


# -- operations -------------------------------------------------------------------------------


async def test_health_readiness_and_metrics(api: Api) -> None:
    async with api.session.get("/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
    async with api.session.get("/readyz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ready"}
    assert (await api.send(MESSAGE))[0] == 202
    async with api.session.get("/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    samples = [
        line for line in text.splitlines() if line.startswith("postroom_messages_accepted_total{")
    ]
    assert samples == [
        'postroom_messages_accepted_total{route="inhouse",source="api",stream="transactional"} 1.0'
    ]
    assert "postroom_ready 1.0" in text.splitlines()
