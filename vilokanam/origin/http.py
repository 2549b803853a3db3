"""HTTP delivery of HLS: live playlists and segments under ``/live/{slug}/``, VODs under
``/vod/{stream_id}/``, plus ``/healthz`` and (given a :class:`ServerMetrics`) ``/metrics``.

Only files inside the stream's media folder are served; anything else is a 404, whatever the
path tries (``..``, absolute paths, encoded separators). A file that is not on local disk but
has a public URL (S3 behind a CDN: recorded segments leave the local disk) is a 302 there.
Priced channels pass the billing gate for live and VOD alike.

Media files (segments, init segments, posters) are sent from memory when a plain GET or HEAD
finds them in the :class:`~vilokanam.origin.filecache.FileCache` (checked against a fresh stat
every time); playlists are read from disk on every request.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

from aiohttp import web

from vilokanam.config import Settings
from vilokanam.origin.filecache import FileCache, plain_request
from vilokanam.origin.gate import (
    Admission,
    BillingGate,
    Refused,
    billed_response,
    map_uris,
    sign_playlist,
    with_token,
)
from vilokanam.origin.metrics import METRICS, ServerMetrics, metrics_endpoint, metrics_middleware
from vilokanam.origin.storage import CONTENT_TYPES, PLAYLIST_CACHE, cache_control
from vilokanam.origin.viewers import ViewerCounter, viewer_identity
from vilokanam.origin.vod import VodLocation

MediaResolver = Callable[[str], str | None]
"""slug → storage prefix of its current (or latest) stream, or None."""
VodResolver = Callable[[int], Awaitable[VodLocation | None]]
"""VOD (stream session) id → where its media is and whose it is, or None."""
PublicUrl = Callable[[str], str | None]
"""Storage relpath → the URL players should fetch it from instead (a CDN), or None."""

CORS_ORIGIN = web.AppKey("cors_origin", str)
MEDIA_ROOT = web.AppKey("media_root", Path)
RESOLVE_MEDIA = web.AppKey("resolve_media", MediaResolver)
VIEWERS = web.AppKey("viewers", ViewerCounter)
GATE = web.AppKey("billing_gate", BillingGate)
RESOLVE_VOD = web.AppKey("resolve_vod", VodResolver)
PUBLIC_URL = web.AppKey("public_url", PublicUrl)
FILE_CACHE = web.AppKey("file_cache", FileCache)

BIG_PLAYLIST = 256 * 1024
"""Bytes of playlist text above which signing runs in a thread."""
_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_SAFE_PATH = re.compile(rf"(?:{_PART}/){{0,2}}{_PART}")
"""One to three ``_SAFE_PART``s joined by ``/`` (so no part starts with a dot)."""
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
_STREAM_ID = re.compile(r"^[1-9][0-9]{0,18}$")
MAX_STREAM_ID = 2**63 - 1


def safe_relative(path: str) -> str | None:
    """``path`` if every part is a plain file/folder name (no ``..``, no hidden files)."""
    if _SAFE_PATH.fullmatch(path) is None or ".." in path:
        return None
    return path


def cors_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
        "Access-Control-Allow-Headers": "Range, Authorization",
        "Access-Control-Expose-Headers": "Content-Length, Content-Range",
    }


def cors_middleware(origin: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Browser players (hls.js on another origin) need CORS on every media response."""
    cors = cors_headers(origin)

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.method == "OPTIONS":
            response: web.StreamResponse = web.Response(status=204)
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                exc.headers.update(cors)
                raise
        response.headers.update(cors)
        return response

    return middleware


@dataclass(frozen=True, slots=True)
class _Origin:
    """What the media handlers need, read from the app once (at :func:`create_app`)."""

    root: str
    resolve_media: MediaResolver
    files: FileCache
    viewers: ViewerCounter | None = None
    gate: BillingGate | None = None
    resolve_vod: VodResolver | None = None
    public_url: PublicUrl | None = None


_ORIGIN = web.AppKey("origin", _Origin)
_HEADERS = {
    suffix: {"Cache-Control": cache_control(f"file{suffix}"), "Content-Type": content_type}
    for suffix, content_type in CONTENT_TYPES.items()
}
"""Suffix → the headers of a file with it (the copy a response makes is its own)."""
_MISSING = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP})
"""What ``Path.is_file`` took for "not a file" rather than raise."""


async def serve_live(request: web.Request) -> web.StreamResponse:
    match_info = request.match_info
    slug = match_info["slug"]
    relpath = safe_relative(match_info["path"])
    if not _SLUG.fullmatch(slug) or relpath is None:
        raise web.HTTPNotFound(text="not found")
    origin = request.app[_ORIGIN]
    admission = await _admit(request, origin, slug, relpath)
    if isinstance(admission, web.Response):
        return admission
    prefix = origin.resolve_media(slug)
    if prefix is None:
        raise web.HTTPNotFound(text=f"channel {slug!r} is not streaming")
    return await _send(request, origin, prefix, relpath, admission, count_viewer=slug)


async def serve_vod(request: web.Request) -> web.StreamResponse:
    """A recorded stream: ``/vod/{id}/X`` is storage ``{prefix}/X``, under the same rules."""
    raw = request.match_info["stream_id"]
    relpath = safe_relative(request.match_info["path"])
    origin = request.app[_ORIGIN]
    resolve = origin.resolve_vod
    if relpath is None or resolve is None or not _STREAM_ID.fullmatch(raw):
        raise web.HTTPNotFound(text="not found")
    if int(raw) > MAX_STREAM_ID:
        raise web.HTTPNotFound(text="not found")
    location = await resolve(int(raw))
    if location is None:
        raise web.HTTPNotFound(text=f"no VOD {raw}")
    admission = await _admit(request, origin, location.slug, relpath, location.session_id)
    if isinstance(admission, web.Response):
        return admission
    return await _send(request, origin, location.prefix, relpath, admission)


async def _admit(
    request: web.Request,
    origin: _Origin,
    slug: str,
    relpath: str,
    session_id: int | None = None,
) -> Admission | web.Response | None:
    """The billing gate's answer for a priced channel (an Admission, or the refusal to send);
    None for a free one. Posters stay public; playlists and media do not."""
    gate = origin.gate
    if gate is None or relpath.endswith(".jpg"):
        return None
    try:
        return await gate.admit(request, slug, session_id)
    except Refused as refused:
        return refused.response()


async def _send(
    request: web.Request,
    origin: _Origin,
    prefix: str,
    relpath: str,
    admission: Admission | None,
    *,
    count_viewer: str | None = None,
) -> web.StreamResponse:
    """The file ``{prefix}/{relpath}``: signed (playlists) and billed (segments) when admitted;
    a 302 to its public URL when it is not on local disk; else 404. ``count_viewer``: the slug
    whose live viewers this request counts for."""
    name = relpath.rpartition("/")[2]
    dot = name.rfind(".")
    suffix = name[dot:] if dot > 0 else ""
    headers = _HEADERS.get(suffix)
    if headers is None:
        raise web.HTTPNotFound(text="not found")
    root = origin.root
    path = (
        f"{root}/{prefix}/{relpath}" if prefix[:1] != "/" else os.path.join(root, prefix, relpath)
    )
    try:
        st: os.stat_result | None = os.stat(path)
    except OSError as exc:
        if exc.errno not in _MISSING:
            raise
        st = None
    if st is None or not S_ISREG(st.st_mode):
        origin.files.discard(path)  # gone from local disk: free its memory now
        return _redirect(request, origin, f"{prefix}/{relpath}", admission)
    viewers = origin.viewers
    if viewers is not None and count_viewer is not None and suffix != ".jpg":
        viewer = None if admission is None else admission.viewer_id
        viewers.note(count_viewer, viewer_identity(request, viewer))
    gate = origin.gate
    if suffix == ".m3u8":
        # Small and replaced atomically: read whole so a rename mid-send cannot mix versions.
        # Never cached: playlists change.
        body = _read_whole(path, st.st_size)
        if admission is not None and gate is not None:
            text = _playlists_here(request, origin, body.decode(), prefix, relpath)
            if len(text) > BIG_PLAYLIST:  # a long VOD: megabytes to rewrite, off the loop
                body = await asyncio.to_thread(_signed, text, admission.token)
            else:
                body = _signed(text, admission.token)
            if relpath.endswith("/index.m3u8"):  # a media playlist: the player is polling
                gate.note_playlist(admission, prefix)
        return web.Response(body=body, headers=headers)
    on_sent = None
    if admission is not None and gate is not None:
        on_sent = gate.segment_billing(Path(path), admission)  # a 404 if it cannot be billed
    files = origin.files
    cached = None
    if files.cacheable(st) and plain_request(request):
        cached = files.get(path, st) or await files.load(path)
    return billed_response(path, headers, on_sent, cached)


def _read_whole(path: str, size: int) -> bytes:
    """The file at ``path`` now (``size``: its size when last seen; it may have been replaced
    since): usually one ``read``, since a short read of a regular file is its end."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, size + 1)
        if len(data) <= size:
            return data
        chunks = [data]
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _signed(text: str, token: str) -> bytes:
    return sign_playlist(text, token).encode()


def _playlists_here(
    request: web.Request, origin: _Origin, text: str, prefix: str, relpath: str
) -> str:
    """A priced channel's playlist, for a CDN setup (media at a public URL): its media
    playlists come from this origin, which signs them (a master pointing at the CDN would
    send players to unsigned playlists). A live media playlist lists its segments on the CDN
    with the token (the CDN's access logs bill them; the player polls, so the gate checks
    the balance every few seconds). An ended one (a VOD) is fetched once: its segments stay
    on this origin, so the gate checks each request, then serves or redirects it."""
    public_url = origin.public_url
    base = public_url(f"{prefix}/") if public_url is not None else None
    if base is None:
        return text
    if "/" not in relpath:  # the master: variants back to this origin, relative
        return map_uris(text, lambda uri: uri.removeprefix(base))
    if "#EXT-X-ENDLIST" in text:
        return text
    folder = f"{prefix}/{relpath.rsplit('/', 1)[0]}/"
    return map_uris(text, lambda uri: uri if "://" in uri else public_url(folder + uri) or uri)


def _redirect(
    request: web.Request, origin: _Origin, relpath: str, admission: Admission | None
) -> web.Response:
    """302 to where the storage keeps ``relpath`` for players (S3 behind a CDN), or 404.

    A priced channel's media keeps its token (the CDN's access logs bill it); its playlists
    are never redirected, since only this origin can sign them.
    """
    public_url = origin.public_url
    url = public_url(relpath) if public_url is not None else None
    if url is None or (admission is not None and relpath.endswith(".m3u8")):
        raise web.HTTPNotFound(text="not found")
    if admission is not None:
        url = with_token(url, admission.token)
    raise web.HTTPFound(url, headers={"Cache-Control": PLAYLIST_CACHE})


STATIC_DIR = Path(__file__).with_name("static")


async def watch_page(request: web.Request) -> web.Response:
    """A player page: native HLS where the browser has it, hls.js elsewhere."""
    slug = request.match_info["slug"]
    if not _SLUG.fullmatch(slug):
        raise web.HTTPNotFound(text="not found")
    html = (STATIC_DIR / "watch.html").read_text().replace("{{slug}}", slug)
    return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-cache"})


async def static_file(request: web.Request) -> web.StreamResponse:
    """Optional player assets (``hls.min.js`` if an operator drops it into ``static/``)."""
    name = request.match_info["name"]
    file = STATIC_DIR / name
    if not _SAFE_PART.fullmatch(name) or name.endswith(".html") or not file.is_file():
        raise web.HTTPNotFound(text="not found")
    return web.FileResponse(file, headers={"Cache-Control": "public, max-age=3600"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(
    settings: Settings,
    media_root: Path,
    resolve_media: MediaResolver,
    *,
    metrics: ServerMetrics | None = None,
    viewers: ViewerCounter | None = None,
    gate: BillingGate | None = None,
    resolve_vod: VodResolver | None = None,
    public_url: PublicUrl | None = None,
    file_cache: FileCache | None = None,
) -> web.Application:
    """The origin app; ``metrics`` adds request metrics and ``/metrics``, ``viewers`` counting,
    ``gate`` playback tokens and billing for priced channels, ``resolve_vod`` the VODs under
    ``/vod/``, ``public_url`` redirects for files that are not on local disk, ``file_cache``
    the media files kept in memory (default: ``http.file_cache_mb``)."""
    middlewares = [cors_middleware(settings.http.cors_origin)]
    if metrics is not None:
        middlewares.insert(0, metrics_middleware(metrics))  # outermost: sees the final status
    app = web.Application(middlewares=middlewares)
    app[CORS_ORIGIN] = settings.http.cors_origin
    app[MEDIA_ROOT] = media_root
    app[RESOLVE_MEDIA] = resolve_media
    if viewers is not None:
        app[VIEWERS] = viewers
    if gate is not None:
        app[GATE] = gate
    if resolve_vod is not None:
        app[RESOLVE_VOD] = resolve_vod
    if public_url is not None:
        app[PUBLIC_URL] = public_url
    if file_cache is None:
        file_cache = FileCache(max_bytes=settings.http.file_cache_mb * 1024 * 1024)
    files = file_cache
    app[FILE_CACHE] = files
    app[_ORIGIN] = _Origin(
        str(media_root), resolve_media, files, viewers, gate, resolve_vod, public_url
    )
    app.router.add_get("/healthz", healthz)
    if metrics is not None:
        app[METRICS] = metrics
        app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/live/{slug}/{path:.+}", serve_live)
    app.router.add_get("/vod/{stream_id}/{path:.+}", serve_vod)
    app.router.add_get("/watch/{slug}", watch_page)
    app.router.add_get("/static/{name}", static_file)
    return app
