"""A logged URL path → what was fetched: a media segment, a media playlist, a master playlist.

A segment's file name (``s{session}-seg-{sequence}.m4s``, see ``SEGMENT_NAME``) carries its
stream session and media sequence, so segments are recognised under any prefix. Playlists are
recognised under the three URL shapes a CDN sees:

* ``/live/{slug}/{rendition}/index.m3u8`` — nginx (or any CDN) in front of this origin;
* ``/vod/{session}/{rendition}/index.m3u8`` — a finished stream served by the origin;
* ``/{s3 prefix}streams/{session}/{rendition}/index.m3u8`` — a CDN in front of the S3 bucket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from vilokanam.origin.gate import SEGMENT_NAME

Kind = Literal["segment", "media_playlist", "playlist"]

_LIVE = re.compile(r"^/live/([a-z0-9][a-z0-9-]{1,62})/(.+)$")
_VOD = re.compile(r"^/vod/(\d{1,19})/(.+)$")
_BUCKET = re.compile(r"(?:^|/)streams/(\d{1,19})/(.+)$")
MEDIA_PLAYLIST = "index.m3u8"


@dataclass(frozen=True, slots=True)
class Media:
    """What a request fetched. ``session_id`` is None for a ``/live/`` playlist (the session is
    the channel's current one); ``slug`` is set for ``/live/`` paths only."""

    kind: Kind
    session_id: int | None
    sequence: int | None = None
    slug: str | None = None
    rendition: str | None = None


def classify(path: str) -> Media | None:
    """The media ``path`` names; None for anything else (init segments, posters, pages)."""
    directory, _, name = path.rpartition("/")
    rendition = directory.rpartition("/")[2] or None
    slug: str | None = None
    session: int | None = None
    rest = ""  # the path below the channel or session folder
    live = _LIVE.match(path)
    if live is not None:
        slug, rest = live[1], live[2]
    else:
        found = _VOD.match(path) or _BUCKET.search(path)
        if found is not None:
            session, rest = int(found[1]), found[2]
    segment = SEGMENT_NAME.fullmatch(name)
    if segment is not None:
        if rendition in (slug, str(session)):
            rendition = None  # a segment beside the master playlist: no rendition folder
        return Media("segment", int(segment[1]), int(segment[2]), slug, rendition)
    if not name.endswith(".m3u8") or not rest:
        return None
    if name == MEDIA_PLAYLIST and "/" in rest:
        return Media("media_playlist", session, None, slug, rendition)
    return Media("playlist", session, None, slug, None)
