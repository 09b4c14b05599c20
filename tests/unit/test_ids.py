"""Message ids: 26-character ULIDs in Crockford base32 that sort by creation time."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from postroom.core.ids import new_message_id

CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def test_ids_are_26_crockford_characters() -> None:
    for _ in range(200):
        message_id = new_message_id()
        assert len(message_id) == 26
        assert set(message_id) <= CROCKFORD  # no I, L, O, U, no lower case


def test_ids_are_unique_within_one_millisecond() -> None:
    ids = {new_message_id(1_750_000_000.0) for _ in range(1000)}
    assert len(ids) == 1000
    assert len({i[:10] for i in ids}) == 1  # same time prefix, random suffix


def test_time_prefix_encodes_milliseconds() -> None:
    assert new_message_id(0.0)[:10] == "0000000000"
    assert new_message_id(0.032)[:10] == "0000000010"  # 32 ms is "10" in base 32


@given(
    a=st.floats(min_value=0, max_value=2**40, allow_nan=False),
    b=st.floats(min_value=0, max_value=2**40, allow_nan=False),
)
def test_ids_sort_by_time(a: float, b: float) -> None:
    if int(a * 1000) == int(b * 1000):
        return  # same millisecond: order is random by design
    earlier, later = sorted((a, b))
    assert new_message_id(earlier) < new_message_id(later)


def test_default_time_is_now() -> None:
    import time

    before = new_message_id(time.time() - 1)
    now = new_message_id()
    after = new_message_id(time.time() + 1)
    assert before < now < after
