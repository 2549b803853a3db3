"""Who is watching: distinct clients that fetched a channel's playlists or segments recently.

A viewer is a client identity (see :func:`viewer_identity`) seen on ``/live/{slug}/`` within
``http.viewer_timeout`` seconds. Noting a fetch is O(1): each channel keeps its viewers in
last-seen order, so expiry only ever looks at the oldest end.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from vilokanam.ingest.streams import LiveStream


def viewer_identity(request: web.Request, viewer_id: int | None = None) -> bytes:
    """The one place that says who a viewer is: the playback token's viewer when the request
    carries one, else a hash of the peer address and User-Agent.

    Without a token, clients behind one NAT with the same browser count once.
    """
    if viewer_id is not None:
        return b"v" + viewer_id.to_bytes(8, "big")
    agent = request.headers.get("User-Agent", "")
    key = f"{request.remote or ''}\x00{agent}".encode("utf-8", "surrogateescape")
    return hashlib.blake2b(key, digest_size=8).digest()


class ViewerCounter:
    """Distinct viewers per channel over a sliding ``timeout`` (seconds)."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self._clock = clock
        self._seen: dict[str, OrderedDict[bytes, float]] = {}
        """slug → viewer → last fetch time, oldest first."""

    def note(self, slug: str, viewer: bytes) -> None:
        """``viewer`` fetched something of ``slug`` now."""
        now = self._clock()
        seen = self._seen.get(slug)
        if seen is None:
            seen = self._seen[slug] = OrderedDict()
        elif viewer in seen:
            seen.move_to_end(viewer)
        seen[viewer] = now
        self._trim(seen, now)  # amortized O(1): each entry is dropped once

    def count(self, slug: str) -> int:
        seen = self._seen.get(slug)
        if seen is None:
            return 0
        self._trim(seen, self._clock())
        if not seen:
            del self._seen[slug]
        return len(seen)

    def channels(self) -> list[str]:
        return list(self._seen)

    def expire(self) -> None:
        """Forget viewers (and channels) not seen within ``timeout``."""
        now = self._clock()
        for slug in list(self._seen):
            seen = self._seen[slug]
            self._trim(seen, now)
            if not seen:
                del self._seen[slug]

    def _trim(self, seen: OrderedDict[bytes, float], now: float) -> None:
        horizon = now - self.timeout
        while seen:
            viewer, last = next(iter(seen.items()))
            if last >= horizon:
                return
            del seen[viewer]


async def feed_viewer_counts(
    counter: ViewerCounter,
    live_streams: Callable[[], Iterable[LiveStream]],
    interval: float = 1.0,
) -> None:
    """Forever: expire old viewers and tell each live stream its count (peaks reach history)."""
    while True:
        counter.expire()
        for stream in live_streams():
            stream.stats.note_viewers(counter.count(stream.channel.slug))
        await asyncio.sleep(interval)
