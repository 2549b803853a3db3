"""Segment boundaries on the source timeline, and when each segment (with its audio) is done."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vilokanam.packager.packets import MediaPacket
from vilokanam.transcode.audio import SampleClock
from vilokanam.transcode.boundaries import BoundaryPlanner, select_boundaries
from vilokanam.transcode.timeline import Timeline

MS = Fraction(1, 1000)
D = Fraction(2)


def seconds(values: list[int]) -> list[Fraction]:
    return [v * MS for v in values]


def keyframe_times(t0: int, gops: list[int]) -> list[Fraction]:
    times = [t0]
    for gop in gops:
        times.append(times[-1] + gop)
    return seconds(times)


def test_regular_gops_cut_at_every_target() -> None:
    keyframes = keyframe_times(0, [2000] * 5)
    assert select_boundaries(keyframes, D) == keyframes


def test_boundary_is_the_first_keyframe_at_or_after_the_target() -> None:
    keyframes = seconds([100, 1100, 2099, 2100, 3100, 4100, 5100, 6100])
    assert select_boundaries(keyframes, D) == seconds([100, 2100, 4100, 6100])


def test_long_gop_skips_targets_inside_it() -> None:
    keyframes = keyframe_times(0, [5000, 5000, 5000])  # 5 s GOP, 2 s segments
    planner = BoundaryPlanner(D)
    for time in keyframes:
        planner.offer(time)
    assert planner.boundaries == keyframes
    assert planner.longest_gop == 5


def test_index_and_boundary_lookup() -> None:
    planner = BoundaryPlanner(D)
    for time in seconds([500, 1500, 2500, 4600]):
        planner.offer(time)
    assert planner.boundaries == seconds([500, 2500, 4600])
    assert planner.index_of(Fraction(0)) == 0
    assert planner.index_of(Fraction(25, 10)) == 1
    assert planner.index_of(Fraction(46, 10) - MS) == 1
    assert planner.index_of(Fraction(10)) == 2
    assert planner.is_boundary(Fraction(25, 10)) and not planner.is_boundary(Fraction(15, 10))
    assert planner.next_target == Fraction(65, 10)


@given(
    t0=st.integers(0, 100_000),
    gops=st.lists(st.integers(1, 6000), min_size=1, max_size=60),
    duration_ms=st.sampled_from([1000, 2000, 3000, 4000, 6000, 1500]),
)
def test_boundary_properties(t0: int, gops: list[int], duration_ms: int) -> None:
    duration = duration_ms * MS
    keyframes = keyframe_times(t0, gops)
    boundaries = select_boundaries(keyframes, duration)
    assert boundaries[0] == keyframes[0]
    assert set(boundaries) <= set(keyframes), "boundaries are source keyframes"
    assert all(a < b for a, b in itertools.pairwise(boundaries))
    start = keyframes[0]
    for previous, boundary in itertools.pairwise(boundaries):
        # The target this boundary serves: the first one after the previous boundary.
        target = start + (math.floor((previous - start) / duration) + 1) * duration
        assert boundary >= target
        assert boundary == min(k for k in keyframes if k >= target), "first keyframe ≥ target"
    if max(gops) <= duration_ms:
        # Every target up to the last keyframe gets its own boundary within one segment.
        k = 1
        while start + k * duration <= keyframes[-1]:
            target = start + k * duration
            assert any(target <= b < target + duration for b in boundaries), f"target {target}"
            k += 1
        assert len(boundaries) == math.floor((keyframes[-1] - start) / duration) + 1


# -- the timeline: cuts and audio ------------------------------------------------------------


def video(ms: int, key: bool = False) -> MediaPacket:
    return MediaPacket(b"v", ms, ms, 40, MS, key)


def audio(ms: int) -> MediaPacket:
    return MediaPacket(b"a", ms, ms, 23, MS, True)


def feed(timeline: Timeline, packets: list[MediaPacket]) -> list:  # type: ignore[type-arg]
    cuts = []
    for packet in packets:
        if packet.data == b"v":
            timeline.video_packet(packet)
        else:
            timeline.audio_packet(packet)
        cuts.extend(timeline.ready())
    return cuts


def interleaved(seconds_long: int, audio_offset: int = 0, gop: int = 50) -> list[MediaPacket]:
    """25 fps video with a keyframe every ``gop`` frames, 23 ms audio shifted by the offset."""
    events = [(i * 40, video(i * 40, i % gop == 0)) for i in range(seconds_long * 25)]
    events += [(a * 23 + audio_offset, audio(a * 23)) for a in range(seconds_long * 1000 // 23)]
    return [packet for _, packet in sorted(events, key=lambda e: e[0])]


def test_cuts_wait_for_audio_up_to_the_boundary() -> None:
    timeline = Timeline(D, has_video=True, has_audio=True)
    assert timeline.video_packet(video(0, True)) == 0
    timeline.audio_packet(audio(1990))
    assert timeline.video_packet(video(2000, True)) == 1
    assert timeline.ready() == [], "audio has not reached 2.0 s yet"
    timeline.audio_packet(audio(2013))
    (cut,) = timeline.ready()
    assert (cut.index, cut.start, cut.end) == (0, 0, 2)
    assert [p.pts for p in cut.audio] == [1990]


def test_audio_is_sorted_into_segments_by_time() -> None:
    for offset in (-700, 0, 700):  # audio early, aligned, late (within the grace)
        timeline = Timeline(D, has_video=True, has_audio=True)
        cuts = feed(timeline, interleaved(9, audio_offset=offset)) + timeline.finish()
        assert [c.index for c in cuts] == [0, 1, 2, 3, 4]
        assert [c.start for c in cuts] == [0, 2, 4, 6, 8]
        assert cuts[-1].end == 9, "the last segment ends with the last frame"
        for cut in cuts:
            assert cut.audio, "every segment has audio"
            assert all(cut.start <= p.time < cut.end for p in cut.audio)
        placed = [p.pts for c in cuts for p in c.audio]
        assert placed == sorted(placed) == [a * 23 for a in range(9000 // 23)]


def test_missing_audio_delays_a_cut_by_the_grace_only() -> None:
    timeline = Timeline(D, has_video=True, has_audio=True)
    timeline.audio_packet(audio(0))
    cuts = feed(timeline, [video(i * 40, i % 50 == 0) for i in range(75)])  # to 2.96 s
    assert cuts == []
    cuts = feed(timeline, [video(3000, False)])
    assert [c.index for c in cuts] == [0], "video 1 s past the boundary: cut without audio"
    timeline.audio_packet(audio(1500))  # late: goes to the first open segment
    (last,) = timeline.finish()
    assert [p.pts for p in last.audio] == [1500]


def test_audio_only_cuts_on_audio_packets() -> None:
    timeline = Timeline(D, has_video=False, has_audio=True)
    cuts = feed(timeline, [audio(a * 23) for a in range(300)]) + timeline.finish()
    assert [float(c.duration) for c in cuts[:-1]] == pytest.approx([2.001, 2.001, 2.0], abs=0.03)
    assert sum(len(c.audio) for c in cuts) == 300
    assert cuts[-1].end == Fraction(300 * 23, 1000)


def test_video_only_cuts_at_once() -> None:
    timeline = Timeline(D, has_video=True, has_audio=False)
    cuts = feed(timeline, [video(i * 40, i % 50 == 0) for i in range(101)])
    assert [(c.index, c.end) for c in cuts] == [(0, 2), (1, 4)]
    (last,) = timeline.finish()
    assert (last.start, last.end) == (4, Fraction(404, 100))


def test_nothing_before_the_first_keyframe() -> None:
    timeline = Timeline(D, has_video=True, has_audio=True)
    assert timeline.video_packet(video(0, False)) is None
    assert timeline.finish() == []
    assert timeline.video_packet(video(40, True)) == 0
    assert timeline.frame(Fraction(40, 1000)) == (0, True)
    assert timeline.frame(Fraction(80, 1000)) == (0, False)


@given(
    offset=st.integers(-900, 900),
    gop=st.sampled_from([25, 50, 60, 75]),
    length=st.integers(3, 12),
)
def test_every_audio_packet_lands_in_exactly_one_segment(
    offset: int, gop: int, length: int
) -> None:
    timeline = Timeline(D, has_video=True, has_audio=True)
    cuts = feed(timeline, interleaved(length, offset, gop)) + timeline.finish()
    assert [c.index for c in cuts] == list(range(len(cuts)))
    for before, after in itertools.pairwise(cuts):
        assert before.end == after.start
    placed = [p.pts for c in cuts for p in c.audio]
    assert sorted(placed) == [a * 23 for a in range(length * 1000 // 23)]
    for cut in cuts:
        assert all(cut.start <= p.time < cut.end for p in cut.audio)


def test_sample_clock_snaps_millisecond_timestamps() -> None:
    clock = SampleClock(44100, 1024)
    flv_times = [round(i * 1024 / 44.1) for i in range(100)]  # what FLV carries (ms)
    assert [clock.stamp(t * MS) for t in flv_times] == [i * 1024 for i in range(100)]
    gap = round(100 * 1024 / 44.1) + 500  # half a second missing
    assert clock.stamp(gap * MS) == round(gap * 44.1), "a real gap is kept"
    assert clock.stamp((gap + 23) * MS) == round(gap * 44.1) + 1024
