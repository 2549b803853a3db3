"""Playback tokens: issue/verify, every refusal reason, tampering, fuzzing, the secret file."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import make_settings
from vilokanam.billing import tokens
from vilokanam.billing.tokens import Claims, TokenError, issue, load_or_create_secret, verify

SECRET = b"s" * 32
NOW = 1_700_000_000


def test_a_token_verifies_for_its_channel_until_it_expires() -> None:
    token = issue(SECRET, 42, "news", NOW + 60)
    assert verify(SECRET, token, "news", NOW) == Claims(42, "news", NOW + 60)
    assert verify(SECRET.decode(), token, "news", NOW + 59.9).viewer_id == 42  # str secret
    assert token.isascii() and all(c.isalnum() or c in "-_" for c in token)  # URL-safe
    assert len(token) < 64


@pytest.mark.parametrize(
    ("token", "slug", "now", "reason"),
    [
        (None, "news", NOW, "missing token"),
        ("", "news", NOW, "missing token"),
        ("!!!", "news", NOW, "malformed token"),
        ("abc", "news", NOW, "malformed token"),
        ("é" * 10, "news", NOW, "malformed token"),
        (issue(SECRET, 1, "news", NOW + 60), "news", NOW + 60, "token expired"),
        (issue(SECRET, 1, "news", NOW + 60), "sport", NOW, "token is for another channel"),
        (issue(b"x" * 32, 1, "news", NOW + 60), "news", NOW, "bad signature"),
    ],
)
def test_refusals_name_the_reason(token: str | None, slug: str, now: int, reason: str) -> None:
    with pytest.raises(TokenError) as caught:
        verify(SECRET, token, slug, now)
    assert caught.value.reason == reason == str(caught.value)


def _raw(token: str) -> bytearray:
    return bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def test_changing_any_claim_breaks_the_signature() -> None:
    token = issue(SECRET, 7, "news", NOW + 60)
    for index in range(1, 17):  # viewer id and expiry bytes
        raw = _raw(token)
        raw[index] ^= 0x01
        with pytest.raises(TokenError, match="bad signature"):
            verify(SECRET, _encode(raw), "news", NOW)
    raw = _raw(token)
    raw[-1] ^= 0x80  # the MAC itself
    with pytest.raises(TokenError, match="bad signature"):
        verify(SECRET, _encode(raw), "news", NOW)
    forged = issue(SECRET, 7, "newz", NOW + 60)  # same length, other slug, re-signed elsewhere
    spliced = _raw(forged)[:-16] + _raw(token)[-16:]
    with pytest.raises(TokenError, match="bad signature"):
        verify(SECRET, _encode(spliced), "newz", NOW)


def test_wrong_version_or_lengths_are_malformed() -> None:
    raw = _raw(issue(SECRET, 7, "news", NOW + 60))
    for mutate in (
        lambda r: r.__setitem__(0, 2),  # version
        lambda r: r.__setitem__(17, 9),  # slug length
        lambda r: r.__setitem__(17, 0),
    ):
        copy = bytearray(raw)
        mutate(copy)
        with pytest.raises(TokenError, match="malformed token"):
            verify(SECRET, _encode(copy), "news", NOW)
    with pytest.raises(TokenError, match="malformed token"):
        verify(SECRET, "A" * 5000, "news", NOW)


def test_issue_refuses_what_it_cannot_encode() -> None:
    with pytest.raises(ValueError):
        issue(SECRET, -1, "news", NOW)
    with pytest.raises(ValueError):
        issue(SECRET, 1, "", NOW)
    with pytest.raises(UnicodeEncodeError):
        issue(SECRET, 1, "nëws", NOW)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=120))
def test_random_text_never_verifies_and_only_raises_token_error(text: str) -> None:
    with pytest.raises(TokenError):
        verify(SECRET, text, "news", NOW)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_random_bytes_as_tokens_never_verify(raw: bytes) -> None:
    with pytest.raises(TokenError):
        verify(SECRET, _encode(raw), "news", NOW)


@settings(max_examples=200, deadline=None)
@given(
    viewer=st.integers(0, 2**64 - 1),
    slug=st.from_regex(r"[a-z0-9][a-z0-9-]{1,62}", fullmatch=True),
    expires=st.integers(NOW + 1, 2**40),
)
def test_round_trip(viewer: int, slug: str, expires: int) -> None:
    assert verify(SECRET, issue(SECRET, viewer, slug, expires), slug, NOW) == Claims(
        viewer, slug, expires
    )


def test_secret_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    settings_ = make_settings(tmp_path)
    first = load_or_create_secret(settings_)
    path = tokens.secret_path(settings_)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32 and load_or_create_secret(settings_) == first
    path.write_text("short\n")  # truncated by a crash: replaced
    assert load_or_create_secret(settings_) not in (first, b"short")
    configured = make_settings(tmp_path, billing={"token_secret": "configured-secret"})
    assert load_or_create_secret(configured) == b"configured-secret"
