"""Webhooks end to end: a real server, real RTMP publishers, and a real HTTP receiver.

The receiver (:class:`~vilokanam.hooks.testing.HookReceiver`) is an aiohttp server on
127.0.0.1 that records each request and answers from a plan: fail twice, hang, and so on.
"""

from __future__ import annotations

import itertools
import logging
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import free_port, require_tool
from tests.media import ffmpeg_publish_command, run_ffmpeg_publish, wait_for
from vilokanam.hooks import enqueue_event, verify
from vilokanam.hooks.testing import HookReceiver, Received
from vilokanam.store.models import DeliveryState, WebhookDelivery

pytestmark = pytest.mark.e2e

SECRET = "whsec_integration_0123456789"


@pytest.fixture
def hooks() -> Iterator[HookReceiver]:
    with HookReceiver() as receiver:
        yield receiver


def webhook_settings(*urls: str, **overrides: Any) -> dict[str, Any]:
    """Fast retries so a test sees the whole schedule in well under a second."""
    settings: dict[str, Any] = {
        "secret": SECRET,
        "endpoints": [{"url": url} for url in urls],
        "timeout": 2.0,
        "max_attempts": 5,
        "backoff_initial": 0.05,
        "backoff_max": 0.2,
    }
    return settings | overrides


def deliveries(server) -> list[WebhookDelivery]:  # type: ignore[no-untyped-def]
    from sqlmodel import select

    with server.store.session() as db:
        return list(db.exec(select(WebhookDelivery).order_by(WebhookDelivery.id)))


def is_event(path: str, event: str):  # type: ignore[no-untyped-def]
    return lambda r: r.path == path and r.event == event


def assert_signed(request: Received) -> None:
    header = request.headers["Vilokanam-Signature"]
    assert verify(SECRET, request.body, header), "signature verifies with the shared secret"
    assert header.startswith(f"t={request.headers['Vilokanam-Timestamp']},v1=")
    assert abs(int(request.headers["Vilokanam-Timestamp"]) - time.time()) < 30
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"].startswith("vilokanam/")
    body = request.json
    assert body["id"] == request.delivery and body["type"] == request.event


def test_500s_are_retried_then_delivered_once_with_a_valid_signature(
    start_server, hooks: HookReceiver
) -> None:  # type: ignore[no-untyped-def]
    hooks.plan("/events", 500, 500)  # then 200
    server = start_server(webhooks=webhook_settings(hooks.url("/events")))
    key = server.create_channel("news")
    channel = server.store.get_channel("news")
    server.loop.call_soon_threadsafe(server.server.webhook_events.key_rotated, channel)

    attempts = hooks.wait_for(is_event("/events", "channel.key_rotated"), count=3, timeout=10)
    time.sleep(0.5)  # time for a wrong extra attempt to show up
    assert len(hooks.received("/events")) == 3, "delivered once, after two retries"
    assert len({r.delivery for r in attempts}) == 1, "one delivery id for every attempt"
    assert len({r.body for r in attempts}) == 1, "the body is the same on every attempt"
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(attempts)]
    assert all(0.04 <= gap < 0.9 for gap in gaps), f"backoff 0.05 s then 0.1 s, got {gaps}"
    for request in attempts:
        assert_signed(request)
    data = attempts[-1].json["data"]
    assert data["channel"] == "news" and data["channel_id"] == channel.id
    assert data["rotated_at"].startswith(str(channel.key_rotated_at.date()))
    assert key not in attempts[-1].body.decode(), "the payload never carries the stream key"

    [row] = deliveries(server)
    assert (row.state, row.attempts, row.last_error) == (DeliveryState.DELIVERED, 3, None)
    dispatcher = server.server.webhooks
    assert (dispatcher.delivered, dispatcher.retried, dispatcher.failed) == (1, 2, 0)


def test_publish_lifecycle_reaches_one_endpoint_while_another_hangs(
    start_server, hooks: HookReceiver
) -> None:  # type: ignore[no-untyped-def]
    ffmpeg = require_tool("ffmpeg", "the ffmpeg CLI is a real RTMP publisher")
    hooks.answer("/slow", 200, delay=60)  # accepts the connection, never answers in time
    server = start_server(
        webhooks=webhook_settings(hooks.url("/slow"), hooks.url("/fast"), timeout=30)
    )
    key = server.create_channel("live1")
    began = time.monotonic()
    publisher = subprocess.Popen(
        ffmpeg_publish_command(ffmpeg, f"{server.rtmp_base}/{key}", seconds=6, readrate=1.5),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        [started] = hooks.wait_for(is_event("/fast", "stream.started"), timeout=10)
        wait_for(f"{server.http_base}/live/live1/master.m3u8", timeout=15)
        went_live = time.monotonic() - began
        _, errors = publisher.communicate(timeout=60)
        assert publisher.returncode == 0, errors
    finally:
        publisher.kill()
    assert started.at - began < 5, "stream.started arrives while the other endpoint hangs"
    assert went_live < 15, f"live after {went_live:.1f} s: a hanging endpoint stalls nothing"

    assert_signed(started)
    [session] = server.store.sessions()
    data = started.json["data"]
    assert data == {
        "channel": "live1",
        "channel_id": session.channel_id,
        "stream_id": session.id,
        "started_at": data["started_at"],
        "publisher": data["publisher"],
        "playback_url": f"{server.http_base}/live/live1/master.m3u8",
    }
    assert data["publisher"].startswith("127.0.0.1:")

    [ended] = hooks.wait_for(is_event("/fast", "stream.ended"), timeout=20)
    assert_signed(ended)
    data = ended.json["data"]
    assert data["stream_id"] == session.id and data["channel"] == "live1"
    assert data["reason"] == "publisher left"
    assert data["segments"] >= 2 and isinstance(data["peak_viewers"], int)
    assert data["duration_seconds"] >= 3 and data["ended_at"] > data["started_at"]
    assert {r.event for r in hooks.received("/slow")} == {"stream.started", "stream.ended"}

    stopping = time.monotonic()
    server.stop()
    assert time.monotonic() - stopping < 8, "shutdown waits at most ~2 s for webhooks"
    slow = [row for row in deliveries(server) if row.url.endswith("/slow")]
    assert [(r.state, r.attempts) for r in slow] == [(DeliveryState.PENDING, 0)] * 2, (
        "deliveries cut off by shutdown stay queued for the next start"
    )


def test_shutdown_delivers_stream_ended_of_the_streams_it_ends(
    start_server, hooks: HookReceiver
) -> None:  # type: ignore[no-untyped-def]
    ffmpeg = require_tool("ffmpeg", "the ffmpeg CLI is a real RTMP publisher")
    server = start_server(webhooks=webhook_settings(hooks.url("/events")))
    key = server.create_channel("late")
    publisher = subprocess.Popen(
        ffmpeg_publish_command(ffmpeg, f"{server.rtmp_base}/{key}", seconds=30, readrate=1),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        hooks.wait_for(is_event("/events", "stream.started"), timeout=10)
        server.stop()
    finally:
        publisher.kill()
        publisher.wait(10)
    [ended] = hooks.received("/events")[1:]  # already there when stop() returned
    assert ended.event == "stream.ended"
    assert ended.json["data"]["reason"] == "server shutdown"


def test_a_wrong_stream_key_sends_publish_rejected(start_server, hooks: HookReceiver) -> None:  # type: ignore[no-untyped-def]
    ffmpeg = require_tool("ffmpeg", "the ffmpeg CLI is a real RTMP publisher")
    server = start_server(webhooks=webhook_settings(hooks.url("/events")))
    server.create_channel("guarded")
    result = run_ffmpeg_publish(ffmpeg, f"{server.rtmp_base}/sk_wrong-key", seconds=2)
    assert result.returncode != 0

    [rejected] = hooks.wait_for(is_event("/events", "stream.publish_rejected"))
    assert_signed(rejected)
    data = rejected.json["data"]
    assert data["channel"] is None and data["channel_id"] is None
    assert data["reason"] == "unknown or revoked stream key"
    assert data["peer"].startswith("127.0.0.1:")
    assert b"sk_wrong-key" not in rejected.body
    assert server.store.sessions() == []


def test_events_queued_by_another_process_are_delivered_by_the_poll(
    start_server, hooks: HookReceiver
) -> None:  # type: ignore[no-untyped-def]
    server = start_server(webhooks=webhook_settings(hooks.url("/events")))
    # What `vilokanam channel rotate-key` does in its own process: a row, no wake-up call.
    queued = time.monotonic()
    event_id = enqueue_event(
        server.store, server.settings, "channel.key_rotated", {"channel": "from-cli"}
    )
    [request] = hooks.wait_for(is_event("/events", "channel.key_rotated"), timeout=5)
    assert request.at - queued < 2.5, "picked up by the ~1 s poll"
    assert request.delivery == event_id
    assert request.json["data"] == {"channel": "from-cli"}
    assert_signed(request)


def test_a_dead_endpoint_ends_failed_after_max_attempts(
    start_server, hooks: HookReceiver, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="vilokanam.hooks")
    dead = f"http://127.0.0.1:{free_port()}/dead"  # nothing listens: connection refused
    server = start_server(
        webhooks=webhook_settings(dead, hooks.url("/live"), max_attempts=3),
    )
    enqueue_event(server.store, server.settings, "stream.publish_rejected", {"peer": "x"})
    hooks.wait_for(is_event("/live", "stream.publish_rejected"), timeout=5)

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = {row.url: row for row in deliveries(server)}
        if rows[dead].state != DeliveryState.PENDING:
            break
        time.sleep(0.05)
    assert rows[dead].state == DeliveryState.FAILED
    assert rows[dead].attempts == 3
    assert "Connect" in (rows[dead].last_error or ""), rows[dead].last_error
    assert rows[hooks.url("/live")].state == DeliveryState.DELIVERED
    assert server.server.webhooks.failed == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("failed after 3 attempt(s)" in m and dead in m for m in warnings), warnings
