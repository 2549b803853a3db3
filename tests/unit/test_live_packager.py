"""The live packager: sequences published only when every rendition has them, in order."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import m3u8

from vilokanam.origin.storage import LocalStorage, SegmentDropped
from vilokanam.packager.live import LivePackager
from vilokanam.packager.recording import JOURNAL, read_journal

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
    await packager.wait_listed()
    assert not (tmp_path / "s" / "source" / "index.m3u8").exists(), "240p has no segment 0 yet"
    await packager.handle(_segment(tmp_path, "240p", 0, 0.0))
    await packager.handle(_segment(tmp_path, "source", 1, 2.0))  # the worker dies here
    await packager.wait_listed()
    assert [s.uri for s in _playlist(tmp_path, "source").segments] == ["seg-0.m4s"]
    assert (tmp_path / "s" / "master.m3u8").exists()

    await packager.end_epoch()
    assert packager.next_sequence == 1, "the restarted worker reuses the unpublished number"
    assert not (tmp_path / "s" / "source" / "seg-1.m4s").exists()

    packager.start_epoch(1, media_start=0.0, wallclock=T0)  # publisher clock ran fast
    for name in ("source", "240p"):
        await packager.handle(_rendition(name, 1, tmp_path))
        await packager.handle(_segment(tmp_path, name, 1, 0.0))
    await packager.wait_listed()
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


class _SlowStorage(LocalStorage):
    """Uploads that finish out of order (the first one last), like concurrent S3 puts."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.release: dict[str, asyncio.Event] = {}
        self.order: list[str] = []

    async def publish_segment(self, relpath: str, *, droppable: bool = True) -> None:
        gate = self.release.setdefault(relpath, asyncio.Event())
        await gate.wait()
        self.order.append(relpath)

    async def publish_playlist(self, relpath: str, text: str) -> None:
        names = [line for line in text.splitlines() if line and not line.startswith("#")]
        for name in names:
            if name.endswith(".m4s"):
                assert f"s/source/{name}" in self.order, f"{name} listed before it was published"
        await super().publish_playlist(relpath, text)


async def test_handling_never_waits_for_uploads_and_listing_stays_in_order(
    tmp_path: Path,
) -> None:
    storage = _SlowStorage(tmp_path)
    packager = LivePackager("s", storage, segment_duration=2, window=6, delete_margin=2)
    await packager.handle({"type": "ladder", "renditions": ["source"]})
    await asyncio.wait_for(packager.handle(_rendition("source", 0, tmp_path)), 1)
    for sequence in range(3):  # returns at once although no upload has finished
        event = _segment(tmp_path, "source", sequence, 2.0 * sequence)
        await asyncio.wait_for(packager.handle(event), 1)
    assert packager.next_sequence == 3
    storage.release.setdefault("s/source/init-0.mp4", asyncio.Event()).set()
    for sequence in (2, 1):  # later sequences finish first
        storage.release.setdefault(f"s/source/seg-{sequence}.m4s", asyncio.Event()).set()
    await asyncio.sleep(0.05)
    assert not (tmp_path / "s" / "source" / "index.m3u8").exists(), "0 is not published yet"
    storage.release.setdefault("s/source/seg-0.m4s", asyncio.Event()).set()
    assert await packager.wait_listed(2)
    assert [s.uri for s in _playlist(tmp_path, "source").segments] == [
        "seg-0.m4s", "seg-1.m4s", "seg-2.m4s"
    ]  # fmt: skip


class _DroppingStorage(LocalStorage):
    async def publish_segment(self, relpath: str, *, droppable: bool = True) -> None:
        if relpath.endswith("seg-1.m4s"):
            raise SegmentDropped(relpath)


async def test_a_dropped_sequence_is_left_out_with_a_discontinuity(tmp_path: Path) -> None:
    packager = LivePackager("s", _DroppingStorage(tmp_path), segment_duration=2, window=6,
                            delete_margin=2)  # fmt: skip
    await packager.handle({"type": "ladder", "renditions": ["source"]})
    await packager.handle(_rendition("source", 0, tmp_path))
    for sequence in range(3):
        await packager.handle(_segment(tmp_path, "source", sequence, 2.0 * sequence))
    await packager.wait_listed()
    playlist = _playlist(tmp_path, "source")
    assert [s.uri for s in playlist.segments] == ["seg-0.m4s", "seg-2.m4s"]
    assert [s.discontinuity for s in playlist.segments] == [False, True]
    assert packager.dropped == 1
    assert not (tmp_path / "s" / "source" / "seg-1.m4s").exists()


async def test_recording_keeps_every_segment_and_ends_as_a_vod(tmp_path: Path) -> None:
    packager = LivePackager("s", LocalStorage(tmp_path), segment_duration=2, window=3,
                            delete_margin=1, recording=True)  # fmt: skip
    await packager.handle({"type": "ladder", "renditions": ["source"]})
    await packager.handle(_rendition("source", 0, tmp_path))
    for sequence in range(8):
        await packager.handle(_segment(tmp_path, "source", sequence, 2.0 * sequence))
    await packager.wait_listed()
    assert len(_playlist(tmp_path, "source").segments) == 3, "the live window is unchanged"
    await packager.finish()
    vod = _playlist(tmp_path, "source")
    assert vod.playlist_type == "vod" and vod.is_endlist and vod.media_sequence == 0
    assert [s.uri for s in vod.segments] == [f"seg-{n}.m4s" for n in range(8)]
    assert all((tmp_path / "s" / "source" / f"seg-{n}.m4s").exists() for n in range(8))
    summary = packager.recording_summary()
    assert summary is not None
    assert (summary.segments, summary.duration_ms, summary.size_bytes) == (8, 16_000, 8000)


async def test_segments_waiting_for_upload_keep_their_own_init_segment(tmp_path: Path) -> None:
    """A new worker's init segment arriving while older segments still upload (S3 slow, the
    publisher reconnected) must not be named by those older segments."""
    storage = _SlowStorage(tmp_path)
    packager = LivePackager("s", storage, segment_duration=2, window=6, delete_margin=2)
    await packager.handle({"type": "ladder", "renditions": ["source"]})
    await packager.handle(_rendition("source", 0, tmp_path))
    await packager.handle(_segment(tmp_path, "source", 0, 0.0))
    await packager.end_epoch()
    packager.start_epoch(1, media_start=0.0)
    await packager.handle(_rendition("source", 1, tmp_path))
    await packager.handle(_segment(tmp_path, "source", 1, 0.0))
    for name in ("init-0.mp4", "seg-0.m4s", "init-1.mp4", "seg-1.m4s"):
        storage.release.setdefault(f"s/source/{name}", asyncio.Event()).set()
    assert await packager.wait_listed(2)
    playlist = _playlist(tmp_path, "source")
    assert [s.init_section.uri for s in playlist.segments] == ["init-0.mp4", "init-1.mp4"]
    assert [s.discontinuity for s in playlist.segments] == [False, True]


async def test_a_thumbnail_before_the_first_sequence_is_journaled_with_it(
    tmp_path: Path,
) -> None:
    """The first keyframe's thumbnail comes before any sequence is queued: a journal holding
    only its line would describe no VOD."""
    packager = LivePackager("s", LocalStorage(tmp_path), segment_duration=2, window=3,
                            delete_margin=1, recording=True)  # fmt: skip
    await packager.handle({"type": "ladder", "renditions": ["source"]})
    await packager.handle(_rendition("source", 0, tmp_path))
    (tmp_path / "s" / "thumbnail.jpg").write_bytes(b"jpeg")
    await packager.handle({"type": "thumbnail", "path": "thumbnail.jpg"})
    while not packager.thumbnail:
        await asyncio.sleep(0)
    journal = tmp_path / "s" / JOURNAL
    assert not journal.exists(), "no line before a sequence is queued"
    for sequence in range(2):
        await packager.handle(_segment(tmp_path, "source", sequence, 2.0 * sequence))
        assert await packager.wait_listed(2)
    kinds = [json.loads(line)["type"] for line in journal.read_text().splitlines()]
    assert kinds == ["header", "queued", "thumbnail", "sequence", "queued", "sequence"]
    recording = read_journal(journal)
    assert recording is not None and recording.thumbnail
    await packager.handle({"type": "thumbnail", "path": "thumbnail.jpg"})  # refreshed later
    await asyncio.sleep(0.01)
    assert journal.read_text().count('"thumbnail"') == 1


def test_a_journal_from_before_with_the_thumbnail_first_still_reads(tmp_path: Path) -> None:
    segment = {"uri": "seg-0.m4s", "duration": 2.0, "program_date_time": T0.isoformat(),
               "init_uri": "init-0.mp4", "discontinuity": False, "size": 1000}  # fmt: skip
    lines = [
        {"type": "thumbnail"},
        {"type": "header", "version": 1, "target_duration": 2.0, "ladder": ["source"]},
        {"type": "sequence", "sequence": 0, "segments": {"source": segment}},
    ]
    journal = tmp_path / JOURNAL
    journal.write_text("".join(json.dumps(line) + "\n" for line in lines))
    recording = read_journal(journal)
    assert recording is not None and recording.thumbnail
    summary = recording.summary()
    assert summary is not None and (summary.segments, summary.size_bytes) == (1, 1000)
