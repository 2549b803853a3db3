"""Ended streams that nobody records: their media goes ``hls.keep_ended`` seconds after the end,
on local disk and in S3; recordings (catalogued or not yet), live streams and recent ends stay."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import make_settings
from tests.s3 import Bucket
from vilokanam.config.settings import S3Settings
from vilokanam.origin.s3 import S3Storage
from vilokanam.origin.storage import LocalStorage, Storage
from vilokanam.origin.sweep import (
    CHANNEL_DELETED,
    EndedStreamSweeper,
    journaled_folders,
    mark_channel_deleted,
    stream_folders,
)
from vilokanam.packager.recording import JOURNAL
from vilokanam.store import SessionState, Store, StreamSession
from vilokanam.store.models import utcnow
from vilokanam.store.store import MediaState

KEEP = 300
LONG_AGO = 10 * KEEP


class Streams:
    """A SQLite store with one channel, and a media tree sessions write into."""

    def __init__(self, tmp_path: Path) -> None:
        settings = make_settings(tmp_path / "data")
        self.store = Store(settings.database_url)
        self.root = settings.media_dir
        channel, _ = self.store.create_channel("news")
        assert channel.id is not None
        self.channel_id = channel.id

    def session(
        self, *, ended_ago: float | None, recorded: bool | None = False, vod: bool = False
    ) -> int:
        """A session (ended ``ended_ago`` seconds ago, its files last written then; None: still
        live) with files; ``recorded=None``: one from before that was saved."""
        session = self.store.start_session(self.channel_id, recorded=bool(recorded))
        assert session.id is not None
        if recorded is None:
            with self.store.session() as db:
                row = db.get(StreamSession, session.id)
                assert row is not None
                row.recorded = None
                db.add(row)
                db.commit()
        if ended_ago is not None:
            at = utcnow() - timedelta(seconds=ended_ago)
            self.store.update_session(session.id, state=SessionState.ENDED, at=at)
        else:
            self.store.update_session(session.id, state=SessionState.LIVE)
        if vod:
            self.store.save_recording(
                session_id=session.id, channel_id=self.channel_id,
                prefix=f"streams/{session.id}", storage="local", renditions=["source"],
                duration_ms=4000, segments=2, size_bytes=10, thumbnail=False, retention_days=0,
            )  # fmt: skip
        self.write(session.id, written_ago=ended_ago or 0)
        return session.id

    def write(self, session_id: int, written_ago: float = LONG_AGO) -> None:
        folder = self.root / f"streams/{session_id}/source"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "index.m3u8").write_text("#EXTM3U\n#EXT-X-ENDLIST\n")
        (folder / "seg-0.m4s").write_bytes(b"x" * 100)
        then = time.time() - written_ago
        os.utime(folder / "index.m3u8", (then, then))

    def journal(self, session_id: int, lines: str) -> None:
        (self.root / f"streams/{session_id}" / JOURNAL).write_text(lines)

    def exists(self, session_id: int) -> bool:
        return (self.root / f"streams/{session_id}").exists()


@pytest.fixture
def streams(tmp_path: Path) -> Iterator[Streams]:
    streams = Streams(tmp_path)
    yield streams
    streams.store.close()


def sweeper(streams: Streams, storage: Storage, **options: object) -> EndedStreamSweeper:
    return EndedStreamSweeper(streams.store, storage, **({"keep_ended": KEEP} | options))  # type: ignore[arg-type]


USABLE_JOURNAL = (
    '{"type": "header", "version": 1, "target_duration": 2.0, "ladder": ["source"]}\n'
    '{"type": "sequence", "sequence": 0, "segments": {"source": {"uri": "seg-0.m4s", '
    '"duration": 2.0, "program_date_time": "2026-01-01T00:00:00+00:00", "init_uri": null, '
    '"discontinuity": false, "size": 100}}}\n'
)


def test_media_states_judge_by_end_recording_and_vod(streams: Streams) -> None:
    old = streams.session(ended_ago=KEEP + 1)
    recent = streams.session(ended_ago=KEEP - 1)
    live = streams.session(ended_ago=None)
    vod = streams.session(ended_ago=LONG_AGO, recorded=True, vod=True)
    unmade = streams.session(ended_ago=LONG_AGO, recorded=True)
    legacy = streams.session(ended_ago=LONG_AGO, recorded=None)
    orphan = 10_000  # a folder whose session is not in this database
    cutoff = utcnow() - timedelta(seconds=KEEP)
    states = streams.store.media_states(
        [old, recent, live, vod, unmade, legacy, orphan, old], cutoff
    )
    assert states == {
        old: MediaState.UNRECORDED, recent: MediaState.WAIT, live: MediaState.WAIT,
        vod: MediaState.KEEP, unmade: MediaState.UNCATALOGUED, legacy: MediaState.KEEP,
        orphan: MediaState.UNKNOWN,
    }  # fmt: skip
    assert streams.store.media_states([], cutoff) == {}


def test_media_states_take_more_ids_than_one_query(streams: Streams) -> None:
    old = streams.session(ended_ago=KEEP + 1)
    states = streams.store.media_states([old, *range(20_000, 21_200)], utcnow())
    assert len(states) == 1201 and states[old] is MediaState.UNRECORDED


def test_stream_folders_lists_session_folders_only(tmp_path: Path) -> None:
    assert stream_folders(tmp_path) == []
    for name in ("12", "3", "x7", "4.tmp", "\u00b2", "\u0661"):  # superscript 2, Arabic 1
        (tmp_path / "streams" / name).mkdir(parents=True)
    (tmp_path / "streams" / "5").write_text("a file, not a stream")
    assert stream_folders(tmp_path) == [3, 12]
    (tmp_path / "streams" / "12" / JOURNAL).write_text("{}\n")
    assert journaled_folders(tmp_path) == [12]


async def test_a_pass_deletes_only_what_is_known_unrecorded_and_done(streams: Streams) -> None:
    storage = LocalStorage(streams.root)
    old = streams.session(ended_ago=KEEP + 5)
    recent = streams.session(ended_ago=10)
    live = streams.session(ended_ago=None)
    vod = streams.session(ended_ago=LONG_AGO, recorded=True, vod=True)
    legacy = streams.session(ended_ago=LONG_AGO, recorded=None)
    to_recover = streams.session(ended_ago=LONG_AGO, recorded=True)
    streams.journal(to_recover, USABLE_JOURNAL)
    too_short = streams.session(ended_ago=LONG_AGO, recorded=True)
    streams.journal(too_short, '{"type": "thumbnail"}\n')  # nothing a VOD could be made of
    (streams.root / f"streams/{too_short}/source/seg-0.m4s").unlink()
    unjournaled = streams.session(ended_ago=LONG_AGO, recorded=True)  # its journal failed
    draining = streams.session(ended_ago=LONG_AGO)
    streams.write(draining, written_ago=10)  # its ENDLIST was written long after the end
    busy = streams.session(ended_ago=LONG_AGO)  # the store says ended; this server writes it
    orphan = 10_000  # no session: another database's, or a database restored from a backup
    streams.write(orphan)
    deleted_channel, just_deleted = 10_001, 10_002  # sessions that went with their channel
    for session_id, ago in ((deleted_channel, KEEP + 5), (just_deleted, 10)):
        streams.write(session_id)
        assert mark_channel_deleted(streams.root, [session_id, 99_999]) == 1
        then = time.time() - ago
        os.utime(streams.root / f"streams/{session_id}" / CHANNEL_DELETED, (then, then))
    sweep = sweeper(streams, storage, in_use=lambda: [f"streams/{busy}"])

    assert await sweep.sweep() == [old, too_short, deleted_channel]
    assert not streams.exists(old) and not streams.exists(too_short)
    assert not streams.exists(deleted_channel)
    kept_ones = (recent, live, vod, legacy, to_recover, unjournaled, draining, busy, orphan)
    for kept in (*kept_ones, just_deleted):
        assert streams.exists(kept), kept
    assert await sweep.sweep() == []  # nothing left to do


async def test_folders_kept_for_good_are_not_looked_up_again(streams: Streams) -> None:
    vod = streams.session(ended_ago=LONG_AGO, recorded=True, vod=True)
    recent = streams.session(ended_ago=10)
    sweep = sweeper(streams, LocalStorage(streams.root))
    asked: list[list[int]] = []
    real = streams.store.media_states

    def media_states(ids: list[int], cutoff: datetime) -> dict[int, MediaState]:
        asked.append(sorted(ids))
        return real(ids, cutoff)

    streams.store.media_states = media_states  # type: ignore[method-assign]
    await sweep.sweep()
    await sweep.sweep()
    assert asked == [[vod, recent], [recent]]


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
    recovery = asyncio.ensure_future(asyncio.Event().wait())
    sweep = sweeper(streams, LocalStorage(streams.root), every=0.05)
    sweep.start(after=recovery)
    await asyncio.sleep(0.2)
    assert streams.exists(old), "no pass before recovery finished"
    await sweep.stop()
    assert not recovery.cancelled(), "stopping the sweep leaves recovery running"
    done = asyncio.Event()
    sweep.start(after=done.wait())
    done.set()
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
    recovery.cancel()


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
        then = time.time() - LONG_AGO  # the playlist was rewritten above: its end is long past
        os.utime(streams.root / f"streams/{old}/source/index.m3u8", (then, then))

        assert await sweeper(streams, storage).sweep() == [old]
        assert s3_bucket.keys(f"streams/{old}/") == []
        assert not streams.exists(old)
        assert len(s3_bucket.keys(f"streams/{kept}/")) == 2 and streams.exists(kept)
    finally:
        await storage.close(0)


async def test_an_unreadable_folder_never_stops_the_pass(
    streams: Streams, caplog: pytest.LogCaptureFixture
) -> None:
    broken = streams.session(ended_ago=LONG_AGO, recorded=True)
    (streams.root / f"streams/{broken}" / JOURNAL).mkdir()  # reading it fails: not a file
    old = streams.session(ended_ago=LONG_AGO)
    assert await sweeper(streams, LocalStorage(streams.root)).sweep() == [old]
    assert streams.exists(broken) and "cannot tell whether it may go" in caplog.text
