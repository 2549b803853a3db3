"""The live packager: sequences published only when every rendition has them, in order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import m3u8

from vilokanam.origin.storage import LocalStorage
from vilokanam.packager.live import LivePackager

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _segment(root: Path, rendition: str, sequence: int, start: float) -> dict[str, object]:
    path = f"{rendition}/seg-{sequence}.m4s"
    (root / "s" / path).parent.mkdir(parents=True, exist_ok=True)
    (root / "s" / path).write_bytes(b"x" * 1000)
    return {"type": "segment", "rendition": rendition, "sequence": sequence, "path": path,
            "duration": 2.0, "start": start, "size": 1000}  # fmt: skip


def _rendition(name: str, epoch: int, root: Path) -> dict[str, object]:
    init = f"{name}/init-{epoch}.mp4"
    (root / "s" / name).mkdir(parents=True, exist_ok=True)
    (root / "s" / init).write_bytes(b"init")
    return {"type": "rendition", "name": name, "width": 640, "height": 360, "frame_rate": 25.0,
            "codecs": "avc1.64001e,mp4a.40.2", "bandwidth": 900_000, "init": init}  # fmt: skip


def _playlist(root: Path, rendition: str) -> m3u8.M3U8:
    return m3u8.loads((root / "s" / rendition / "index.m3u8").read_text())


async def test_a_sequence_waits_for_every_rendition_and_crash_leftovers_are_dropped(
    tmp_path: Path,
) -> None:
    packager = LivePackager("s", LocalStorage(tmp_path), segment_duration=2, window=6,
                            delete_margin=2)  # fmt: skip
    packager.start_epoch(0, media_start=0.0, wallclock=T0)
    await packager.handle({"type": "ladder", "renditions": ["source", "240p"]})
    for name in ("source", "240p"):
        await packager.handle(_rendition(name, 0, tmp_path))
    await packager.handle(_segment(tmp_path, "source", 0, 0.0))
    assert not (tmp_path / "s" / "source" / "index.m3u8").exists(), "240p has no segment 0 yet"
    await packager.handle(_segment(tmp_path, "240p", 0, 0.0))
    await packager.handle(_segment(tmp_path, "source", 1, 2.0))  # the worker dies here
    assert [s.uri for s in _playlist(tmp_path, "source").segments] == ["seg-0.m4s"]
    assert (tmp_path / "s" / "master.m3u8").exists()

    await packager.end_epoch()
    assert packager.next_sequence == 1, "the restarted worker reuses the unpublished number"
    assert not (tmp_path / "s" / "source" / "seg-1.m4s").exists()

    packager.start_epoch(1, media_start=0.0, wallclock=T0)  # publisher clock ran fast
    for name in ("source", "240p"):
        await packager.handle(_rendition(name, 1, tmp_path))
        await packager.handle(_segment(tmp_path, name, 1, 0.0))
    for name in ("source", "240p"):
        playlist = _playlist(tmp_path, name)
        assert [s.uri for s in playlist.segments] == ["seg-0.m4s", "seg-1.m4s"]
        assert [s.discontinuity for s in playlist.segments] == [False, True]
        assert playlist.segments[1].init_section.uri == "init-1.mp4"
        first, second = (s.program_date_time for s in playlist.segments)
        assert second >= first + timedelta(seconds=2), "PROGRAM-DATE-TIME never goes back"


async def test_finish_ends_every_playlist(tmp_path: Path) -> None:
    packager = LivePackager("s", LocalStorage(tmp_path), segment_duration=2, window=6,
                            delete_margin=2)  # fmt: skip
    await packager.handle({"type": "ladder", "renditions": ["source"]})
    await packager.handle(_rendition("source", 0, tmp_path))
    for sequence in range(3):
        await packager.handle(_segment(tmp_path, "source", sequence, 2.0 * sequence))
    await packager.finish()
    playlist = _playlist(tmp_path, "source")
    assert playlist.is_endlist and len(playlist.segments) == 3
