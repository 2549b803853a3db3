"""Webhook signatures as a receiver checks them, and the retry schedule."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from vilokanam.hooks.dispatcher import backoff_delay, display_url
from vilokanam.hooks.signing import parse, sign, verify, webhook_headers

SECRET = "whsec_test_0123456789"
BODY = '{"data":{"channel":"demo"},"id":"e1","type":"stream.started"}'
NOW = 1_767_225_600


def test_round_trip_and_the_documented_formula() -> None:
    header = sign(SECRET, BODY, NOW)
    expected = hmac.new(SECRET.encode(), f"{NOW}.{BODY}".encode(), hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={expected}"
    assert verify(SECRET, BODY, header, now=NOW)
    assert verify(SECRET, BODY.encode(), header, now=NOW + 299), "bytes body, inside tolerance"


@pytest.mark.parametrize(
    ("secret", "body"),
    [
        (SECRET, BODY.replace("demo", "dem0")),  # tampered body
        (SECRET, BODY + " "),  # re-serialized / whitespace changed
        ("whsec_other", BODY),  # wrong secret
    ],
)
def test_tampering_or_wrong_secret_fails(secret: str, body: str) -> None:
    assert not verify(secret, body, sign(SECRET, BODY, NOW), now=NOW)


def test_old_or_future_timestamp_is_a_replay() -> None:
    header = sign(SECRET, BODY, NOW)
    assert not verify(SECRET, BODY, header, now=NOW + 301)
    assert not verify(SECRET, BODY, header, now=NOW - 301)
    assert verify(SECRET, BODY, header, now=NOW + 3000, tolerance=3600)


def test_timestamp_is_signed_so_it_cannot_be_swapped() -> None:
    signature = sign(SECRET, BODY, NOW).split(",")[1]
    assert not verify(SECRET, BODY, f"t={NOW + 100},{signature}", now=NOW + 100)


def test_several_v1_values_for_secret_rotation() -> None:
    old = sign("whsec_old", BODY, NOW).split(",")[1]
    new = sign(SECRET, BODY, NOW).split(",")[1]
    header = f"t={NOW},{old},{new},v0=ignored"
    assert verify(SECRET, BODY, header, now=NOW)
    assert verify("whsec_old", BODY, header, now=NOW)
    assert not verify("whsec_third", BODY, header, now=NOW)
    assert parse(header) == (NOW, [old.removeprefix("v1="), new.removeprefix("v1=")])


@pytest.mark.parametrize("header", ["", "garbage", "t=abc,v1=00", f"t={NOW}", "v1=00"])
def test_malformed_headers_are_rejected(header: str) -> None:
    assert not verify(SECRET, BODY, header, now=NOW)


def test_headers_carry_event_delivery_and_timestamp() -> None:
    headers = webhook_headers(SECRET, BODY, event="stream.started", delivery_id="e1", timestamp=NOW)
    assert headers["Vilokanam-Event"] == "stream.started"
    assert headers["Vilokanam-Delivery"] == "e1"
    assert headers["Vilokanam-Timestamp"] == str(NOW)
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("vilokanam/")
    assert verify(SECRET, BODY, headers["Vilokanam-Signature"], now=NOW)


def test_backoff_doubles_up_to_the_cap_with_bounded_jitter() -> None:
    no_jitter = [backoff_delay(n, 1.0, 300.0, rng=lambda: 0.0) for n in range(1, 12)]
    assert no_jitter == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    most_jitter = [backoff_delay(n, 1.0, 300.0, rng=lambda: 1.0) for n in (1, 4, 20)]
    assert most_jitter == pytest.approx([0.8, 6.4, 240.0])
    for attempts in range(1, 15):
        delay = backoff_delay(attempts, 0.5, 60.0)
        assert 0.8 * min(60.0, 0.5 * 2 ** (attempts - 1)) <= delay <= 60.0


def test_urls_in_logs_lose_credentials_and_query() -> None:
    assert display_url("https://user:pw@hooks.example.com:8443/in?token=s3cret") == (
        "https://hooks.example.com:8443/in"
    )
