"""Who is watching: distinct clients that fetched a channel's playlists or segments recently.

A viewer is a client identity (see :func:`viewer_identity`) seen on ``/live/{slug}/`` within
``http.viewer_timeout`` seconds. Noting a fetch is O(1): each channel keeps its viewers in
last-seen order, so expiry only ever looks at the oldest end.

CDN access logs (``vilokanam.billing.cdnlogs``) note fetches seen some seconds ago, out of that
order: those go to a small heap per channel instead, so the origin's hot path stays O(1).
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from vilokanam.ingest.streams import LiveStream


TRUSTED_PROXIES = web.AppKey("trusted_proxies", tuple)
"""``ip_network``s of caches in front of the origin (``http.trusted_proxies``)."""


def viewer_identity(request: web.Request, viewer_id: int | None = None) -> bytes:
    """The one place that says who a viewer is: the playback token's viewer when the request
    carries one, else a hash of the client address and User-Agent.

    Without a token, clients behind one NAT with the same browser count once.
    """
    return identity(client_address(request), request.headers.get("User-Agent", ""), viewer_id)


def client_address(request: web.Request) -> str:
    """The peer, or for a request relayed by a trusted proxy, the nearest untrusted address in
    its ``X-Forwarded-For`` (what the proxy's own access log calls the client)."""
    peer = request.remote or ""
    trusted = request.app.get(TRUSTED_PROXIES)
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",")]
    for hop in reversed([hop for hop in hops if hop]):
        if not _is_trusted(hop, trusted):
            return hop
    return peer


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def _is_trusted(address: str, trusted: Networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def identity(address: str, agent: str, viewer_id: int | None = None) -> bytes:
    """:func:`viewer_identity` from its parts (a CDN log line has no request object)."""
    if viewer_id is not None:
        return b"v" + viewer_id.to_bytes(8, "big")
    key = f"{address}\x00{agent}".encode("utf-8", "surrogateescape")
    return hashlib.blake2b(key, digest_size=8).digest()


class _Earlier:
    """Viewers seen some time ago (CDN log lines), in any order: last-seen times and a heap."""

    __slots__ = ("heap", "last")

    def __init__(self) -> None:
        self.last: dict[bytes, float] = {}
        self.heap: list[tuple[float, bytes]] = []

    def add(self, viewer: bytes, at: float) -> None:
        if self.last.get(viewer, -1.0) >= at:
            return
        self.last[viewer] = at
        heapq.heappush(self.heap, (at, viewer))

    def trim(self, horizon: float) -> None:
        heap, last = self.heap, self.last
        while heap and heap[0][0] < horizon:
            at, viewer = heapq.heappop(heap)
            if last.get(viewer) == at:  # not superseded by a later sighting
                del last[viewer]


class ViewerCounter:
    """Distinct viewers per channel over a sliding ``timeout`` (seconds)."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self._clock = clock
        self._seen: dict[str, OrderedDict[bytes, float]] = {}
        """slug → viewer → last fetch time, oldest first."""
        self._earlier: dict[str, _Earlier] = {}
        """slug → viewers last seen in the past (CDN logs), not in ``_seen``."""

    def note(self, slug: str, viewer: bytes, age: float = 0.0) -> None:
        """``viewer`` fetched something of ``slug`` ``age`` seconds ago (0: now)."""
        now = self._clock()
        seen = self._seen.get(slug)
        if age > 0:
            self._note_earlier(slug, viewer, now - age, seen)
            return
        if seen is None:
            seen = self._seen[slug] = OrderedDict()
        elif viewer in seen:
            seen.move_to_end(viewer)
        seen[viewer] = now
        if self._earlier:
            earlier = self._earlier.get(slug)
            if earlier is not None:
                earlier.last.pop(viewer, None)  # seen now: later than any log line
        self._trim(seen, now)  # amortized O(1): each entry is dropped once

    def _note_earlier(
        self, slug: str, viewer: bytes, at: float, seen: OrderedDict[bytes, float] | None
    ) -> None:
        if at < self._clock() - self.timeout:
            return  # gone already
        if seen is not None and viewer in seen:
            if seen[viewer] >= at:
                return
            del seen[viewer]  # the log saw it later than the origin did
        earlier = self._earlier.get(slug)
        if earlier is None:
            earlier = self._earlier[slug] = _Earlier()
        earlier.add(viewer, at)

    def count(self, slug: str) -> int:
        now = self._clock()
        total = 0
        seen = self._seen.get(slug)
        if seen is not None:
            self._trim(seen, now)
            if not seen:
                del self._seen[slug]
            total += len(seen)
        earlier = self._earlier.get(slug)
        if earlier is not None:
            earlier.trim(now - self.timeout)
            if not earlier.last:
                del self._earlier[slug]
            total += len(earlier.last)
        return total

    def channels(self) -> list[str]:
        return list(dict.fromkeys([*self._seen, *self._earlier]))

    def expire(self) -> None:
        """Forget viewers (and channels) not seen within ``timeout``."""
        for slug in self.channels():
            self.count(slug)

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
