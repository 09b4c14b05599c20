"""A real client no one here wrote (swaks) against the submission listener: STARTTLS, AUTH, relay."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Tls, running
from tests.integration.test_smtp_submission import add_user, count_rows, settings_with_tls

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed (apt-get install swaks)"),
]


async def swaks(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, ["swaks", "--timeout", "10", *args], capture_output=True, text=True, timeout=60
    )


def server_replies(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The lines swaks shows from the server: `<-` in clear, `<~` inside TLS, `*` marks errors."""
    return [line for line in result.stdout.splitlines() if line[:3] in ("<- ", "<~ ", "<-*", "<~*")]


async def test_swaks_starttls_auth_gets_250(tmp_path: Path, tls: Tls) -> None:
    settings = settings_with_tls(tmp_path, tls)
    await add_user(settings, "app@postroom.test", "swaks-password")
    async with running(settings) as d:
        host, port = d.submission
        for mechanism in ("PLAIN", "LOGIN"):
            result = await swaks(
                "--server", f"{host}:{port}", "--tls", "--auth", mechanism,
                "--auth-user", "app@postroom.test", "--auth-password", "swaks-password",
                "--from", "app@postroom.test", "--to", "someone@example.com",
            )  # fmt: skip
            assert result.returncode == 0, result.stdout + result.stderr
            replies = server_replies(result)
            assert any(r.startswith("<~  235 2.7.0") for r in replies)
            assert any(r.startswith("<~  250 2.0.0 Ok: queued as ") for r in replies)
    assert await count_rows(settings) == (2, 2)


async def test_swaks_sees_no_auth_before_starttls(tmp_path: Path, tls: Tls) -> None:
    settings = settings_with_tls(tmp_path, tls)
    await add_user(settings, "app@postroom.test", "swaks-password")
    async with running(settings) as d:
        host, port = d.submission
        result = await swaks(
            "--server", f"{host}:{port}", "--auth", "PLAIN",
            "--auth-user", "app@postroom.test", "--auth-password", "swaks-password",
            "--from", "app@postroom.test", "--to", "someone@example.com",
        )  # fmt: skip
        assert result.returncode != 0
        ehlo = [r for r in server_replies(result) if r.startswith("<-  250")]
        assert any("STARTTLS" in r for r in ehlo)
        assert not any("AUTH" in r for r in ehlo)
        assert "Host did not advertise authentication" in result.stdout + result.stderr
    assert await count_rows(settings) == (0, 0)


async def test_swaks_wrong_password_gets_535(tmp_path: Path, tls: Tls) -> None:
    settings = settings_with_tls(tmp_path, tls)
    await add_user(settings, "app@postroom.test", "right-password")
    async with running(settings) as d:
        host, port = d.submission
        result = await swaks(
            "--server", f"{host}:{port}", "--tls", "--auth", "PLAIN",
            "--auth-user", "app@postroom.test", "--auth-password", "wrong-password",
            "--from", "app@postroom.test", "--to", "someone@example.com",
        )  # fmt: skip
        assert result.returncode != 0
        assert any(r.startswith("<~* 535 5.7.8") for r in server_replies(result))
    assert await count_rows(settings) == (0, 0)


async def test_swaks_untrusted_client_cannot_relay_without_auth(tmp_path: Path, tls: Tls) -> None:
    settings = settings_with_tls(tmp_path, tls)  # trusted_networks is empty
    async with running(settings) as d:
        host, port = d.submission
        result = await swaks("--server", f"{host}:{port}", "--tls", "--from", "app@postroom.test",
                             "--to", "someone@example.com")  # fmt: skip
        assert result.returncode != 0
        assert any(r.startswith("<~* 530 5.7.0") for r in server_replies(result))
    assert await count_rows(settings) == (0, 0)
