"""End to end: real RTMP publishers → our server → HLS read back over HTTP and decoded."""

from __future__ import annotations

import threading
import time

import m3u8
import pytest

from tests.conftest import require_tool
from tests.media import (
    EXPECTED_SIZES,
    TEST_LADDER,
    decode_summary,
    http_get,
    publish_pyav,
    read_ladder,
    run_ffmpeg_publish,
    video_packet_bytes,
    wait_for,
)
from vilokanam.store import SessionState

pytestmark = pytest.mark.e2e


def _ended(body: bytes) -> bool:
    return b"#EXT-X-ENDLIST" in body


def wait_until_ended(server, slug: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    master = wait_for(f"{server.http_base}/live/{slug}/master.m3u8", timeout)
    first = m3u8.loads(master.decode()).playlists[0].uri
    wait_for(f"{server.http_base}/live/{slug}/{first}", timeout, _ended)


def test_pyav_publish_becomes_a_keyframe_aligned_ladder(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(transcode={"ladder": TEST_LADDER})
    key = server.create_channel("studio")
    published = publish_pyav(f"{server.rtmp_base}/{key}", seconds=12, pace=4.0)
    wait_until_ended(server, "studio")

    ladder = read_ladder(f"{server.http_base}/live/studio/master.m3u8")
    assert set(ladder) == set(EXPECTED_SIZES), "no rung above or equal to the source"
    boundaries: dict[str, list[float]] = {}
    for name, rendition in ladder.items():
        info = rendition.stream_info
        assert info.resolution == EXPECTED_SIZES[name]
        assert info.bandwidth > 0 and info.average_bandwidth > 0
        assert "avc1." in info.codecs and "mp4a.40.2" in info.codecs
        assert info.frame_rate == pytest.approx(25.0)
        durations = [segment.duration for segment in rendition.playlist.segments]
        assert len(durations) >= 5
        for duration in durations[:-1]:
            assert duration == pytest.approx(2.0, rel=0.10)
        summary = decode_summary(rendition.whole())
        assert summary["size"] == EXPECTED_SIZES[name]
        assert summary["video_frames"] == len(published.video_packets) == 300
        assert summary["audio_frames"] >= published.audio_packets - 2, "audio in every rendition"
        boundaries[name] = [
            decode_summary(rendition.media(i))["first_video_pts"]  # type: ignore[misc]
            for i in range(len(rendition.segments))
        ]
    reference = boundaries["source"]
    for name, starts in boundaries.items():
        assert starts == pytest.approx(reference, abs=0.002), f"{name} cut where source is"

    source_packets = video_packet_bytes(ladder["source"].whole())
    assert source_packets == published.video_packets, "source rung is a byte-exact passthrough"

    sessions = server.store.sessions()
    assert [s.state for s in sessions] == [SessionState.ENDED]
    assert sessions[0].live_at is not None and sessions[0].ended_at is not None


def test_ffmpeg_cli_publish_is_playable_while_live(start_server) -> None:  # type: ignore[no-untyped-def]
    ffmpeg = require_tool("ffmpeg", "the ffmpeg CLI is a real RTMP publisher")
    ffprobe = require_tool("ffprobe", "ffprobe plays the HLS URL")
    server = start_server()
    key = server.create_channel("cli")
    master_url = f"{server.http_base}/live/cli/master.m3u8"
    seen_live: list[bytes] = []
    probe: list[str] = []

    def watch() -> None:
        body = wait_for(master_url, timeout=30)
        seen_live.append(body)
        import subprocess

        result = subprocess.run(
            [ffprobe, "-v", "error", "-show_entries", "stream=codec_type,width,height",
             "-of", "csv=p=0", master_url],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        probe.append(result.stdout + result.stderr)

    watcher = threading.Thread(target=watch)
    watcher.start()
    result = run_ffmpeg_publish(ffmpeg, f"{server.rtmp_base}/{key}", seconds=10, readrate=1.5)
    assert result.returncode == 0, result.stderr
    watcher.join(60)
    assert seen_live, "master playlist appeared while the publisher was still sending"
    assert "video,640,360" in probe[0] and "audio" in probe[0], probe[0]

    wait_until_ended(server, "cli")
    ladder = read_ladder(master_url)
    assert list(ladder) == ["source"], "default ladder has no rung below a 360p source"
    summary = decode_summary(ladder["source"].whole())
    assert summary["size"] == (640, 360)
    assert summary["video_frames"] == 250
    assert summary["audio_frames"] > 0


def test_wrong_key_is_refused_and_creates_nothing(start_server, caplog) -> None:  # type: ignore[no-untyped-def]
    server = start_server()
    server.create_channel("guarded")
    with pytest.raises(Exception):  # noqa: B017 - libavformat reports the refusal as an I/O error
        publish_pyav(f"{server.rtmp_base}/sk_not-a-real-key", seconds=2)
    assert server.store.sessions() == []
    assert not any((server.settings.media_dir / "streams").glob("*"))
    assert any(
        "publish refused: unknown or revoked stream key" in r.message for r in caplog.records
    )
    status, _, _ = http_get(f"{server.http_base}/live/guarded/master.m3u8")
    assert status == 404


def test_rotated_key_stops_working(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server()
    old_key = server.create_channel("rotating")
    new_key = server.store.rotate_key("rotating")
    with pytest.raises(Exception):  # noqa: B017
        publish_pyav(f"{server.rtmp_base}/{old_key}", seconds=2)
    assert server.store.sessions() == []
    publish_pyav(f"{server.rtmp_base}/{new_key}", seconds=4, pace=4.0)
    wait_until_ended(server, "rotating")
    assert len(server.store.sessions()) == 1


def test_reconnect_within_window_continues_the_playlist(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(rtmp={"reconnect_window": 4.0})
    key = server.create_channel("flaky")
    first = publish_pyav(f"{server.rtmp_base}/{key}", seconds=6, pace=4.0)
    time.sleep(1.0)
    second = publish_pyav(f"{server.rtmp_base}/{key}", seconds=6, pace=4.0)
    wait_until_ended(server, "flaky")

    ladder = read_ladder(f"{server.http_base}/live/flaky/master.m3u8")
    source = ladder["source"]
    playlist = source.playlist
    assert len(server.store.sessions()) == 1, "one stream session across the reconnect"
    discontinuities = [i for i, s in enumerate(playlist.segments) if s.discontinuity]
    assert len(discontinuities) == 1
    assert discontinuities[0] == 3, "after the first publisher's three segments"
    assert [s.init_section.uri for s in playlist.segments] == ["s1-init-0.mp4"] * 3 + [
        "s1-init-1.mp4"
    ] * (len(playlist.segments) - 3)
    total_frames = 0
    for index, segment in enumerate(playlist.segments):
        init_status, init, _ = http_get(segment.init_section.absolute_uri)
        assert init_status == 200
        summary = decode_summary(init + source.segments[index])
        total_frames += int(summary["video_frames"])  # type: ignore[arg-type]
    assert total_frames == len(first.video_packets) + len(second.video_packets)


def test_playlists_never_name_a_missing_segment(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(hls={"window": 3, "delete_margin": 2})
    key = server.create_channel("window")
    playlist_url = f"{server.http_base}/live/window/source/index.m3u8"
    problems: list[str] = []
    versions: set[int] = set()
    first_seen: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            status, body, headers = http_get(playlist_url)
            if status != 200:
                time.sleep(0.05)
                continue
            assert headers["Cache-Control"] == "no-cache, no-store"
            playlist = m3u8.loads(body.decode(), uri=playlist_url)
            versions.add(playlist.media_sequence or 0)
            if playlist.media_sequence == 0 and playlist.segments and not first_seen:
                first_seen.append(playlist.segments[0].uri)
            assert len(playlist.segments) <= 3
            for segment in playlist.segments:
                seg_status, _, seg_headers = http_get(segment.absolute_uri)
                if seg_status != 200:
                    problems.append(f"{segment.uri}: HTTP {seg_status}")
                elif "immutable" not in seg_headers["Cache-Control"]:
                    problems.append(f"{segment.uri}: cache {seg_headers['Cache-Control']}")
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        publish_pyav(f"{server.rtmp_base}/{key}", seconds=14, pace=1.5)
        wait_for(playlist_url, 30, _ended)
    finally:
        stop.set()
        poller.join(30)
    assert not problems, problems
    assert len(versions) >= 3, "the window slid while we watched"
    assert first_seen, "the first segment's name was seen"
    status, _, _ = http_get(f"{server.http_base}/live/window/source/{first_seen[0]}")
    assert status == 404, "segments that left the window are deleted"


@pytest.mark.parametrize(("audio", "video"), [(True, False), (False, True)])
def test_audio_only_and_video_only_sources_play(start_server, audio: bool, video: bool) -> None:  # type: ignore[no-untyped-def]
    server = start_server()
    key = server.create_channel("partial")
    publish_pyav(f"{server.rtmp_base}/{key}", seconds=6, pace=4.0, audio=audio, video=video)
    wait_until_ended(server, "partial")
    ladder = read_ladder(f"{server.http_base}/live/partial/master.m3u8")
    assert list(ladder) == ["source"]
    info = ladder["source"].stream_info
    summary = decode_summary(ladder["source"].whole())
    if video:
        assert info.codecs.startswith("avc1.") and "mp4a" not in info.codecs
        assert info.resolution == (640, 360)
        assert summary["video_frames"] == 150 and summary["audio_frames"] == 0
    else:
        assert info.codecs == "mp4a.40.2" and info.resolution is None
        assert summary["video_frames"] == 0 and summary["audio_frames"] > 200
        durations = [s.duration for s in ladder["source"].playlist.segments]
        assert all(d == pytest.approx(2.0, rel=0.10) for d in durations[:-1])


def test_mpegts_segments_by_config(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(hls={"segment_format": "mpegts"}, transcode={"ladder": TEST_LADDER})
    key = server.create_channel("tsout")
    published = publish_pyav(f"{server.rtmp_base}/{key}", seconds=6, pace=4.0)
    wait_until_ended(server, "tsout")
    ladder = read_ladder(f"{server.http_base}/live/tsout/master.m3u8")
    assert set(ladder) == set(EXPECTED_SIZES)
    for name, rendition in ladder.items():
        assert rendition.init is None and not rendition.playlist.segment_map
        assert all(s.uri.endswith(".ts") for s in rendition.playlist.segments)
        status, _, headers = http_get(rendition.playlist.segments[0].absolute_uri)
        assert status == 200 and headers["Content-Type"] == "video/mp2t"
        summary = decode_summary(rendition.whole())
        assert summary["size"] == EXPECTED_SIZES[name]
        assert summary["video_frames"] == len(published.video_packets)
        assert summary["audio_frames"] > 0


def test_a_new_session_never_reuses_a_segment_url(start_server) -> None:  # type: ignore[no-untyped-def]
    """Segments are cached as immutable: a later stream of the channel must use new URLs."""
    server = start_server(rtmp={"reconnect_window": 0.5})
    key = server.create_channel("again")
    urls = []
    for _ in range(2):
        publish_pyav(f"{server.rtmp_base}/{key}", seconds=4, pace=4.0)
        wait_until_ended(server, "again")
        ladder = read_ladder(f"{server.http_base}/live/again/master.m3u8")
        playlist = ladder["source"].playlist
        urls.append({s.absolute_uri for s in playlist.segments} | {playlist.segment_map[0].uri})
        assert decode_summary(ladder["source"].whole())["video_frames"] == 100
    assert len(server.store.sessions()) == 2
    assert not urls[0] & urls[1]
