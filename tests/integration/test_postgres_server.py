"""The whole server on PostgreSQL: migrations at start, a real publish, history over the API."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest

from tests.conftest import require_tool
from tests.media import run_ffmpeg_publish
from vilokanam.store.migrate import current, head

pytestmark = pytest.mark.e2e

TOKEN = "postgres-test-token-0123"


def api(server: Any, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"{server.http_base}/api/v1{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_server_runs_on_postgresql(start_server, postgres_db_url: str) -> None:  # type: ignore[no-untyped-def]
    ffmpeg = require_tool("ffmpeg", "the ffmpeg CLI is the publisher")
    server = start_server(database={"url": postgres_db_url}, api={"token": TOKEN})
    assert current(postgres_db_url) == head(), "migrations applied at start"
    created = api(server, "POST", "/channels", {"slug": "pg-live", "price_per_second": 3})
    result = run_ffmpeg_publish(ffmpeg, f"{server.rtmp_base}/{created['stream_key']}", seconds=5)
    assert result.returncode == 0, result.stderr

    deadline = time.monotonic() + 30
    sessions: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        sessions = api(server, "GET", "/history?channel=pg-live")
        if sessions and sessions[0]["state"] == "ended":
            break
        time.sleep(0.5)
    [session] = sessions
    assert session["state"] == "ended" and session["segments"] >= 2
    assert session["end_reason"] == "publisher left"
    assert session["started_at"].endswith("Z") or "+00:00" in session["started_at"]
    assert api(server, "GET", "/channels/pg-live")["price_per_second"] == 3
