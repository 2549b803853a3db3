"""The VOD catalogue: which streams are recorded, where a VOD's media is, deleting and expiring.

A recorded stream's media stays where it was written live (``streams/{id}/``, see the
packager); the ``recording`` row makes it a VOD served at ``/vod/{id}/``. Deleting removes the
media first and the row after it, so a crash in between leaves a row to retry, never files
that the catalogue forgot. Retention deletes VODs whose ``expires_at`` passed.

The origin resolves a VOD id on every request: lookups are cached for a while and run in a
thread, so the event loop never waits for the database once a VOD is warm.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from vilokanam.config import Settings
from vilokanam.origin.storage import Storage
from vilokanam.origin.sweep import mark_channel_deleted
from vilokanam.packager.recording import JOURNAL, RecordingSummary
from vilokanam.packager.recovery import RecoveredRecording
from vilokanam.store import Channel, Recording, RecordingNotFound, Store

log = logging.getLogger(__name__)

RETENTION_EVERY = 3600.0
"""Seconds between retention passes (one also runs when the server starts)."""
FOUND_TTL = 30.0
"""Seconds a resolved VOD is served from the cache before it is looked up again."""
MISSING_TTL = 2.0
"""Seconds an unknown VOD id stays unknown (a stream that just ended becomes one soon)."""
MAX_CACHED = 10_000
_PREFIX = re.compile(r"^streams/\d{1,19}$")


def records(channel: Channel, settings: Settings) -> bool:
    """Whether a stream of ``channel`` is kept as a VOD: its override, else the server's."""
    return channel.record if channel.record is not None else settings.recording.enabled


def retention_days(channel: Channel, settings: Settings) -> int:
    """Days a VOD of ``channel`` is kept (0: until deleted): its override, else the server's."""
    if channel.vod_retention_days is not None:
        return channel.vod_retention_days
    return settings.recording.retention_days


@dataclass(frozen=True, slots=True)
class VodLocation:
    """What the origin needs to serve a VOD: where its media is, whose channel it is."""

    session_id: int
    prefix: str
    slug: str


async def delete_vod(store: Store, storage: Storage, session_id: int) -> Recording:
    """Delete a VOD's media, then its row (:class:`RecordingNotFound` if there is none).

    Used by the server and by the CLI with no server running (``storage`` started by the
    caller). Refuses a prefix that is not a stream's folder: a bad row never empties the tree.
    """
    recording, _, _ = await asyncio.to_thread(store.get_recording, session_id)
    if not _PREFIX.fullmatch(recording.prefix) or recording.prefix != f"streams/{session_id}":
        raise ValueError(
            f"VOD {session_id}: refusing to delete unexpected prefix {recording.prefix!r}"
        )
    journal = storage.root / recording.prefix / JOURNAL  # first: a VOD half deleted (files
    await asyncio.to_thread(journal.unlink, missing_ok=True)  # left) is never recovered again
    removed = await storage.delete_prefix(recording.prefix)
    deleted = await asyncio.to_thread(store.delete_recording, session_id)
    log.info("VOD %d deleted (%s, %d files)", session_id, recording.prefix, removed)
    return deleted


def catalogue(
    store: Store,
    settings: Settings,
    *,
    session_id: int,
    channel: Channel,
    storage_kind: str,
    summary: RecordingSummary | RecoveredRecording,
) -> Recording:
    """Keep a recorded stream as a VOD (its playlists are final), expiring as its channel says."""
    assert channel.id is not None, "a stored channel"
    return store.save_recording(
        session_id=session_id,
        channel_id=channel.id,
        prefix=f"streams/{session_id}",
        storage=storage_kind,
        renditions=summary.renditions,
        duration_ms=summary.duration_ms,
        segments=summary.segments,
        size_bytes=summary.size_bytes,
        thumbnail=summary.thumbnail,
        retention_days=retention_days(channel, settings),
    )


async def mark_stream_media(store: Store, storage: Storage, channel_id: int) -> int:
    """Before a channel and its sessions go: mark what its streams left (their last windows) so
    the sweep deletes it ``hls.keep_ended`` later; viewers still get the ended playlists until
    then. How many folders."""
    sessions = await asyncio.to_thread(store.sessions, channel_id)
    ids = [session.id for session in sessions if session.id is not None]
    return await asyncio.to_thread(mark_channel_deleted, storage.root, ids)


class VodCatalogue:
    """Resolves, deletes and expires the VODs of one server."""

    def __init__(
        self,
        store: Store,
        storage: Storage,
        *,
        found_ttl: float = FOUND_TTL,
        missing_ttl: float = MISSING_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.storage = storage
        self.found_ttl = found_ttl
        self.missing_ttl = missing_ttl
        self._clock = clock
        self._entries: dict[int, tuple[VodLocation | None, float]] = {}
        self._pending: dict[int, asyncio.Future[VodLocation | None]] = {}
        self._generation: dict[int, int] = {}
        """Bumped by :meth:`forget`: a lookup that began before it is not cached."""

    # -- the origin's lookup ----------------------------------------------------------------
    async def resolve(self, session_id: int) -> VodLocation | None:
        """The VOD's location, or None; one database lookup at a time per id, in a thread."""
        entry = self._entries.get(session_id)
        if entry is not None:
            location, expires = entry
            if self._clock() < expires:
                return location
        pending = self._pending.get(session_id)
        if pending is None:
            pending = asyncio.ensure_future(self._lookup(session_id))
            self._pending[session_id] = pending
        return await asyncio.shield(pending)

    async def _lookup(self, session_id: int) -> VodLocation | None:
        generation = self._generation.get(session_id, 0)
        try:
            recording, _, channel = await asyncio.to_thread(self.store.get_recording, session_id)
            location: VodLocation | None = VodLocation(session_id, recording.prefix, channel.slug)
        except RecordingNotFound:
            location = None
        finally:
            if self._pending.get(session_id) is asyncio.current_task():
                del self._pending[session_id]
        if self._generation.get(session_id, 0) != generation:
            return location  # deleted (or created) while looking: never cache the old answer
        ttl = self.found_ttl if location is not None else self.missing_ttl
        if len(self._entries) >= MAX_CACHED:
            self._entries.clear()
        self._entries[session_id] = (location, self._clock() + ttl)
        return location

    def forget(self, session_id: int) -> None:
        """Look ``session_id`` up again on its next request (created or deleted here)."""
        self._entries.pop(session_id, None)
        self._pending.pop(session_id, None)
        if len(self._generation) >= MAX_CACHED:
            self._generation.clear()
        self._generation[session_id] = self._generation.get(session_id, 0) + 1

    async def save_recovered(self, recovered: RecoveredRecording, settings: Settings) -> None:
        """Catalogue a recording that crash recovery rebuilt (its playlists are published)."""
        _, channel = await asyncio.to_thread(self.store.get_session, recovered.session_id)
        await asyncio.to_thread(
            functools.partial(
                catalogue, self.store, settings, session_id=recovered.session_id,
                channel=channel, storage_kind=self.storage.kind, summary=recovered,
            )
        )  # fmt: skip
        self.forget(recovered.session_id)
        log.info("VOD %d recovered after a crash (channel %s)", recovered.session_id, channel.slug)

    # -- deleting ---------------------------------------------------------------------------
    async def delete(self, session_id: int) -> Recording:
        """Delete one VOD (media, then row); the origin stops serving it at once."""
        self.forget(session_id)  # requests from now on look it up (and find files gone)
        try:
            return await delete_vod(self.store, self.storage, session_id)
        finally:
            self.forget(session_id)

    async def delete_channel(self, channel_id: int) -> int:
        """Delete every VOD of a channel (before the channel itself goes) and mark the rest of
        its media for the sweep: how many VODs."""
        rows = await asyncio.to_thread(self.store.recordings, channel_id)
        for recording, _, _ in rows:
            with contextlib.suppress(RecordingNotFound):
                await self.delete(recording.session_id)
        await mark_stream_media(self.store, self.storage, channel_id)
        return len(rows)

    async def expire(self, now: datetime | None = None) -> list[Recording]:
        """One retention pass: delete every VOD whose ``expires_at`` passed; returns them.
        A VOD that fails to delete is logged and tried again on the next pass."""
        deleted = []
        for recording in await asyncio.to_thread(self.store.expired_recordings, now):
            try:
                deleted.append(await self.delete(recording.session_id))
            except RecordingNotFound:
                continue  # deleted meanwhile (an operator, another node)
            except Exception:
                log.exception("retention: VOD %d could not be deleted", recording.session_id)
                continue
            log.info(
                "retention: deleted VOD %d of channel %d (created %s, expired %s)",
                recording.session_id,
                recording.channel_id,
                recording.created_at.isoformat(timespec="seconds"),
                recording.expires_at.isoformat(timespec="seconds") if recording.expires_at else "-",
            )
        return deleted


class RetentionTask:
    """Runs :meth:`VodCatalogue.expire` at start and then every ``every`` seconds."""

    def __init__(self, catalogue: VodCatalogue, every: float = RETENTION_EVERY) -> None:
        self.catalogue = catalogue
        self.every = every
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="vod-retention")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.catalogue.expire()
            except Exception:  # the database had a bad moment: the next pass retries
                log.exception("retention pass failed")
            await asyncio.sleep(self.every)
