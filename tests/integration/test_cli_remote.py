"""The CLI against a running server's REST API (``--server URL --token T``), with a live stream."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import m3u8
import pytest
from typer.testing import CliRunner

from tests.conftest import require_tool
from tests.media import ffmpeg_publish_command, wait_for
from vilokanam.cli.main import app

pytestmark = pytest.mark.e2e

TOKEN = "operator-token-0123456789"
runner = CliRunner()


def cli(server: Any, *args: str, token: str = TOKEN) -> Any:
    result = runner.invoke(app, [*args, "--server", server.http_base, "--token", token, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def wait_until(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("condition not met in time")


def test_remote_cli_manages_a_live_channel(start_server) -> None:  # type: ignore[no-untyped-def]
    ffmpeg = require_tool("ffmpeg", "the ffmpeg CLI is the publisher")
    server = start_server(api={"token": TOKEN})
    created = cli(server, "channel", "create", "talk", "--title", "Talk", "--category", "chat")
    assert created["stream_key"].startswith("sk_") and created["category"] == "chat"
    assert created["price_per_second"] == 0, "free: players need no token"
    ladder = '[{"name": "180p", "height": 180, "video_bitrate": 300000}]'
    updated = cli(server, "channel", "update", "talk", "--ladder", ladder)
    assert [rung["name"] for rung in updated["ladder"]] == ["180p"]

    listed = cli(server, "channel", "list")  # "demo" is made on the first start
    assert [(c["slug"], c["title"], c["live"]) for c in listed if c["slug"] == "talk"] == [
        ("talk", "Talk", False)
    ]

    url = f"{server.rtmp_base}/{created['stream_key']}"
    publish = subprocess.Popen(
        ffmpeg_publish_command(ffmpeg, url, seconds=60, readrate=1),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        master = wait_for(f"{server.http_base}/live/talk/master.m3u8", 30)
        variants = m3u8.loads(master.decode()).playlists
        assert sorted(p.uri.split("/")[0] for p in variants) == ["180p", "source"], (
            "the channel's ladder override replaces the server ladder"
        )
        streams = wait_until(lambda: [s for s in cli(server, "stream", "list") if s["fps"]])
        [stream] = streams
        assert stream["channel"] == "talk" and stream["state"] == "live"
        assert (stream["width"], stream["height"]) == (640, 360)
        assert 100_000 < stream["ingest_bitrate"] < 20_000_000
        assert stream["uptime_seconds"] > 0
        shown = cli(server, "stream", "show", "talk")
        assert {r["name"] for r in shown["renditions"]} == {"source", "180p"}
        table = runner.invoke(
            app, ["stream", "list", "--server", server.http_base, "--token", TOKEN]
        )
        assert "talk" in table.output and "640x360" in table.output
        assert cli(server, "status")["live_streams"] == 1

        refused = runner.invoke(
            app, ["status", "--server", server.http_base, "--token", "wrong-token-0123456789"]
        )
        assert refused.exit_code == 1 and "unauthorized" in refused.output
        assert "--token" in refused.output

        assert cli(server, "stream", "kick", "talk") == {"channel": "talk", "kicked": True}
        publish.wait(timeout=15)
    finally:
        publish.kill()
        publish.wait()
    # The reconnect window (2 s in tests) passes, then the session is history.
    ended = wait_until(
        lambda: [s for s in cli(server, "history", "list") if s["state"] == "ended"], 20
    )
    assert ended[0]["channel"] == "talk" and ended[0]["end_reason"] == "kicked by an operator"
    assert ended[0]["segments"] >= 1 and ended[0]["duration_seconds"] > 0
    assert cli(server, "stream", "list") == []

    missing = runner.invoke(
        app, ["channel", "show", "nope", "--server", server.http_base, "--token", TOKEN]
    )
    assert missing.exit_code == 1 and "not_found" in missing.output
