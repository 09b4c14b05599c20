"""The audience CSV on its own: records with the line they start on, a header's columns and its
refusals, a row as a checked payload (or the line and column at fault), and a contact as a row that
reads back the same."""

from __future__ import annotations

import codecs
import csv
import io

import pytest
from postroom.contacts.csv_io import (
    AudienceFileError,
    RowProblem,
    contact_row,
    export_header,
    parse_row,
    read_header,
    read_records,
    utf8_lines,
)
from postroom.contacts.model import Contact, MailingList, PropertyType

LISTS = [MailingList("news", "Newsletter"), MailingList("beta-testers", "Beta")]
KNOWN = {"seats": PropertyType.NUMBER, "trialEnds": PropertyType.DATE, "vip": PropertyType.BOOLEAN}


def records(text: str) -> list[tuple[int, list[str]]]:
    return list(read_records(io.StringIO(text, newline="")))


def test_records_carry_the_line_they_start_on_across_quoted_line_breaks_and_blank_lines() -> None:
    text = 'email,note\r\na@example.com,"one\r\ntwo"\r\n\r\nb@example.com,x\r\n'
    assert records(text) == [(1, ["email", "note"]), (2, ["a@example.com", "one\r\ntwo"]), (5, ["b@example.com", "x"])]


def test_lines_are_decoded_one_by_one_so_bad_bytes_are_reported_on_their_line() -> None:
    raw = io.BytesIO(codecs.BOM_UTF8 + "email,firstName\r\nzoe@example.com,Zoë\r\n".encode() + b"x@example.com,Zo\xeb\r\n")
    lines = utf8_lines(raw)
    assert [next(lines), next(lines)] == ["email,firstName\r\n", "zoe@example.com,Zoë\r\n"]
    with pytest.raises(AudienceFileError, match="^line 3: not UTF-8 text$"):
        next(lines)


def test_broken_quoting_is_refused_with_its_line() -> None:
    with pytest.raises(AudienceFileError, match="line 2: not valid CSV"):
        records('email,note\na@example.com,"ab"c\n')
    with pytest.raises(AudienceFileError, match="not valid CSV: unexpected end of data"):
        records('email,note\na@example.com,"never closed\n')


@pytest.mark.parametrize(("header", "reason"), [
    (["mail", "firstName"], "no 'email' column"),
    (["email", "seats", "seats"], "'seats' appears twice"),
    (["email", ""], "column 2 of the header has no name"),
    (["email", "mailingLists"], "'mailingLists': a reserved name"),
    (["email", "plan name"], "'plan name': not a mailing list in [contacts] lists nor a valid property name"),
])  # fmt: skip
def test_a_header_that_cannot_be_imported_is_refused(header: list[str], reason: str) -> None:
    with pytest.raises(AudienceFileError) as exc:
        read_header(header, KNOWN, LISTS)
    assert reason in str(exc.value)


def test_header_types_columns_by_definition_declaration_or_string() -> None:
    columns = read_header([" email", "news", "seats", "plan", "signedUp"], KNOWN, LISTS, {"signedUp": PropertyType.DATE})
    assert columns.names == ("email", "news", "seats", "plan", "signedUp")
    assert columns.list_columns == ("news",)
    assert dict(columns.types) == {"seats": PropertyType.NUMBER, "plan": PropertyType.STRING, "signedUp": PropertyType.DATE}
    assert dict(columns.new) == {"plan": PropertyType.STRING, "signedUp": PropertyType.DATE}


@pytest.mark.parametrize(("declared", "reason"), [
    ({"seats": PropertyType.STRING}, "--type seats: the property exists as number, not string"),
    ({"missing": PropertyType.DATE}, "--type missing: the file has no such column"),
    ({"news": PropertyType.BOOLEAN}, "--type news: a built-in field or mailing list"),
])  # fmt: skip
def test_a_declared_type_must_fit(declared: dict[str, PropertyType], reason: str) -> None:
    with pytest.raises(AudienceFileError) as exc:
        read_header(["email", "news", "seats"], KNOWN, LISTS, declared)
    assert reason in str(exc.value)


def test_a_row_becomes_the_fields_update_takes_and_empty_cells_are_left_out() -> None:
    columns = read_header(["email", "firstName", "subscribed", "userId", "news", "beta-testers", "seats",
                           "trialEnds", "vip", "plan"], KNOWN, LISTS)  # fmt: skip
    parsed = parse_row(columns, [" Ada@Example.com ", "Ada", "FALSE", "u-1", "yes", "0", "2.5",
                                 "2025-03-01T10:00:00+02:00", "", "pro"], 7)  # fmt: skip
    assert parsed == ("Ada@Example.com", {
        "firstName": "Ada", "subscribed": False, "userId": "u-1", "seats": 2.5,
        "trialEnds": "2025-03-01T08:00:00Z", "plan": "pro", "mailingLists": {"news": True, "beta-testers": False}})  # fmt: skip
    assert parse_row(columns, ["b@example.com", "", "", "", "", "", "12", "", "", ""], 8) == ("b@example.com", {"seats": 12})


@pytest.mark.parametrize(("cells", "problem"), [
    ({"email": "not an address"}, RowProblem(4, "email", "Invalid email address.")),
    ({"email": ""}, RowProblem(4, "email", "An email address is required.")),
    ({"seats": "twelve"}, RowProblem(4, "seats", "seats must be a number")),
    ({"trialEnds": "next week"}, RowProblem(4, "trialEnds", "trialEnds must be a date (ISO 8601, or a Unix "
                                                            "timestamp in milliseconds)")),
    ({"news": "maybe"}, RowProblem(4, "news", "news must be true or false")),
    ({"subscribed": "2"}, RowProblem(4, "subscribed", "subscribed must be true or false")),
    ({"userId": "   "}, RowProblem(4, "userId", "userId must be a non-empty string of at most 255 characters")),
    ({"firstName": "x" * 10_001}, RowProblem(4, "firstName", "firstName is longer than 10000 characters")),
])  # fmt: skip
def test_a_bad_cell_names_its_line_and_column(cells: dict[str, str], problem: RowProblem) -> None:
    columns = read_header(["email", "firstName", "subscribed", "userId", "news", "seats", "trialEnds"], KNOWN, LISTS)
    row = {"email": "a@example.com", **cells}
    assert parse_row(columns, [row.get(name, "") for name in columns.names], 4) == problem


def test_a_row_with_too_few_or_too_many_fields_is_wrong_as_a_whole() -> None:
    columns = read_header(["email", "firstName"], KNOWN, LISTS)
    problem = parse_row(columns, ["a@example.com"], 3)
    assert problem == RowProblem(3, "", "1 fields where the header has 2")
    assert str(problem) == "line 3: 1 fields where the header has 2"
    assert str(RowProblem(3, "seats", "bad")) == "line 3, column seats: bad"


def test_an_exported_contact_reads_back_as_the_same_fields() -> None:
    contact = Contact(id="c1", email="Émile@Example.com", user_id="u-9", first_name="Émile", last_name="Zola,\nJr",
                      source="import", subscribed=False, user_group="writers", mailing_lists=frozenset({"news"}),
                      properties={"seats": 3, "ratio": 0.1, "vip": True, "trialEnds": "2025-03-01", "plan": "pro"})  # fmt: skip
    header = export_header(["news", "beta-testers"], ["seats", "ratio", "vip", "trialEnds", "plan", "unset"])
    row = contact_row(contact, ["news", "beta-testers"], ["seats", "ratio", "vip", "trialEnds", "plan", "unset"])
    assert row[:7] == ["Émile@Example.com", "Émile", "Zola,\nJr", "u-9", "writers", "import", "false"]
    assert row[7:] == ["true", "false", "3", "0.1", "true", "2025-03-01", "pro", ""]
    known = {**KNOWN, "ratio": PropertyType.NUMBER, "plan": PropertyType.STRING, "unset": PropertyType.STRING}
    [(_, read_back)] = records(_csv([header, row]))[1:]
    assert parse_row(read_header(header, known, LISTS), read_back, 2) == ("Émile@Example.com", {
        "firstName": "Émile", "lastName": "Zola,\nJr", "userId": "u-9", "userGroup": "writers", "source": "import",
        "subscribed": False, "seats": 3, "ratio": 0.1, "vip": True, "trialEnds": "2025-03-01", "plan": "pro",
        "mailingLists": {"news": True, "beta-testers": False}})  # fmt: skip


def _csv(rows: list[list[str]]) -> str:
    out = io.StringIO(newline="")
    csv.writer(out).writerows(rows)
    return out.getvalue()


def test_loops_dashboard_headers_import_as_the_fields_they_name() -> None:
    header = ["Email", "First Name", "Last Name", "User Group", "Source", "Subscribed", "User ID", "Created At",
              "Opt In Status", "news", "seats"]  # fmt: skip
    columns = read_header(header, KNOWN, LISTS)
    assert columns.names[:7] == ("email", "firstName", "lastName", "userGroup", "source", "subscribed", "userId")
    assert columns.ignored == {"Created At", "Opt In Status"} and not columns.new
    row = ["ada@example.com", "Ada", "Lovelace", "founders", "Loops import", "true", "u-1", "2024-01-02T03:04:05Z",
           "accepted", "true", "3"]  # fmt: skip
    assert parse_row(columns, row, 2) == ("ada@example.com", {
        "firstName": "Ada", "lastName": "Lovelace", "userGroup": "founders", "source": "Loops import",
        "subscribed": True, "userId": "u-1", "seats": 3, "mailingLists": {"news": True}})  # fmt: skip
