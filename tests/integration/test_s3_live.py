"""A real server with ``storage = "s3"`` against moto over HTTP: what a CDN in front of the bucket
would serve while a stream is live, and through an S3 outage."""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import m3u8
import pytest

from tests.conftest import require_tool
from tests.media import TEST_LADDER, http_get, publish_pyav
from tests.s3 import Bucket, PausableProxy
from vilokanam.origin.storage import PLAYLIST_CACHE, SEGMENT_CACHE
from vilokanam.store import SessionState

pytestmark = pytest.mark.e2e

RENDITIONS = ("source", "240p", "180p")
MASTER = "master.m3u8"


def s3_section(bucket: Bucket, endpoint: str, **extra: Any) -> dict[str, Any]:
    return {
        "bucket": bucket.name,
        "endpoint_url": endpoint,
        "addressing_style": "path",
        "retry_initial": 0.05,
        "retry_max": 0.5,
        "timeout": 2,
        "shutdown_grace": 20,
    } | extra


def session_prefix(bucket: Bucket, timeout: float = 30.0) -> str:
    """``streams/{id}/`` of the first session that has a master playlist in the bucket."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        masters = [key for key in bucket.keys("streams/") if key.endswith(f"/{MASTER}")]
        if masters:
            return masters[0].removesuffix(MASTER)
        time.sleep(0.1)
    raise AssertionError(f"no master playlist in the bucket within {timeout} s")


def wait_ended(bucket: Bucket, prefix: str, timeout: float = 60.0) -> None:
    """Until every media playlist in S3 carries EXT-X-ENDLIST (all uploads flushed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(
            bucket.head(f"{prefix}{r}/index.m3u8")
            and b"#EXT-X-ENDLIST" in bucket.get(f"{prefix}{r}/index.m3u8")
            for r in RENDITIONS
        ):
            return
        time.sleep(0.2)
    raise AssertionError(f"S3 playlists not ended within {timeout} s")


@dataclass
class PlaylistWatcher:
    """Polls the bucket's master and media playlists like a CDN edge would, checking that every
    object a playlist version names exists at the moment that version is read."""

    bucket: Bucket
    prefix: str
    versions: dict[str, set[str]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="s3-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for name in (MASTER, *(f"{r}/index.m3u8" for r in RENDITIONS)):
                self._check(name)

    def _check(self, name: str) -> None:
        key = f"{self.prefix}{name}"
        if self.bucket.head(key) is None:
            return
        text = self.bucket.get(key).decode()
        self.versions.setdefault(name, set()).add(text)
        folder = key.rsplit("/", 1)[0]
        parsed = m3u8.loads(text)
        named = [p.uri for p in parsed.playlists]
        named += [segment.uri for segment in parsed.segments]
        named += [init.uri for init in parsed.segment_map or []]
        existing = set(self.bucket.keys(folder + "/"))  # listed after the playlist was read
        for uri in dict.fromkeys(named):
            if uri.startswith("http"):
                uri = uri.split(f"/{self.bucket.name}/", 1)[1].removeprefix(folder + "/")
            if f"{folder}/{uri}" not in existing:
                self.violations.append(f"{name} names {uri}, not in S3 yet:\n{text}")


def playback_summary(ffprobe: str, url: str) -> str:
    """Decode the HLS stream at ``url`` with ffprobe (over HTTP, as a player would)."""
    result = subprocess.run(
        [ffprobe, "-v", "error", "-count_frames", "-show_entries",
         "stream=codec_type,width,nb_read_frames", "-of", "csv=p=0", url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return result.stdout + result.stderr


def test_live_publish_lands_in_s3_in_write_order(start_server, s3_bucket: Bucket) -> None:
    ffprobe = require_tool("ffprobe", "ffprobe plays the S3-hosted HLS")
    s3_bucket.make_public()
    public_base = f"{s3_bucket.endpoint}/{s3_bucket.name}"
    server = start_server(
        storage="s3",
        s3=s3_section(s3_bucket, s3_bucket.endpoint, public_base_url=public_base),
        transcode={"ladder": TEST_LADDER},
        hls={"window": 4, "delete_margin": 2},
    )
    key = server.create_channel("cloud")
    publishing = threading.Thread(
        target=publish_pyav,
        args=(f"{server.rtmp_base}/{key}",),
        kwargs={"seconds": 20, "pace": 2.0},
    )
    publishing.start()
    prefix = session_prefix(s3_bucket)
    watcher = PlaylistWatcher(s3_bucket, prefix)
    publishing.join(120)
    wait_ended(s3_bucket, prefix)
    watcher.stop()

    assert watcher.violations == []
    for rendition in RENDITIONS:
        assert len(watcher.versions.get(f"{rendition}/index.m3u8", ())) >= 5, "seen while live"
    deadline = time.monotonic() + 10
    while True:  # the last deletes may still be on their way
        keys = s3_bucket.keys(prefix)
        segments = [k for k in keys if k.endswith(".m4s")]
        if len(segments) <= 3 * (4 + 2) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert segments and all(k.rsplit("/", 2)[-2] in RENDITIONS for k in segments)
    assert len(segments) <= 3 * (4 + 2), "segments that left the window (+ margin) were deleted"
    expected = {
        segments[0]: ("video/iso.segment", SEGMENT_CACHE),
        next(k for k in keys if k.endswith(".mp4")): ("video/mp4", SEGMENT_CACHE),
        f"{prefix}{MASTER}": ("application/vnd.apple.mpegurl", PLAYLIST_CACHE),
        f"{prefix}source/index.m3u8": ("application/vnd.apple.mpegurl", PLAYLIST_CACHE),
    }
    for object_key, headers in expected.items():
        head = s3_bucket.head(object_key)
        assert head is not None and (head["ContentType"], head["CacheControl"]) == headers
    assert server.store.sessions()[0].state == SessionState.ENDED

    probe = playback_summary(ffprobe, s3_bucket.url(f"{prefix}source/index.m3u8"))
    assert probe.startswith("video,640,") and "audio" in probe, probe

    master = m3u8.loads(s3_bucket.get(f"{prefix}{MASTER}").decode())
    for variant in master.playlists:
        assert variant.uri.startswith(f"{public_base}/{prefix}"), variant.uri


def test_an_s3_outage_mid_stream_loses_nothing(
    start_server, s3_bucket: Bucket, s3_proxy: PausableProxy
) -> None:
    """Recorded, with a live window shorter than the outage: the live playlists slide on after
    it, and the VOD in S3 has every sequence, continuous."""
    server = start_server(
        storage="s3",
        s3=s3_section(s3_bucket, s3_proxy.endpoint),
        transcode={"ladder": TEST_LADDER},
        hls={"window": 4, "delete_margin": 2},
        recording={"enabled": True},
    )
    key = server.create_channel("outage")
    published: list[Any] = []
    publishing = threading.Thread(
        target=lambda: published.append(
            publish_pyav(f"{server.rtmp_base}/{key}", seconds=56, pace=2.0)
        )
    )
    publishing.start()
    prefix = session_prefix(s3_bucket)
    s3_proxy.pause()
    paused_at = time.monotonic()
    origin_during: list[int] = []
    while time.monotonic() - paused_at < 20:
        origin_during.append(http_get(f"{server.http_base}/live/outage/{MASTER}")[0])
        time.sleep(1)
    storage = server.server.storage
    retries_during = storage.upload_retries
    s3_proxy.resume()
    publishing.join(120)
    wait_ended(s3_bucket, prefix)

    assert published, "the publisher finished"
    assert set(origin_during) == {200}, "this origin kept serving from local disk"
    assert retries_during > 0 and storage.uploads_dropped == 0
    media_dir = server.settings.media_dir
    for rendition in RENDITIONS:
        text = s3_bucket.get(f"{prefix}{rendition}/index.m3u8").decode()
        playlist = m3u8.loads(text)
        sequences = [playlist.media_sequence + n for n in range(len(playlist.segments))]
        assert playlist.media_sequence == 0 and len(sequences) == 28, text
        assert playlist.playlist_type == "vod" and playlist.is_endlist
        assert "#EXT-X-DISCONTINUITY" not in text, "one worker, no gap"
        for segment in playlist.segments:
            object_key = f"{prefix}{rendition}/{segment.uri}"
            local = media_dir / object_key
            assert s3_bucket.get(object_key) == local.read_bytes(), object_key
    session = server.store.sessions()[0]
    assert session.state == SessionState.ENDED
    assert session.id is not None and server.store.get_recording(session.id)[0].segments == 28
    status, _, _ = http_get(f"{server.http_base}/live/outage/{MASTER}")
    assert status == 200, "the server stayed up"
    status, body, _ = http_get(f"{server.http_base}/metrics")
    figures = {
        line.split()[0]: float(line.split()[1])
        for line in body.decode().splitlines()
        if line.startswith("vilokanam_storage_")
    }
    assert figures["vilokanam_storage_upload_retries_total"] >= retries_during > 0
    assert figures["vilokanam_storage_uploads_total"] >= 3 * 28
    assert figures["vilokanam_storage_dropped_total"] == 0
    assert figures["vilokanam_storage_spool_bytes"] == 0
