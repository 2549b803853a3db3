"""A store failure while a stream ends must not wedge the channel (review finding H1)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from tests.conftest import require_tool
from tests.media import run_ffmpeg_publish
from vilokanam.store import SessionState

pytestmark = pytest.mark.e2e


def failing_end_writes(store: Any, failures: int) -> list[int]:
    """Make the next ``failures`` writes of an ENDED state fail like a locked SQLite file."""
    real = store.update_session
    calls: list[int] = []

    def update_session(session_id: int, **changes: Any) -> Any:
        if changes.get("state") is SessionState.ENDED and len(calls) < failures:
            calls.append(session_id)
            raise OperationalError("UPDATE streamsession", {}, Exception("database is locked"))
        return real(session_id, **changes)

    store.update_session = update_session
    return calls


def wait_for_sessions(store: Any, count: int, timeout: float = 30.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sessions = store.sessions()
        if len(sessions) >= count and all(s.state is SessionState.ENDED for s in sessions):
            return sessions
        time.sleep(0.2)
    raise AssertionError(f"sessions: {store.sessions()}")


@pytest.mark.parametrize("failures", [2, 99])
def test_channel_publishes_again_after_end_write_failures(start_server, failures: int) -> None:  # type: ignore[no-untyped-def]
    ffmpeg = require_tool("ffmpeg", "the ffmpeg CLI is the publisher")
    server = start_server(rtmp={"reconnect_window": 0.5})
    key = server.create_channel("flaky")
    calls = failing_end_writes(server.store, failures)
    first = run_ffmpeg_publish(ffmpeg, f"{server.rtmp_base}/{key}", seconds=3, readrate=3)
    assert first.returncode == 0, first.stderr
    deadline = time.monotonic() + 30
    while server.server.manager.streams and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not server.server.manager.streams, "the ended stream is forgotten even so"
    assert calls, "the fault was injected"

    second = run_ffmpeg_publish(ffmpeg, f"{server.rtmp_base}/{key}", seconds=3, readrate=3)
    assert second.returncode == 0, "the channel takes a new publish: " + second.stderr
    if failures == 2:  # retried until the store answered: both sessions ended properly
        sessions = wait_for_sessions(server.store, 2)
        assert [s.end_reason for s in sessions] == ["publisher left", "publisher left"]
        assert all(s.ended_at is not None and s.segments >= 1 for s in sessions)
    else:  # never recorded: the next start ends it (end_unfinished_sessions)
        assert len(server.store.sessions()) == 2
        assert len(server.store.end_unfinished_sessions()) >= 1
