"""The Loops API's contact body model against the contacts domain it feeds: the same built-in
fields, so a field added to one and not the other fails here, not in a client."""

from __future__ import annotations

from postroom.contacts.model import BUILTIN_FIELDS, REQUEST_KEYS, PropertyType
from postroom.loops.bodies import ContactCreateIn, ContactUpdateIn


def test_contact_models_have_exactly_the_built_in_fields_and_request_keys() -> None:
    for model in (ContactCreateIn, ContactUpdateIn):
        assert set(model.model_fields) == set(BUILTIN_FIELDS) | REQUEST_KEYS


def test_built_in_fields_have_the_domains_types() -> None:
    json_types = {PropertyType.STRING: "string", PropertyType.BOOLEAN: "boolean"}
    properties = ContactUpdateIn.model_json_schema()["properties"]
    for name, kind in BUILTIN_FIELDS.items():
        assert {"type": json_types[kind]} in properties[name]["anyOf"], name
