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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from vilokanam.config.settings import S3Settings
from vilokanam.origin.storage import (
    SegmentDropped,
    cache_control,
    content_type,
    safe_prefix,
    write_atomically,
)

log = logging.getLogger(__name__)

RETRYABLE = (BotoCoreError, ClientError, OSError)
"""Connection errors (``botocore.exceptions.ConnectionError``), timeouts, 5xx and 4xx alike: a
misconfigured bucket waits like an outage, loudly, until the spool gives segments up."""
DELETE_BATCH = 1000
"""S3's limit of keys per DeleteObjects call (moto accepts more; AWS refuses)."""
TRANSIENT_DELETE_ERRORS = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "OperationAborted"}
)
SLOW_FRACTION = 0.9
"""Uploads slower than this share of a segment's duration make players fall behind live."""
EWMA_WEIGHT = 0.2
FAILURE_LOG_EVERY = 10.0
SLOW_LOG_EVERY = 60.0
MIB = 1024 * 1024
MASTER_PLAYLIST = "master.m3u8"
"""A stream's master playlist (the packager's name): put after what it names."""


def backoff(failures: int, initial: float, maximum: float) -> float:
    """Seconds before retry number ``failures`` (1, 2, …): doubling from ``initial`` up to
    ``maximum``, the upper half jittered so retries after an outage do not arrive together."""
    ceiling = min(maximum, initial * 2 ** max(failures - 1, 0))
    return ceiling / 2 + random.random() * ceiling / 2


def chunked(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
class _Playlist:
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
    after: dict[_Playlist, int] = field(default_factory=dict)
    """A master playlist: versions of its stream's playlists that S3 must hold first."""
    uploads: list[asyncio.Future[None]] = field(default_factory=list)
    """A master playlist: its stream's segment uploads to wait for first."""

    def settled(self, version: int) -> bool:
        """Whether a write waiting for ``version`` may go: S3 holds it, or it never will."""
        return self.cancelled or self.sent >= version or self.given_up >= version


@dataclass(eq=False)
class _Delete:
    relpaths: list[str]
    after: dict[_Playlist, int]
    """Playlist versions queued before the delete: S3 must hold them first."""
    attempts: list[asyncio.Future[Any]] = field(default_factory=list)
    """Puts of these keys already running: deleting first would let them resurrect the key."""


class ListingRefused(PermissionError):
    """S3 refuses for good to list the bucket (the credentials lack ``s3:ListBucket``)."""


class S3Storage:
    """Media under ``root`` (served by this origin) and mirrored to an S3 bucket."""

    kind = "s3"

    def __init__(self, root: Path, settings: S3Settings) -> None:
        self.root = root
        self.settings = settings
        root.mkdir(parents=True, exist_ok=True)
        self.expected_segment_seconds = 2.0
        """Segment duration the packager aims for (the server sets ``hls.segment_duration``):
        uploads slower than 90 % of it are reported."""
        self.client: Any = None
        """The boto3 S3 client, from :meth:`start` (thread-safe; shared by every put)."""
        self.uploads_ok = 0
        self.upload_retries = 0
        self.uploads_dropped = 0
        self.spool_bytes = 0
        self.deletes = 0
        self.upload_seconds_avg = 0.0
        """Moving average (EWMA) of the seconds one successful segment put takes."""
        self._spool: dict[_Upload, None] = {}
        """Segments not yet in S3, oldest first."""
        self._uploads: dict[str, _Upload] = {}
        self._running: dict[str, asyncio.Future[Any]] = {}
        """Puts in a thread now, by relpath: a delete of the key waits for them, or the put
        would bring the object back (even one whose upload was given up meanwhile)."""
        self._uploaded: set[str] = set()
        """Relpaths S3 holds and whose local copy is still here (release_local may drop it)."""
        self._playlists: dict[str, _Playlist] = {}
        """Playlists with a version not yet in S3 (or being put)."""
        self._queue: asyncio.Queue[_Upload | _Playlist] = asyncio.Queue()
        self._deletes: deque[_Delete] = deque()
        self._delete_wake = asyncio.Event()
        self._progress = asyncio.Event()
        """Set (and replaced) whenever a playlist version reaches S3 or is cancelled."""
        self._outstanding = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._held: set[asyncio.Task[None]] = set()
        """Master playlists waiting for their stream's writes before they are queued."""
        self._executor: ThreadPoolExecutor | None = None
        self._failing_since: float | None = None
        self._failure_logged = 0.0
        self._slow_logged = -SLOW_LOG_EVERY
        self._observed = 0
        self._list_refusal_logged = False

    # -- figures --------------------------------------------------------------------------

    @property
    def spool_files(self) -> int:
        return len(self._spool)

    @property
    def upload_seconds(self) -> float:
        return self.upload_seconds_avg

    def slow(self, segment_duration: float) -> bool:
        """Whether a segment takes longer than 90 % of ``segment_duration`` to upload."""
        return self.upload_seconds_avg > SLOW_FRACTION * segment_duration

    @property
    def slow_uploads(self) -> bool:
        return self.slow(self.expected_segment_seconds)

    def key(self, relpath: str) -> str:
        return f"{self.settings.prefix}{relpath}"

    def public_url(self, relpath: str) -> str | None:
        base = self.settings.public_base_url
        return f"{base}/{self.key(relpath)}" if base else None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self.client is not None:
            return
        workers = self.settings.upload_concurrency
        self.client = await asyncio.to_thread(self._make_client)
        # A thread per upload worker, one for the delete lane, one for listings.
        self._executor = ThreadPoolExecutor(workers + 2, thread_name_prefix="s3")
        self._tasks = [
            asyncio.create_task(self._upload_worker(), name=f"s3-upload-{n}")
            for n in range(workers)
        ]
        self._tasks.append(asyncio.create_task(self._delete_worker(), name="s3-delete"))
        self._tasks.append(asyncio.create_task(self._check_bucket(), name="s3-check"))

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        settings = self.settings
        config = Config(
            retries={"total_max_attempts": 2, "mode": "standard"},  # we retry, forever
            connect_timeout=settings.timeout,
            read_timeout=settings.timeout,
            max_pool_connections=settings.upload_concurrency + 2,
            s3={"addressing_style": settings.addressing_style},
            # botocore >= 1.36 adds a CRC32 to every put by default; some S3-compatible
            # stores refuse it. Checksums only where the API requires them (DeleteObjects).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session(region_name=settings.region or None)
        client = session.client("s3", endpoint_url=settings.endpoint_url or None, config=config)
        client.meta.events.register("before-sign.s3.PutObject", _skip_expect_continue)
        return client

    async def _check_bucket(self) -> None:
        """Say at start whether the bucket answers (uploads wait for it either way)."""
        try:
            await self._run(self.client.head_bucket, Bucket=self.settings.bucket)
        except RETRYABLE as exc:
            log.warning(
                "S3 bucket %s does not answer yet (%s): uploads will retry",
                self.settings.bucket,
                exc,
            )
        else:
            log.info("S3 storage: bucket %s, prefix %r", self.settings.bucket, self.settings.prefix)

    async def close(self, grace: float = 0.0) -> None:
        if self.client is None:
            return
        await self.flush(grace)
        tasks = [*self._tasks, *self._held]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        files, size = len(self._spool), self.spool_bytes
        playlists = sum(state.sent < state.queued for state in self._playlists.values())
        deletes = sum(len(job.relpaths) for job in self._deletes)
        for job in list(self._spool):
            self._settle(job, SegmentDropped(f"{job.relpath}: storage closed before upload"))
        if files or playlists or deletes:
            log.warning(
                "S3 storage closed with %d segment(s) (%d bytes) not uploaded (left on disk in "
                "%s), %d playlist(s) not written, %d delete(s) not done",
                files, size, self.root, playlists, deletes,
            )  # fmt: skip
        assert self._executor is not None
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None
        self.client.close()
        self.client = None

    async def flush(self, timeout: float) -> bool:
        if self._idle.is_set():
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
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

    async def _run(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        """``func`` in the S3 thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: func(*args, **kwargs))

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
                await self._attempt(job.relpath, self._put_file, job.relpath)
            except FileNotFoundError:
                self._settle(job, SegmentDropped(f"{job.relpath} vanished before its upload"))
                return
            except RETRYABLE as exc:
                failures += 1
                self.upload_retries += 1
                self._failed(job.relpath, exc)
                await asyncio.wait([job.done], timeout=self._delay(failures))
                continue
            self._succeeded()
            self._observe(time.monotonic() - started)
            if not job.done.done():
                self.uploads_ok += 1
                self._settle(job)

    async def _attempt(self, relpath: str, func: Any, *args: Any) -> None:
        """One put of ``relpath`` in the thread pool, registered in ``_running`` meanwhile."""
        attempt = self._running[relpath] = asyncio.ensure_future(self._run(func, *args))
        try:
            await attempt
        finally:
            if self._running.get(relpath) is attempt:
                del self._running[relpath]

    def _put_file(self, relpath: str) -> None:
        # Read whole (segments are small): each retry sends the file as it is now.
        self._put(relpath, (self.root / relpath).read_bytes())

    def _put(self, relpath: str, data: bytes) -> None:
        self.client.put_object(
            Bucket=self.settings.bucket,
            Key=self.key(relpath),
            Body=data,
            ContentType=content_type(relpath),
            CacheControl=cache_control(relpath),
        )

    def _observe(self, seconds: float) -> None:
        self._observed += 1
        if self._observed == 1:
            self.upload_seconds_avg = seconds
        else:
            self.upload_seconds_avg += EWMA_WEIGHT * (seconds - self.upload_seconds_avg)
        now = time.monotonic()
        if self.slow_uploads and now - self._slow_logged >= SLOW_LOG_EVERY:
            self._slow_logged = now
            log.warning(
                "S3 uploads take %.2f s per segment on average, over %d%% of the %.1f s segment "
                "duration: players fall behind live (raise s3.upload_concurrency, or use a "
                "bucket closer to this server)",
                self.upload_seconds_avg, SLOW_FRACTION * 100, self.expected_segment_seconds,
            )  # fmt: skip

    def _delay(self, failures: int) -> float:
        return backoff(failures, self.settings.retry_initial, self.settings.retry_max)

    def _failed(self, what: str, exc: BaseException) -> None:
        """Log an S3 failure: the first at once, then a reminder every 10 s while it lasts."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = self._failure_logged = now
            log.warning("S3 write failed (%s: %s); retrying until it works", what, exc)
        elif now - self._failure_logged >= FAILURE_LOG_EVERY:
            self._failure_logged = now
            log.warning(
                "S3 still failing after %.0f s (%s); %d segment(s), %.1f MiB waiting",
                now - self._failing_since, exc, len(self._spool), self.spool_bytes / MIB,
            )  # fmt: skip

    def _succeeded(self) -> None:
        if self._failing_since is not None:
            log.info("S3 writes succeed again after %.1f s", time.monotonic() - self._failing_since)
            self._failing_since = None

    # -- playlists ------------------------------------------------------------------------

    async def publish_playlist(self, relpath: str, text: str) -> None:
        self._require_started()
        await asyncio.to_thread(write_atomically, self.root / relpath, text.encode())
        state = self._playlists.get(relpath)
        if state is None:
            state = self._playlists[relpath] = _Playlist(relpath)
        state.text = text
        state.queued += 1
        self._uploaded.discard(relpath)
        if PurePosixPath(relpath).name == MASTER_PLAYLIST:
            self._hold_behind_stream(state)
        if not state.active:
            state.active = True
            self._begin()
            self._queue_when_clear(state)

    def _hold_behind_stream(self, state: _Playlist) -> None:
        """The master's next put waits for every write of its stream queued before now."""
        folder = state.relpath.rpartition("/")[0] + "/"
        for other in self._unsent_playlists(folder):
            if other is not state:
                state.after[other] = other.queued
        state.uploads += [j.done for j in self._uploads.values() if j.relpath.startswith(folder)]

    def _clear(self, state: _Playlist) -> bool:
        """Whether what ``state`` waits for is done (forgetting what is)."""
        if state.after:
            state.after = {s: v for s, v in state.after.items() if not s.settled(v)}
        if state.uploads:
            state.uploads = [upload for upload in state.uploads if not upload.done()]
        return not (state.after or state.uploads)

    def _queue_when_clear(self, state: _Playlist) -> None:
        """Queue an owned playlist for a worker, at once or (a master) once its stream's
        earlier writes are done: the wait holds no worker, so masters cannot starve them."""
        if state.cancelled or self._clear(state):
            self._queue.put_nowait(state)
            return
        task = asyncio.create_task(self._wait_clear(state), name=f"s3-hold-{state.relpath}")
        self._held.add(task)
        task.add_done_callback(self._held.discard)

    async def _wait_clear(self, state: _Playlist) -> None:
        while not state.cancelled and not self._clear(state):
            if state.uploads:
                await asyncio.wait(state.uploads)
            else:
                await self._progress.wait()
        self._queue.put_nowait(state)

    async def _put_playlist(self, state: _Playlist) -> None:
        """Put the newest version until S3 holds it; versions queued meanwhile coalesce.

        An error that is not retried gives the queued versions up: a master playlist or a
        delete waiting for them goes on (a later version is put as usual)."""
        failures = 0
        handed_on = False
        try:
            while not state.cancelled:
                if not self._clear(state):  # a newer master version with its own wait
                    handed_on = True
                    self._queue_when_clear(state)
                    return
                version, data = state.queued, state.text.encode()
                try:
                    await self._attempt(state.relpath, self._put, state.relpath, data)
                except RETRYABLE as exc:
                    failures += 1
                    self.upload_retries += 1
                    self._failed(state.relpath, exc)
                    await asyncio.sleep(self._delay(failures))
                    continue
                failures = 0
                self._succeeded()
                state.sent = version
                self._notify_progress()
                if state.queued == version:
                    if self._playlists.get(state.relpath) is state:
                        del self._playlists[state.relpath]  # the next version starts afresh
                        self._uploaded.add(state.relpath)
                    return
        except Exception:  # not retried (a bug): it would hold its master and deletes forever
            state.given_up = state.queued
            self._notify_progress()
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
        job = _Delete(list(relpaths), self._unsent_playlists(), self._forget(relpaths))
        await asyncio.to_thread(_unlink_all, self.root, relpaths)
        self._begin()
        self._deletes.append(job)
        self._delete_wake.set()

    def _unsent_playlists(self, folder: str = "") -> dict[_Playlist, int]:
        """Playlists (under ``folder``) with a version S3 does not hold yet: the newest."""
        return {
            s: s.queued
            for s in self._playlists.values()
            if s.sent < s.queued and s.relpath.startswith(folder)
        }

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
            state = self._playlists.pop(relpath, None)
            if state is not None:
                state.cancelled = True
                self._notify_progress()
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
                await self._wait_sent(job.after)
                if job.attempts:
                    await asyncio.wait(job.attempts)
            relpaths = list(dict.fromkeys(r for job in batch for r in job.relpaths))
            try:
                await self._delete_keys(relpaths)
            except Exception:
                log.exception("S3 delete of %d object(s) failed", len(relpaths))
            for _ in batch:
                self._deletes.popleft()
                self._end()

    def _notify_progress(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def _wait_sent(self, after: dict[_Playlist, int]) -> None:
        while not all(s.settled(version) for s, version in after.items()):
            await self._progress.wait()

    async def _delete_keys(self, relpaths: list[str]) -> int:
        """DeleteObjects in batches S3 accepts, each retried until it goes through."""
        deleted = 0
        for batch in chunked(relpaths, DELETE_BATCH):
            deleted += await self._delete_batch([self.key(relpath) for relpath in batch])
        self.deletes += deleted
        return deleted

    async def _delete_batch(self, keys: list[str]) -> int:
        deleted, failures = 0, 0
        while keys:
            try:
                response = await self._run(
                    self.client.delete_objects,
                    Bucket=self.settings.bucket,
                    Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
                )
            except RETRYABLE as exc:
                if isinstance(exc, ClientError) and _refused_for_good(exc):
                    log.error(  # retrying would block every later delete
                        "S3 refused to delete %d object(s) (%s); they stay in the bucket",
                        len(keys), exc,
                    )  # fmt: skip
                    return deleted
                failures += 1
                self._failed("delete", exc)
                await asyncio.sleep(self._delay(failures))
                continue
            self._succeeded()
            errors = response.get("Errors") or []
            deleted += len(keys) - len(errors)
            keys = []
            for error in errors:
                if error.get("Code") in TRANSIENT_DELETE_ERRORS:
                    keys.append(error["Key"])
                else:
                    log.error(
                        "S3 refused to delete %s: %s %s",
                        error.get("Key"), error.get("Code"), error.get("Message"),
                    )  # fmt: skip
            if keys:
                failures += 1
                await asyncio.sleep(self._delay(failures))
        return deleted

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
        known = (*self._uploads, *self._playlists, *self._running)
        pending = [relpath for relpath in known if relpath.startswith(relprefix)]
        running = self._forget(pending)
        if running:
            await asyncio.wait(running)
        remote = await self._list(relprefix)
        await self._delete_keys(remote)
        local = await asyncio.to_thread(_remove_tree, folder, self.root)
        self._uploaded.difference_update(local)
        return len(set(remote) | set(local))

    async def published(self, prefix: str) -> set[str]:
        """What the bucket holds under ``prefix`` (the listing waits out an outage; raises
        :class:`ListingRefused` if S3 refuses it for good)."""
        self._require_started()
        safe_prefix(self.root, prefix)
        return set(await self._list("/".join(PurePosixPath(prefix).parts) + "/"))

    async def _list(self, relprefix: str) -> list[str]:
        """Relpaths of every object under ``relprefix``, the listing retried until it works;
        :class:`ListingRefused` at once if S3 refuses it for good (no ``s3:ListBucket``)."""
        failures = 0
        while True:
            try:
                keys = await self._run(self._list_keys, self.key(relprefix))
            except RETRYABLE as exc:
                if isinstance(exc, ClientError) and _refused_for_good(exc):
                    raise self._list_refused(relprefix, exc) from exc
                failures += 1
                self._failed("list", exc)
                await asyncio.sleep(self._delay(failures))
                continue
            self._succeeded()
            return [key.removeprefix(self.settings.prefix) for key in keys]

    def _list_refused(self, relprefix: str, exc: ClientError) -> ListingRefused:
        """The error for a listing S3 refuses for good; logged the first time only."""
        error = ListingRefused(
            f"S3 refused to list s3://{self.settings.bucket}/{self.key(relprefix)} ({exc}): "
            "the credentials need the s3:ListBucket permission on the bucket to delete ended "
            "streams and VODs and to recover recordings"
        )
        if not self._list_refusal_logged:
            self._list_refusal_logged = True
            log.error("%s", error)
        return error

    def _list_keys(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.settings.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _refused_for_good(exc: ClientError) -> bool:
    """A 4xx that asking again will not change (access denied, not implemented by an
    S3-compatible store), unlike throttling and timeouts."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    code = exc.response.get("Error", {}).get("Code", "")
    return 400 <= status < 500 and status not in (408, 429) and code not in TRANSIENT_DELETE_ERRORS


def _skip_expect_continue(request: Any, **_: Any) -> None:
    """Send bodies at once: botocore asks for "100 Continue" first on every put, a round trip
    before each segment (up to 1 s where the server never answers it)."""
    if "Expect" in request.headers:
        del request.headers["Expect"]


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
