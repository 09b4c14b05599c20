"""Rate limits: the quota arithmetic, the bucket table (in memory and shared by processes through
one file), and which bucket and quota a request is charged to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from postroom.core.clock import FakeClock
from postroom.ratelimit.policy import RatePolicy
from postroom.ratelimit.quota import Quota, parse_quota, spend
from postroom.ratelimit.settings import RateLimitSettings
from postroom.ratelimit.table import PROBE, RateTable, bucket_hash, create_table_file

TEN_PER_SECOND = Quota(10, 1.0)


def test_quotas_parse_from_the_config_form() -> None:
    assert parse_quota("10/s") == Quota(10, 1.0)
    assert parse_quota(" 600 / min ") == Quota(600, 60.0)
    assert parse_quota("5000/h") == Quota(5000, 3600.0)
    assert str(parse_quota("600/min")) == "600/min"
    for bad in ("10", "ten/s", "0/s", "10/fortnight", "-1/s", "1.5/s"):
        with pytest.raises(ValueError):
            parse_quota(bad)


def test_a_full_bucket_lets_its_quota_through_at_once_then_refuses() -> None:
    tat, now = 0.0, 1000.0
    remaining = []
    for _ in range(10):
        tat, verdict = spend(tat, now, TEN_PER_SECOND)
        assert verdict.allowed and verdict.limit == 10
        remaining.append(verdict.remaining)
    assert remaining == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    refused_tat, verdict = spend(tat, now, TEN_PER_SECOND)
    assert not verdict.allowed and verdict.remaining == 0
    assert verdict.retry_after == pytest.approx(0.1)
    assert refused_tat == tat  # a refusal spends nothing


def test_the_bucket_refills_at_the_quotas_rate() -> None:
    tat, now = 0.0, 1000.0
    for _ in range(10):
        tat, _ = spend(tat, now, TEN_PER_SECOND)
    _, verdict = spend(tat, now + 0.05, TEN_PER_SECOND)
    assert not verdict.allowed and verdict.retry_after == pytest.approx(0.05)
    tat, verdict = spend(tat, now + 0.1, TEN_PER_SECOND)
    assert verdict.allowed and verdict.remaining == 0
    _, verdict = spend(tat, now + 10, TEN_PER_SECOND)
    assert verdict.allowed and verdict.remaining == 9  # full again, never more than full


def test_a_table_keeps_one_bucket_per_key() -> None:
    clock = FakeClock()
    table = RateTable.in_memory(clock.now)
    assert [table.spend("alice", Quota(2, 1.0)).allowed for _ in range(3)] == [True, True, False]
    assert table.spend("bob", Quota(2, 1.0)).allowed
    clock.advance(0.5)
    assert table.spend("alice", Quota(2, 1.0)).allowed
    assert not table.spend("alice", Quota(2, 1.0)).allowed


def test_keys_that_collide_share_the_probe_and_keep_their_own_buckets() -> None:
    clock = FakeClock()
    table = RateTable.in_memory(clock.now, slots=4)  # every key probes the same four slots
    keys = [f"key-{n}" for n in range(4)]
    for key in keys:
        assert table.spend(key, Quota(1, 60.0)).allowed
    for key in keys:
        assert not table.spend(key, Quota(1, 60.0)).allowed, key


def test_a_full_probe_gives_up_the_bucket_closest_to_full() -> None:
    clock = FakeClock()
    table = RateTable.in_memory(clock.now, slots=PROBE)
    for n in range(PROBE):
        assert table.spend(f"old-{n}", Quota(1, 60.0)).allowed
        clock.advance(1)
    assert table.spend("newcomer", Quota(1, 60.0)).allowed  # takes old-0's slot, the soonest full
    assert table.spend("old-0", Quota(1, 60.0)).allowed  # old-0 starts full again...
    assert not table.spend("old-15", Quota(1, 60.0)).allowed  # ...the others keep their state


def test_bucket_hashes_are_stable_and_never_the_empty_marker() -> None:
    assert bucket_hash("k/default") == bucket_hash("k/default") != bucket_hash("k/send")
    assert all(bucket_hash(str(n)) != 0 for n in range(1000))


def test_a_table_file_is_one_quota_for_every_process_that_maps_it(tmp_path: Path) -> None:
    path = tmp_path / "buckets"
    create_table_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    spender = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from postroom.ratelimit.quota import Quota\n"
        "from postroom.ratelimit.table import RateTable\n"
        "table = RateTable.shared(Path(sys.argv[1]), time.time)\n"
        "print(sum(table.spend('shared-key', Quota(50, 3600.0)).allowed for _ in range(40)))\n"
    )
    runs = [subprocess.Popen([sys.executable, "-c", spender, str(path)], stdout=subprocess.PIPE, text=True)
            for _ in range(3)]  # fmt: skip
    allowed = [int(run.communicate(timeout=60)[0]) for run in runs]
    assert sum(allowed) == 50  # 120 tries in three processes, one quota of 50
    table = RateTable.shared(path, FakeClock().now)
    try:
        assert not table.spend("shared-key", Quota(50, 3600.0)).allowed
    finally:
        table.close()


def test_a_file_that_is_not_a_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "buckets"
    path.write_bytes(b"\0" * 4096)
    with pytest.raises(ValueError, match="not a postroom rate-limit table"):
        RateTable.shared(path, FakeClock().now)


def test_the_policy_charges_the_key_its_own_quota_or_its_class() -> None:
    policy = RatePolicy(RateLimitSettings(default="10/s", classes={"send": "100/s"},
                                          keys={"reporting": "2/s", "k-admin": "50/s"}))  # fmt: skip
    read = policy.charge("k-1", "reporting", "read")
    assert (read.bucket, read.quota) == ("k-1/default", Quota(2, 1.0))
    write = policy.charge("k-1", "reporting", "write")
    assert write.bucket == read.bucket  # one bucket for all a key's unclassed requests
    assert policy.charge("k-admin", "ops", "read").quota == Quota(50, 1.0)  # by id
    assert policy.charge("k-2", "other", "read").quota == Quota(10, 1.0)
    send = policy.charge("k-1", "reporting", "send")
    assert (send.bucket, send.quota) == ("k-1/send", Quota(100, 1.0))


def test_rate_limit_settings_refuse_bad_quotas_and_classes() -> None:
    with pytest.raises(ValueError, match="rate limit such as"):
        RateLimitSettings(default="fast")
    with pytest.raises(ValueError, match="unknown route class"):
        RateLimitSettings(classes={"bulk": "1/s"})
    with pytest.raises(ValueError, match="rate limit such as"):
        RateLimitSettings(keys={"a": "1 per second"})
