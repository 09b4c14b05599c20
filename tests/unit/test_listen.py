"""The `$POSTROOM_LISTEN_FDS` format that names the listening sockets a daemon process inherits."""

from __future__ import annotations

import pytest

from postroom.listen import ListenError, decode_fds, encode_fds


def test_fd_names_round_trip() -> None:
    fds = {"submission": [3], "mx": [4], "http": [5, 6]}
    assert encode_fds(fds) == "submission=3,mx=4,http=5,http=6"
    assert decode_fds(encode_fds(fds)) == fds


@pytest.mark.parametrize("value", ["submission=three", "=3", "submission", "mx=-1"])
def test_malformed_fd_names_are_refused(value: str) -> None:
    with pytest.raises(ListenError, match="POSTROOM_LISTEN_FDS is malformed"):
        decode_fds(value)
