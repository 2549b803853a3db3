"""A real server: an ended stream that is not recorded is served until ``hls.keep_ended`` passes,
then its media is gone (404); a recorded one stays a VOD."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import require_tool
from tests.integration.test_stream_end_faults import wait_for_sessions
from tests.media import TEST_LADDER, run_ffmpeg_publish

pytestmark = pytest.mark.e2e


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_unrecorded_streams_are_removed_after_keep_ended(start_server) -> None:  # type: ignore[no-untyped-def]
    ffmpeg = require_tool("ffmpeg", "the ffmpeg CLI is the publisher")
    keep = 4
    server = start_server(
        hls={"keep_ended": keep, "window": 3},
        rtmp={"reconnect_window": 0.2},
        transcode={"ladder": TEST_LADDER[:1]},
    )
    plain_key = server.create_channel("plain")
    kept_key = server.create_channel("kept")
    server.store.update_channel("kept", record=True)
    for key in (plain_key, kept_key):
        done = run_ffmpeg_publish(ffmpeg, f"{server.rtmp_base}/{key}", seconds=3, readrate=3)
        assert done.returncode == 0, done.stderr
    plain, kept = sorted(wait_for_sessions(server.store, 2), key=lambda s: s.id)
    media = server.settings.media_dir

    def sweep() -> list[int]:
        return server.call(server.server.sweeper.sweep)

    assert sweep() == [], "just ended: players are finishing it"
    assert status(f"{server.http_base}/live/plain/master.m3u8") == 200
    time.sleep(keep + 0.5)
    assert sweep() == [plain.id]
    assert not (media / f"streams/{plain.id}").exists()
    assert status(f"{server.http_base}/live/plain/master.m3u8") == 404
    assert status(f"{server.http_base}/live/plain/source/index.m3u8") == 404
    assert (media / f"streams/{kept.id}").is_dir()
    assert status(f"{server.http_base}/vod/{kept.id}/master.m3u8") == 200
