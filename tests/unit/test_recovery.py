"""After a crash: playlists a stream left open get ENDLIST, what S3 never got is sent, and a
recording killed mid-way becomes the VOD that finishing it would have made."""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import m3u8
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ServerThread, make_settings
from tests.s3 import Bucket
from vilokanam.config.settings import S3Settings
from vilokanam.origin.s3 import S3Storage
from vilokanam.origin.storage import LocalStorage, SegmentDropped, Storage
from vilokanam.packager.live import LivePackager
from vilokanam.packager.recording import (
    JOURNAL,
    JournaledRecording,
    read_journal,
    vod_playlist,
)
from vilokanam.packager.recovery import (
    ENDLIST,
    RecoveredRecording,
    end_open_playlists,
    recover_sessions,
)
from vilokanam.store import Store

OPEN = (
    "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:4\n"
    '#EXT-X-MAP:URI="s3-init-0.mp4"\n#EXTINF:2.000,\ns3-seg-4.m4s\n#EXTINF:2.000,\ns3-seg-5.m4s\n'
)


def crashed_stream(root: Path, prefix: str = "streams/3") -> None:
    """What a killed server leaves: segments, an init segment, playlists without ENDLIST."""
    for rendition in ("source", "240p"):
        folder = root / prefix / rendition
        folder.mkdir(parents=True)
        (folder / "index.m3u8").write_text(OPEN)
        for name in ("s3-init-0.mp4", "s3-seg-4.m4s", "s3-seg-5.m4s"):
            (folder / name).write_bytes(name.encode() * 10)
    (root / prefix / "master.m3u8").write_text("#EXTM3U\n")


async def test_open_playlists_are_ended_once(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    crashed_stream(tmp_path)
    ended_before = tmp_path / "streams/3/720p/index.m3u8"
    ended_before.parent.mkdir()
    ended_before.write_text(OPEN + ENDLIST + "\n")
    assert await end_open_playlists(storage, "streams/3") == 2
    for rendition in ("source", "240p"):
        playlist = m3u8.loads((tmp_path / f"streams/3/{rendition}/index.m3u8").read_text())
        assert playlist.is_endlist and [s.uri for s in playlist.segments] == [
            "s3-seg-4.m4s", "s3-seg-5.m4s"
        ]  # fmt: skip
    assert ended_before.read_text().count(ENDLIST) == 1
    assert await end_open_playlists(storage, "streams/3") == 0, "idempotent"


async def test_with_s3_what_the_crash_left_unsent_is_uploaded_first(
    tmp_path: Path, s3_bucket: Bucket
) -> None:
    settings = S3Settings(
        bucket=s3_bucket.name, endpoint_url=s3_bucket.endpoint, addressing_style="path"
    )
    storage = S3Storage(tmp_path / "media", settings)
    await storage.start()
    try:
        crashed_stream(storage.root)
        assert await end_open_playlists(storage, "streams/3") == 2
        assert await storage.flush(20)
    finally:
        await storage.close(5)
    for rendition in ("source", "240p"):
        keys = s3_bucket.keys(f"streams/3/{rendition}/")
        assert keys == sorted(
            f"streams/3/{rendition}/{name}"
            for name in ("index.m3u8", "s3-init-0.mp4", "s3-seg-4.m4s", "s3-seg-5.m4s")
        )
        assert ENDLIST in s3_bucket.get(f"streams/3/{rendition}/index.m3u8").decode()


@pytest.mark.e2e
def test_a_server_started_after_a_crash_ends_the_streams_it_left_open(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    store = Store(settings.database_url)
    channel, _ = store.create_channel("news", "News")
    assert channel.id is not None
    session = store.start_session(channel.id, "127.0.0.1:5000")
    store.close()
    prefix = f"streams/{session.id}"
    crashed_stream(settings.media_dir, prefix)
    server = ServerThread(settings).start()
    try:
        playlist = settings.media_dir / prefix / "source/index.m3u8"
        deadline = time.monotonic() + 10
        while ENDLIST not in playlist.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ENDLIST in playlist.read_text()
        assert server.server.store.sessions()[0].end_reason == "server stopped unexpectedly"
    finally:
        server.stop()


# -- recordings: the journal -------------------------------------------------------------------
T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
SESSION = 7
PREFIX = f"streams/{SESSION}"


@dataclass
class Scenario:
    """What a stream did: the packager gets the same events with or without a crash."""

    ladder: list[str] = field(default_factory=lambda: ["source", "240p"])
    durations: list[float] = field(default_factory=lambda: [2.0, 2.0, 1.96, 2.04, 2.0, 4.5, 2.0])
    restarts: set[int] = field(default_factory=lambda: {4})
    """A new worker (a new init segment, a discontinuity) starts at these sequences."""
    dropped: set[int] = field(default_factory=lambda: {2})
    """Sequences whose files could not be published."""
    thumbnail_at: int | None = 1
    outage_from: int | None = None
    """S3 goes down before this sequence and the server is killed before it comes back: the
    uploads of this sequence and later ones never end (what finishing it makes: no outage)."""


class _Dropping(LocalStorage):
    """Files of ``dropped`` sequences are given up (as S3 with its spool full: the local copy
    goes too); once ``down``, every other upload but a thumbnail's waits forever."""

    def __init__(self, root: Path, dropped: set[int]) -> None:
        super().__init__(root)
        self.dropped = {f"seg-{n}.m4s" for n in dropped}
        self.down = False

    async def publish_segment(self, relpath: str, *, droppable: bool = True) -> None:
        if relpath.rpartition("-s7-")[2] in self.dropped:
            (self.root / relpath).unlink(missing_ok=True)
            raise SegmentDropped(relpath)
        if self.down and not relpath.endswith("thumbnail.jpg"):
            await asyncio.Event().wait()
        await super().publish_segment(relpath, droppable=droppable)


def _file(storage: Storage, relpath: str, size: int) -> str:
    path = storage.root / PREFIX / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"m" * size)
    return relpath


async def _drive(storage: Storage, scenario: Scenario, *, outage: bool = False) -> LivePackager:
    """Feed a recording packager the worker events of ``scenario``; everything listed (with
    ``outage``: up to ``scenario.outage_from``, then killed with the rest waiting on S3)."""
    packager = LivePackager(PREFIX, storage, segment_duration=2, window=3, delete_margin=1,
                            recording=True)  # fmt: skip
    await packager.handle({"type": "ladder", "renditions": scenario.ladder})
    epoch, media, elapsed = -1, 0.0, 0.0
    for sequence, duration in enumerate(scenario.durations):
        if outage and sequence == scenario.outage_from:
            assert isinstance(storage, _Dropping)
            assert await packager.wait_listed(10)
            storage.down = True
        if sequence == 0 or sequence in scenario.restarts:
            await packager.end_epoch()
            epoch, media = epoch + 1, 0.0
            packager.start_epoch(epoch, 0.0, T0 + timedelta(seconds=elapsed + 0.5))
            for name in scenario.ladder:
                init = _file(storage, f"{name}/{name}-s7-init-{epoch}.mp4", 50)
                await packager.handle({"type": "rendition", "name": name, "init": init,
                                       "codecs": "avc1.64001e", "bandwidth": 900_000,
                                       "width": 640, "height": 360})  # fmt: skip
        for index, name in enumerate(scenario.ladder):
            size = 1000 + 10 * sequence + index
            path = _file(storage, f"{name}/{name}-s7-seg-{sequence}.m4s", size)
            await packager.handle({"type": "segment", "rendition": name, "sequence": sequence,
                                   "path": path, "duration": duration, "start": media,
                                   "size": size})  # fmt: skip
        if sequence == scenario.thumbnail_at:
            _file(storage, "thumbnail.jpg", 30)
            await packager.handle({"type": "thumbnail", "path": "thumbnail.jpg"})
        media += duration
        elapsed += duration
    down = isinstance(storage, _Dropping) and storage.down
    if not down:
        assert await packager.wait_listed(10)
    for _ in range(500):  # the thumbnail's done callback
        if not packager._side_uploads:
            break
        await asyncio.sleep(0.01)
    for _ in range(20):  # the dropped uploads
        await asyncio.sleep(0)
    if down:
        await asyncio.sleep(0.05)  # a dropped sequence's local delete runs in a thread
    if down:  # kill -9: nothing the packager waits on ever ends, nothing more is written
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return packager


def _playlists(root: Path) -> dict[str, str]:
    return {p.parent.name: p.read_text() for p in sorted((root / PREFIX).glob("*/index.m3u8"))}


async def _crash_and_finish(
    base: Path, scenario: Scenario
) -> tuple[Path, Path, LivePackager, list[RecoveredRecording]]:
    """Run ``scenario`` twice: killed then recovered (``base/crashed``), and finished."""
    crashed = LocalStorage(base / "crashed")
    outage = scenario.outage_from is not None
    await _drive(_Dropping(crashed.root, scenario.dropped), scenario, outage=outage)  # no finish
    recovered: list[RecoveredRecording] = []

    async def on_recording(recording: RecoveredRecording) -> None:
        recovered.append(recording)

    await recover_sessions(crashed, [SESSION], on_recording)
    finished = await _drive(_Dropping(base / "finished", scenario.dropped), scenario)
    await finished.finish()
    return crashed.root, base / "finished", finished, recovered


def _figures(recovered: list[RecoveredRecording]) -> list[dict[str, Any]]:
    return [{k: v for k, v in asdict(r).items() if k != "session_id"} for r in recovered]


async def test_a_killed_recording_becomes_the_vod_finish_would_have_made(tmp_path: Path) -> None:
    crashed, finished_root, finished, recovered = await _crash_and_finish(tmp_path, Scenario())
    vods = _playlists(finished_root)
    assert set(vods) == {"source", "240p"}
    assert _playlists(crashed) == vods, "byte for byte"
    vod = m3u8.loads(vods["source"])
    assert vod.playlist_type == "vod" and vod.is_endlist
    assert [s.discontinuity for s in vod.segments] == [False, False, True, True, False, False]
    summary = finished.recording_summary()
    assert summary is not None and summary.segments == 6 and summary.thumbnail
    assert [r.session_id for r in recovered] == [SESSION]
    assert _figures(recovered) == [asdict(summary)]
    assert (crashed / PREFIX / "master.m3u8").is_file()

    await recover_sessions(LocalStorage(crashed), [SESSION], _record_into(again := []))
    assert _playlists(crashed) == vods and again == recovered, "the same result twice"


def _record_url(urls: list[str]) -> Any:
    """A botocore hook that notes each request's URL."""

    def record(params: dict[str, Any], **_: Any) -> None:
        urls.append(params["url"])

    return record


async def _recover_on_s3(
    root: Path, settings: S3Settings, on_put: Any
) -> tuple[S3Storage, list[RecoveredRecording]]:
    """Recover SESSION into S3 (``on_put``: a botocore hook before each PutObject); the storage,
    closed, and what ``on_recording`` got."""
    storage = S3Storage(root, settings)
    await storage.start()
    storage.client.meta.events.register("before-call.s3.PutObject", on_put)
    calls: list[RecoveredRecording] = []
    try:
        await recover_sessions(storage, [SESSION], _record_into(calls))
        assert await storage.flush(20)
    finally:
        await storage.close(5)
    return storage, calls


def _record_into(calls: list[RecoveredRecording]) -> Any:
    async def on_recording(recording: RecoveredRecording) -> None:
        calls.append(recording)

    return on_recording


async def test_the_journal_has_a_line_per_sequence_and_a_torn_last_line_is_ignored(
    tmp_path: Path,
) -> None:
    storage = LocalStorage(tmp_path)
    packager = await _drive(storage, Scenario(dropped=set()))
    journal = tmp_path / PREFIX / JOURNAL
    lines = journal.read_bytes().splitlines(keepends=True)
    kinds = [json.loads(line)["type"] for line in lines]
    assert kinds.count("header") == kinds.count("thumbnail") == 1
    assert kinds.index("header") < kinds.index("queued") < kinds.index("sequence")
    assert kinds.count("sequence") == kinds.count("queued") == 7
    with journal.open("ab") as handle:
        handle.write(lines[-2][: len(lines[-2]) // 2])  # killed in the middle of a line
    calls: list[RecoveredRecording] = []
    await recover_sessions(storage, [SESSION], _record_into(calls))
    assert _figures(calls) == [asdict(packager.recording_summary())]


async def test_a_recording_that_never_listed_a_sequence_gets_today_s_treatment(
    tmp_path: Path,
) -> None:
    storage = LocalStorage(tmp_path)
    crashed_stream(tmp_path, PREFIX)
    (tmp_path / PREFIX / JOURNAL).write_text('{"type":"header","version":1,"target_dur')
    calls: list[RecoveredRecording] = []
    await recover_sessions(storage, [SESSION, 99], _record_into(calls))
    assert calls == []
    assert ENDLIST in (tmp_path / PREFIX / "source/index.m3u8").read_text()


async def test_a_failing_journal_is_logged_once_and_the_stream_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / PREFIX / JOURNAL).mkdir(parents=True)  # appending to it fails
    with caplog.at_level(logging.ERROR, logger="vilokanam.packager.live"):
        packager = await _drive(LocalStorage(tmp_path), Scenario(dropped=set()))
    assert sum("journal given up" in r.getMessage() for r in caplog.records) == 1
    assert len(m3u8.loads(_playlists(tmp_path)["source"]).segments) == 3
    await packager.finish()
    assert packager.recording_summary() is not None


async def test_every_truncation_of_the_journal_is_a_prefix_of_the_vod(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "media")
    scenario = Scenario(ladder=["source", "360p", "160p"], dropped={3})
    packager = await _drive(_Dropping(storage.root, scenario.dropped), scenario)
    archives = {name: r.archive for name, r in packager.renditions.items()}
    data = (storage.root / PREFIX / JOURNAL).read_bytes()
    assert data.count(b'"type":"queued"') == 7 and data.count(b'"type":"dropped"') == 1
    copy = tmp_path / "copy.jsonl"
    for cut in range(len(data) + 1):
        copy.write_bytes(data[:cut])
        recording = read_journal(copy)
        complete = data[:cut].split(b"\n")[:-1]  # a torn last line does not count
        listed = [line for line in complete if b'"type":"sequence"' in line]
        if recording is None:
            assert not listed, cut
            continue
        count = len(listed)
        expected = {n: vod_playlist(2, a[:count]).render() for n, a in archives.items() if count}
        assert recording.playlists() == expected, cut
        summary = recording.summary()
        assert (summary.segments if summary else 0) == count, cut
        assert recording.thumbnail == any(b'"thumbnail"' in line for line in complete), cut
        # Killed here with every queued file still on disk: those are listed too.
        pending = [item.sequence for item in recording.pending]
        vod = recording.with_pending(lambda _: True)
        numbers = [entry.sequence for entry in vod.archives["source"]]
        assert numbers == [e.sequence for e in archives["source"][:count]] + pending, cut
        if scenario.dropped.isdisjoint(pending):  # else: killed before that upload failed
            last = numbers[-1]
            expected = {n: vod_playlist(2, [e for e in a if e.sequence <= last]).render()
                        for n, a in archives.items()}  # fmt: skip
            assert vod.playlists() == expected, cut


scenarios = st.builds(
    Scenario,
    ladder=st.sampled_from([["source"], ["source", "240p"], ["720p", "source", "160p"]]),
    durations=st.lists(st.sampled_from([2.0, 1.96, 2.04, 2.002, 0.5, 4.5, 7.25]), max_size=9),
    restarts=st.sets(st.integers(1, 8), max_size=3),
    dropped=st.sets(st.integers(0, 8), max_size=3),
    thumbnail_at=st.none() | st.integers(0, 8),
    outage_from=st.none() | st.integers(1, 8),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios)
def test_any_killed_recording_recovers_as_finish_would_have_ended_it(scenario: Scenario) -> None:
    with tempfile.TemporaryDirectory() as folder:
        crashed, finished_root, finished, recovered = asyncio.run(
            _crash_and_finish(Path(folder), scenario)
        )
        summary = finished.recording_summary()
        outage = scenario.outage_from
        if (
            outage is not None
            and outage < len(scenario.durations)
            and (
                scenario.dropped.issuperset(range(outage))  # nothing listed: no master playlist
            )
        ):
            assert recovered == []
            return
        assert _playlists(crashed) == _playlists(finished_root)
        assert _figures(recovered) == ([asdict(summary)] if summary else [])


@pytest.mark.parametrize("dropped", [{2}, {2, 5}, {3}])
async def test_a_recording_killed_while_s3_was_down_keeps_what_was_waiting(
    tmp_path: Path, dropped: set[int]
) -> None:
    """The sequences queued behind an S3 outage: their files are on local disk, so the VOD has
    them, as if the outage had never been (one given up meanwhile: left out, as by finish)."""
    scenario = Scenario(outage_from=3, dropped=dropped)
    crashed, finished_root, finished, recovered = await _crash_and_finish(tmp_path, scenario)
    journal = (crashed / PREFIX / JOURNAL).read_text()
    assert journal.count('"type":"queued"') == 7
    recording = read_journal(crashed / PREFIX / JOURNAL)
    assert recording is not None
    pending = [p.sequence for p in recording.pending]  # 3: dropped before the kill
    assert pending in ([3, 4, 5, 6], [4, 5, 6]) and {3, 4, 5, 6} - dropped <= set(pending)
    assert len(m3u8.loads(_playlists(crashed)["source"]).segments) == 7 - len(dropped)
    vods = _playlists(finished_root)
    assert _playlists(crashed) == vods, "byte for byte"
    summary = finished.recording_summary()
    assert summary is not None and _figures(recovered) == [asdict(summary)]
    await recover_sessions(LocalStorage(crashed), [SESSION], _record_into(again := []))
    assert _playlists(crashed) == vods and again == recovered, "the same result twice"


async def test_a_waiting_sequence_with_a_file_gone_is_left_out_with_a_discontinuity(
    tmp_path: Path,
) -> None:
    crashed = _Dropping(tmp_path / "crashed", {2})
    await _drive(crashed, Scenario(outage_from=3), outage=True)
    (crashed.root / PREFIX / "240p/240p-s7-seg-5.m4s").unlink()
    calls: list[RecoveredRecording] = []
    await recover_sessions(LocalStorage(crashed.root), [SESSION], _record_into(calls))
    finished = await _drive(_Dropping(tmp_path / "finished", {2, 5}), Scenario(dropped={2, 5}))
    await finished.finish()
    vods = _playlists(tmp_path / "finished")
    assert _playlists(crashed.root) == vods
    assert [s.discontinuity for s in m3u8.loads(vods["source"]).segments] == [
        False, False, True, True, True
    ]  # fmt: skip
    assert _figures(calls) == [asdict(finished.recording_summary())]


async def test_a_journal_from_before_queued_lines_still_recovers(tmp_path: Path) -> None:
    packager = await _drive(_Dropping(tmp_path, {2}), Scenario())
    journal = tmp_path / PREFIX / JOURNAL
    old = []
    for line in journal.read_text().splitlines():
        record = json.loads(line)
        if record["type"] in ("queued", "dropped"):
            continue
        record.pop("epoch", None)
        old.append(json.dumps(record) + "\n")
    journal.write_text("".join(old))
    calls: list[RecoveredRecording] = []
    await recover_sessions(LocalStorage(tmp_path), [SESSION], _record_into(calls))
    await packager.finish()
    assert _figures(calls) == [asdict(packager.recording_summary())]
    finished = await _drive(_Dropping(tmp_path / "finished", {2}), Scenario())
    await finished.finish()
    assert _playlists(tmp_path) == _playlists(tmp_path / "finished")


async def test_with_s3_a_recovered_recording_uploads_only_what_the_bucket_lacks(
    tmp_path: Path, s3_bucket: Bucket
) -> None:
    settings = S3Settings(
        bucket=s3_bucket.name,
        endpoint_url=s3_bucket.endpoint,
        addressing_style="path",
        public_base_url="https://cdn.example",
    )
    scenario = Scenario(dropped=set())
    storage = S3Storage(tmp_path / "media", settings)
    await storage.start()
    try:
        packager = await _drive(storage, scenario)
        assert await storage.flush(20)
    finally:
        await storage.close(5)  # killed: no finish
    released = storage.root / PREFIX / "source/source-s7-seg-0.m4s"
    assert not released.exists(), "left the window: only in the bucket now"
    # Spooled when the server was killed: on local disk, never uploaded.
    unsent = [f"{PREFIX}/{n}/{n}-s7-seg-{s}.m4s" for n in scenario.ladder for s in (1, 2)]
    unsent.append(f"{PREFIX}/240p/240p-s7-init-1.mp4")
    for relpath in unsent:
        (storage.root / relpath).write_bytes(b"spooled")
        s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key=relpath)

    finished = await _drive(LocalStorage(tmp_path / "finished"), scenario)
    await finished.finish()
    for run in range(2):
        puts: list[str] = []
        storage, calls = await _recover_on_s3(tmp_path / "media", settings, _record_url(puts))
        uploaded = sorted(url.split(f"/{s3_bucket.name}/", 1)[1] for url in puts)
        playlists = [f"{PREFIX}/{n}/index.m3u8" for n in scenario.ladder]
        expected = sorted((unsent if run == 0 else []) + [f"{PREFIX}/master.m3u8"])
        assert [u for u in uploaded if u not in playlists] == expected, run
        for relpath in unsent:
            assert s3_bucket.get(relpath) == b"spooled"
        for name, text in _playlists(tmp_path / "finished").items():
            assert s3_bucket.get(f"{PREFIX}/{name}/index.m3u8").decode() == text
        assert _figures(calls) == [asdict(finished.recording_summary())]
    assert JOURNAL not in str(s3_bucket.keys(PREFIX)), "the journal stays local"
    assert packager.recording_summary() == finished.recording_summary()


@pytest.mark.e2e
def test_a_server_catalogues_a_journaled_recording_an_earlier_run_did_not(tmp_path: Path) -> None:
    """An ended session with a journal and no VOD (its save failed, or a crash cut recovery
    short): the next start makes the VOD (a saved VOD is not looked at again: see
    test_sweep's media states)."""
    settings = make_settings(tmp_path / "data")
    store = Store(settings.database_url)
    channel, _ = store.create_channel("news", "News")
    assert channel.id is not None
    while (session := store.start_session(channel.id, recorded=True)).id != SESSION:
        pass
    store.end_unfinished_sessions()
    store.close()
    packager = asyncio.run(_drive(LocalStorage(settings.media_dir), Scenario(dropped=set())))
    summary = packager.recording_summary()
    assert summary is not None and session.id == SESSION
    server = ServerThread(settings).start()
    try:
        deadline = time.monotonic() + 10
        while not server.store.recordings() and time.monotonic() < deadline:
            time.sleep(0.05)
        [(recording, _, owner)] = server.store.recordings()
        assert (recording.session_id, owner.slug) == (SESSION, "news")
        assert (recording.segments, recording.duration_ms) == (
            summary.segments,
            summary.duration_ms,
        )
        assert recording.renditions == summary.renditions and recording.thumbnail
        vod = m3u8.loads((settings.media_dir / PREFIX / "source/index.m3u8").read_text())
        assert vod.playlist_type == "vod" and vod.is_endlist
    finally:
        server.stop()


def _s3_settings(bucket: Bucket, **overrides: Any) -> S3Settings:
    values = {"bucket": bucket.name, "endpoint_url": bucket.endpoint, "addressing_style": "path"}
    return S3Settings(**(values | {"retry_initial": 0.05, "retry_max": 0.2} | overrides))


def _media_files(root: Path) -> list[str]:
    """The segments and init segments under the recording's folder, as relpaths."""
    folder = root / PREFIX
    return sorted(
        p.relative_to(root).as_posix() for p in folder.rglob("*") if p.suffix in (".m4s", ".mp4")
    )


def _refuse_listing(**_: Any) -> None:
    error = {"Code": "AccessDenied", "Message": "Access Denied"}
    raise ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": 403}}, "List")


async def test_with_s3_refusing_to_list_a_recording_is_recovered_from_local_disk(
    tmp_path: Path, s3_bucket: Bucket, caplog: pytest.LogCaptureFixture
) -> None:
    """A credential that can put but not list: every recorded file on disk is sent again."""
    packager = await _drive(LocalStorage(tmp_path / "media"), Scenario(dropped=set()))
    storage = S3Storage(tmp_path / "media", _s3_settings(s3_bucket))
    await storage.start()
    storage.client.meta.events.register("before-call.s3.ListObjectsV2", _refuse_listing)
    calls: list[RecoveredRecording] = []
    try:
        with caplog.at_level(logging.ERROR):
            await asyncio.wait_for(recover_sessions(storage, [SESSION], _record_into(calls)), 20)
        assert await storage.flush(20)
    finally:
        await storage.close(5)
    assert _figures(calls) == [asdict(packager.recording_summary())]
    assert set(_media_files(storage.root)) <= set(s3_bucket.keys(PREFIX))
    assert "could not list what is published" in caplog.text and "s3:ListBucket" in caplog.text


async def test_with_s3_recovered_segments_are_never_given_up_for_spool_room(
    tmp_path: Path, s3_bucket: Bucket
) -> None:
    """More recorded MiB than the spool holds: recovery's uploads wait instead of dropping."""
    scenario = Scenario(ladder=["source"], dropped=set())
    packager = await _drive(LocalStorage(tmp_path / "media"), scenario)
    files = _media_files(tmp_path / "media")
    for relpath in files:
        if relpath.endswith(".m4s"):
            (tmp_path / "media" / relpath).write_bytes(b"s" * (4 * 1024 * 1024))
    settings = _s3_settings(s3_bucket, spool_max_mb=16, upload_concurrency=1)
    storage, calls = await _recover_on_s3(tmp_path / "media", settings, lambda **_: time.sleep(0.1))
    assert storage.uploads_dropped == 0
    assert set(files) <= set(s3_bucket.keys(PREFIX))
    assert _figures(calls) == [asdict(packager.recording_summary())]


class _Unpublishable(LocalStorage):
    """Nothing counts as published yet, and one recorded file cannot be published."""

    def __init__(self, root: Path, failing: str) -> None:
        super().__init__(root)
        self.failing = failing
        self.droppable: list[bool] = []

    async def published(self, prefix: str) -> set[str]:
        return set()

    async def publish_segment(self, relpath: str, *, droppable: bool = True) -> None:
        self.droppable.append(droppable)
        if relpath.endswith(self.failing):
            raise OSError(f"{relpath}: I/O error")
        await super().publish_segment(relpath)


async def test_a_recording_with_a_file_not_published_is_left_for_the_next_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    packager = await _drive(LocalStorage(tmp_path), Scenario(dropped=set()))
    live = _playlists(tmp_path)
    storage = _Unpublishable(tmp_path, "240p-s7-seg-3.m4s")
    calls: list[RecoveredRecording] = []
    with caplog.at_level(logging.ERROR, logger="vilokanam.packager.recovery"):
        await recover_sessions(storage, [SESSION], _record_into(calls))
    assert calls == [], "no VOD with a hole in the catalogue"
    assert "the next start retries" in caplog.text
    assert storage.droppable and not any(storage.droppable), "never given up for room"
    assert _playlists(tmp_path) == live, "the live playlists wait for the retry"
    await recover_sessions(LocalStorage(tmp_path), [SESSION], _record_into(calls))
    assert _figures(calls) == [asdict(packager.recording_summary())]


async def test_the_vod_playlists_are_rendered_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0.6 s a rendition for a 24 h journal: the loop keeps serving meanwhile."""
    storage = LocalStorage(tmp_path)
    await _drive(storage, Scenario(dropped=set()))
    threads: list[threading.Thread] = []
    render = JournaledRecording.playlists

    def playlists(recording: JournaledRecording) -> dict[str, str]:
        threads.append(threading.current_thread())
        return render(recording)

    monkeypatch.setattr(JournaledRecording, "playlists", playlists)
    calls: list[RecoveredRecording] = []
    await recover_sessions(storage, [SESSION], _record_into(calls))
    assert len(calls) == 1 and threads
    assert threading.current_thread() not in threads
