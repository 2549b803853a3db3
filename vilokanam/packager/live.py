"""Turns a transcode worker's events into published playlists for one stream session.

The worker writes segment files; this class publishes each segment, then the media playlist
that names it, then (once every rendition has a segment) the master playlist. Segments that
leave the window are deleted ``delete_margin`` segments later, so a player holding a slightly
old playlist still finds them.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from vilokanam.origin.storage import Storage
from vilokanam.packager.playlist import MediaPlaylist, SegmentEntry, Variant, render_master

log = logging.getLogger(__name__)

MASTER = "master.m3u8"


def media_playlist_path(rendition: str) -> str:
    return f"{rendition}/index.m3u8"


@dataclass
class _Rendition:
    name: str
    playlist: MediaPlaylist
    info: dict[str, Any] = field(default_factory=dict)
    init_uri: str | None = None
    epoch_of_last_segment: int | None = None
    bits: int = 0
    seconds: float = 0.0
    peak_bitrate: int = 0
    pending_delete: deque[str] = field(default_factory=deque)


@dataclass
class _Epoch:
    number: int
    wallclock: datetime
    media_start: float
    """Source timestamp (s) that was being fed at ``wallclock``: maps worker times to PDT."""


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
    ) -> None:
        self.prefix = prefix.rstrip("/")
        self.storage = storage
        self.segment_duration = segment_duration
        self.window = window
        self.delete_margin = delete_margin
        self.on_segment = on_segment
        """Called once per sequence, after every rendition's playlist lists it."""
        self.renditions: dict[str, _Rendition] = {}
        self.ladder: list[str] = []
        self.next_sequence = 0
        """First sequence number for the next worker: one past the last published segment."""
        self._pending: dict[int, dict[str, dict[str, Any]]] = {}
        """Segment events by sequence, held until every rendition has that sequence."""
        self._pdt_end: datetime | None = None
        self.master_written = False
        self.ended = False
        self._epoch: _Epoch | None = None
        self._master_text = ""

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
            self._path(event["path"])
            for events in self._pending.values()
            for event in events.values()
        ]
        if dropped:
            log.warning(
                "%s: dropping unfinished sequence(s) %s", self.prefix, sorted(self._pending)
            )
            await self.storage.delete(dropped)
        self._pending.clear()

    async def handle(self, event: dict[str, Any]) -> None:
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
                await self.storage.publish_segment(self._path(event["init"]))
        elif kind == "segment":
            self._pending.setdefault(int(event["sequence"]), {})[event["rendition"]] = event
            await self._publish_complete_sequences()
        elif kind == "warning":
            log.warning("%s: transcoder: %s", self.prefix, event.get("message"))
        elif kind == "stats":
            log.debug("%s: transcoder stats %s", self.prefix, event)

    def _rendition(self, name: str) -> _Rendition:
        if name not in self.renditions:
            playlist = MediaPlaylist(target_duration=self.segment_duration, window=self.window)
            self.renditions[name] = _Rendition(name, playlist)
        return self.renditions[name]

    async def _publish_complete_sequences(self) -> None:
        """Publish, in order, each sequence that every rendition of the ladder has written."""
        names = self.ladder or list(self.renditions)
        while self._pending:
            sequence = min(self._pending)
            events = self._pending[sequence]
            if not all(name in events for name in names):
                return
            del self._pending[sequence]
            self.next_sequence = max(self.next_sequence, sequence + 1)
            for name in names:
                await self._add_segment(events[name])
            await self._maybe_write_master()
            if self.on_segment is not None:
                await self.on_segment(sequence)

    async def _add_segment(self, event: dict[str, Any]) -> None:
        rendition = self._rendition(event["rendition"])
        epoch = self._epoch or _Epoch(0, datetime.now(UTC), float(event["start"]))
        sequence = int(event["sequence"])
        await self.storage.publish_segment(self._path(event["path"]))
        entry = SegmentEntry(
            sequence=sequence,
            uri=_relative_to_rendition(event["path"], rendition.name) or event["path"],
            duration=float(event["duration"]),
            program_date_time=epoch.wallclock
            + timedelta(seconds=float(event["start"]) - epoch.media_start),
            init_uri=rendition.init_uri,
            discontinuity=(
                rendition.epoch_of_last_segment is not None
                and rendition.epoch_of_last_segment != epoch.number
            ),
        )
        rendition.epoch_of_last_segment = epoch.number
        segment_end = entry.program_date_time + timedelta(seconds=entry.duration)
        self._pdt_end = max(self._pdt_end or segment_end, segment_end)
        removed = rendition.playlist.add(entry)
        bits = int(event.get("size", 0)) * 8
        rendition.bits += bits
        rendition.seconds += entry.duration
        if entry.duration > 0:
            rendition.peak_bitrate = max(rendition.peak_bitrate, int(bits / entry.duration))
        await self.storage.publish_playlist(
            self._path(media_playlist_path(rendition.name)), rendition.playlist.render()
        )
        await self._delete_expired(rendition, removed)

    async def _delete_expired(self, rendition: _Rendition, removed: list[SegmentEntry]) -> None:
        rendition.pending_delete.extend(self._path(f"{rendition.name}/{e.uri}") for e in removed)
        doomed = []
        while len(rendition.pending_delete) > self.delete_margin:
            doomed.append(rendition.pending_delete.popleft())
        if doomed:
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
            variants.append(
                Variant(
                    name=name,
                    uri=media_playlist_path(name),
                    bandwidth=peak,
                    average_bandwidth=average or peak,
                    codecs=info.get("codecs") or "",
                    width=info.get("width"),
                    height=info.get("height"),
                    frame_rate=info.get("frame_rate"),
                )
            )
        return variants

    async def _maybe_write_master(self) -> None:
        """Publish the master once every rendition is playable; refresh it as bitrates settle."""
        names = self.ladder or list(self.renditions)
        if not names or any(not self.renditions[n].playlist.segments for n in names):
            return
        text = render_master(self.variants())
        if not self.master_written or (self.next_sequence % 10 == 0 and text != self._master_text):
            await self.storage.publish_playlist(self._path(MASTER), text)
            self.master_written = True
            self._master_text = text

    async def finish(self) -> None:
        """The stream ended: every playlist gets EXT-X-ENDLIST."""
        self.ended = True
        for rendition in self.renditions.values():
            if rendition.playlist.segments and not rendition.playlist.ended:
                rendition.playlist.ended = True
                await self.storage.publish_playlist(
                    self._path(media_playlist_path(rendition.name)), rendition.playlist.render()
                )


def _relative_to_rendition(path: str | None, rendition: str) -> str | None:
    """Worker paths are ``{rendition}/file``; media playlists live in that folder."""
    if not path:
        return None
    return path.removeprefix(f"{rendition}/")
