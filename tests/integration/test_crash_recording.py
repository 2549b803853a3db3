"""A real `vilokanam serve` killed with SIGKILL while recording: the next start makes the VOD of
everything that was listed, playable and in the catalogue, on local disk and in S3 (moto)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import m3u8
import pytest

from tests.conftest import free_port, require_tool
from tests.media import decode_summary, ffmpeg_publish_command, http_get, read_ladder
from tests.s3 import Bucket

pytestmark = pytest.mark.e2e
VILOKANAM = str(Path(sys.executable).with_name("vilokanam"))


def serve(config: Path) -> tuple[subprocess.Popen[str], str]:
    """Start `vilokanam serve`; the process and what it printed up to its banner."""
    process = subprocess.Popen(
        [VILOKANAM, "serve", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    lines = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if "Watch" in line or not line:
            break
    return process, "".join(lines)


def vods(config: Path) -> list[dict[str, object]]:
    done = subprocess.run(
        [VILOKANAM, "vod", "list", "--json", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def s3_config(bucket: Bucket) -> tuple[str, str]:
    """The top-level key and the [s3] table for a public moto bucket (moto is "the CDN" too)."""
    bucket.make_public()
    table = (
        f'[s3]\nbucket = "{bucket.name}"\nendpoint_url = "{bucket.endpoint}"\n'
        f'addressing_style = "path"\npublic_base_url = "{bucket.url("")}"\n'
        "retry_initial = 0.05\nretry_max = 0.5\n"
    )
    return 'storage = "s3"\n', table


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_a_recording_killed_mid_stream_is_a_vod_after_the_next_start(
    tmp_path: Path, storage: str, request: pytest.FixtureRequest
) -> None:
    ffmpeg = require_tool("ffmpeg", "the ffmpeg CLI is the publisher")
    bucket: Bucket | None = request.getfixturevalue("s3_bucket") if storage == "s3" else None
    http_port = free_port()
    config = tmp_path / "vilokanam.toml"
    top, table = s3_config(bucket) if bucket is not None else ("", "")
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\npublic_host = "127.0.0.1"\n{top}'
        f"[rtmp]\nport = {free_port()}\n[http]\nport = {http_port}\n"
        "[hls]\nwindow = 3\n[recording]\nenabled = true\n"
        '[transcode]\n[[transcode.ladder]]\nname = "180p"\nheight = 180\n'
        "video_bitrate = 300000\n" + table
    )
    server, banner = serve(config)
    publisher = None
    try:
        rtmp = re.search(r"Server: (rtmp://\S+)", banner)
        key = re.search(r"Stream key: (\S+)", banner)
        assert rtmp and key, banner
        command = ffmpeg_publish_command(ffmpeg, f"{rtmp.group(1)}/{key.group(1)}", seconds=60)
        publisher = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        live = f"http://127.0.0.1:{http_port}/live/demo/source/index.m3u8"
        deadline = time.monotonic() + 60
        listed = 0
        while listed < 7 and time.monotonic() < deadline:  # past the 3-segment window
            status, body, _ = http_get(live)
            listed = (m3u8.loads(body.decode()).media_sequence or 0) + 3 if status == 200 else 0
            time.sleep(0.2)
        assert listed >= 7, "the stream went live and slid past its window"
        server.send_signal(signal.SIGKILL)  # no finish(), no ENDLIST, no catalogue entry
        server.wait(10)
    finally:
        if publisher is not None:
            publisher.kill()
            publisher.wait(10)
        if server.poll() is None:
            server.kill()
        server.communicate(timeout=10)

    server, _ = serve(config)
    try:
        deadline = time.monotonic() + 30
        found = vods(config)
        while not found and time.monotonic() < deadline:
            time.sleep(0.5)
            found = vods(config)
        [vod] = found
        assert vod["channel"] == "demo" and vod["renditions"] == ["source", "180p"]
        ladder = read_ladder(str(vod["url"]))
        for rendition in ladder.values():
            playlist = rendition.playlist
            assert playlist.playlist_type == "vod" and playlist.is_endlist
            assert playlist.media_sequence in (None, 0), "the VOD starts at the stream's start"
            assert len(playlist.segments) == vod["segments"] >= 7
            seconds = sum(segment.duration for segment in playlist.segments)
            assert abs(seconds - float(vod["duration"])) < 0.01
            frames = decode_summary(rendition.whole())["video_frames"]
            assert abs(int(frames) - round(seconds * 25)) <= 1, (frames, seconds)  # type: ignore[call-overload]
        assert http_get(f"http://127.0.0.1:{http_port}/live/demo/master.m3u8")[0] == 200
        if bucket is not None:  # the whole VOD is in the bucket, whatever waited at the crash
            keys = set(bucket.keys(f"streams/{vod['id']}/"))
            for name, rendition in ladder.items():
                named = {f"streams/{vod['id']}/{name}/{s.uri}" for s in rendition.playlist.segments}
                assert named <= keys, sorted(named - keys)
                vod_playlist = bucket.get(f"streams/{vod['id']}/{name}/index.m3u8").decode()
                assert (
                    "#EXT-X-PLAYLIST-TYPE:VOD" in vod_playlist and "#EXT-X-ENDLIST" in vod_playlist
                )
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    assert server.returncode == 0
