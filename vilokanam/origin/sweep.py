"""Deleting what ended streams that nobody records leave behind.

A stream that is not recorded still leaves its last window (plus ``hls.delete_margin``) and its
playlists when it ends: players finish it, and ``/live/{channel}/`` serves the ended playlist.
``hls.keep_ended`` seconds later its folder goes, from S3 too, so storage (and a CDN's egress
from it) does not grow with every stream. The local folder ``streams/{id}`` is the marker:
``delete_prefix`` removes the remote objects before the local folder, so a pass cut short by a
crash is finished by the next one. A folder holding a recording journal but no VOD row is left
alone: a recording that crash recovery has not catalogued (yet).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path

from vilokanam.origin.storage import Storage
from vilokanam.packager.live import JOURNAL
from vilokanam.store import Store
from vilokanam.store.models import utcnow

log = logging.getLogger(__name__)

SWEEP_EVERY = 60.0
"""Seconds between passes (the first runs once start-up recovery is done)."""


def stream_folders(root: Path) -> list[int]:
    """Session ids that have a ``streams/{id}`` folder under ``root``."""
    folder = root / "streams"
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())


def journaled_folders(root: Path) -> list[int]:
    """Session ids whose folder holds a recording journal (a VOD, or one to be made)."""
    return [i for i in stream_folders(root) if (root / f"streams/{i}" / JOURNAL).is_file()]


class EndedStreamSweeper:
    """Deletes the media of streams that ended ``keep_ended`` seconds ago and are no VOD."""

    def __init__(
        self,
        store: Store,
        storage: Storage,
        keep_ended: float,
        *,
        in_use: Callable[[], Iterable[str]] = tuple,
        every: float = SWEEP_EVERY,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.storage = storage
        self.keep_ended = keep_ended
        self.in_use = in_use
        """Prefixes this server's streams are writing (never swept, whatever the store says)."""
        self.every = every
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> list[int]:
        """One pass: the session ids whose media was deleted."""
        if self.keep_ended <= 0:
            return []
        root = self.storage.root
        busy = set(self.in_use())
        folders = [
            session_id
            for session_id in await asyncio.to_thread(stream_folders, root)
            if f"streams/{session_id}" not in busy
        ]
        if not folders:
            return []
        cutoff = self._clock() - timedelta(seconds=self.keep_ended)
        doomed = await asyncio.to_thread(self.store.unrecorded_ended, folders, cutoff)
        swept = []
        for session_id in doomed:
            prefix = f"streams/{session_id}"
            if await asyncio.to_thread((root / prefix / JOURNAL).is_file):
                continue  # a recording not catalogued: never lose it
            try:
                removed = await self.storage.delete_prefix(prefix)
            except Exception:
                log.exception("%s: could not delete the ended stream's media", prefix)
                continue
            swept.append(session_id)
            log.info("%s: ended stream's media deleted (%d files)", prefix, removed)
        return swept

    def start(self, after: Awaitable[object] | None = None) -> None:
        """Sweep now (once ``after`` is done) and then every ``every`` seconds."""
        if self._task is None and self.keep_ended > 0:
            self._task = asyncio.create_task(self._run(after), name="ended-stream-sweep")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self, after: Awaitable[object] | None) -> None:
        if after is not None:
            await asyncio.gather(after, return_exceptions=True)
        while True:
            try:
                await self.sweep()
            except Exception:  # the database had a bad moment: the next pass retries
                log.exception("sweeping ended streams failed")
            await asyncio.sleep(self.every)
