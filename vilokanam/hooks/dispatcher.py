"""Background webhook delivery: claims due outbox rows, POSTs them signed, retries with backoff.

Nothing here runs on the ingest path: events are queued by fire-and-forget tasks, database work
runs on this dispatcher's own threads, and requests run concurrently (at most
``PER_ENDPOINT`` at once per URL), so a slow or dead endpoint delays neither ingest nor the
other endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import aiohttp

from vilokanam.config import Settings
from vilokanam.hooks import outbox
from vilokanam.hooks.signing import webhook_headers
from vilokanam.store import Store
from vilokanam.store.models import DeliveryState, utcnow

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

CONCURRENCY = 8
PER_ENDPOINT = 2
POLL_INTERVAL = 1.0
LEASE_MARGIN = 30.0
RETENTION = timedelta(days=7)
"""Delivered and failed rows are kept this long (for inspection), then pruned."""
PRUNE_EVERY = 600.0
"""Seconds a claim outlives the request timeout: after a crash the row is retried then."""
JITTER = 0.2


def backoff_delay(
    attempts: int, initial: float, maximum: float, *, rng: Callable[[], float] = random.random
) -> float:
    """Seconds before the next try after ``attempts`` failed ones.

    ``initial * 2**(attempts-1)`` capped at ``maximum``, less up to 20 % random jitter so that
    receivers that failed together are not all retried in the same instant.
    """
    base = min(maximum, initial * 2 ** max(0, attempts - 1))
    return base * (1 - JITTER * rng())


def display_url(url: str) -> str:
    """``url`` for logs and error messages: without credentials, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


class WebhookDispatcher:
    """Delivers the outbox. ``submit`` queues an event; ``start``/``stop`` run the loop.

    ``delivered``, ``failed`` and ``retried`` count deliveries since start (for /metrics).
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        poll_interval: float = POLL_INTERVAL,
        concurrency: int = CONCURRENCY,
        per_endpoint: int = PER_ENDPOINT,
    ) -> None:
        self.settings = settings
        self.store = store
        self.poll_interval = poll_interval
        self._next_prune = 0.0
        self.concurrency = concurrency
        self.per_endpoint = per_endpoint
        self.delivered = 0
        self.failed = 0
        self.retried = 0
        self._session: aiohttp.ClientSession | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._in_flight: dict[asyncio.Task[None], outbox.Claimed] = {}
        self._submits: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._passes = 0
        self._idle_pass = -1
        """The last loop pass that found nothing due and nothing in flight."""
        self._idle = asyncio.Event()
        self._retry_times: list[float] = []
        """Loop times (a heap) when this dispatcher's failed deliveries fall due again."""

    # -- public ---------------------------------------------------------------
    async def start(self) -> None:
        if self._loop_task is not None:
            return
        self._executor = ThreadPoolExecutor(2, thread_name_prefix="vilokanam-webhooks")
        timeout = aiohttp.ClientTimeout(total=self.settings.webhooks.timeout)
        self._session = aiohttp.ClientSession(timeout=timeout)
        self._loop_task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    def submit(self, event: str, data: dict[str, Any]) -> None:
        """Queue ``event`` for its endpoints in the background and deliver it soon.

        Returns at once (call it from the event loop); a failure to queue is logged.
        """
        if not outbox.subscribed(self.settings, event):
            return
        task = asyncio.get_running_loop().create_task(self._enqueue(event, data))
        self._submits.add(task)
        task.add_done_callback(self._submits.discard)

    def wake(self) -> None:
        """Look for due deliveries now rather than at the next poll."""
        self._wake.set()

    async def stop(self, flush_timeout: float = 2.0) -> None:
        """Deliver what is due within ``flush_timeout`` seconds, then stop.

        Requests still running then are abandoned; their rows stay pending and are sent by the
        next start (receivers de-duplicate on ``Vilokanam-Delivery``).
        """
        if self._loop_task is None:
            return
        try:
            async with asyncio.timeout(flush_timeout):
                if self._submits:
                    await asyncio.gather(*self._submits, return_exceptions=True)
                await self._until_idle()
        except TimeoutError:
            log.info(
                "webhooks: %d delivery(ies) still in flight at shutdown; sent after restart",
                len(self._in_flight),
            )
        self._loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop_task
        self._loop_task = None
        interrupted = [job.id for job in self._in_flight.values()]
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, *self._submits, return_exceptions=True)
        if interrupted:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._db(outbox.release, self.store, interrupted)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    # -- the loop -------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            self._wake.clear()
            self._passes += 1
            this_pass = self._passes
            claimed: list[outbox.Claimed] = []
            try:
                claimed = await self._claim()
            except Exception:
                log.exception("webhooks: reading the outbox failed; trying again shortly")
            for job in claimed:
                task = asyncio.create_task(self._deliver(job), name=f"webhook-{job.id}")
                self._in_flight[task] = job
                task.add_done_callback(self._done)
            await self._maybe_prune()
            if not claimed and not self._in_flight:
                self._idle_pass = this_pass
                self._idle.set()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the stop's cancel.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._sleep_time()):
                    await self._wake.wait()

    async def _maybe_prune(self) -> None:
        now = asyncio.get_running_loop().time()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY
        try:
            pruned = await self._db(outbox.prune, self.store, utcnow() - RETENTION)
        except Exception:
            log.exception("webhooks: pruning old deliveries failed")
            return
        if pruned:
            log.info("webhooks: pruned %d deliveries older than %s", pruned, RETENTION)

    def _sleep_time(self) -> float:
        """Until the next poll, or sooner when one of our retries falls due before it."""
        now = asyncio.get_running_loop().time()
        while self._retry_times and self._retry_times[0] <= now:
            heapq.heappop(self._retry_times)
        if not self._retry_times:
            return self.poll_interval
        return min(self.poll_interval, self._retry_times[0] - now + 0.01)

    async def _until_idle(self) -> None:
        """Wait for a loop pass, begun after this call, that finds nothing to do."""
        wanted = self._passes + 1
        self.wake()
        while self._idle_pass < wanted:
            self._idle.clear()
            await self._idle.wait()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self.wake()

    async def _claim(self) -> list[outbox.Claimed]:
        free = self.concurrency - len(self._in_flight)
        if free <= 0:
            return []
        busy = Counter(job.url for job in self._in_flight.values())
        return await self._db(
            outbox.claim_due,
            self.store,
            limit=free,
            per_url=self.per_endpoint,
            busy=busy,
            lease=self.settings.webhooks.timeout + LEASE_MARGIN,
        )

    async def _enqueue(self, event: str, data: dict[str, Any]) -> None:
        try:
            await self._db(outbox.enqueue_event, self.store, self.settings, event, data)
        except Exception:
            log.exception("webhooks: could not queue %s", event)
            return
        self.wake()

    async def _db(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking outbox query on the dispatcher's threads (never the event loop)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: function(*args, **kwargs))

    # -- one attempt ----------------------------------------------------------
    def _secret_for(self, url: str) -> str:
        hooks = self.settings.webhooks
        for endpoint in hooks.endpoints:
            if endpoint.url == url:
                return endpoint.secret or hooks.secret
        return hooks.secret  # an endpoint removed from the settings after the event was queued

    async def _post(self, job: outbox.Claimed) -> str | None:
        """One signed POST; None on a 2xx answer, else what went wrong."""
        secret = self._secret_for(job.url)
        if not secret:
            return "no signing secret for this URL (set webhooks.secret)"
        assert self._session is not None
        headers = webhook_headers(secret, job.body, event=job.event, delivery_id=job.event_id)
        try:
            async with self._session.post(
                job.url, data=job.body.encode(), headers=headers, allow_redirects=False
            ) as response:
                snippet = (await response.content.read(200)).decode("utf-8", "replace").strip()
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}" + (f": {snippet}" if snippet else "")
        except TimeoutError:
            return f"no answer within {self.settings.webhooks.timeout:g} s"
        except aiohttp.ClientError as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    async def _deliver(self, job: outbox.Claimed) -> None:
        hooks = self.settings.webhooks
        where = f"{job.event} {job.event_id} → {display_url(job.url)}"
        error = await self._post(job)
        try:
            if error is None:
                await self._db(outbox.mark_delivered, self.store, job.id)
                self.delivered += 1
                log.debug("webhook %s delivered", where)
                return
            attempt = job.attempts + 1
            retry_in = backoff_delay(attempt, hooks.backoff_initial, hooks.backoff_max)
            state, attempts = await self._db(
                outbox.mark_attempt_failed,
                self.store,
                job.id,
                error,
                max_attempts=hooks.max_attempts,
                retry_in=retry_in,
            )
        except Exception:
            log.exception("webhook %s: recording the result failed (retried later)", where)
            return
        if state == DeliveryState.FAILED:
            self.failed += 1
            log.warning(
                "webhook %s failed after %d attempt(s), giving up: %s", where, attempts, error
            )
        else:
            self.retried += 1
            heapq.heappush(self._retry_times, asyncio.get_running_loop().time() + retry_in)
            log.info(
                "webhook %s: attempt %d/%d failed (%s); retrying in %.1f s",
                where,
                attempts,
                hooks.max_attempts,
                error,
                retry_in,
            )
