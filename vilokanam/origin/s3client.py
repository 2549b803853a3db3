"""The boto3 side of S3 storage: one client in a thread pool, calls retried until they work.

:class:`~vilokanam.origin.s3.S3Storage` decides what goes to the bucket and in which order
(segments before the playlists naming them, masters last, deletes after puts); this module only
talks to S3. Kept apart so that the ordering rules can be read without the transport, and so
that every call shares one retry policy (:func:`backoff`), one failure log (the first failure at
once, then a reminder every 10 s, and a line when S3 answers again) and one set of figures
(retries, deletes, the upload-time average behind the "players fall behind live" warning).

Every failure is retried (``RETRYABLE``: outages, timeouts, 5xx and 4xx alike), except where
asking again cannot help: a delete or listing S3 refuses for good (access denied, not
implemented) is given up at once, a listing by raising :class:`ListingRefused`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from vilokanam.config.settings import S3Settings
from vilokanam.origin.storage import cache_control, content_type

log = logging.getLogger("vilokanam.origin.s3")
"""The storage's logger: S3 messages keep one name (operators filter on it), whichever module
of the storage writes them."""

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


def backoff(failures: int, initial: float, maximum: float) -> float:
    """Seconds before retry number ``failures`` (1, 2, …): doubling from ``initial`` up to
    ``maximum``, the upper half jittered so retries after an outage do not arrive together."""
    ceiling = min(maximum, initial * 2 ** max(failures - 1, 0))
    return ceiling / 2 + random.random() * ceiling / 2


def chunked(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ListingRefused(PermissionError):
    """S3 refuses for good to list the bucket (the credentials lack ``s3:ListBucket``)."""


class S3Client:
    """The bucket of ``settings``: objects at ``{prefix}{relpath}``, files read from ``root``.

    ``backlog()`` says how many segments and bytes wait for S3 meanwhile (the storage's spool),
    for the reminder logged while S3 keeps failing."""

    def __init__(
        self,
        root: Path,
        settings: S3Settings,
        backlog: Callable[[], tuple[int, int]] = lambda: (0, 0),
    ) -> None:
        self.root = root
        self.settings = settings
        self.backlog = backlog
        self.client: Any = None
        """The boto3 S3 client, from :meth:`start` (thread-safe; shared by every call)."""
        self.expected_segment_seconds = 2.0
        """Segment duration the packager aims for (the server sets ``hls.segment_duration``):
        uploads slower than 90 % of it are reported."""
        self.upload_retries = 0
        self.deletes = 0
        self.upload_seconds_avg = 0.0
        """Moving average (EWMA) of the seconds one successful segment put takes."""
        self._executor: ThreadPoolExecutor | None = None
        self._failing_since: float | None = None
        self._failure_logged = 0.0
        self._slow_logged = -SLOW_LOG_EVERY
        self._observed = 0
        self._list_refusal_logged = False

    def key(self, relpath: str) -> str:
        return f"{self.settings.prefix}{relpath}"

    # -- figures --------------------------------------------------------------------------

    def slow(self, segment_duration: float) -> bool:
        """Whether a segment takes longer than 90 % of ``segment_duration`` to upload."""
        return self.upload_seconds_avg > SLOW_FRACTION * segment_duration

    @property
    def slow_uploads(self) -> bool:
        return self.slow(self.expected_segment_seconds)

    def observe(self, seconds: float) -> None:
        """Count a segment put of ``seconds`` in the average; warn (once a minute) if slow."""
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

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self.client = await asyncio.to_thread(self._make_client)
        # A thread per upload worker, one for the delete lane, one for listings.
        self._executor = ThreadPoolExecutor(
            self.settings.upload_concurrency + 2, thread_name_prefix="s3"
        )

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

    async def check_bucket(self) -> None:
        """Say at start whether the bucket answers (uploads wait for it either way)."""
        try:
            await self.run(self.client.head_bucket, Bucket=self.settings.bucket)
        except RETRYABLE as exc:
            log.warning(
                "S3 bucket %s does not answer yet (%s): uploads will retry",
                self.settings.bucket,
                exc,
            )
        else:
            log.info("S3 storage: bucket %s, prefix %r", self.settings.bucket, self.settings.prefix)

    def close(self) -> None:
        """Drop the calls not begun and the client (those in a thread finish there)."""
        assert self._executor is not None
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None
        self.client.close()
        self.client = None

    async def run(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        """``func`` in the S3 thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: func(*args, **kwargs))

    # -- failures -------------------------------------------------------------------------

    async def retry_later(
        self,
        what: str,
        exc: BaseException,
        failures: int,
        *,
        put: bool = False,
        wake: asyncio.Future[Any] | None = None,
    ) -> None:
        """After failed attempt number ``failures`` at ``what``: count it (``put``: in
        :attr:`upload_retries`), log it, and wait out the backoff, or until ``wake`` is done."""
        if put:
            self.upload_retries += 1
        self.failed(what, exc)
        if wake is None:
            await asyncio.sleep(self._delay(failures))
        else:
            await asyncio.wait([wake], timeout=self._delay(failures))

    def _delay(self, failures: int) -> float:
        return backoff(failures, self.settings.retry_initial, self.settings.retry_max)

    def failed(self, what: str, exc: BaseException) -> None:
        """Log an S3 failure: the first at once, then a reminder every 10 s while it lasts."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = self._failure_logged = now
            log.warning("S3 write failed (%s: %s); retrying until it works", what, exc)
        elif now - self._failure_logged >= FAILURE_LOG_EVERY:
            self._failure_logged = now
            files, size = self.backlog()
            log.warning(
                "S3 still failing after %.0f s (%s); %d segment(s), %.1f MiB waiting",
                now - self._failing_since, exc, files, size / MIB,
            )  # fmt: skip

    def succeeded(self) -> None:
        if self._failing_since is not None:
            log.info("S3 writes succeed again after %.1f s", time.monotonic() - self._failing_since)
            self._failing_since = None

    # -- puts -----------------------------------------------------------------------------

    async def put_file(self, relpath: str) -> None:
        """One put of the file at ``relpath`` (raises what S3 or the disk raises)."""
        await self.run(self._put_file, relpath)

    async def put(self, relpath: str, data: bytes) -> None:
        """One put of ``data`` at ``relpath`` (raises what S3 raises)."""
        await self.run(self._put, relpath, data)

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

    # -- deletes --------------------------------------------------------------------------

    async def delete_keys(self, relpaths: list[str]) -> int:
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
                response = await self.run(
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
                await self.retry_later("delete", exc, failures)
                continue
            self.succeeded()
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

    # -- listings -------------------------------------------------------------------------

    async def list_relpaths(self, relprefix: str) -> list[str]:
        """Relpaths of every object under ``relprefix``, the listing retried until it works;
        :class:`ListingRefused` at once if S3 refuses it for good (no ``s3:ListBucket``)."""
        failures = 0
        while True:
            try:
                keys = await self.run(self._list_keys, self.key(relprefix))
            except RETRYABLE as exc:
                if isinstance(exc, ClientError) and _refused_for_good(exc):
                    raise self._list_refused(relprefix, exc) from exc
                failures += 1
                await self.retry_later("list", exc, failures)
                continue
            self.succeeded()
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
