"""CDN log fetches → the billing tracker and the live viewer counts, as the origin feeds them.

For each logged ``GET`` of a media segment answered 200 or 206: the playback token of its query
is verified (signature, channel, and expiry **at the line's time**, not now), the segment's
duration is looked up (the live stream in memory, the durations saved with the session, the
``#EXTINF`` of the playlist on disk), the viewer's saved watch states are loaded, and the fetch
goes to :meth:`BillingService.note_fetch` at the line's time. Media playlist fetches are "still
watching" events. Free channels are not billed, but counted as viewers (the token's viewer, else
client address + User-Agent, like the origin) — live viewers only: lines of the channel's current
live session, known inside the server only. Lines dated over 30 days ago or over 5 minutes ahead
are skipped; a line earlier than a viewer's first fetch known moves it back
(:meth:`Tracker.backdate`), so files read in any order bill the same.

Re-reading a log never bills twice: the tracker credits each (viewer, session, sequence) once,
and :meth:`BillingService.ensure_loaded` restores what was credited before. Lines of a batch are
fed in time order; then each (viewer, session) touched is released at the latest time it was
seen, so the outcome does not depend on how lines were interleaved or duplicated in a batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from vilokanam.billing.cdnlogs.cursors import CursorState, advance, find
from vilokanam.billing.cdnlogs.formats import LogFetch
from vilokanam.billing.cdnlogs.paths import Media, classify
from vilokanam.billing.tokens import Claims, TokenError, verify
from vilokanam.origin.gate import SESSION_PREFIX, ChannelCache, SegmentDurations, channel_lookup
from vilokanam.origin.viewers import identity
from vilokanam.store import SessionNotFound

if TYPE_CHECKING:
    from vilokanam.billing.service import BillingService
    from vilokanam.config import Settings
    from vilokanam.ingest.streams import StreamManager
    from vilokanam.origin.viewers import ViewerCounter
    from vilokanam.store import Channel, Store

log = logging.getLogger(__name__)

BILLED_STATUSES = (200, 206)
DURATIONS_TTL = 2.0
"""Seconds a session's saved durations are reused before a missing sequence re-reads them."""
MAX_REMEMBERED = 100_000
MAX_AGE = 30 * 86400.0
"""Seconds: older lines are skipped ("too old"): a garbled or forged date cannot move a
viewer's first fetch far back and lift the wall-clock cap."""
MAX_AHEAD = 300.0
"""Seconds a line may be dated ahead of this machine's clock (clock skew between hosts)."""


# -- what a batch did ----------------------------------------------------------------------------
@dataclass
class Summary:
    """Counts of one batch, file or run (the ``ingest-logs`` table)."""

    lines: int = 0
    bad_lines: int = 0
    """Lines not in the file's format (skipped)."""
    other: int = 0
    """Requests of anything but segments and playlists."""
    segments: int = 0
    playlists: int = 0
    billed: int = 0
    """Segment fetches of priced channels fed to the billing tracker."""
    ticks: int = 0
    """Whole seconds they made due (0 when they were credited before)."""
    free: int = 0
    """Segment fetches of free channels (viewer counts only)."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Media requests not billed, by reason."""

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def add(self, other: Summary) -> None:
        for item in fields(self):
            if item.name == "skipped":
                for reason, count in other.skipped.items():
                    self.skipped[reason] = self.skipped.get(reason, 0) + count
            else:
                setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))

    def as_dict(self) -> dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(self)} | {
            "skipped": dict(sorted(self.skipped.items()))
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        return cls(
            **{item.name: data.get(item.name, 0) for item in fields(cls)}
            | {"skipped": dict(data.get("skipped") or {})}
        )


@dataclass(frozen=True, slots=True)
class Batch:
    """Consecutive complete lines of one file, ``start`` to ``end`` (bytes, uncompressed), with
    the media requests among them; the lines that were not are only counted."""

    source: str
    start: int
    end: int
    lines: int
    bad_lines: int
    other: int
    fetches: list[LogFetch]


# -- lookups -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Owner:
    channel_id: int
    slug: str


class Catalog:
    """Channels by slug, sessions' channels and segment durations, cached (store reads run in
    threads). ``manager``: the running server's streams, when the ingester runs inside it."""

    def __init__(
        self, store: Store, settings: Settings, manager: StreamManager | None = None
    ) -> None:
        self.store = store
        self.media_dir = settings.media_dir
        self.manager = manager
        self.channels = ChannelCache(channel_lookup(store))
        self._owners: dict[int, tuple[Owner | None, float]] = {}
        self._durations: dict[int, tuple[list[int], float]] = {}
        self._playlists = SegmentDurations(None)

    async def channel(self, slug: str) -> Channel | None:
        return await self.channels.get(slug)

    async def owner(self, session_id: int) -> Owner | None:
        """The channel of a stream session; None if there is no such session."""
        cached = self._owners.get(session_id)
        if cached is not None and (cached[0] is not None or time.monotonic() - cached[1] < 5):
            return cached[0]
        try:
            _, channel = await asyncio.to_thread(self.store.get_session, session_id)
        except SessionNotFound:
            owner = None
        else:
            owner = Owner(channel.id or 0, channel.slug)
        if len(self._owners) >= MAX_REMEMBERED:
            self._owners.clear()
        self._owners[session_id] = (owner, time.monotonic())
        return owner

    def live_session(self, slug: str) -> int | None:
        """The session ``slug`` streams live now; None when it is not live or not known (no
        server: an in-process ingester counts no live viewers)."""
        if self.manager is None:
            return None
        stream = self.manager.stream_for_slug(slug)
        return None if stream is None else stream.session_id

    def current_session(self, slug: str) -> int | None:
        """The session ``/live/{slug}/`` serves now (only known inside the server)."""
        prefix = self.manager.media_prefix(slug) if self.manager is not None else None
        found = SESSION_PREFIX.search(prefix) if prefix else None
        return int(found[1]) if found is not None else None

    async def duration(self, session_id: int, sequence: int, rendition: str | None) -> float | None:
        """Seconds of content in a media sequence; None if unknown."""
        if self.manager is not None:
            stream = self.manager.stream_for_session(session_id)
            known = stream.segment_duration(sequence) if stream is not None else None
            if known is not None:
                return known
        saved = self._durations.get(session_id)
        if saved is None or (
            not _ms(saved[0], sequence) and time.monotonic() - saved[1] > DURATIONS_TTL
        ):
            durations = await asyncio.to_thread(self.store.segment_durations, session_id)
            saved = self._durations[session_id] = (durations, time.monotonic())
        found = _ms(saved[0], sequence)
        if found:
            return found / 1000
        if rendition is None:
            return None
        playlist = os.path.join(self.media_dir, "streams", str(session_id), rendition, "index.m3u8")
        return self._playlists.from_playlist(playlist, sequence)


def _ms(durations: list[int], sequence: int) -> int:
    return durations[sequence] if 0 <= sequence < len(durations) else 0


# -- the ingester ------------------------------------------------------------------------------
def token_of(query: str) -> str:
    """The ``token`` parameter of a raw query string ("" if none)."""
    if "token=" in query:
        for part in query.split("&"):
            if part.startswith("token="):
                return unquote_plus(part[6:])
    return ""


class CdnIngester:
    """Feeds parsed log fetches to billing and viewer counts; keeps files' cursors."""

    def __init__(
        self,
        billing: BillingService,
        catalog: Catalog,
        secret: bytes,
        *,
        viewers: ViewerCounter | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.billing = billing
        self.catalog = catalog
        self.secret = secret
        self.viewers = viewers
        self._wall = wall
        self._verified: dict[str, Claims] = {}
        self._last_seen: dict[tuple[int, int], float] = {}
        """(viewer, session) → latest line time fed: where a batch releases what waits."""
        self._live_session: dict[tuple[int, str], int] = {}
        """(viewer, slug) → the session of its latest segment (for ``/live/`` playlists)."""

    # -- cursors and batches (what the API and the CLI call) ------------------------------------
    async def cursor(self, source: str) -> CursorState:
        return await asyncio.to_thread(find, self.catalog.store, source)

    async def submit(self, batch: Batch) -> tuple[Summary, CursorState]:
        """Feed a batch, flush billing, then move the file's cursor past it: a crash in between
        reads the batch again, which bills nothing twice."""
        summary = await self.feed(batch.fetches)
        summary.lines += batch.lines
        summary.bad_lines += batch.bad_lines
        summary.other += batch.other
        await self.billing.flush()
        cursor = await asyncio.to_thread(
            advance,
            self.catalog.store,
            batch.source,
            batch.start,
            batch.end,
            batch.lines,
            summary.segments,
        )
        return summary, cursor

    # -- feeding ----------------------------------------------------------------------------
    async def feed(self, fetches: Iterable[LogFetch]) -> Summary:
        summary = Summary()
        touched: dict[tuple[int, int], tuple[Channel, float, int]] = {}
        """(viewer, session) → (channel, latest time, ticks due before this batch)."""
        for fetch in sorted(fetches, key=lambda f: f.at):
            media = classify(fetch.path)
            if media is None:
                summary.other += 1
                continue
            await self._one(fetch, media, summary, touched)
        if len(self._last_seen) >= MAX_REMEMBERED:
            self._last_seen.clear()
        for key, (channel, latest, before) in touched.items():
            # the latest time the viewer is known to have fetched: a batch of older lines
            # (a file read out of time order) releases what they make room for up to there
            known = self.billing.tracker.last_seen(*key)
            latest = max(latest, self._last_seen.get(key, latest), known or latest)
            self._last_seen[key] = latest
            self.billing.note_watching(key[0], channel, key[1], at=latest)
            summary.ticks += self._due(key) - before
        return summary

    def _due(self, key: tuple[int, int]) -> int:
        totals = self.billing.tracker.totals(*key)
        return 0 if totals is None else totals[0]

    async def _one(
        self,
        fetch: LogFetch,
        media: Media,
        summary: Summary,
        touched: dict[tuple[int, int], tuple[Channel, float, int]],
    ) -> None:
        segment = media.kind == "segment"
        if segment:
            summary.segments += 1
        else:
            summary.playlists += 1
        now = self._wall()
        if not fetch.at >= now - MAX_AGE:  # NaN too
            summary.skip("too old")
            return
        if fetch.at > now + MAX_AHEAD:
            summary.skip("in the future")
            return
        if fetch.method != "GET":
            summary.skip("HEAD request" if fetch.method == "HEAD" else f"{fetch.method} request")
            return
        if fetch.status not in (BILLED_STATUSES if segment else (200,)):
            summary.skip(f"status {fetch.status // 100}xx")
            return
        slug = media.slug
        if media.session_id is not None:
            owner = await self.catalog.owner(media.session_id)
            if owner is None:
                summary.skip("unknown stream session")
                return
            if slug is not None and slug != owner.slug:
                summary.skip("segment of another channel")
                return
            slug = owner.slug
        channel = await self.catalog.channel(slug) if slug is not None else None
        if channel is None or slug is None:
            summary.skip("unknown channel")
            return
        claims, reason = self._claims(token_of(fetch.query), slug, fetch.at)
        priced = channel.price_per_second > 0
        if (
            self.viewers is not None
            and (claims is not None or not priced)
            and self._watches_live(fetch, media, slug)
        ):
            viewer = identity(fetch.client, fetch.user_agent, claims.viewer_id if claims else None)
            self.viewers.note(slug, viewer, age=max(now - fetch.at, 0.0))
        if not priced:
            if segment:
                summary.free += 1
            return
        if claims is None:
            summary.skip(reason)
            return
        viewer_id = claims.viewer_id
        await self.billing.ensure_loaded(viewer_id)  # restores what was credited before
        session = media.session_id
        if session is None:  # a /live/ playlist: the session it watches
            session = self._live_session.get((viewer_id, slug)) or self.catalog.current_session(
                slug
            )
            if session is None:
                return
        key = (viewer_id, session)
        seen = touched.get(key)
        touched[key] = (channel, fetch.at, self._due(key) if seen is None else seen[2])
        if not segment:
            self.billing.note_watching(viewer_id, channel, session, at=fetch.at)
            self.billing.tracker.backdate(viewer_id, session, fetch.at)
            return
        assert media.sequence is not None
        duration = await self.catalog.duration(session, media.sequence, media.rendition)
        if duration is None or not duration > 0:
            summary.skip("unknown segment duration")
            return
        if media.slug is not None:
            if len(self._live_session) >= MAX_REMEMBERED:
                self._live_session.clear()
            self._live_session[(viewer_id, slug)] = session
        self.billing.note_fetch(viewer_id, channel, session, media.sequence, duration, at=fetch.at)
        # a line earlier than the viewer's first fetch known (another file, read later): the
        # viewer was there then, so the cap counts from there
        self.billing.tracker.backdate(viewer_id, session, fetch.at)
        summary.billed += 1

    def _watches_live(self, fetch: LogFetch, media: Media, slug: str) -> bool:
        """Whether the line fetched the channel's current live session (a live viewer), not a
        VOD or an earlier session."""
        live = self.catalog.live_session(slug)
        if live is None or fetch.path.startswith("/vod/"):
            return False
        return media.session_id is None or media.session_id == live

    def _claims(self, token: str, slug: str, at: float) -> tuple[Claims | None, str]:
        """The token's claims if it was valid for ``slug`` at ``at``; else (None, why not)."""
        claims = self._verified.get(token)
        try:
            if claims is None or claims.expires_at <= at or claims.slug != slug:
                claims = verify(self.secret, token, slug, at)  # raises with the reason
                if len(self._verified) >= MAX_REMEMBERED:
                    self._verified.clear()
                self._verified[token] = claims
        except TokenError as exc:
            return None, exc.reason
        return claims, ""
