"""S3 storage: the local media tree, mirrored to a bucket that a CDN fronts.

Workers write into ``root`` as with :class:`LocalStorage`, and this server's origin keeps serving
from there; every published file is also put to ``{prefix}{relpath}`` in the bucket. Puts go
through one boto3 client in a thread pool, at most ``upload_concurrency`` at a time, oldest
first, and are retried with backoff for as long as it takes: an S3 outage makes
:meth:`S3Storage.publish_segment` wait, not fail. What waits is bounded (``spool_max_mb``); past
it the oldest waiting segments are given up (:class:`SegmentDropped`), never init segments nor
uploads asked for with ``droppable=False`` (crash recovery). Playlists are written locally at
once and put behind the segments they name; a master playlist is put only once every segment
and playlist of its stream queued before it is in S3 (or given up), so it never names a missing
media playlist; deletes wait for the playlist puts queued before them, so S3 never lists a
segment that is gone. A listing S3 refuses for good (no ``s3:ListBucket``) raises
:class:`ListingRefused` instead of waiting.

This module is the order of writes (the spool, the upload queue, the delete lane); talking to S3
(calls, retries, failure log, figures) is :mod:`vilokanam.origin.s3client`'s job, and keeping
track of playlist versions and what waits for them :mod:`vilokanam.origin.s3playlists`'.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vilokanam.config.settings import S3Settings
from vilokanam.origin.s3client import MIB, RETRYABLE, ListingRefused, S3Client, backoff
from vilokanam.origin.s3playlists import Playlist, PlaylistBook
from vilokanam.origin.storage import SegmentDropped, safe_prefix, write_atomically

__all__ = ["ListingRefused", "S3Storage", "backoff"]

log = logging.getLogger(__name__)

MASTER_PLAYLIST = "master.m3u8"
"""A stream's master playlist (the packager's name): put after what it names."""


def _retrieve(future: asyncio.Future[None]) -> None:
    """A dropped upload whose caller stopped waiting is not an "exception never retrieved"."""
    if not future.cancelled():
        future.exception()


@dataclass(eq=False)
class _Upload:
    """A file under ``root`` waiting to be put (its bytes count in the spool)."""

    relpath: str
    size: int
    done: asyncio.Future[None]
    droppable: bool


@dataclass(eq=False)
class _Delete:
    relpaths: list[str]
    after: dict[Playlist, int]
    """Playlist versions queued before the delete: S3 must hold them first."""
    attempts: list[asyncio.Future[Any]] = field(default_factory=list)
    """Puts of these keys already running: deleting first would let them resurrect the key."""


class _ClientFigure:
    """A figure the :class:`S3Client` keeps, read and set as the storage's own (by /metrics,
    the server's settings and tests)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, storage: S3Storage | None, owner: type | None = None) -> Any:
        return self if storage is None else getattr(storage.s3, self.name)

    def __set__(self, storage: S3Storage, value: Any) -> None:
        setattr(storage.s3, self.name, value)


class S3Storage:
    """Media under ``root`` (served by this origin) and mirrored to an S3 bucket."""

    kind = "s3"
    expected_segment_seconds = _ClientFigure()
    upload_retries = _ClientFigure()
    deletes = _ClientFigure()
    upload_seconds_avg = _ClientFigure()

    def __init__(self, root: Path, settings: S3Settings) -> None:
        self.root = root
        self.settings = settings
        root.mkdir(parents=True, exist_ok=True)
        self.s3 = S3Client(root, settings, backlog=lambda: (len(self._spool), self.spool_bytes))
        """The bucket: calls, retries, failure log and upload figures."""
        self.uploads_ok = 0
        self.uploads_dropped = 0
        self.spool_bytes = 0
        self._spool: dict[_Upload, None] = {}
        """Segments not yet in S3, oldest first."""
        self._uploads: dict[str, _Upload] = {}
        self._running: dict[str, asyncio.Future[Any]] = {}
        """Puts in a thread now, by relpath: a delete of the key waits for them, or the put
        would bring the object back (even one whose upload was given up meanwhile)."""
        self._uploaded: set[str] = set()
        """Relpaths S3 holds and whose local copy is still here (release_local may drop it)."""
        self._playlists = PlaylistBook()
        """Playlists with a version not yet in S3 (or being put), and what waits for them."""
        self._queue: asyncio.Queue[_Upload | Playlist] = asyncio.Queue()
        self._deletes: deque[_Delete] = deque()
        self._delete_wake = asyncio.Event()
        self._outstanding = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []

    # -- figures --------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The boto3 S3 client, from :meth:`start` (thread-safe; shared by every put)."""
        return self.s3.client

    @property
    def spool_files(self) -> int:
        return len(self._spool)

    @property
    def upload_seconds(self) -> float:
        return self.upload_seconds_avg

    def slow(self, segment_duration: float) -> bool:
        """Whether a segment takes longer than 90 % of ``segment_duration`` to upload."""
        return self.s3.slow(segment_duration)

    @property
    def slow_uploads(self) -> bool:
        return self.s3.slow_uploads

    def key(self, relpath: str) -> str:
        return self.s3.key(relpath)

    def public_url(self, relpath: str) -> str | None:
        base = self.settings.public_base_url
        return f"{base}/{self.key(relpath)}" if base else None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self.client is not None:
            return
        await self.s3.start()
        self._tasks = [
            asyncio.create_task(self._upload_worker(), name=f"s3-upload-{n}")
            for n in range(self.settings.upload_concurrency)
        ]
        self._tasks.append(asyncio.create_task(self._delete_worker(), name="s3-delete"))
        self._tasks.append(asyncio.create_task(self.s3.check_bucket(), name="s3-check"))

    async def close(self, grace: float = 0.0) -> None:
        if self.client is None:
            return
        await self.flush(grace)
        tasks = [*self._tasks, *self._playlists.held]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        files, size = len(self._spool), self.spool_bytes
        playlists = len(self._playlists.unsent())
        deletes = sum(len(job.relpaths) for job in self._deletes)
        for job in list(self._spool):
            self._settle(job, SegmentDropped(f"{job.relpath}: storage closed before upload"))
        if files or playlists or deletes:
            log.warning(
                "S3 storage closed with %d segment(s) (%d bytes) not uploaded (left on disk in "
                "%s), %d playlist(s) not written, %d delete(s) not done",
                files, size, self.root, playlists, deletes,
            )  # fmt: skip
        self.s3.close()

    async def flush(self, timeout: float, prefix: str | None = None) -> bool:
        if prefix is not None:  # one stream: other streams' uploads never keep it waiting
            return await self._flush_folder(timeout, prefix.rstrip("/") + "/")
        if self._idle.is_set():
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _flush_folder(self, timeout: float, folder: str) -> bool:
        """Until the uploads and playlist versions under ``folder`` queued so far are settled."""
        uploads = [job.done for job in self._uploads.values() if job.relpath.startswith(folder)]
        playlists = self._playlists.unsent(folder)
        try:
            async with asyncio.timeout(timeout):
                if uploads:
                    await asyncio.wait(uploads)
                await self._playlists.wait_sent(playlists)
        except TimeoutError:
            return False
        return True

    def _begin(self) -> None:
        self._outstanding += 1
        self._idle.clear()

    def _end(self) -> None:
        self._outstanding -= 1
        if self._outstanding == 0:
            self._idle.set()

    def _require_started(self) -> None:
        if self.client is None:
            raise RuntimeError("S3Storage.start() has not been called")

    # -- segments -------------------------------------------------------------------------

    async def publish_segment(self, relpath: str, *, droppable: bool = True) -> None:
        """Upload ``relpath``; ``droppable=False``: never given up to make spool room."""
        self._require_started()
        size = (await asyncio.to_thread(os.stat, self.root / relpath)).st_size
        waiting = self._uploads.get(relpath)
        if waiting is not None and relpath not in self._running:
            # Re-published before its put began (a thumbnail): that put sends the new bytes.
            self.spool_bytes += size - waiting.size
            waiting.size = size
            waiting.droppable = waiting.droppable and droppable
            await asyncio.shield(waiting.done)
            return
        job = _Upload(
            relpath,
            size,
            asyncio.get_running_loop().create_future(),
            # Without its init segment no later segment of the rendition plays: kept.
            droppable=droppable and not relpath.endswith(".mp4"),
        )
        job.done.add_done_callback(_retrieve)
        self._make_room(size)
        self._spool[job] = None
        self.spool_bytes += size
        self._uploads[relpath] = job
        self._uploaded.discard(relpath)
        self._begin()
        self._queue.put_nowait(job)
        await asyncio.shield(job.done)  # a cancelled caller does not cancel the upload

    def _make_room(self, size: int) -> None:
        """Give up the oldest waiting segments until ``size`` more bytes fit in the spool."""
        limit = self.settings.spool_max_mb * MIB
        for job in list(self._spool):
            if self.spool_bytes + size <= limit:
                return
            if not job.droppable:
                continue
            self.uploads_dropped += 1
            log.error(
                "S3 spool full (%d MiB waiting, limit %d MiB): gave up %s",
                self.spool_bytes // MIB, self.settings.spool_max_mb, job.relpath,
            )  # fmt: skip
            self._settle(job, SegmentDropped(f"{job.relpath}: S3 spool full, upload given up"))
            # The spool bounds local disk too; no playlist will name the segment.
            path = self.root / job.relpath
            asyncio.get_running_loop().run_in_executor(None, path.unlink, True)

    def _settle(self, job: _Upload, error: Exception | None = None) -> None:
        if job.done.done():
            return
        del self._spool[job]
        self.spool_bytes -= job.size
        if self._uploads.get(job.relpath) is job:
            del self._uploads[job.relpath]
        if error is None:
            self._uploaded.add(job.relpath)
            job.done.set_result(None)
        else:
            job.done.set_exception(error)
        self._end()

    async def _upload_worker(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                if isinstance(item, _Upload):
                    await self._upload(item)
                else:
                    await self._put_playlist(item)
            except Exception as exc:  # a bug: fail this item, keep the worker
                log.exception("S3 upload of %s failed", item.relpath)
                if isinstance(item, _Upload):
                    self._settle(item, exc)

    async def _upload(self, job: _Upload) -> None:
        failures = 0
        while not job.done.done():
            started = time.monotonic()
            try:
                await self._attempt(job.relpath, self.s3.put_file, job.relpath)
            except FileNotFoundError:
                self._settle(job, SegmentDropped(f"{job.relpath} vanished before its upload"))
                return
            except RETRYABLE as exc:
                failures += 1
                await self.s3.retry_later(job.relpath, exc, failures, put=True, wake=job.done)
                continue
            self.s3.succeeded()
            self.s3.observe(time.monotonic() - started)
            if not job.done.done():
                self.uploads_ok += 1
                self._settle(job)

    async def _attempt(self, relpath: str, func: Any, *args: Any) -> None:
        """One put of ``relpath`` in the thread pool, registered in ``_running`` meanwhile."""
        attempt = self._running[relpath] = asyncio.ensure_future(func(*args))
        try:
            await attempt
        finally:
            if self._running.get(relpath) is attempt:
                del self._running[relpath]

    # -- playlists ------------------------------------------------------------------------

    async def publish_playlist(self, relpath: str, text: str) -> None:
        self._require_started()
        await asyncio.to_thread(write_atomically, self.root / relpath, text.encode())
        state = self._playlists.hand_in(relpath, text)
        self._uploaded.discard(relpath)
        if PurePosixPath(relpath).name == MASTER_PLAYLIST:
            uploads = ((job.relpath, job.done) for job in self._uploads.values())
            self._playlists.hold_behind_stream(state, uploads)
        if not state.active:
            state.active = True
            self._begin()
            self._playlists.when_clear(state, self._queue.put_nowait)

    async def _put_playlist(self, state: Playlist) -> None:
        """Put the newest version until S3 holds it; versions queued meanwhile coalesce.

        An error that is not retried gives the queued versions up: a master playlist or a
        delete waiting for them goes on (a later version is put as usual)."""
        failures = 0
        handed_on = False
        try:
            while not state.cancelled:
                if not self._playlists.clear(state):  # a newer master version with its own wait
                    handed_on = True
                    self._playlists.when_clear(state, self._queue.put_nowait)
                    return
                version, data = state.queued, state.text.encode()
                try:
                    await self._attempt(state.relpath, self.s3.put, state.relpath, data)
                except RETRYABLE as exc:
                    failures += 1
                    await self.s3.retry_later(state.relpath, exc, failures, put=True)
                    continue
                failures = 0
                self.s3.succeeded()
                state.sent = version
                self._playlists.progressed()
                if state.queued == version:
                    if self._playlists.retire(state):
                        self._uploaded.add(state.relpath)
                    return
        except Exception:  # not retried (a bug): it would hold its master and deletes forever
            self._playlists.give_up(state)
            log.exception("S3 put of %s given up; writes that waited for it go on without it",
                          state.relpath)  # fmt: skip
        finally:
            if not handed_on:
                state.active = False
                self._end()

    # -- deletes --------------------------------------------------------------------------

    async def delete(self, relpaths: list[str]) -> None:
        """Unlink now; queue the S3 delete behind the playlist puts queued before this call.

        Returns without waiting for S3 (:meth:`flush` does): the live path must not stall
        on an outage for files nobody lists any more."""
        if not relpaths:
            return
        self._require_started()
        job = _Delete(list(relpaths), self._playlists.unsent(), self._forget(relpaths))
        await asyncio.to_thread(_unlink_all, self.root, relpaths)
        self._begin()
        self._deletes.append(job)
        self._delete_wake.set()

    def _forget(self, relpaths: Iterable[str]) -> list[asyncio.Future[Any]]:
        """Stop uploading ``relpaths``; the puts already running, to wait for before deleting."""
        running = []
        for relpath in relpaths:
            self._uploaded.discard(relpath)
            if relpath in self._running:
                running.append(self._running[relpath])
            job = self._uploads.get(relpath)
            if job is not None:
                self._settle(job, SegmentDropped(f"{relpath} deleted before its upload"))
            self._playlists.cancel(relpath)
        return running

    async def _delete_worker(self) -> None:
        """Deletes in call order; those queued together go out in shared batches."""
        while True:
            if not self._deletes:
                self._delete_wake.clear()
                await self._delete_wake.wait()
                continue
            batch = list(self._deletes)
            for job in batch:
                await self._playlists.wait_sent(job.after)
                if job.attempts:
                    await asyncio.wait(job.attempts)
            relpaths = list(dict.fromkeys(r for job in batch for r in job.relpaths))
            try:
                await self.s3.delete_keys(relpaths)
            except Exception:
                log.exception("S3 delete of %d object(s) failed", len(relpaths))
            for _ in batch:
                self._deletes.popleft()
                self._end()

    async def release_local(self, relpaths: list[str]) -> None:
        """Unlink local copies S3 holds, after their pending uploads; others stay on disk."""
        waiting = [job.done for r in relpaths if (job := self._uploads.get(r)) is not None]
        if waiting:
            await asyncio.gather(
                *(asyncio.shield(done) for done in waiting), return_exceptions=True
            )
        uploaded = [relpath for relpath in relpaths if relpath in self._uploaded]
        self._uploaded.difference_update(uploaded)
        await asyncio.to_thread(_unlink_all, self.root, uploaded)
        if len(uploaded) < len(relpaths):
            log.debug("kept %d local file(s) not known to be in S3", len(relpaths) - len(uploaded))

    async def delete_prefix(self, prefix: str) -> int:
        self._require_started()
        folder = safe_prefix(self.root, prefix)
        relprefix = "/".join(PurePosixPath(prefix).parts) + "/"
        known = (*self._uploads, *self._playlists.pending, *self._running)
        pending = [relpath for relpath in known if relpath.startswith(relprefix)]
        running = self._forget(pending)
        if running:
            await asyncio.wait(running)
        remote = await self.s3.list_relpaths(relprefix)
        deleted = await self.s3.delete_keys(remote)
        if deleted < len(remote):  # the local folder stays: the marker to try again
            raise PermissionError(
                f"S3 refused to delete {len(remote) - deleted} object(s) under {relprefix} "
                "(the credentials need s3:DeleteObject); kept to try again"
            )
        local = await asyncio.to_thread(_remove_tree, folder, self.root)
        self._uploaded.difference_update(local)
        return len(set(remote) | set(local))

    async def published(self, prefix: str) -> set[str]:
        """What the bucket holds under ``prefix`` (the listing waits out an outage; raises
        :class:`ListingRefused` if S3 refuses it for good)."""
        self._require_started()
        safe_prefix(self.root, prefix)
        return set(await self.s3.list_relpaths("/".join(PurePosixPath(prefix).parts) + "/"))


def _unlink_all(root: Path, relpaths: Iterable[str]) -> None:
    for relpath in relpaths:
        (root / relpath).unlink(missing_ok=True)


def _remove_tree(folder: Path, root: Path) -> list[str]:
    """Remove ``folder``; the relpaths of the files it held. OSError if it is still there."""
    files = [path.relative_to(root).as_posix() for path in folder.rglob("*") if path.is_file()]
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(folder)
    if os.path.lexists(folder):
        raise OSError(f"{folder} could not be removed completely")
    return files
