"""End to end: a recorded stream becomes a VOD (API, CLI, plays with PyAV), a poster while live,
delete, the per-channel opt-out, and retention."""

from __future__ import annotations

import concurrent.futures
import io
import json
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import av
import m3u8
import pytest
from typer.testing import CliRunner

from tests.media import http_get, publish_pyav, wait_for
from vilokanam.cli.backend import LocalBackend
from vilokanam.cli.main import app
from vilokanam.config import load_settings

pytestmark = pytest.mark.e2e

TOKEN = "vod-test-token-0123456789"
LADDER = [{"name": "180p", "height": 180, "video_bitrate": 250_000}]
SECONDS = 8
FPS = 25
runner = CliRunner()


def api(server: Any, method: str, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(f"{server.http_base}/api/v1{path}", method=method)
    request.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_for_vods(server: Any, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, vods = api(server, "GET", "/vods")
        if status == 200 and len(vods) >= count:
            return vods  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"{count} VOD(s) not listed within {timeout} s")


def jpeg_size(data: bytes) -> tuple[int, int]:
    assert data[:3] == b"\xff\xd8\xff", "a JPEG"
    with av.open(io.BytesIO(data)) as container:
        frame = next(container.decode(video=0))
    return frame.width, frame.height


def play(url: str) -> dict[str, Any]:
    """Open the master playlist with PyAV (FFmpeg's HLS demuxer) and decode the first
    variant's video to the end: frames and the media time they span."""
    with av.open(url, options={"protocol_whitelist": "http,tcp,file"}) as container:
        video = container.streams.video[0]
        times = [float(frame.time) for frame in container.decode(video) if frame.time is not None]
    return {
        "frames": len(times),
        "duration": max(times) - min(times) + 1 / FPS,
        "size": (video.codec_context.width, video.codec_context.height),
    }


def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    result = runner.invoke(app, [*args, "--json"], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_a_recorded_stream_becomes_a_vod_that_plays(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        api={"token": TOKEN},
        recording={"enabled": True, "thumbnail_interval": 5, "thumbnail_width": 320},
        transcode={"ladder": LADDER},
        hls={"window": 3},  # the live playlist forgets; the VOD keeps every segment
    )
    key = server.create_channel("show")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        publishing = pool.submit(
            publish_pyav, f"{server.rtmp_base}/{key}", seconds=SECONDS, pace=1.0
        )
        poster = wait_for(f"{server.http_base}/live/show/thumbnail.jpg", 20)
        live_while_fetched = not publishing.done()
        published = publishing.result(timeout=60)
    assert live_while_fetched, "the poster is there while the stream is live"
    assert jpeg_size(poster) == (320, 180)

    [vod] = wait_for_vods(server, 1)
    sid = vod["id"]
    assert vod["channel"] == "show" and sorted(vod["renditions"]) == ["180p", "source"]
    assert vod["duration"] == pytest.approx(SECONDS, abs=0.5)
    assert vod["segments"] >= SECONDS // 2 and vod["size_bytes"] > 10_000
    assert vod["storage"] == "local" and vod["expires_at"] is None
    assert vod["url"] == f"{server.http_base}/vod/{sid}/master.m3u8"
    assert vod["thumbnail_url"] == f"{server.http_base}/vod/{sid}/thumbnail.jpg"
    listed = cli("vod", "list", "--server", server.http_base, "--token", TOKEN)
    assert [v["id"] for v in listed] == [sid] and listed[0] == vod, "the API's shape"
    session = server.store.get_session(sid)[0]
    assert session.recording_location == f"/vod/{sid}/master.m3u8"

    for rendition in vod["renditions"]:
        url = f"{server.http_base}/vod/{sid}/{rendition}/index.m3u8"
        status, body, headers = http_get(url)
        assert status == 200 and headers["Cache-Control"] == "no-cache, no-store"
        playlist = m3u8.loads(body.decode(), uri=url)
        assert playlist.playlist_type == "vod" and playlist.is_endlist
        assert (playlist.media_sequence or 0) == 0
        assert [int(s.uri.rsplit("-", 1)[1].split(".")[0]) for s in playlist.segments] == list(
            range(vod["segments"])
        ), "every sequence from 0"
        assert sum(s.duration for s in playlist.segments) == pytest.approx(SECONDS, abs=0.5)
    played = play(vod["url"])
    assert played["frames"] == len(published.video_packets) == SECONDS * FPS
    assert played["duration"] == pytest.approx(SECONDS, abs=0.1)
    assert jpeg_size(http_get(vod["thumbnail_url"])[1]) == (320, 180)

    # Local mode with this server running goes through its API (it stops serving at once).
    env = {
        "VILOKANAM_DATA_DIR": str(server.settings.data_dir),
        "VILOKANAM_HTTP_PORT": str(server.settings.http.port),
        "VILOKANAM_HTTP_HOST": "127.0.0.1",
        "VILOKANAM_API_TOKEN": TOKEN,
    }
    local = LocalBackend(load_settings(environ=env))
    assert local._server_if_running() is not None, "the CLI finds this server's API"
    deleted = cli("vod", "delete", str(sid), "--yes", env=env)
    assert deleted["id"] == sid
    assert not (server.settings.media_dir / "streams" / str(sid)).exists()
    assert http_get(vod["url"])[0] == 404
    assert api(server, "GET", "/vods") == (200, [])
    assert server.store.get_session(sid)[0].recording_location is None


def test_opt_out_and_retention(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(api={"token": TOKEN}, recording={"enabled": True})
    quiet = server.store.create_channel("quiet", record=False)[1]
    brief = server.store.create_channel("brief", vod_retention_days=1)[1]

    publish_pyav(f"{server.rtmp_base}/{quiet}", seconds=3, pace=4.0)
    publish_pyav(f"{server.rtmp_base}/{brief}", seconds=3, pace=4.0)
    [vod] = wait_for_vods(server, 1)
    assert vod["channel"] == "brief", "record=false under a server default of true: no VOD"
    quiet_session = server.store.sessions(server.store.get_channel("quiet").id)[0]
    assert quiet_session.recording_location is None
    assert http_get(f"{server.http_base}/vod/{quiet_session.id}/master.m3u8")[0] == 404
    expires = datetime.fromisoformat(vod["expires_at"])
    created = datetime.fromisoformat(vod["created_at"])
    assert expires - created == timedelta(days=1)
    assert http_get(vod["url"])[0] == 200

    now = datetime.now(UTC)
    assert server.call(lambda: server.server.vods.expire(now)) == []
    gone = server.call(lambda: server.server.vods.expire(now + timedelta(days=2)))
    assert [r.session_id for r in gone] == [vod["id"]]
    assert not (server.settings.media_dir / "streams" / str(vod["id"])).exists()
    assert http_get(vod["url"])[0] == 404
    assert api(server, "GET", f"/vods/{vod['id']}")[0] == 404
