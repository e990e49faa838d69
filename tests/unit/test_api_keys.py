"""API key format and hashing: keys parse back into id and secret, hashes verify only
the right secret, and a stored hash reveals neither the secret nor the key."""

from __future__ import annotations

import pytest

from api.keys import (
    KeyFormatError,
    format_key,
    generate_key,
    hash_secret,
    parse_key,
    verify_secret,
)
from api.principals import Role


def test_a_generated_key_round_trips_through_its_text_form() -> None:
    parsed = generate_key()
    text = format_key(parsed)
    assert text.startswith(f"cs_{parsed.key_id}_")
    assert parse_key(text) == parsed
    assert parse_key(f"  {text}\n") == parsed, "surrounding whitespace (copy and paste) is tolerated"


def test_generated_keys_differ() -> None:
    assert len({format_key(generate_key()) for _ in range(50)}) == 50


@pytest.mark.parametrize(
    "text",
    [
        "",
        "cs_",
        "token",
        "cs_0123456789ab",
        "cs_0123456789AB_" + "a" * 43,
        "xx_0123456789ab_" + "a" * 43,
        "cs_0123456789ab_" + "a" * 42,
        "cs_0123456789ab_" + "a" * 44,
        "cs_0123456789ab_" + "a" * 42 + "!",
    ],
)
def test_malformed_keys_are_refused_without_echoing_them(text: str) -> None:
    with pytest.raises(KeyFormatError) as caught:
        parse_key(text)
    assert len(text) < 10 or text not in str(caught.value)


def test_a_hash_verifies_its_secret_only() -> None:
    secret = generate_key().secret
    stored = hash_secret(secret, iterations=1000)
    assert verify_secret(secret, stored)
    assert not verify_secret(secret[:-1] + ("a" if secret[-1] != "a" else "b"), stored)
    assert secret not in stored
    algorithm, iterations, _salt, _digest = stored.split("$")
    assert (algorithm, iterations) == ("pbkdf2_sha256", "1000")


def test_each_hash_has_its_own_salt() -> None:
    assert hash_secret("same", iterations=1000) != hash_secret("same", iterations=1000)


@pytest.mark.parametrize("stored", ["", "plain", "md5$1$x$y", "pbkdf2_sha256$x$y$z", "pbkdf2_sha256$10$!!$!!"])
def test_a_damaged_hash_verifies_nothing(stored: str) -> None:
    assert not verify_secret("anything", stored)


def test_admin_includes_researcher_but_not_the_reverse() -> None:
    assert Role.ADMIN.allows(Role.RESEARCHER) and Role.ADMIN.allows(Role.ADMIN)
    assert Role.RESEARCHER.allows(Role.RESEARCHER) and not Role.RESEARCHER.allows(Role.ADMIN)
