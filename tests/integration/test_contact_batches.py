"""`ContactService.import_rows` on both databases: a batch gives what the same rows through
`update` one by one give, a conflicting row refuses the batch (nothing written) or, with `on_error`,
is reported alone while the others are written."""

from __future__ import annotations

from typing import Any

import pytest
from postroom.contacts.model import ContactError, MailingList, contact_json
from postroom.contacts.service import ContactService
from postroom.contacts.sql_store import SqlContactStore
from postroom.core.clock import SystemClock
from sqlalchemy.ext.asyncio import AsyncEngine

LISTS = [MailingList("news", "News"), MailingList("beta", "Beta")]


async def everyone(service: ContactService) -> dict[str, dict[str, Any]]:
    return {c.email: {k: v for k, v in contact_json(c).items() if k != "id"} async for c in service.all()}


def rows_touching_each_other(prefix: str) -> list[tuple[str, dict[str, Any]]]:
    """Rows whose later members change what earlier ones created or found: the same address in
    another case, a userId that moves a contact to a new address, a list joined then left, a
    property set then cleared, and a property typed by its first value."""
    return [
        (f"{prefix}ada@example.com", {"firstName": "Ada", "mailingLists": {"news": True, "beta": True}, "seats": 3}),
        (f"{prefix}old@example.com", {"userId": f"{prefix}u1", "plan": "free"}),
        (f"{prefix.upper()}ADA@example.com", {"lastName": "Lovelace", "mailingLists": {"beta": False}}),
        (f"{prefix}new@example.com", {"userId": f"{prefix}u1", "plan": None, "subscribed": False}),
        (f"{prefix}existing@example.com", {"firstName": "Ex", "mailingLists": {"news": False}}),
        (f"{prefix}existing@example.com", {"lastName": "Isting", "userGroup": "g"}),
    ]


async def test_a_batch_writes_what_the_rows_one_by_one_write(engine: AsyncEngine) -> None:
    service = ContactService(SqlContactStore(engine), LISTS, SystemClock())
    for prefix in ("a-", "b-"):
        await service.update({"email": f"{prefix}existing@example.com", "source": "app", "mailingLists": {"news": True},
                              "plan": "pro"})  # fmt: skip
    assert await service.import_rows(rows_touching_each_other("a-")) == (2, 4)
    for email, fields in rows_touching_each_other("b-"):
        await service.update({**fields, "email": email})

    stored = await everyone(service)
    batch = {k.removeprefix("a-"): v for k, v in stored.items() if k.lower().startswith("a-")}
    one_by_one = {k.removeprefix("b-"): v for k, v in stored.items() if k.lower().startswith("b-")}
    for contact in [*batch.values(), *one_by_one.values()]:
        contact["email"] = contact["email"][2:]
        contact["userId"] = contact["userId"] and contact["userId"][2:]
    assert batch == one_by_one
    assert batch["ada@example.com"] == {
        "email": "ada@example.com", "firstName": "Ada", "lastName": "Lovelace", "source": "API", "subscribed": True,
        "userGroup": "", "userId": None, "mailingLists": {"news": True}, "optInStatus": None, "seats": 3}  # fmt: skip
    assert "old@example.com" not in batch  # its userId moved it to its new address
    assert batch["new@example.com"]["subscribed"] is False and "plan" not in batch["new@example.com"]
    assert batch["existing@example.com"]["mailingLists"] == {} and batch["existing@example.com"]["plan"] == "pro"
    assert {p.key: p.type.value for p in await service.properties("custom")} == {"plan": "string", "seats": "number"}


async def test_a_conflicting_row_refuses_the_batch_or_is_reported_alone(engine: AsyncEngine) -> None:
    service = ContactService(SqlContactStore(engine), LISTS, SystemClock())
    await service.update({"email": "a@example.com", "userId": "u1"})
    await service.update({"email": "b@example.com"})
    before = await everyone(service)
    # userId u1 finds a@, which would take b@'s address.
    rows: list[tuple[str, dict[str, Any]]] = [("c@example.com", {}), ("b@example.com", {"userId": "u1"}),
                                              ("d@example.com", {"firstName": "D"})]  # fmt: skip
    with pytest.raises(ContactError) as exc:
        await service.import_rows(rows)
    assert exc.value.kind == "conflict" and exc.value.path == "email"
    assert await everyone(service) == before

    failed: list[tuple[int, str]] = []
    assert await service.import_rows(rows, on_error=lambda i, e: failed.append((i, e.kind))) == (2, 0)
    assert failed == [(1, "conflict")]
    after = await everyone(service)
    assert sorted(after) == ["a@example.com", "b@example.com", "c@example.com", "d@example.com"]
    assert after["a@example.com"] == before["a@example.com"] and after["b@example.com"] == before["b@example.com"]
    assert after["d@example.com"]["firstName"] == "D"


async def test_an_invalid_row_is_refused_before_any_row_is_written(engine: AsyncEngine) -> None:
    service = ContactService(SqlContactStore(engine), LISTS, SystemClock())
    rows: list[tuple[str, dict[str, Any]]] = [("a@example.com", {"seats": 1}), ("b@example.com", {"seats": "many"}),
                                              ("c@example.com", {"mailingLists": {"nope": True}})]  # fmt: skip
    with pytest.raises(ContactError) as exc:
        await service.import_rows(rows)
    assert exc.value.path == "seats"
    assert await everyone(service) == {}
    failed: list[tuple[int, str]] = []
    assert await service.import_rows(rows, on_error=lambda i, e: failed.append((i, e.path))) == (1, 0)
    assert failed == [(1, "seats"), (2, "mailingLists.nope")]
