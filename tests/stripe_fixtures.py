"""The Stripe test data of shared/data/stripe (MRR.md's worked examples): where it is, and loading
it. Tests skip with the reason when the folder is absent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.stripe_fake import data_root

SECRET = "whsec_test_fixture_secret_do_not_use"  # the dummy secret the fixture events are signed with


def stripe_data() -> Path:
    found = data_root() / "stripe" / "realistic"
    if not found.is_dir():
        pytest.skip(f"Stripe test data not found at {found} (set POSTROOM_TEST_DATA)")
    return found


def subscriptions() -> dict[str, dict[str, Any]]:
    """The 15 subscriptions by fixture name (A_seats ... O_tiered_graduated)."""
    folder = stripe_data() / "subscriptions"
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def event_files() -> list[Path]:
    """The worked month's 9 events, in file order (evt_01 ... evt_09)."""
    return sorted((stripe_data() / "events").glob("evt_*.json"))


def invoice_n() -> dict[str, Any]:
    return dict(json.loads((stripe_data() / "invoice_N_tax_inclusive.json").read_text()))
