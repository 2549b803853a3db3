"""The publish auth hook deciding real RTMP publishes (ffmpeg CLI) on a real server."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import require_tool
from tests.media import run_ffmpeg_publish
from vilokanam.hooks import verify
from vilokanam.hooks.publish_auth import UNAVAILABLE
from vilokanam.hooks.testing import HookReceiver

pytestmark = pytest.mark.e2e

SECRET = "whsec_publish_hook_0123456789"
HOOK_TIMEOUT = 1.0


@pytest.fixture
def hooks() -> Iterator[HookReceiver]:
    with HookReceiver() as receiver:
        yield receiver


@pytest.fixture
def ffmpeg() -> str:
    return require_tool("ffmpeg", "the ffmpeg CLI is a real RTMP publisher")


def hook_server(start_server, hooks: HookReceiver):  # type: ignore[no-untyped-def]
    """A server asking ``/auth`` before each publish and reporting refusals to ``/events``."""
    settings: dict[str, Any] = {
        "publish_hook": {"url": hooks.url("/auth"), "timeout": HOOK_TIMEOUT},
        "webhooks": {
            "secret": SECRET,
            "endpoints": [{"url": hooks.url("/events"), "events": ["stream.publish_rejected"]}],
        },
    }
    return start_server(**settings)


def rejection(hooks: HookReceiver) -> dict[str, Any]:
    [event] = hooks.wait_for(lambda r: r.event == "stream.publish_rejected", timeout=5)
    return event.json["data"]  # type: ignore[no-any-return]


def hook_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "vilokanam.hooks.publish_auth"
    ]


def assert_no_internals(reason: str, hooks: HookReceiver) -> None:
    """What the RTMP client is told names neither the hook nor its host."""
    assert "http" not in reason and "127.0.0.1" not in reason, reason
    assert str(hooks.port) not in reason, reason


def test_a_refusing_hook_refuses_a_real_publish(start_server, hooks, ffmpeg, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="vilokanam.hooks")
    hooks.answer("/auth", 403, body="channel suspended")
    server = hook_server(start_server, hooks)
    key = server.create_channel("gated")
    channel = server.store.get_channel("gated")

    result = run_ffmpeg_publish(ffmpeg, f"{server.rtmp_base}/{key}", seconds=4)
    assert result.returncode != 0, "ffmpeg is told the publish failed"
    assert server.store.sessions() == [], "no stream session for a refused publish"

    [asked] = hooks.received("/auth")
    body = asked.json
    peer = body.pop("peer")
    assert body == {
        "action": "publish",
        "channel": "gated",
        "channel_id": channel.id,
        "client_ip": "127.0.0.1",
        "app": "live",
        "query": "",
    }
    assert peer.startswith("127.0.0.1:")
    assert key not in asked.body.decode(), "the hook is never told the stream key"
    assert verify(SECRET, asked.body, asked.headers["Vilokanam-Signature"]), "signed like webhooks"

    data = rejection(hooks)
    assert data["channel"] == "gated" and data["peer"] == peer
    # The operator's own answer reaches the publisher; the hook's URL only the log.
    assert data["reason"] == "publish refused by the publish hook (HTTP 403): channel suspended"
    assert_no_internals(data["reason"], hooks)
    assert "channel suspended" in result.stderr, "the client is told why"
    [warning] = hook_warnings(caplog)
    assert hooks.url("/auth") in warning and "HTTP 403" in warning and "'gated'" in warning


def test_the_hook_is_told_the_publish_query(start_server, hooks, ffmpeg) -> None:  # type: ignore[no-untyped-def]
    hooks.answer("/auth", 403)
    server = hook_server(start_server, hooks)
    key = server.create_channel("tokens")
    run_ffmpeg_publish(ffmpeg, f"{server.rtmp_base}/{key}?token=abc123", seconds=2)
    [asked] = hooks.received("/auth")
    assert asked.json["query"] == "token=abc123"
    # nginx-rtmp style: the query on the application part of the URL.
    app_url = server.rtmp_base + "?user=alice"
    run_ffmpeg_publish(ffmpeg, f"{app_url}/{key}", seconds=2)
    asked = hooks.received("/auth")[-1]
    assert asked.json["query"] == "user=alice" and asked.json["app"] == "live"


def test_an_allowing_hook_lets_the_publish_through(start_server, hooks, ffmpeg) -> None:  # type: ignore[no-untyped-def]
    hooks.answer("/auth", 204)
    server = hook_server(start_server, hooks)
    key = server.create_channel("open")

    result = run_ffmpeg_publish(ffmpeg, f"{server.rtmp_base}/{key}", seconds=3, readrate=3)
    assert result.returncode == 0, result.stderr
    [session] = server.store.sessions()
    assert session.publisher.startswith("127.0.0.1:")
    [asked] = hooks.received("/auth")
    assert asked.json["channel"] == "open" and asked.json["query"] == ""
    assert hooks.received("/events") == []


def test_a_hanging_hook_refuses_after_its_timeout(start_server, hooks, ffmpeg, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="vilokanam.hooks")
    hooks.answer("/auth", 200, delay=30)  # would allow, but far too late
    server = hook_server(start_server, hooks)
    key = server.create_channel("slowauth")

    began = time.monotonic()
    result = run_ffmpeg_publish(ffmpeg, f"{server.rtmp_base}/{key}", seconds=4)
    took = time.monotonic() - began
    assert result.returncode != 0
    assert HOOK_TIMEOUT <= took < HOOK_TIMEOUT + 2.5, f"refused after {took:.2f} s"
    assert server.store.sessions() == []

    reason = rejection(hooks)["reason"]
    assert reason == UNAVAILABLE == "publish authorization unavailable, try again later"
    assert_no_internals(reason, hooks)
    assert UNAVAILABLE in result.stderr
    [warning] = hook_warnings(caplog)
    assert f"publish hook {hooks.url('/auth')} did not answer within 1 s" in warning, warning


def test_an_unreachable_hook_fails_closed(start_server, hooks, ffmpeg, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="vilokanam.hooks")
    server = hook_server(start_server, hooks)
    key = server.create_channel("nohook")
    hooks_url = hooks.url("/auth")
    hooks.stop()  # nothing listens there any more: connection refused

    result = run_ffmpeg_publish(ffmpeg, f"{server.rtmp_base}/{key}", seconds=4)
    assert result.returncode != 0
    assert server.store.sessions() == []
    # The webhook receiver is gone too, so read the refusal from the outbox row.
    deadline = time.monotonic() + 5
    while not (rows := _outbox_bodies(server)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rows and f'"reason":"{UNAVAILABLE}"' in rows[0], rows
    assert hooks_url not in rows[0] and "Connect" not in rows[0], rows
    assert UNAVAILABLE in result.stderr
    [warning] = hook_warnings(caplog)
    assert f"publish hook {hooks_url} unreachable: ClientConnectorError" in warning, warning


def _outbox_bodies(server) -> list[str]:  # type: ignore[no-untyped-def]
    from sqlmodel import select

    from vilokanam.store.models import WebhookDelivery

    with server.store.session() as db:
        return [row.body for row in db.exec(select(WebhookDelivery))]
