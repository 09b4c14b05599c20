"""The failed-login throttle over real SMTP (issue 10, findings 1 and 2): many connections sending
AUTH at once get no more password checks than the limit, a login from elsewhere is not held up
behind them, and daemons sharing a database share the limit.

Password checks are counted where they happen: `password_matches`, as the users' repository calls it.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiosmtplib
import pytest

from postroom.store import credentials
from tests.conftest import RunningDaemon, Tls, running
from tests.integration.test_smtp_submission import add_user
from tests.support import make_settings

RIGHT = "right-password"


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every password checked, in the order the checks started."""
    passwords: list[str] = []
    original = credentials.password_matches

    def counting(password: str, stored: str) -> bool:
        passwords.append(password)
        return original(password, stored)

    monkeypatch.setattr(credentials, "password_matches", counting)
    return passwords


async def session(d: RunningDaemon, tls: Tls, source: str = "127.0.0.1") -> aiosmtplib.SMTP:
    host, port = d.submission
    smtp = aiosmtplib.SMTP(hostname=host, port=port, tls_context=tls.client, start_tls=False,
                           timeout=20, source_address=(source, 0))  # fmt: skip
    await smtp.connect()
    await smtp.starttls()
    await smtp.ehlo()
    return smtp


async def auth_code(smtp: aiosmtplib.SMTP, password: str) -> int:
    try:
        return (await smtp.auth_plain("app", password)).code
    except aiosmtplib.SMTPAuthenticationError as refused:
        return refused.code
    finally:
        with contextlib.suppress(aiosmtplib.SMTPException):
            await smtp.quit()


async def test_fifty_parallel_wrong_passwords_get_five_checks_and_do_not_hold_up_others(
    tmp_path: Path, tls: Tls, checked: list[str]
) -> None:
    settings = make_settings(
        tmp_path,
        smtp={"tls_cert": tls.cert, "tls_key": tls.key, "login_failure_limit": 5},
        delivery={"hold": True, "mode": "capture", "capture_dir": str(tmp_path / "out")},
    )
    await add_user(settings, "app", RIGHT)
    async with running(settings) as d:
        attackers = [await session(d, tls) for _ in range(50)]
        user = await session(d, tls, source="127.0.0.2")  # Linux routes all of 127/8 to loopback
        go = asyncio.Event()

        async def attack(smtp: aiosmtplib.SMTP, n: int) -> int:
            await go.wait()
            return await auth_code(smtp, f"guess-{n}")

        async def log_in() -> tuple[int, float]:
            await go.wait()
            await asyncio.sleep(0.005)  # the attack's AUTH commands go out first
            started = asyncio.get_running_loop().time()
            code = await auth_code(user, RIGHT)
            return code, asyncio.get_running_loop().time() - started

        attacks = [asyncio.create_task(attack(smtp, n)) for n, smtp in enumerate(attackers)]
        login = asyncio.create_task(log_in())
        go.set()
        codes = await asyncio.gather(*attacks)
        code, seconds = await login
        print(f"passwords checked: {len(checked)} (attack {len(checked) - 1} of 50); "
              f"the other address's login took {seconds:.3f} s")  # fmt: skip
        assert code == 235 and seconds < 1.0
        guesses = [password for password in checked if password != RIGHT]
        assert len(guesses) == 5
        assert sorted(codes) == [454] * 45 + [535] * 5
        assert d.metric("postroom_smtp_auth_total", {"result": "failed"}) == 5
        assert d.metric("postroom_smtp_auth_total", {"result": "throttled"}) == 45
        assert d.metric("postroom_smtp_auth_total", {"result": "ok"}) == 1


async def test_daemons_sharing_a_database_share_the_limit(
    db_url: str, tmp_path: Path, tls: Tls, checked: list[str]
) -> None:
    settings = make_settings(
        tmp_path, db_url,
        smtp={"tls_cert": tls.cert, "tls_key": tls.key, "login_failure_limit": 3},
        delivery={"hold": True, "mode": "capture", "capture_dir": str(tmp_path / "out")},
    )  # fmt: skip
    await add_user(settings, "app", RIGHT)
    async with running(settings) as one, running(settings) as two:
        assert one.submission != two.submission
        # One after the other: the failures add up across the daemons.
        for d in (one, two, one):
            assert await auth_code(await session(d, tls), "guess") == 535
        assert await auth_code(await session(two, tls), RIGHT) == 454
        assert len(checked) == 3
        # At once, from another address: still no more checks than the limit between the two.
        sessions = [await session((one, two)[n % 2], tls, "127.0.0.3") for n in range(20)]
        codes = await asyncio.gather(*(auth_code(smtp, f"guess-{n}") for n, smtp in enumerate(sessions)))
        assert sorted(codes) == [454] * 17 + [535] * 3
        assert len(checked) == 6
