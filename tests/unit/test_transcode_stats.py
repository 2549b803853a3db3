"""The worker's ``stats`` figures: totals plus frames/s and speed per rendition."""

from __future__ import annotations

from fractions import Fraction

from vilokanam.transcode.stats import Stats, Throughput


def test_per_rung_fps_and_speed_over_the_interval() -> None:
    start = 100.0
    stats = Stats(interval=5.0, now=start)
    fast, slow = Throughput(now=start), Throughput(now=start)
    stats.track("source", stats.total)
    stats.track("360p", fast)
    stats.track("180p", slow)
    for i in range(125):  # 5 s of 25 fps source in 5 s of wall time
        stats.frames += 1
        stats.progress(Fraction(i, 25))
        fast.add(1, (i + 1) / 25)
        if i < 50:
            slow.add(1, (i + 1) / 25)
    assert stats.due(now=start + 4.9) is None
    report = stats.due(now=start + 5.0)
    assert report is not None
    assert report["frames"] == 125 and report["fps"] == 25.0
    assert report["speed"] == 0.992  # 124 frame starts after the first: 4.96 s of media
    rungs = report["rungs"]
    assert list(rungs) == ["source", "360p", "180p"]
    assert rungs["source"] == {"frames": 125, "fps": 25.0, "speed": 0.992}
    assert rungs["360p"] == {"frames": 125, "fps": 25.0, "speed": 0.992}
    assert rungs["180p"]["fps"] == 10.0 and rungs["180p"]["speed"] == 0.392

    for _ in range(10):  # the next interval counts only what happened since
        slow.add(1, slow.media_time + 0.04)  # type: ignore[operator]
    report = stats.due(force=True, now=start + 7.0)
    assert report is not None
    assert report["rungs"]["360p"]["fps"] == 0.0 and report["rungs"]["360p"]["speed"] == 0.0
    assert report["rungs"]["180p"] == {"frames": 60, "fps": 5.0, "speed": 0.2}


def test_audio_only_progress_without_frames() -> None:
    start = 100.0
    stats = Stats(now=start)
    stats.progress(Fraction(1))
    stats.progress(Fraction(11, 2))
    report = stats.due(force=True, now=start + 3.0)
    assert report == {"frames": 0, "fps": 0.0, "speed": 1.5, "rungs": {}}
