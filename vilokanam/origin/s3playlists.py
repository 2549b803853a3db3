"""Playlist versions on their way to S3, and the writes that wait for them.

A playlist is rewritten with every segment; S3 needs only the newest text, but in an order
players can follow: a master playlist goes only once the media playlists and segments of its
stream queued before it are in S3, and a delete only once the playlists queued before it no
longer name what it removes. This module keeps that book: per playlist, how many versions were
handed in, which one S3 holds and which were given up; what a master waits for; and one event
that wakes every waiter whenever a version lands. :class:`~vilokanam.origin.s3.S3Storage` does
the queueing and putting. Kept apart from it because these waits are where the ordering
guarantees live, and they read more plainly without the upload spool and the delete lane.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass(eq=False)
class Playlist:
    """The newest text of one playlist and how far S3 has caught up with it."""

    relpath: str
    text: str = ""
    queued: int = 0
    """Versions handed in so far."""
    sent: int = 0
    """The newest version S3 holds."""
    given_up: int = 0
    """Versions up to this one failed for good: nothing waits for them any more."""
    active: bool = False
    """A worker owns this playlist (queued or putting): at most one, so versions stay in order."""
    cancelled: bool = False
    after: dict[Playlist, int] = field(default_factory=dict)
    """A master playlist: versions of its stream's playlists that S3 must hold first."""
    uploads: list[asyncio.Future[None]] = field(default_factory=list)
    """A master playlist: its stream's segment uploads to wait for first."""

    def settled(self, version: int) -> bool:
        """Whether a write waiting for ``version`` may go: S3 holds it, or it never will."""
        return self.cancelled or self.sent >= version or self.given_up >= version


class PlaylistBook:
    """The playlists with a version not yet in S3 (or being put), by relpath."""

    def __init__(self) -> None:
        self.pending: dict[str, Playlist] = {}
        self.held: set[asyncio.Task[None]] = set()
        """Master playlists waiting for their stream's writes before they are queued."""
        self._progress = asyncio.Event()
        """Set (and replaced) whenever a playlist version reaches S3 or is cancelled."""

    def hand_in(self, relpath: str, text: str) -> Playlist:
        """A new version of ``relpath``: its state, the version counted."""
        state = self.pending.get(relpath)
        if state is None:
            state = self.pending[relpath] = Playlist(relpath)
        state.text = text
        state.queued += 1
        return state

    def unsent(self, folder: str = "") -> dict[Playlist, int]:
        """Playlists (under ``folder``) with a version S3 does not hold yet: the newest."""
        return {
            s: s.queued
            for s in self.pending.values()
            if s.sent < s.queued and s.relpath.startswith(folder)
        }

    def hold_behind_stream(
        self, state: Playlist, uploads: Iterable[tuple[str, asyncio.Future[None]]]
    ) -> None:
        """The master's next put waits for every write of its stream queued before now:
        its playlists, and those of ``uploads`` (relpath, done) in its folder."""
        folder = state.relpath.rpartition("/")[0] + "/"
        for other in self.unsent(folder):
            if other is not state:
                state.after[other] = other.queued
        state.uploads += [done for relpath, done in uploads if relpath.startswith(folder)]

    def clear(self, state: Playlist) -> bool:
        """Whether what ``state`` waits for is done (forgetting what is)."""
        if state.after:
            state.after = {s: v for s, v in state.after.items() if not s.settled(v)}
        if state.uploads:
            state.uploads = [upload for upload in state.uploads if not upload.done()]
        return not (state.after or state.uploads)

    def when_clear(self, state: Playlist, then: Callable[[Playlist], object]) -> None:
        """``then(state)`` at once, or (a master) once its stream's earlier writes are done:
        the wait holds no upload worker, so masters cannot starve them."""
        if state.cancelled or self.clear(state):
            then(state)
            return
        task = asyncio.create_task(self._wait_clear(state, then), name=f"s3-hold-{state.relpath}")
        self.held.add(task)
        task.add_done_callback(self.held.discard)

    async def _wait_clear(self, state: Playlist, then: Callable[[Playlist], object]) -> None:
        while not state.cancelled and not self.clear(state):
            if state.uploads:
                await asyncio.wait(state.uploads)
            else:
                await self._progress.wait()
        then(state)

    def retire(self, state: Playlist) -> bool:
        """S3 holds the newest version of ``state``: forget it, so that the next version starts
        afresh. False if ``state`` was cancelled meanwhile (it is no longer the book's)."""
        if self.pending.get(state.relpath) is not state:
            return False
        del self.pending[state.relpath]
        return True

    def give_up(self, state: Playlist) -> None:
        """The versions of ``state`` handed in so far will never reach S3: stop waiting."""
        state.given_up = state.queued
        self.progressed()

    def cancel(self, relpath: str) -> None:
        """``relpath`` is deleted: no version of it is put, nothing waits for one."""
        state = self.pending.pop(relpath, None)
        if state is not None:
            state.cancelled = True
            self.progressed()

    def progressed(self) -> None:
        """Wake every waiter to look again (a version landed, or will never)."""
        self._progress.set()
        self._progress = asyncio.Event()

    async def wait_sent(self, after: dict[Playlist, int]) -> None:
        """Until S3 holds (or will never hold) each of these playlist versions."""
        while not all(s.settled(version) for s, version in after.items()):
            await self._progress.wait()
