"""The billing gate in front of ``/live/{slug}/``: playback tokens, balances, fetch events.

For a channel with ``price_per_second > 0`` every playlist and segment request needs
``?token=`` (see :mod:`vilokanam.billing.tokens`): a missing, bad or expired token is a 401, a
viewer who may not watch (no balance) a 402, both JSON and never charged. Playlists served to a
tokened request carry the token in every URI, so a player needs only the one master URL. A
media segment served to a tokened request becomes one fetch event for the billing service,
with the segment's duration from the live stream (or, once it is gone, the playlist on disk);
a media segment whose duration is known to neither is a 404, never served unbilled.

For the free preview the gate tells the billing service which stream session a request is for:
a segment's from its file name (``s{session}-seg-N``), a playlist's from the channel's media
prefix (``streams/{session}``: the current or latest session).

The hot path does no database or disk work beyond the file it serves: channels are cached by
slug for a few seconds (refreshed in a thread), verified tokens are remembered, and durations
of ended streams are parsed once per playlist version.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from vilokanam.billing.tokens import Claims, TokenError, verify
from vilokanam.origin.filecache import CachedFile, MemoryFileResponse
from vilokanam.store import ChannelNotFound

if TYPE_CHECKING:
    from vilokanam.ingest.streams import StreamManager
    from vilokanam.store import Channel, Store

log = logging.getLogger(__name__)

SEGMENT_NAME = re.compile(r"^s(\d{1,19})-seg-(\d{1,19})\.(?:m4s|ts)$")
"""A media segment (not an init segment, not a playlist): session id and media sequence."""
SESSION_PREFIX = re.compile(r"(?:^|/)streams/(\d{1,19})$")
"""A media prefix (see ``StreamManager.media_prefix``): the stream session it holds."""
_URI_ATTRIBUTE = re.compile(r'URI="([^"]*)"')
CHANNEL_TTL = 5.0
MAX_CACHED = 10_000


class Billing(Protocol):
    """What the gate needs of :class:`vilokanam.billing.service.BillingService`."""

    def note_fetch(
        self, viewer_id: int, channel: Channel, session_id: int, sequence: int, duration: float
    ) -> None: ...
    def note_watching(self, viewer_id: int, channel: Channel, session_id: int) -> None: ...
    def allowance(
        self, viewer_id: int, channel: Channel, session_id: int | None = None
    ) -> str | None: ...
    async def ensure_loaded(self, viewer_id: int) -> None: ...


class Refused(Exception):
    """A request the gate turns away: 401 (token) or 402 (balance), with a reason."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail

    def response(self) -> web.Response:
        error = "unauthorized" if self.status == 401 else "payment_required"
        return web.json_response(
            {"error": error, "detail": self.detail},
            status=self.status,
            headers={"Cache-Control": "no-store"},
        )


@dataclass(frozen=True, slots=True)
class Admission:
    """A tokened request the gate let through: who watches which channel."""

    viewer_id: int
    token: str
    channel: Channel


# -- channel prices without a database hit per request ------------------------------------------
class ChannelCache:
    """slug → Channel (None: unknown), kept ``ttl`` seconds; stale entries are served while a
    thread refreshes them, so only a slug's first request waits for the database."""

    def __init__(
        self,
        lookup: Callable[[str], Channel | None],
        ttl: float = CHANNEL_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lookup = lookup
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[Channel | None, float]] = {}
        self._pending: dict[str, asyncio.Future[Channel | None]] = {}

    async def get(self, slug: str) -> Channel | None:
        entry = self._entries.get(slug)
        if entry is not None:
            if self._clock() - entry[1] > self.ttl and slug not in self._pending:
                self._start(slug)
            return entry[0]
        pending = self._pending.get(slug) or self._start(slug)
        return await asyncio.shield(pending)

    def forget(self, slug: str) -> None:
        """Look ``slug`` up again on its next request (a price change through the API)."""
        self._entries.pop(slug, None)

    def _start(self, slug: str) -> asyncio.Future[Channel | None]:
        future = asyncio.ensure_future(self._refresh(slug))
        self._pending[slug] = future
        return future

    async def _refresh(self, slug: str) -> Channel | None:
        try:
            channel = await asyncio.to_thread(self.lookup, slug)
        except Exception:
            entry = self._entries.get(slug)
            if entry is None:
                raise
            log.exception("channel %r: price lookup failed; keeping the cached one", slug)
            channel = entry[0]
        finally:
            self._pending.pop(slug, None)
        if len(self._entries) >= MAX_CACHED:
            self._entries.clear()
        self._entries[slug] = (channel, self._clock())
        return channel


# -- segment durations ---------------------------------------------------------------------------
class SegmentDurations:
    """Seconds of content in a media sequence: the live stream's record, else the EXTINF of
    the rendition's media playlist on disk (parsed once per playlist version)."""

    def __init__(self, manager: StreamManager | None) -> None:
        self.manager = manager
        self._parsed: dict[str, tuple[int, dict[int, float]]] = {}

    def duration(self, session_id: int, sequence: int, segment: Path) -> float | None:
        if self.manager is not None:
            stream = self.manager.stream_for_session(session_id)
            if stream is not None:
                known = stream.segment_duration(sequence)
                if known is not None:
                    return known
        return self.from_playlist(os.path.join(os.path.dirname(segment), "index.m3u8"), sequence)

    def from_playlist(self, playlist: str, sequence: int) -> float | None:
        """The EXTINF of ``sequence``; the file is read again only when it changed and the
        sequence is not in the version already parsed (a sequence's duration never changes)."""
        cached = self._parsed.get(playlist)
        if cached is not None and sequence in cached[1]:
            return cached[1][sequence]
        try:
            mtime = os.stat(playlist).st_mtime_ns
        except OSError:
            return None
        if cached is None or cached[0] != mtime:
            try:
                with open(playlist, encoding="utf-8", errors="replace") as file:
                    text = file.read()
            except OSError:
                return None
            if len(self._parsed) >= MAX_CACHED:
                self._parsed.clear()
            cached = self._parsed[playlist] = (mtime, parse_extinf(text))
        return cached[1].get(sequence)


def parse_extinf(text: str) -> dict[int, float]:
    """Media sequence → ``#EXTINF`` duration, for the segments a media playlist names."""
    durations: dict[int, float] = {}
    pending: float | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#EXTINF:"):
            try:
                pending = float(line[8:].split(",", 1)[0])
            except ValueError:
                pending = None
        elif line and not line.startswith("#"):
            match = SEGMENT_NAME.fullmatch(line.rsplit("/", 1)[-1].split("?", 1)[0])
            if match is not None and pending is not None and pending > 0:
                durations[int(match[2])] = pending
            pending = None
    return durations


# -- playlists that carry the token --------------------------------------------------------------
def with_token(uri: str, token: str) -> str:
    return f"{uri}{'&' if '?' in uri else '?'}token={token}"


def map_uris(text: str, change: Callable[[str], str]) -> str:
    """Every URI of a master or media playlist (lines and ``URI=`` attributes) through
    ``change``."""
    lines = text.split("\n")
    for index, raw in enumerate(lines):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if line.startswith("#"):
            if 'URI="' in line:
                lines[index] = _URI_ATTRIBUTE.sub(lambda m: f'URI="{change(m[1])}"', raw)
        else:
            lines[index] = change(line.strip()) + raw[len(line) :]
    return "\n".join(lines)


def sign_playlist(text: str, token: str) -> str:
    """Every URI of a master or media playlist with ``token`` appended (lines and ``URI=``)."""
    return map_uris(text, lambda uri: with_token(uri, token))


class _BilledFile(web.FileResponse):
    """A file response that calls ``on_sent`` after sending a GET's body (not a HEAD, a 304,
    or a send the client broke off)."""

    def __init__(
        self, path: str | Path, headers: dict[str, str], on_sent: Callable[[], None]
    ) -> None:
        super().__init__(path, headers=headers)
        self._on_sent = on_sent

    async def prepare(self, request: web.BaseRequest) -> Any:
        writer = await super().prepare(request)  # sends the whole file
        if request.method == "GET" and self.status in (200, 206):
            self._on_sent()
        return writer


def billed_response(
    file: str | Path,
    headers: dict[str, str],
    on_sent: Callable[[], None] | None,
    cached: CachedFile | None = None,
) -> web.StreamResponse:
    """``file`` from memory (``cached``, a plain GET/HEAD) or from disk, calling ``on_sent``
    (if any) once its body went out whole to a GET: 200 from memory, 200 or 206 from disk."""
    if cached is not None:
        return MemoryFileResponse(cached, headers, on_sent)
    if on_sent is None:
        return web.FileResponse(file, headers=headers)
    return _BilledFile(file, headers, on_sent)


# -- the gate ----------------------------------------------------------------------------------
class BillingGate:
    """Admits, refuses and bills requests under ``/live/{slug}/`` for priced channels."""

    def __init__(
        self,
        service: Billing,
        channels: ChannelCache,
        secret: bytes,
        durations: SegmentDurations,
        *,
        clock: Callable[[], float] = time.time,
        media_prefix: Callable[[str], str | None] | None = None,
    ) -> None:
        self.service = service
        self.channels = channels
        self.secret = secret
        self.durations = durations
        self._clock = clock
        self.media_prefix = media_prefix
        """slug → the media prefix ``/live/{slug}/`` serves (for a playlist's session)."""
        self._verified: dict[str, Claims] = {}
        """Tokens whose signature was checked (expiry and channel are checked every time)."""
        self.unknown_durations = 0

    async def admit(
        self, request: web.Request, slug: str, session_id: int | None = None
    ) -> Admission | None:
        """None for a free (or unknown) channel; an Admission, or :class:`Refused`.
        ``session_id``: the stream the request is for when the URL says so (a VOD)."""
        channel = await self.channels.get(slug)
        if channel is None or channel.price_per_second <= 0:
            return None
        token = request.query.get("token", "")
        claims = self._claims(token, slug)
        await self.service.ensure_loaded(claims.viewer_id)
        session = session_id if session_id is not None else self._session(request, slug)
        reason = self.service.allowance(claims.viewer_id, channel, session)
        if reason is not None:
            raise Refused(402, reason)
        return Admission(claims.viewer_id, token, channel)

    def _session(self, request: web.Request, slug: str) -> int | None:
        """The stream session a request is for: a segment's from its name, anything else's
        from the channel's media prefix; None if unknown."""
        name = request.match_info.get("path", "").rsplit("/", 1)[-1]
        match = SEGMENT_NAME.fullmatch(name)
        if match is not None:
            return int(match[1])
        prefix = self.media_prefix(slug) if self.media_prefix is not None else None
        found = SESSION_PREFIX.search(prefix) if prefix else None
        return int(found[1]) if found is not None else None

    def _claims(self, token: str, slug: str) -> Claims:
        claims = self._verified.get(token)
        try:
            if claims is None:
                claims = verify(self.secret, token, slug, self._clock())
                if len(self._verified) >= MAX_CACHED:
                    self._verified.clear()
                self._verified[token] = claims
            elif claims.expires_at <= self._clock():
                del self._verified[token]
                verify(self.secret, token, slug, self._clock())  # raises "token expired"
            elif claims.slug != slug:
                verify(self.secret, token, slug, self._clock())  # raises "another channel"
        except TokenError as exc:
            raise Refused(401, exc.reason) from None
        return claims

    def serve_segment(
        self,
        request: web.Request,
        file: Path,
        headers: dict[str, str],
        admission: Admission,
        cached: CachedFile | None = None,
    ) -> web.StreamResponse:
        """``file`` (from memory if ``cached``), billed once it went out whole to a GET (200,
        or 206 for a range); see :meth:`segment_billing`."""
        return billed_response(file, headers, self.segment_billing(file, admission), cached)

    def segment_billing(self, file: Path, admission: Admission) -> Callable[[], None] | None:
        """What bills ``file`` to the admitted viewer once sent: None for an init segment or
        another non-media file (not billed). A media segment whose duration is unknown (an
        ended stream's segment outside the playlist on disk) is a 404: nothing of a priced
        channel is watched unbilled."""
        match = SEGMENT_NAME.fullmatch(file.name)
        if match is None:
            return None
        session_id, sequence = int(match[1]), int(match[2])
        duration = self.durations.duration(session_id, sequence, file)
        if duration is None or not duration > 0:
            self.unknown_durations += 1
            log.warning("%s: duration unknown, refused (it could not be billed)", file.name)
            raise web.HTTPNotFound(text="not found")
        return lambda: self.service.note_fetch(
            admission.viewer_id, admission.channel, session_id, sequence, duration
        )

    def note_playlist(self, admission: Admission, prefix: str) -> None:
        """A media playlist fetch: the viewer is still watching (content it fetched ahead of
        the wall clock becomes billable as time passes)."""
        session = prefix.rsplit("/", 1)[-1]
        if session.isdigit():
            self.service.note_watching(admission.viewer_id, admission.channel, int(session))


def channel_lookup(store: Store) -> Callable[[str], Channel | None]:
    """``store.get_channel`` with None for an unknown slug, for :class:`ChannelCache`."""

    def lookup(slug: str) -> Channel | None:
        try:
            return store.get_channel(slug)
        except ChannelNotFound:
            return None

    return lookup
