"""Playlist building: sliding window, discontinuities, target duration, master attributes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import m3u8
from hypothesis import given
from hypothesis import strategies as st

from vilokanam.packager.playlist import MediaPlaylist, SegmentEntry, Variant, render_master

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def entry(seq: int, duration: float = 2.0, *, disc: bool = False, init: str = "init-0.mp4"):  # type: ignore[no-untyped-def]
    return SegmentEntry(
        seq, f"seg-{seq}.m4s", duration, T0 + timedelta(seconds=2 * seq), init, disc
    )


def test_window_slides_and_reports_removed_segments() -> None:
    playlist = MediaPlaylist(target_duration=2.0, window=3)
    removed = []
    for seq in range(5):
        removed += playlist.add(entry(seq))
    parsed = m3u8.loads(playlist.render())
    assert parsed.media_sequence == 2
    assert [s.uri for s in parsed.segments] == ["seg-2.m4s", "seg-3.m4s", "seg-4.m4s"]
    assert [e.sequence for e in removed] == [0, 1]
    assert parsed.target_duration == 2
    assert parsed.segments[0].program_date_time == T0 + timedelta(seconds=4)
    assert parsed.segment_map[0].uri == "init-0.mp4"
    assert not parsed.is_endlist


def test_live_playlist_names_its_first_sequence_even_when_zero() -> None:
    playlist = MediaPlaylist(target_duration=2.0, window=3)
    playlist.add(entry(0))
    text = playlist.render()
    assert "#EXT-X-MEDIA-SEQUENCE:0\n" in text and text.count("MEDIA-SEQUENCE") == 1
    assert m3u8.loads(text).media_sequence == 0


def test_discontinuity_sequence_counts_discontinuities_that_left() -> None:
    playlist = MediaPlaylist(target_duration=2.0, window=2)
    playlist.add(entry(0))
    playlist.add(entry(1, disc=True, init="init-1.mp4"))
    playlist.add(entry(2, init="init-1.mp4"))
    text = playlist.render()
    assert "#EXT-X-DISCONTINUITY\n" in text and "DISCONTINUITY-SEQUENCE" not in text
    playlist.add(entry(3, init="init-1.mp4"))
    parsed = m3u8.loads(playlist.render())
    assert parsed.discontinuity_sequence == 1
    assert not any(s.discontinuity for s in parsed.segments)


def test_endlist_and_long_segment_raise_target_duration() -> None:
    playlist = MediaPlaylist(target_duration=2.0, window=6)
    playlist.add(entry(0, 4.4))
    playlist.ended = True
    parsed = m3u8.loads(playlist.render())
    assert parsed.is_endlist
    assert parsed.target_duration == 4


@given(st.lists(st.floats(min_value=0.04, max_value=12.0), min_size=1, max_size=30))
def test_no_extinf_rounds_above_target_duration(durations: list[float]) -> None:
    playlist = MediaPlaylist(target_duration=2.0, window=1000)
    for seq, duration in enumerate(durations):
        playlist.add(entry(seq, duration))
    parsed = m3u8.loads(playlist.render())
    assert all(round(s.duration) <= parsed.target_duration for s in parsed.segments)


def test_master_lists_every_variant_with_all_attributes() -> None:
    text = render_master(
        [
            Variant(
                "360p", "360p/index.m3u8", 950_000, 900_000, "avc1.64001e,mp4a.40.2", 640, 360, 30.0
            ),
            Variant(
                "source",
                "source/index.m3u8",
                4_500_000,
                4_000_000,
                "avc1.640028,mp4a.40.2",
                1920,
                1080,
                29.97,
            ),
        ]
    )
    master = m3u8.loads(text)
    assert "#EXT-X-INDEPENDENT-SEGMENTS" in text
    assert [p.uri for p in master.playlists] == ["source/index.m3u8", "360p/index.m3u8"]
    top = master.playlists[0].stream_info
    assert (top.bandwidth, top.average_bandwidth) == (4_500_000, 4_000_000)
    assert top.resolution == (1920, 1080)
    assert top.frame_rate == 29.97
    assert top.codecs == "avc1.640028,mp4a.40.2"


def test_audio_only_variant_has_no_resolution() -> None:
    master = m3u8.loads(
        render_master([Variant("source", "source/index.m3u8", 130_000, 128_000, "mp4a.40.2")])
    )
    info = master.playlists[0].stream_info
    assert info.resolution is None and info.codecs == "mp4a.40.2"
