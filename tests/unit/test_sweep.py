"""Ended streams that nobody records: their media goes ``hls.keep_ended`` seconds after the end,
on local disk and in S3; recordings (catalogued or not yet), live streams and recent ends stay."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import make_settings
from tests.s3 import Bucket
from vilokanam.config.settings import S3Settings
from vilokanam.origin.s3 import S3Storage
from vilokanam.origin.storage import LocalStorage, Storage
from vilokanam.origin.sweep import EndedStreamSweeper, journaled_folders, stream_folders
from vilokanam.packager.live import JOURNAL
from vilokanam.store import SessionState, Store

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
KEEP = 300


class Streams:
    """A SQLite store with one channel, and a media tree sessions write into."""

    def __init__(self, tmp_path: Path) -> None:
        settings = make_settings(tmp_path / "data")
        self.store = Store(settings.database_url)
        self.root = settings.media_dir
        channel, _ = self.store.create_channel("news")
        assert channel.id is not None
        self.channel_id = channel.id

    def session(self, *, ended_ago: float | None, recorded: bool = False) -> int:
        """A session (ended ``ended_ago`` seconds before NOW; None: still live) with files."""
        session = self.store.start_session(self.channel_id)
        assert session.id is not None
        if ended_ago is not None:
            at = NOW - timedelta(seconds=ended_ago)
            self.store.update_session(session.id, state=SessionState.ENDED, at=at)
        else:
            self.store.update_session(session.id, state=SessionState.LIVE)
        if recorded:
            self.store.save_recording(
                session_id=session.id, channel_id=self.channel_id,
                prefix=f"streams/{session.id}", storage="local", renditions=["source"],
                duration_ms=4000, segments=2, size_bytes=10, thumbnail=False, retention_days=0,
            )  # fmt: skip
        self.write(session.id)
        return session.id

    def write(self, session_id: int) -> None:
        folder = self.root / f"streams/{session_id}/source"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "index.m3u8").write_text("#EXTM3U\n#EXT-X-ENDLIST\n")
        (folder / "seg-0.m4s").write_bytes(b"x" * 100)

    def exists(self, session_id: int) -> bool:
        return (self.root / f"streams/{session_id}").exists()


@pytest.fixture
def streams(tmp_path: Path) -> Iterator[Streams]:
    streams = Streams(tmp_path)
    yield streams
    streams.store.close()


def sweeper(streams: Streams, storage: Storage, **options: object) -> EndedStreamSweeper:
    options = {"keep_ended": KEEP, "clock": lambda: NOW} | options
    return EndedStreamSweeper(streams.store, storage, **options)  # type: ignore[arg-type]


def test_unrecorded_ended_picks_old_unrecorded_ends_and_orphans(streams: Streams) -> None:
    old = streams.session(ended_ago=KEEP + 1)
    recent = streams.session(ended_ago=KEEP - 1)
    live = streams.session(ended_ago=None)
    recorded = streams.session(ended_ago=KEEP * 10, recorded=True)
    orphan = 10_000  # a folder whose session went with its channel
    cutoff = NOW - timedelta(seconds=KEEP)
    candidates = [old, recent, live, recorded, orphan, old]
    assert streams.store.unrecorded_ended(candidates, cutoff) == [old, orphan]
    assert streams.store.unrecorded_ended(candidates, cutoff, orphans=False) == [old]
    assert streams.store.unrecorded_ended([], cutoff) == []


def test_unrecorded_ended_handles_more_ids_than_one_query_takes(streams: Streams) -> None:
    old = streams.session(ended_ago=KEEP + 1)
    ids = [old, *range(20_000, 21_200)]
    assert streams.store.unrecorded_ended(ids, NOW) == ids


def test_stream_folders_lists_session_folders_only(tmp_path: Path) -> None:
    assert stream_folders(tmp_path) == []
    for name in ("12", "3", "x7", "4.tmp"):
        (tmp_path / "streams" / name).mkdir(parents=True)
    (tmp_path / "streams" / "5").write_text("a file, not a stream")
    assert stream_folders(tmp_path) == [3, 12]
    (tmp_path / "streams" / "12" / JOURNAL).write_text("{}\n")
    assert journaled_folders(tmp_path) == [12]


async def test_a_pass_deletes_only_old_unrecorded_streams(streams: Streams) -> None:
    storage = LocalStorage(streams.root)
    old = streams.session(ended_ago=KEEP + 5)
    recent = streams.session(ended_ago=10)
    live = streams.session(ended_ago=None)
    recorded = streams.session(ended_ago=KEEP * 10, recorded=True)
    crashed_recording = streams.session(ended_ago=KEEP * 10)
    (streams.root / f"streams/{crashed_recording}" / JOURNAL).write_text("{}\n")
    busy = streams.session(ended_ago=KEEP * 10)  # the store says ended; this server writes it
    orphan = 10_000
    streams.write(orphan)
    sweep = sweeper(streams, storage, in_use=lambda: [f"streams/{busy}"])

    assert await sweep.sweep() == [old, orphan]
    assert not streams.exists(old) and not streams.exists(orphan)
    for kept in (recent, live, recorded, crashed_recording, busy):
        assert streams.exists(kept), kept
    assert await sweep.sweep() == []  # nothing left to do


async def test_keep_ended_zero_keeps_everything(streams: Streams) -> None:
    old = streams.session(ended_ago=10**6)
    sweep = sweeper(streams, LocalStorage(streams.root), keep_ended=0)
    assert await sweep.sweep() == []
    sweep.start()
    assert sweep._task is None  # nothing to run
    assert streams.exists(old)


async def test_a_failing_delete_is_retried_next_pass(
    streams: Streams, caplog: pytest.LogCaptureFixture
) -> None:
    class Flaky(LocalStorage):
        fail = True

        async def delete_prefix(self, prefix: str) -> int:
            if self.fail:
                raise OSError("disk went read-only")
            return await super().delete_prefix(prefix)

    storage = Flaky(streams.root)
    old = streams.session(ended_ago=KEEP + 5)
    sweep = sweeper(streams, storage)
    assert await sweep.sweep() == []
    assert "could not delete" in caplog.text and streams.exists(old)
    storage.fail = False
    assert await sweep.sweep() == [old]


async def test_the_task_waits_for_recovery_then_sweeps_periodically(streams: Streams) -> None:
    old = streams.session(ended_ago=KEEP + 5)
    recovery_done = asyncio.Event()
    sweep = sweeper(streams, LocalStorage(streams.root), every=0.05)
    sweep.start(after=recovery_done.wait())
    await asyncio.sleep(0.2)
    assert streams.exists(old), "no pass before recovery finished"
    recovery_done.set()
    for _ in range(100):
        if not streams.exists(old):
            break
        await asyncio.sleep(0.02)
    assert not streams.exists(old)
    later = streams.session(ended_ago=KEEP + 5)
    for _ in range(100):  # the next pass takes the next stream
        if not streams.exists(later):
            break
        await asyncio.sleep(0.02)
    assert not streams.exists(later)
    await sweep.stop()


async def test_s3_objects_go_with_the_local_folder(
    streams: Streams, s3_bucket: Bucket, tmp_path: Path
) -> None:
    settings = S3Settings(
        bucket=s3_bucket.name, endpoint_url=s3_bucket.endpoint, addressing_style="path",
        retry_initial=0.05, retry_max=0.2, timeout=2,
    )  # fmt: skip
    storage = S3Storage(streams.root, settings)
    await storage.start()
    try:
        old = streams.session(ended_ago=KEEP + 5)
        kept = streams.session(ended_ago=10)
        for session_id in (old, kept):
            await storage.publish_segment(f"streams/{session_id}/source/seg-0.m4s")
            await storage.publish_playlist(
                f"streams/{session_id}/source/index.m3u8", "#EXTM3U\n#EXT-X-ENDLIST\n"
            )
        assert await storage.flush(10)
        assert len(s3_bucket.keys(f"streams/{old}/")) == 2

        assert await sweeper(streams, storage).sweep() == [old]
        assert s3_bucket.keys(f"streams/{old}/") == []
        assert not streams.exists(old)
        assert len(s3_bucket.keys(f"streams/{kept}/")) == 2 and streams.exists(kept)
    finally:
        await storage.close(0)
