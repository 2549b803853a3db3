"""Owns the life of every live stream: publish auth, worker processes, reconnects, the end.

One :class:`LiveStream` per stream session. A publisher that drops and comes back with the same
key within ``rtmp.reconnect_window`` continues the same session and playlists (the packager marks
the join with EXT-X-DISCONTINUITY); a worker that crashes is restarted the same way.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Reversible
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from vilokanam.config import Settings
from vilokanam.ingest import flv
from vilokanam.origin.storage import Storage
from vilokanam.origin.vod import catalogue, records
from vilokanam.packager.live import MASTER, LivePackager
from vilokanam.packager.playlist import SegmentEntry
from vilokanam.store import Channel, SessionNotFound, SessionState, Store
from vilokanam.store.models import utcnow
from vilokanam.transcode.supervisor import WorkerGone, WorkerProcess

log = logging.getLogger(__name__)


class PublishRefused(Exception):
    """Publishing is not allowed; the message is the reason given to the client and the log."""

    def __init__(self, reason: str, channel: Channel | None = None) -> None:
        super().__init__(reason)
        self.channel = channel


@dataclass(eq=False)
class Publisher:
    """The connection currently publishing a stream; ``kick`` closes it."""

    peer: str
    kick: Callable[[str], None]
    app: str = ""
    query: str = ""
    """What followed ``?`` in the publish name (``KEY?token=…``), passed to the publish hook."""


@dataclass(frozen=True)
class PublishAttempt:
    """What the publish auth hook is told about a publish the stream key already allowed."""

    channel: Channel
    peer: str
    app: str
    query: str


PublishAuthorizer = Callable[[PublishAttempt], Awaitable[str | None]]
"""Returns None to allow a publish, or the reason it is refused."""


class StreamEvents(Protocol):
    """Lifecycle notifications (webhooks, metrics). Must return at once: never block ingest."""

    def stream_started(self, stream: LiveStream) -> None: ...
    def stream_ended(self, stream: LiveStream) -> None: ...
    def publish_rejected(self, peer: str, reason: str, channel: Channel | None) -> None: ...


class NoEvents:
    def stream_started(self, stream: LiveStream) -> None:
        pass

    def stream_ended(self, stream: LiveStream) -> None:
        pass

    def publish_rejected(self, peer: str, reason: str, channel: Channel | None) -> None:
        pass


class RateMeter:
    """Bytes per second over the last ``window`` seconds (ingest bitrate)."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self.total = 0
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, size: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.total += size
        self._samples.append((now, size))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - self.window:
            self._samples.popleft()

    def per_second(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._trim(now)
        return sum(size for _, size in self._samples) / self.window


LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
"""Segment latency histogram bounds (s): nginx-rtmp lists passthrough at 0.05, a ladder at 0.12."""


class Distribution:
    """Counts of observations per bucket (``value <= bound``; the last bucket is +Inf)."""

    def __init__(self, bounds: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


@dataclass
class StreamStats:
    """Live figures of one stream, for the API and /metrics."""

    started_at: datetime = field(default_factory=utcnow)
    started_monotonic: float = field(default_factory=time.monotonic)
    ingest: RateMeter = field(default_factory=RateMeter)
    renditions: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``rendition`` events from the worker by name: width, height, frame_rate, bandwidth…"""
    transcode: dict[str, Any] = field(default_factory=dict)
    """The latest ``stats`` event from the worker (fps, speed; per rung under ``rungs``)."""
    dropped_frames: int = 0
    """Media messages dropped by ingest (waiting for a keyframe after a worker restart)."""
    viewers: int = 0
    peak_viewers: int = 0
    segment_latency: Distribution = field(default_factory=Distribution)
    """Seconds from when a segment's last media was due (its PROGRAM-DATE-TIME end) to listing."""
    publisher_left_at: datetime | None = None
    """When the last publisher left: the stream's end if nobody returns in the window."""

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_monotonic

    def note_viewers(self, count: int) -> None:
        self.viewers = count
        self.peak_viewers = max(self.peak_viewers, count)

    def note_listed(self, entries: Reversible[SegmentEntry], first_new: int) -> None:
        """Segments ``first_new``… of a playlist were just listed: observe their latency.

        Each is due at its PROGRAM-DATE-TIME end (epoch wall start + media end - media start);
        a publisher ahead of real time (a burst) would give negative values: they count as 0.
        """
        now = datetime.now(UTC)
        for entry in reversed(entries):
            if entry.sequence < first_new:
                return
            due = entry.program_date_time + timedelta(seconds=entry.duration)
            self.segment_latency.observe(max(0.0, (now - due).total_seconds()))


class LiveStream:
    """One stream session: feeds the worker, restarts it, and drives the packager."""

    def __init__(
        self, manager: StreamManager, channel: Channel, session_id: int, *, recording: bool
    ) -> None:
        self.manager = manager
        self.settings = manager.settings
        self.channel = channel
        self.session_id = session_id
        self.prefix = f"streams/{session_id}"
        self.name = f"{channel.slug}#{session_id}"
        self.publisher: Publisher | None = None
        self.stats = StreamStats()
        self.segment_durations: dict[int, float] = {}
        self.durations_ms: list[int] = []
        """Every sequence's duration in ms (0: never finished), saved with the session."""
        self.end_reason = "publisher left"
        self.recording = recording
        """Whether this session is kept as a VOD when it ends (decided once, at its start)."""
        self.packager = LivePackager(
            self.prefix,
            manager.storage,
            segment_duration=self.settings.hls.segment_duration,
            window=self.settings.hls.window,
            delete_margin=self.settings.hls.delete_margin,
            on_segment=self._on_segment,
            recording=self.recording,
            drain_timeout=self.settings.s3.shutdown_grace if manager.storage.kind == "s3" else 30,
        )
        self.worker: WorkerProcess | None = None
        self.epoch = -1
        self.restarts = 0
        self.segments = 0
        self.ended = False
        self._end_timer: asyncio.TimerHandle | None = None
        self._finishing: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # What a fresh worker needs before media: stream metadata and decoder configurations.
        self._metadata: bytes | None = None
        self._sequence_headers: dict[int, bytes] = {}
        self._need_keyframe = False

    # -- publisher side -------------------------------------------------------
    async def feed(self, tag_type: int, timestamp: int, body: bytes) -> None:
        """Forward one RTMP media/data message to the worker (starting it if needed)."""
        async with self._lock:
            if self.ended:
                return
            self.stats.ingest.add(len(body))
            data = flv.tag(tag_type, timestamp, body)
            if tag_type == flv.TAG_SCRIPT:
                self._metadata = body
            elif flv.is_sequence_header(tag_type, body):
                self._sequence_headers[tag_type] = body
            elif self._need_keyframe:
                has_video = tag_type == flv.TAG_VIDEO or flv.TAG_VIDEO in self._sequence_headers
                if has_video and not (tag_type == flv.TAG_VIDEO and flv.is_keyframe(body)):
                    self.stats.dropped_frames += tag_type == flv.TAG_VIDEO
                    return  # a restarted worker begins at a keyframe
                self._need_keyframe = False
            if self.worker is None:
                if tag_type == flv.TAG_SCRIPT:
                    return  # sent with the header once the first media message arrives
                await self._start_worker(timestamp, first_data=data, is_config=tag_type)
                return
            try:
                await self.worker.write(data)
            except WorkerGone as exc:
                log.error("%s: %s", self.name, exc)
                await self._worker_crashed()

    async def _start_worker(self, timestamp: int, first_data: bytes, is_config: int) -> None:
        if self.restarts > self.settings.transcode.max_restarts:
            return
        self.epoch += 1
        spec = self.manager.worker_spec(
            self.prefix,
            self.session_id,
            self.epoch,
            self.packager.next_sequence,
            ladder=self.channel.ladder,
        )
        worker = WorkerProcess(spec, self._on_worker_event, name=f"{self.name}/e{self.epoch}")
        self.packager.start_epoch(self.epoch, media_start=timestamp / 1000)
        await worker.start()
        self.worker = worker
        has_video = flv.TAG_VIDEO in self._sequence_headers or is_config == flv.TAG_VIDEO
        has_audio = flv.TAG_AUDIO in self._sequence_headers or is_config == flv.TAG_AUDIO
        if self._metadata is not None:
            has_video = has_video or _metadata_mentions(self._metadata, b"videocodecid")
            has_audio = has_audio or _metadata_mentions(self._metadata, b"audiocodecid")
        preamble = flv.file_header(has_audio=has_audio, has_video=has_video)
        if self._metadata is not None:
            preamble += flv.tag(flv.TAG_SCRIPT, 0, self._metadata)
        for tag_type, body in self._sequence_headers.items():
            if flv.tag(tag_type, timestamp, body) != first_data:
                preamble += flv.tag(tag_type, timestamp, body)
        try:
            await worker.write(preamble + first_data)
        except WorkerGone as exc:
            log.error("%s: %s", self.name, exc)
            await self._worker_crashed()

    async def _on_worker_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "rendition":
            self.stats.renditions[str(event["name"])] = event
        elif kind == "stats":
            self.stats.transcode = event
        elif kind == "segment":
            self._note_duration(int(event["sequence"]), float(event["duration"]))
        await self.packager.handle(event)

    def _note_duration(self, sequence: int, duration: float) -> None:
        """Remember a sequence's duration for billing (the same in every rendition)."""
        self.segment_durations.setdefault(sequence, duration)
        if sequence >= len(self.durations_ms):
            self.durations_ms.extend([0] * (sequence + 1 - len(self.durations_ms)))
        if not self.durations_ms[sequence]:
            self.durations_ms[sequence] = max(0, round(duration * 1000))
        if len(self.segment_durations) > DURATIONS_KEPT:
            for old in sorted(self.segment_durations)[: len(self.segment_durations) // 2]:
                del self.segment_durations[old]

    def _forget_unlisted_durations(self) -> None:
        """The next worker reuses the numbers of sequences the last one left unfinished."""
        first_free = self.packager.next_sequence
        for sequence in [s for s in self.segment_durations if s >= first_free]:
            del self.segment_durations[sequence]
        del self.durations_ms[first_free:]

    def segment_duration(self, sequence: int) -> float | None:
        """Seconds of content in media sequence ``sequence`` (None: unknown or long gone)."""
        return self.segment_durations.get(sequence)

    async def _worker_crashed(self) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.kill()
            await worker.wait(timeout=5)
        await self.packager.end_epoch()
        self._forget_unlisted_durations()
        self.restarts += 1
        self._need_keyframe = True
        if self.restarts > self.settings.transcode.max_restarts:
            log.error(
                "%s: transcode worker failed %d times; ending the stream "
                "(check the publisher's codec settings: H.264 + AAC)",
                self.name,
                self.restarts,
            )
            publisher, self.publisher = self.publisher, None
            if publisher is not None:
                publisher.kick("transcoder failed")
            self.end_reason = "transcoder failed"
            self.schedule_end(0)  # runs as its own task, once ``feed`` has released the lock
        else:
            log.warning("%s: restarting transcode worker (%d)", self.name, self.restarts)

    async def stop_worker(self) -> None:
        """EOF to the worker; wait until it has flushed its last segments."""
        async with self._lock:
            worker, self.worker = self.worker, None
            if worker is None:
                return
            await worker.close_input()
            code = await worker.wait()
            await self.packager.end_epoch()
            self._forget_unlisted_durations()
            if code != 0 and not worker.ended_cleanly:
                log.warning("%s: transcode worker exited with code %s", self.name, code)
            self._need_keyframe = True

    def new_publisher(self, publisher: Publisher) -> None:
        """A different connection continues this stream: its codecs may differ, so forget ours."""
        self.publisher = publisher
        self.end_reason = "publisher left"
        self.stats.publisher_left_at = None
        self._metadata = None
        self._sequence_headers.clear()
        self._need_keyframe = False
        self.restarts = 0

    # -- lifecycle ------------------------------------------------------------
    async def _on_segment(self, sequence: int) -> None:
        """Sequence ``sequence`` is listed in every rendition's playlist."""
        first = self.segments == 0
        self.segments = sequence + 1
        rendition = next(iter(self.packager.renditions.values()), None)
        if rendition is not None:
            self.stats.note_listed(rendition.playlist.segments, sequence)
        if first or sequence % 30 == 0:
            try:
                await asyncio.to_thread(
                    self.manager.store.update_session,
                    self.session_id,
                    state=SessionState.LIVE,
                    segments=self.segments,
                    peak_viewers=self.stats.peak_viewers,
                    durations_ms=self.durations_ms,
                )
            except Exception as exc:  # the end writes the figures again
                log.warning("%s: could not record progress: %s", self.name, exc)
            if first:
                log.info("%s: live at /live/%s/%s", self.name, self.channel.slug, MASTER)

    def schedule_end(self, delay: float) -> None:
        self.cancel_end()
        loop = asyncio.get_running_loop()
        self._end_timer = loop.call_later(delay, lambda: asyncio.ensure_future(self.finish()))

    def cancel_end(self) -> None:
        if self._end_timer is not None:
            self._end_timer.cancel()
            self._end_timer = None

    @property
    def finishing(self) -> bool:
        return self._finishing is not None

    async def finish(self) -> None:
        """End the session: ENDLIST on every playlist, ``ended`` in the store."""
        if self._finishing is None:
            self._finishing = asyncio.ensure_future(self._finish())
        await self._finishing

    async def _finish(self) -> None:
        """Never raises: a failing step is logged and the rest still runs, so the channel is
        free for its next publish even when the store or storage had a bad moment."""
        self.cancel_end()
        for step in (self.stop_worker, self.packager.finish):
            try:
                await step()
            except Exception:
                log.exception("%s: ending the stream: %s failed", self.name, step.__name__)
        self.ended = True
        try:
            await self._record_end()
            await self._save_recording()
        finally:
            self.manager.forget(self)
            self.manager.events.stream_ended(self)
        log.info("%s: ended after %d segments (%s)", self.name, self.segments, self.end_reason)

    async def _record_end(self) -> None:
        """Write the end to the store; if that keeps failing, the next start ends the session
        (end_unfinished_sessions)."""
        ended_at = self.stats.publisher_left_at or utcnow()
        await self._store_write(
            "the end of the stream",
            functools.partial(
                self.manager.store.update_session,
                self.session_id,
                state=SessionState.ENDED,
                segments=self.segments,
                peak_viewers=self.stats.peak_viewers,
                end_reason=self.end_reason,
                at=ended_at,
                durations_ms=self.durations_ms,
            ),
        )

    async def _save_recording(self) -> None:
        """A recorded stream becomes a VOD in the catalogue (its playlists are final now)."""
        summary = self.packager.recording_summary()
        if summary is None:
            return
        await self._store_write(
            "the recording",
            functools.partial(
                catalogue,
                self.manager.store,
                self.settings,
                session_id=self.session_id,
                channel=self.channel,
                storage_kind=self.manager.storage.kind,
                summary=summary,
            ),
        )
        log.info("%s: recorded as /vod/%d/%s", self.name, self.session_id, MASTER)

    async def _store_write(self, what: str, write: Callable[[], object]) -> None:
        """Run a store write in a thread, retrying briefly (a locked SQLite file, a PostgreSQL
        failover); a session deleted with its channel is not an error."""
        for delay in END_WRITE_RETRIES:
            try:
                await asyncio.to_thread(write)
                return
            except SessionNotFound:
                return  # the channel was deleted with its history
            except Exception as exc:
                if delay is None:
                    log.error("%s: could not record %s: %s", self.name, what, exc)
                    return
                log.warning("%s: recording %s failed (%s); retrying", self.name, what, exc)
                await asyncio.sleep(delay)


DURATIONS_KEPT = 4096
"""Segment durations remembered per stream (far more than any playlist window)."""
END_WRITE_RETRIES = (0.5, 1.0, 2.0, 4.0, None)
"""Pauses between attempts to write a stream's end; None: the last attempt."""


def _metadata_mentions(metadata: bytes, key: bytes) -> bool:
    return len(key).to_bytes(2, "big") + key in metadata


class StreamManager:
    """All live streams of this server, by channel."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        storage: Storage,
        *,
        events: StreamEvents | None = None,
        authorize: PublishAuthorizer | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.events: StreamEvents = events or NoEvents()
        self.authorize = authorize
        """The publish auth hook, asked after the stream key matched (None: key only)."""
        self.streams: dict[int, LiveStream] = {}
        """Active or reconnect-pending streams by channel id."""
        self._publish_locks: dict[int, asyncio.Lock] = {}
        """One publish decision at a time per channel: no two sessions, no two feeders."""
        self._recent_prefix: dict[str, str] = {}

    def worker_spec(
        self,
        prefix: str,
        session_id: int,
        epoch: int,
        first_sequence: int,
        ladder: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """The worker's job; ``ladder`` is the channel's override of ``transcode.ladder``."""
        transcode, hls = self.settings.transcode, self.settings.hls
        if ladder is None:
            ladder = [rung.model_dump() for rung in transcode.ladder]
        return {
            "output_dir": str((self.storage.root / prefix).resolve()),
            "file_prefix": f"s{session_id}-",
            "epoch": epoch,
            "first_sequence": first_sequence,
            "segment_duration": hls.segment_duration,
            "format": hls.segment_format,
            "source_rendition": transcode.source_rendition,
            "ladder": ladder,
            "x264_preset": transcode.x264_preset,
            "x264_tune": transcode.x264_tune,
            "audio_bitrate": transcode.audio_bitrate,
            "thumbnail_interval": self.settings.recording.thumbnail_interval,
            "thumbnail_width": self.settings.recording.thumbnail_width,
        }

    async def start_publish(self, stream_key: str, publisher: Publisher) -> LiveStream:
        """Authorize a publish and attach the publisher to its channel's stream."""
        channel = await asyncio.to_thread(self.store.channel_for_key, stream_key)
        if channel is None:
            raise PublishRefused("unknown or revoked stream key")
        assert channel.id is not None
        if self.authorize is not None:
            attempt = PublishAttempt(channel, publisher.peer, publisher.app, publisher.query)
            reason = await self.authorize(attempt)
            if reason is not None:
                raise PublishRefused(reason, channel)
        async with self._publish_locks.setdefault(channel.id, asyncio.Lock()):
            return await self._attach(channel, publisher)

    async def _attach(self, channel: Channel, publisher: Publisher) -> LiveStream:
        assert channel.id is not None
        stream = self.streams.get(channel.id)
        if stream is not None and stream.finishing:
            await stream.finish()  # the window closed just now: this publisher starts anew
        if stream is not None and not stream.ended:
            stream.cancel_end()
            stale = stream.publisher
            if stale is not None:
                # Same key while still publishing: OBS reconnecting before we noticed the drop.
                log.info(
                    "%s: new publisher %s replaces %s", stream.name, publisher.peer, stale.peer
                )
                stream.publisher = None
                stale.kick("replaced by a new connection with the same stream key")
            await stream.stop_worker()
            if not stream.ended:
                stream.new_publisher(publisher)
                log.info("%s: publisher %s resumed the stream", stream.name, publisher.peer)
                return stream
        recording = records(channel, self.settings)
        session = await asyncio.to_thread(
            self.store.start_session, channel.id, publisher.peer, recorded=recording
        )
        assert session.id is not None
        stream = LiveStream(self, channel, session.id, recording=recording)
        stream.publisher = publisher
        self.streams[channel.id] = stream
        self._recent_prefix[channel.slug] = stream.prefix
        log.info("%s: publishing from %s", stream.name, publisher.peer)
        self.events.stream_started(stream)
        return stream

    async def publisher_gone(self, stream: LiveStream, publisher: Publisher) -> None:
        """The publisher stopped or dropped; end the stream unless it returns in time."""
        if stream.publisher is not publisher:
            return  # already replaced by a reconnect
        stream.publisher = None
        stream.stats.publisher_left_at = utcnow()
        await stream.stop_worker()
        if stream.publisher is None and not stream.ended:
            stream.schedule_end(self.settings.rtmp.reconnect_window)

    def forget(self, stream: LiveStream) -> None:
        if self.streams.get(stream.channel.id or -1) is stream:
            del self.streams[stream.channel.id or -1]

    def stream_for_session(self, session_id: int) -> LiveStream | None:
        for stream in self.streams.values():
            if stream.session_id == session_id:
                return stream
        return None

    def stream_for_slug(self, slug: str) -> LiveStream | None:
        for stream in self.streams.values():
            if stream.channel.slug == slug:
                return stream
        return None

    def media_prefix(self, slug: str) -> str | None:
        """Storage prefix that ``/live/{slug}/`` serves: the current or latest session."""
        stream = self.stream_for_slug(slug)
        if stream is not None:
            return stream.prefix
        if slug not in self._recent_prefix:
            try:
                channel = self.store.get_channel(slug)
            except ValueError:  # unknown channel (ChannelNotFound)
                return None
            sessions = self.store.sessions(channel.id)
            if not sessions:
                return None
            self._recent_prefix[slug] = f"streams/{sessions[-1].id}"
        return self._recent_prefix[slug]

    def media_root(self) -> Path:
        return self.storage.root

    def live_streams(self) -> list[LiveStream]:
        """Streams that are publishing or waiting for their publisher to return."""
        return [s for s in self.streams.values() if not s.ended and not s.finishing]

    async def kick(self, slug: str, reason: str = "kicked by an operator") -> bool:
        """Close the publisher's connection; the stream ends unless it reconnects in time."""
        stream = self.stream_for_slug(slug)
        if stream is None or stream.publisher is None:
            return False
        publisher = stream.publisher
        stream.end_reason = reason
        publisher.kick(reason)
        await self.publisher_gone(stream, publisher)
        return True

    async def end_channel(self, channel_id: int, reason: str) -> bool:
        """Stop a channel's stream now (deleted channel, revoked key): no reconnect window."""
        stream = self.streams.get(channel_id)
        if stream is None:
            return False
        stream.end_reason = reason
        if stream.publisher is not None:
            stream.publisher.kick(reason)
            stream.publisher = None
        await stream.finish()
        return True

    async def shutdown(self) -> None:
        """End every stream at once (each waits at most its packager's drain time)."""
        streams = list(self.streams.values())
        for stream in streams:
            if stream.publisher is not None:
                stream.publisher.kick("server shutting down")
                stream.publisher = None
            stream.end_reason = "server shutdown"
        await asyncio.gather(*(stream.finish() for stream in streams), return_exceptions=True)
