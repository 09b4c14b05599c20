"""`core.secrets`: API keys (random, SHA-256 stored) and scrypt password hashes."""

from __future__ import annotations

import pytest
from postroom.core.secrets import (
    api_secret_matches,
    hash_api_secret,
    hash_password,
    new_api_key,
    new_password,
    password_matches,
    split_api_key,
)


def test_api_key_round_trip() -> None:
    key = new_api_key()
    assert key.token.startswith(f"pr_{key.id}_")
    parts = split_api_key(key.token)
    assert parts is not None
    key_id, secret = parts
    assert key_id == key.id
    assert api_secret_matches(secret, key.secret_hash)
    assert key.secret_hash == hash_api_secret(secret)
    assert secret not in key.secret_hash


def test_api_keys_are_unique() -> None:
    keys = [new_api_key() for _ in range(50)]
    assert len({k.id for k in keys}) == 50
    assert len({k.token for k in keys}) == 50


def test_wrong_secret_does_not_match() -> None:
    key = new_api_key()
    _, secret = split_api_key(key.token) or ("", "")
    assert not api_secret_matches(secret + "x", key.secret_hash)
    assert not api_secret_matches(secret[:-1], key.secret_hash)
    assert not api_secret_matches(secret, new_api_key().secret_hash)


def test_secret_may_contain_underscores() -> None:
    # token_urlsafe uses "_", so only the first two underscores separate the parts
    assert split_api_key("pr_abc123_se_cr_et") == ("abc123", "se_cr_et")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "pr",
        "pr_",
        "pr__secret",
        "pr_abc_",
        "xx_abc_secret",
        "PR_abc_secret",
        "abc_secret",
        "Bearer pr_abc_secret",
    ],
)
def test_malformed_tokens_do_not_split(token: str) -> None:
    assert split_api_key(token) is None


def test_password_hash_round_trip() -> None:
    stored = hash_password("correct horse battery staple")
    assert stored.startswith("$scrypt$ln=14,r=8,p=1$")
    assert "correct horse" not in stored
    assert password_matches("correct horse battery staple", stored)
    assert not password_matches("correct horse battery stapler", stored)
    assert not password_matches("", stored)


def test_password_hashes_are_salted() -> None:
    assert hash_password("same") != hash_password("same")
    fixed = b"0123456789abcdef"
    assert hash_password("same", fixed) == hash_password("same", fixed)


def test_non_ascii_password() -> None:
    stored = hash_password("pässwörd-密码")
    assert password_matches("pässwörd-密码", stored)
    assert not password_matches("passwort-密码", stored)


def test_tampered_digest_does_not_match() -> None:
    stored = hash_password("pw")
    head, digest = stored.rsplit("$", 1)
    flipped = ("B" if digest[0] == "A" else "A") + digest[1:]
    assert not password_matches("pw", f"{head}${flipped}")


def test_tampered_salt_does_not_match() -> None:
    scheme_params, salt, digest = hash_password("pw").rsplit("$", 2)
    flipped = ("B" if salt[0] == "A" else "A") + salt[1:]
    assert not password_matches("pw", f"{scheme_params}${flipped}${digest}")


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "garbage",
        "$scrypt$",
        "$scrypt$ln=14,r=8$c2FsdA$ZGlnZXN0",  # p missing
        "$scrypt$ln=x,r=8,p=1$c2FsdA$ZGlnZXN0",
        "$scrypt$ln14r8p1$c2FsdA$ZGlnZXN0",
        "$bcrypt$ln=14,r=8,p=1$c2FsdA$ZGlnZXN0",
        "$scrypt$ln=14,r=8,p=1$c2FsdA$ZGlnZXN0$extra",
        "plaintext-password",
    ],
)
def test_garbage_stored_hash_is_false_not_an_error(stored: str) -> None:
    assert password_matches("pw", stored) is False


def test_new_passwords_are_long_and_distinct() -> None:
    passwords = {new_password() for _ in range(20)}
    assert len(passwords) == 20
    assert all(len(p) >= 20 for p in passwords)
