"""Turns a transcode worker's events into published playlists for one stream session.

The worker writes segment files; once every rendition has a sequence, this class starts
publishing its files (an upload, for S3) at once and without waiting, so the worker's events
keep flowing; a lister task then adds sequences to the media playlists strictly in order, each
only after all of its files are published, then writes the master playlist (once every
rendition has a segment). Segments that leave the window are deleted ``delete_margin`` segments
later, so a player holding a slightly old playlist still finds them. With ``recording`` on,
nothing is deleted: at the end each media playlist becomes the whole stream as a VOD, and a
journal (:mod:`vilokanam.packager.recording`) lets a crash still end in that VOD.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from vilokanam.origin.storage import SegmentDropped, Storage
from vilokanam.packager.playlist import MediaPlaylist, SegmentEntry, Variant, render_master
from vilokanam.packager.recording import (
    JOURNAL,
    JournalWriter,
    RecordingSummary,
    summarize,
    vod_playlist,
)

log = logging.getLogger(__name__)

MASTER = "master.m3u8"
THUMBNAIL = "thumbnail.jpg"


def media_playlist_path(rendition: str) -> str:
    return f"{rendition}/index.m3u8"


@dataclass
class _Rendition:
    name: str
    playlist: MediaPlaylist
    info: dict[str, Any] = field(default_factory=dict)
    init_uri: str | None = None
    init_upload: asyncio.Future[None] | None = None
    epoch_of_last_segment: int | None = None
    bits: int = 0
    seconds: float = 0.0
    size_bytes: int = 0
    peak_bitrate: int = 0
    pending_delete: deque[str] = field(default_factory=deque)
    archive: list[SegmentEntry] = field(default_factory=list)
    """Every segment listed (recording only): the VOD playlist."""


@dataclass
class _Epoch:
    number: int
    wallclock: datetime
    media_start: float
    """Source timestamp (s) that was being fed at ``wallclock``: maps worker times to PDT."""


@dataclass
class _Sequence:
    """A sequence every rendition has written, waiting for its files to be published."""

    number: int
    events: dict[str, dict[str, Any]]
    epoch: _Epoch
    uploads: list[asyncio.Future[None]]
    init_uris: dict[str, str | None]
    """Each rendition's init segment when the sequence was written (a later worker's init
    segment may have arrived by the time it is listed)."""


class LivePackager:
    """Playlist state of one stream session, fed by worker events (one epoch per worker)."""

    def __init__(
        self,
        prefix: str,
        storage: Storage,
        *,
        segment_duration: float,
        window: int,
        delete_margin: int,
        on_segment: Callable[[int], Awaitable[None]] | None = None,
        recording: bool = False,
        drain_timeout: float = 120.0,
    ) -> None:
        self.prefix = prefix.rstrip("/")
        self.storage = storage
        self.segment_duration = segment_duration
        self.window = window
        self.delete_margin = delete_margin
        self.on_segment = on_segment
        """Called once per sequence, after every rendition's playlist lists it."""
        self.recording = recording
        self.drain_timeout = drain_timeout
        """At the end, how long to wait for files still being published (S3 down)."""
        self.renditions: dict[str, _Rendition] = {}
        self.ladder: list[str] = []
        self.next_sequence = 0
        """First sequence number for the next worker: one past the last complete sequence."""
        self.dropped = 0
        """Sequences given up because their files could not be published."""
        self.thumbnail = False
        """Whether a thumbnail was published."""
        self._pending: dict[int, dict[str, dict[str, Any]]] = {}
        """Segment events by sequence, held until every rendition has that sequence."""
        self._queue: deque[_Sequence] = deque()
        self._lister: asyncio.Task[None] | None = None
        self._gap = False
        """A sequence was dropped: the next one listed starts with a discontinuity."""
        self._pdt_end: datetime | None = None
        self.master_written = False
        self.ended = False
        self._epoch: _Epoch | None = None
        self._master_text = ""
        self._side_uploads: set[asyncio.Future[None]] = set()
        self._journal = (
            JournalWriter(storage.root / self.prefix / JOURNAL, self.prefix) if recording else None
        )

    def _path(self, relpath: str) -> str:
        return f"{self.prefix}/{relpath}"

    def start_epoch(
        self, number: int, media_start: float, wallclock: datetime | None = None
    ) -> None:
        """A worker starts; its segments map to wall-clock time from this moment.

        Never before the end of what is already listed: PROGRAM-DATE-TIME only moves forward,
        even after a publisher that sent faster than real time.
        """
        start = wallclock or datetime.now(UTC)
        if self._pdt_end is not None:
            start = max(start, self._pdt_end)
        self._epoch = _Epoch(number, start, media_start)

    async def end_epoch(self) -> None:
        """The worker is gone: drop sequences that not every rendition finished.

        A crash can leave the source rendition a segment ahead of the rungs; publishing it in
        one rendition only would shift that playlist's numbering against the others.
        """
        dropped = [
            self.storage.root / self._path(event["path"])
            for events in self._pending.values()
            for event in events.values()
        ]
        if dropped:
            log.warning(
                "%s: dropping unfinished sequence(s) %s", self.prefix, sorted(self._pending)
            )
            # Never published, so only the local files: a remote delete of the same key could
            # land after the next worker's upload of that (reused) sequence number.
            await asyncio.to_thread(lambda: [path.unlink(missing_ok=True) for path in dropped])
        self._pending.clear()

    async def handle(self, event: dict[str, Any]) -> None:
        """One worker event; returns without waiting for uploads."""
        kind = event.get("type")
        if kind == "ladder":
            self.ladder = list(event["renditions"])
            for name in self.ladder:
                self._rendition(name)
        elif kind == "rendition":
            rendition = self._rendition(event["name"])
            rendition.info = event
            rendition.init_uri = _relative_to_rendition(event.get("init"), event["name"])
            if event.get("init"):
                rendition.init_upload = self._publish(event["init"])
        elif kind == "segment":
            self._pending.setdefault(int(event["sequence"]), {})[event["rendition"]] = event
            self._queue_complete_sequences()
        elif kind == "thumbnail":
            self._publish_thumbnail(str(event.get("path") or THUMBNAIL))
        elif kind == "warning":
            log.warning("%s: transcoder: %s", self.prefix, event.get("message"))
        elif kind == "stats":
            log.debug("%s: transcoder stats %s", self.prefix, event)

    def _rendition(self, name: str) -> _Rendition:
        if name not in self.renditions:
            playlist = MediaPlaylist(target_duration=self.segment_duration, window=self.window)
            self.renditions[name] = _Rendition(name, playlist)
        return self.renditions[name]

    def _publish(self, relpath: str) -> asyncio.Future[None]:
        return asyncio.ensure_future(self.storage.publish_segment(self._path(relpath)))

    def _publish_thumbnail(self, relpath: str) -> None:
        upload = self._publish(relpath)
        self._side_uploads.add(upload)

        def done(task: asyncio.Future[None]) -> None:
            self._side_uploads.discard(task)
            if task.cancelled():
                return
            if task.exception() is None:
                if self._journal is not None and not self.thumbnail:
                    self._journal.thumbnail()
                self.thumbnail = True
            else:
                log.warning("%s: thumbnail not published: %s", self.prefix, task.exception())

        upload.add_done_callback(done)

    def _queue_complete_sequences(self) -> None:
        """Start publishing, in order, each sequence that every rendition has written."""
        names = self.ladder or list(self.renditions)
        while self._pending:
            number = min(self._pending)
            events = self._pending[number]
            if not all(name in events for name in names):
                return
            del self._pending[number]
            self.next_sequence = max(self.next_sequence, number + 1)
            uploads = [self._publish(events[name]["path"]) for name in names]
            for name in names:  # a playlist naming an init segment waits for it too
                init = self.renditions[name].init_upload
                if init is not None:
                    uploads.append(init)
            epoch = self._epoch or _Epoch(0, datetime.now(UTC), float(events[names[0]]["start"]))
            self._epoch = epoch
            last = max(float(events[n]["start"]) + float(events[n]["duration"]) for n in names)
            end = epoch.wallclock + timedelta(seconds=last - epoch.media_start)
            self._pdt_end = max(self._pdt_end or end, end)  # known now, listed or not
            inits = {n: self.renditions[n].init_uri for n in names}
            item = _Sequence(number, {n: events[n] for n in names}, epoch, uploads, inits)
            self._queue.append(item)
            self._journal_queued(item)
        if self._queue and (self._lister is None or self._lister.done()):
            self._lister = asyncio.create_task(self._list_in_order(), name=f"{self.prefix}-list")

    async def _list_in_order(self) -> None:
        while self._queue:
            item = self._queue[0]
            results = await asyncio.gather(*item.uploads, return_exceptions=True)
            self._queue.popleft()
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                await self._drop(item, failures[0])
                continue
            try:
                gap, self._gap = self._gap, False
                try:
                    for name, event in item.events.items():
                        init_uri = item.init_uris.get(name)
                        await self._add_segment(event, item.epoch, init_uri, after_gap=gap)
                    await self._maybe_write_master()
                finally:  # what the archive holds now is what the VOD will hold
                    self._journal_sequence(item)
                if self.on_segment is not None:
                    await self.on_segment(item.number)
            except Exception:
                log.exception("%s: listing sequence %d failed", self.prefix, item.number)

    def _journal_queued(self, item: _Sequence) -> None:
        """Journal the sequence's entries as listing will make them: a crash before it is
        listed (S3 down) still leaves its files, and the journal, on local disk."""
        if self._journal is None:
            return
        segments = {}
        for name, event in item.events.items():
            entry = _entry(event, name, item.epoch, item.init_uris.get(name), discontinuity=False)
            segments[name] = (entry, int(event.get("size", 0)))
        ladder = list(self.ladder or self.renditions)
        self._journal.queued(
            item.number, item.epoch.number, segments, self.segment_duration, ladder
        )

    def _journal_sequence(self, item: _Sequence) -> None:
        """Journal the sequence's archived entries (what the VOD holds now)."""
        if self._journal is None:
            return
        segments = {}
        for name, event in item.events.items():
            archive = self.renditions[name].archive
            if archive and archive[-1].sequence == item.number:
                segments[name] = (archive[-1], int(event.get("size", 0)))
        ladder = list(self.ladder or self.renditions)
        self._journal.sequence(
            item.number, item.epoch.number, segments, self.segment_duration, ladder
        )

    async def _drop(self, item: _Sequence, reason: BaseException) -> None:
        """Files of a sequence could not be published: leave it out of every playlist."""
        self.dropped += 1
        self._gap = True
        how = "S3 spool full" if isinstance(reason, SegmentDropped) else repr(reason)
        log.error("%s: sequence %d left out of the playlists (%s)", self.prefix, item.number, how)
        if self._journal is not None:
            self._journal.dropped(item.number)
        try:
            await self.storage.delete([self._path(e["path"]) for e in item.events.values()])
        except Exception as exc:
            log.warning("%s: removing dropped sequence %d: %s", self.prefix, item.number, exc)

    async def wait_listed(self, timeout: float | None = None) -> bool:
        """Wait until every complete sequence is listed (or dropped); False on timeout."""
        lister = self._lister
        if lister is None or lister.done():
            return True
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(lister)
        except TimeoutError:
            return False
        return True

    async def _add_segment(
        self,
        event: dict[str, Any],
        epoch: _Epoch,
        init_uri: str | None,
        *,
        after_gap: bool = False,
    ) -> None:
        rendition = self._rendition(event["rendition"])
        entry = _entry(
            event,
            rendition.name,
            epoch,
            init_uri,
            discontinuity=after_gap
            or (
                rendition.epoch_of_last_segment is not None
                and rendition.epoch_of_last_segment != epoch.number
            ),
        )
        rendition.epoch_of_last_segment = epoch.number
        removed = rendition.playlist.add(entry)
        if self.recording:
            rendition.archive.append(entry)
        size = int(event.get("size", 0))
        bits = size * 8
        rendition.size_bytes += size
        rendition.bits += bits
        rendition.seconds += entry.duration
        if entry.duration > 0:
            rendition.peak_bitrate = max(rendition.peak_bitrate, int(bits / entry.duration))
        await self.storage.publish_playlist(
            self._path(media_playlist_path(rendition.name)), rendition.playlist.render()
        )
        await self._expire(rendition, removed)

    async def _expire(self, rendition: _Rendition, removed: list[SegmentEntry]) -> None:
        """Segments that left the window: deleted, or (recording) only their local copy."""
        rendition.pending_delete.extend(self._path(f"{rendition.name}/{e.uri}") for e in removed)
        doomed = []
        while len(rendition.pending_delete) > self.delete_margin:
            doomed.append(rendition.pending_delete.popleft())
        if not doomed:
            return
        if self.recording:
            # Kept remotely; locally only while this origin is where players get them.
            if self.storage.public_url(doomed[0]) is not None:
                await self.storage.release_local(doomed)
        else:
            await self.storage.delete(doomed)

    def variants(self) -> list[Variant]:
        variants = []
        for name in self.ladder or list(self.renditions):
            rendition = self.renditions.get(name)
            if rendition is None or not rendition.info or not rendition.playlist.segments:
                continue
            info = rendition.info
            average = int(rendition.bits / rendition.seconds) if rendition.seconds else 0
            nominal = int(info.get("bandwidth") or 0)
            peak = max(nominal, rendition.peak_bitrate, average)
            path = media_playlist_path(name)
            variants.append(
                Variant(
                    name=name,
                    uri=self.storage.public_url(self._path(path)) or path,
                    bandwidth=peak,
                    average_bandwidth=average or peak,
                    codecs=info.get("codecs") or "",
                    width=info.get("width"),
                    height=info.get("height"),
                    frame_rate=info.get("frame_rate"),
                )
            )
        return variants

    async def _maybe_write_master(self, force: bool = False) -> None:
        """Publish the master once every rendition is playable; refresh it as bitrates settle."""
        names = self.ladder or list(self.renditions)
        if not names or any(not self.renditions[n].playlist.segments for n in names):
            return
        text = render_master(self.variants())
        refresh = self.next_sequence % 10 == 0 or force
        if not self.master_written or (refresh and text != self._master_text):
            await self.storage.publish_playlist(self._path(MASTER), text)
            self.master_written = True
            self._master_text = text

    async def finish(self) -> None:
        """The stream ended: every playlist gets EXT-X-ENDLIST (recording: the whole stream).

        Files still being published get ``drain_timeout`` seconds; what is not published by
        then is left out (and logged), so an unreachable S3 cannot hold the channel forever.
        """
        self.ended = True
        deadline = asyncio.get_running_loop().time() + self.drain_timeout

        def left() -> float:
            return max(0.0, deadline - asyncio.get_running_loop().time())

        if not await self.wait_listed(left()):
            log.error(
                "%s: %d sequence(s) still not published after %.0f s; ending without them",
                self.prefix,
                len(self._queue),
                self.drain_timeout,
            )
            if self._lister is not None:
                self._lister.cancel()
                await asyncio.gather(self._lister, return_exceptions=True)
            self._queue.clear()
        for rendition in self.renditions.values():
            vod = self.recording and bool(rendition.archive)
            if vod:
                target = rendition.playlist.target_duration
                rendition.playlist = vod_playlist(target, rendition.archive)
            if rendition.playlist.segments and (vod or not rendition.playlist.ended):
                rendition.playlist.ended = True
                await self.storage.publish_playlist(
                    self._path(media_playlist_path(rendition.name)), rendition.playlist.render()
                )
        if self.recording:
            await self._maybe_write_master(force=True)  # final average bitrates
            if self._side_uploads:
                await asyncio.wait(list(self._side_uploads), timeout=left())
            if not await self.storage.flush(left(), self.prefix):
                log.warning("%s: the VOD's playlists may not all be stored yet", self.prefix)

    def recording_summary(self) -> RecordingSummary | None:
        """The VOD this stream left (None: not recording or nothing listed)."""
        if not self.recording:
            return None
        names = [n for n in self.ladder or list(self.renditions) if n in self.renditions]
        return summarize(
            names,
            {name: rendition.archive for name, rendition in self.renditions.items()},
            {name: rendition.size_bytes for name, rendition in self.renditions.items()},
            self.thumbnail,
        )


def _entry(
    event: dict[str, Any],
    rendition: str,
    epoch: _Epoch,
    init_uri: str | None,
    *,
    discontinuity: bool,
) -> SegmentEntry:
    """A segment event's playlist entry."""
    return SegmentEntry(
        sequence=int(event["sequence"]),
        uri=_relative_to_rendition(event["path"], rendition) or event["path"],
        duration=float(event["duration"]),
        program_date_time=epoch.wallclock
        + timedelta(seconds=float(event["start"]) - epoch.media_start),
        init_uri=init_uri,
        discontinuity=discontinuity,
    )


def _relative_to_rendition(path: str | None, rendition: str) -> str | None:
    """Worker paths are ``{rendition}/file``; media playlists live in that folder."""
    if not path:
        return None
    return path.removeprefix(f"{rendition}/")
