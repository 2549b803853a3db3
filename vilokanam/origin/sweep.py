"""Deleting what ended streams that nobody records leave behind.

A stream that is not recorded still leaves its last window (plus ``hls.delete_margin``) and its
playlists when it ends: players finish it, and ``/live/{channel}/`` serves the ended playlist.
``hls.keep_ended`` seconds after the end (and after the last playlist write, which can come
later: a reconnect window, uploads draining) its folder goes, from S3 too, so storage (and a
CDN's egress from it) does not grow with every stream. The local folder ``streams/{id}`` is the
marker: ``delete_prefix`` removes the remote objects before the local folder, so a pass cut
short by a crash is finished by the next one.

Only sessions the store knows were not recorded are swept (:class:`MediaState`): never a VOD or
a session from before that was saved. A folder whose session is gone is swept only when it was
marked (:data:`CHANNEL_DELETED`) as its channel was deleted, ``keep_ended`` after the mark: a
database restored from an old backup, or the wrong one, never gets media deleted. A recorded
session with no VOD is swept only when it left no journal to make one of and no segments;
otherwise the next start's recovery catalogues it (or an operator looks at it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path

from vilokanam.origin.storage import Storage
from vilokanam.packager.recording import JOURNAL, read_journal
from vilokanam.store import Store
from vilokanam.store.models import utcnow
from vilokanam.store.store import MediaState

log = logging.getLogger(__name__)

SWEEP_EVERY = 60.0
"""Seconds between passes (the first runs once start-up recovery is done)."""
KEPT_FOR_PASSES = 60
"""Passes a folder judged kept for good is not looked at again (an hour at the default)."""
CHANNEL_DELETED = ".channel-deleted"
"""Marks a stream folder whose channel (and session) was deleted: swept after ``keep_ended``."""


def mark_channel_deleted(root: Path, session_ids: Iterable[int]) -> int:
    """Mark the folders of a channel's sessions before the channel goes (viewers still get the
    ended playlists until the sweep); how many folders were marked."""
    marked = 0
    for session_id in session_ids:
        folder = root / f"streams/{session_id}"
        if folder.is_dir():
            (folder / CHANNEL_DELETED).touch()
            marked += 1
    return marked


def stream_folders(root: Path) -> list[int]:
    """Session ids that have a ``streams/{id}`` folder under ``root``."""
    folder = root / "streams"
    if not folder.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in folder.iterdir()
        if p.name.isascii() and p.name.isdigit() and p.is_dir()
    )


def journaled_folders(root: Path) -> list[int]:
    """Session ids whose folder holds a recording journal (a VOD, or one to be made)."""
    return [i for i in stream_folders(root) if (root / f"streams/{i}" / JOURNAL).is_file()]


def uncatalogued_recordings(store: Store, root: Path) -> list[int]:
    """Ended recorded sessions with a journal and no VOD: ones a crash (in the stream, in a
    recovery, or while saving the VOD) left unmade. For recovery at start-up."""
    states = store.media_states(journaled_folders(root), utcnow())
    return [i for i, state in states.items() if state is MediaState.UNCATALOGUED]


def _marked_at(folder: Path) -> float | None:
    """When the folder's channel was deleted (:data:`CHANNEL_DELETED`), or None."""
    try:
        return (folder / CHANNEL_DELETED).stat().st_mtime
    except FileNotFoundError:
        return None


class _Verdict(Enum):
    DELETE = "delete"
    WAIT = "wait"
    KEEP = "keep"
    """For good (until the next start): not looked at again."""


def _verdict(folder: Path, state: MediaState, cutoff: datetime) -> _Verdict:
    """Whether a stream folder goes now, later or never (files read: run it in a thread)."""
    if state is MediaState.KEEP:
        return _Verdict.KEEP
    if state is MediaState.WAIT:
        return _Verdict.WAIT
    if state is MediaState.UNKNOWN:
        marked = _marked_at(folder)
        if marked is None:
            return _Verdict.KEEP  # not ours to judge
        return _Verdict.DELETE if marked < cutoff.timestamp() else _Verdict.WAIT
    if last_write(folder) >= cutoff.timestamp():
        return _Verdict.WAIT  # the end was written later than the session says (draining)
    if state is MediaState.UNCATALOGUED and (
        read_journal(folder / JOURNAL) is not None or _has_segments(folder)
    ):
        return _Verdict.KEEP  # a VOD to be (the next start's recovery), or one to look at
    return _Verdict.DELETE


def _has_segments(folder: Path) -> bool:
    return any(path.suffix in (".m4s", ".ts") for path in folder.glob("*/*"))


def last_write(folder: Path) -> float:
    """When the stream last wrote a playlist (its end: ENDLIST), as a timestamp; 0 if never."""
    playlists = [folder / "master.m3u8", *folder.glob("*/index.m3u8")]
    times = [path.stat().st_mtime for path in playlists if path.is_file()]
    return max(times, default=0.0)


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
        self._passes = 0
        self._kept: set[int] = set()
        """Folders this process keeps for good (VODs, older sessions): not asked about again."""
        self._failures: dict[int, str] = {}
        """The last delete error per folder, logged once until it changes."""
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> list[int]:
        """One pass: the session ids whose media was deleted."""
        if self.keep_ended <= 0:
            return []
        self._passes += 1
        if self._passes % KEPT_FOR_PASSES == 0:
            self._kept.clear()  # a channel deleted since marks folders kept until now
        root = self.storage.root
        busy = set(self.in_use())
        folders = [
            session_id
            for session_id in await asyncio.to_thread(stream_folders, root)
            if session_id not in self._kept and f"streams/{session_id}" not in busy
        ]
        if not folders:
            return []
        cutoff = self._clock() - timedelta(seconds=self.keep_ended)
        states = await asyncio.to_thread(self.store.media_states, folders, cutoff)
        swept = []
        for session_id, state in states.items():
            prefix = f"streams/{session_id}"
            try:
                verdict = await asyncio.to_thread(_verdict, root / prefix, state, cutoff)
            except OSError as exc:  # one unreadable folder never stops the pass
                log.warning("%s: cannot tell whether it may go: %s", prefix, exc)
                continue
            if verdict is _Verdict.KEEP:
                self._kept.add(session_id)
            if verdict is not _Verdict.DELETE or prefix in set(self.in_use()):
                continue  # (a stream of this server that started meanwhile: never)
            try:
                removed = await self.storage.delete_prefix(prefix)
            except Exception as exc:
                if self._failures.get(session_id) != str(exc):  # once, not every pass
                    log.error("%s: could not delete the ended stream's media: %s", prefix, exc)
                self._failures[session_id] = str(exc)
                continue
            self._failures.pop(session_id, None)
            swept.append(session_id)
            log.info("%s: ended stream's media deleted (%d files)", prefix, removed)
        return swept

    def start(self, after: Awaitable[object] | None = None) -> None:
        """Sweep now (once ``after`` is done) and then every ``every`` seconds."""
        if self._task is None and self.keep_ended > 0:
            waited = None if after is None else asyncio.ensure_future(after)
            self._task = asyncio.create_task(self._run(waited), name="ended-stream-sweep")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self, after: asyncio.Future[object] | None) -> None:
        if after is not None:
            await asyncio.wait([after])  # stopping the sweep never cancels what it waits for
        while True:
            try:
                await self.sweep()
            except Exception:  # the database had a bad moment: the next pass retries
                log.exception("sweeping ended streams failed")
            await asyncio.sleep(self.every)
