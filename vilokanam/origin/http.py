"""HTTP delivery of HLS: live playlists and segments under ``/live/{slug}/``, VODs under
``/vod/{stream_id}/``, plus ``/healthz`` and (given a :class:`ServerMetrics`) ``/metrics``.

Only files inside the stream's media folder are served; anything else is a 404, whatever the
path tries (``..``, absolute paths, encoded separators). A file that is not on local disk but
has a public URL (S3 behind a CDN: recorded segments leave the local disk) is a 302 there.
Priced channels pass the billing gate for live and VOD alike.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path

from aiohttp import web

from vilokanam.config import Settings
from vilokanam.origin.gate import (
    Admission,
    BillingGate,
    Refused,
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

_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
_STREAM_ID = re.compile(r"^[1-9][0-9]{0,18}$")
MAX_STREAM_ID = 2**63 - 1


def safe_relative(path: str) -> str | None:
    """``path`` if every part is a plain file/folder name (no ``..``, no hidden files)."""
    parts = path.split("/")
    if not parts or len(parts) > 3 or not all(_SAFE_PART.fullmatch(part) for part in parts):
        return None
    if any(part.startswith(".") or ".." in part for part in parts):
        return None
    return path


def _add_cors(headers: MutableMapping[str, str], origin: str) -> None:
    headers["Access-Control-Allow-Origin"] = origin
    headers["Access-Control-Allow-Methods"] = "GET, HEAD, OPTIONS"
    headers["Access-Control-Allow-Headers"] = "Range, Authorization"
    headers["Access-Control-Expose-Headers"] = "Content-Length, Content-Range"


@web.middleware
async def cors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Browser players (hls.js on another origin) need CORS on every media response."""
    origin = request.app[CORS_ORIGIN]
    if request.method == "OPTIONS":
        response: web.StreamResponse = web.Response(status=204)
    else:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            _add_cors(exc.headers, origin)
            raise
    _add_cors(response.headers, origin)
    return response


async def serve_live(request: web.Request) -> web.StreamResponse:
    slug = request.match_info["slug"]
    relpath = safe_relative(request.match_info["path"])
    if not _SLUG.fullmatch(slug) or relpath is None:
        raise web.HTTPNotFound(text="not found")
    admission = await _admit(request, slug, relpath)
    if isinstance(admission, web.Response):
        return admission
    resolve = request.app[RESOLVE_MEDIA]
    prefix = resolve(slug)
    if prefix is None:
        raise web.HTTPNotFound(text=f"channel {slug!r} is not streaming")
    return _send(request, prefix, relpath, admission, count_viewer=slug)


async def serve_vod(request: web.Request) -> web.StreamResponse:
    """A recorded stream: ``/vod/{id}/X`` is storage ``{prefix}/X``, under the same rules."""
    raw = request.match_info["stream_id"]
    relpath = safe_relative(request.match_info["path"])
    resolve = request.app.get(RESOLVE_VOD)
    if relpath is None or resolve is None or not _STREAM_ID.fullmatch(raw):
        raise web.HTTPNotFound(text="not found")
    if int(raw) > MAX_STREAM_ID:
        raise web.HTTPNotFound(text="not found")
    location = await resolve(int(raw))
    if location is None:
        raise web.HTTPNotFound(text=f"no VOD {raw}")
    admission = await _admit(request, location.slug, relpath)
    if isinstance(admission, web.Response):
        return admission
    return _send(request, location.prefix, relpath, admission)


async def _admit(request: web.Request, slug: str, relpath: str) -> Admission | web.Response | None:
    """The billing gate's answer for a priced channel (an Admission, or the refusal to send);
    None for a free one. Posters stay public; playlists and media do not."""
    gate = request.app.get(GATE)
    if gate is None or relpath.endswith(".jpg"):
        return None
    try:
        return await gate.admit(request, slug)
    except Refused as refused:
        return refused.response()


def _send(
    request: web.Request,
    prefix: str,
    relpath: str,
    admission: Admission | None,
    *,
    count_viewer: str | None = None,
) -> web.StreamResponse:
    """The file ``{prefix}/{relpath}``: signed (playlists) and billed (segments) when admitted;
    a 302 to its public URL when it is not on local disk; else 404. ``count_viewer``: the slug
    whose live viewers this request counts for."""
    suffix = Path(relpath).suffix
    if suffix not in CONTENT_TYPES:
        raise web.HTTPNotFound(text="not found")
    file = request.app[MEDIA_ROOT] / prefix / relpath
    if not file.is_file():
        return _redirect(request, f"{prefix}/{relpath}", admission)
    headers = {"Cache-Control": cache_control(file.name), "Content-Type": CONTENT_TYPES[suffix]}
    viewers = request.app.get(VIEWERS)
    if viewers is not None and count_viewer is not None and suffix != ".jpg":
        viewer = None if admission is None else admission.viewer_id
        viewers.note(count_viewer, viewer_identity(request, viewer))
    gate = request.app.get(GATE)
    if suffix == ".m3u8":
        # Small and replaced atomically: read whole so a rename mid-send cannot mix versions.
        body = file.read_bytes()
        if admission is not None and gate is not None:
            text = _playlists_here(request, body.decode(), prefix, relpath)
            body = sign_playlist(text, admission.token).encode()
            if relpath.endswith("/index.m3u8"):  # a media playlist: the player is polling
                gate.note_playlist(admission, prefix)
        return web.Response(body=body, headers=headers)
    if admission is not None and gate is not None:
        return gate.serve_segment(request, file, headers, admission)
    return web.FileResponse(file, headers=headers)


def _playlists_here(request: web.Request, text: str, prefix: str, relpath: str) -> str:
    """A priced channel's playlist, for a CDN setup (media at a public URL): its media
    playlists come from this origin, which signs them (a master pointing at the CDN would
    send players to unsigned playlists), while its segments come from the CDN with the token,
    where the CDN's access logs bill them."""
    public_url = request.app.get(PUBLIC_URL)
    base = public_url(f"{prefix}/") if public_url is not None else None
    if base is None:
        return text
    if "/" not in relpath:  # the master: variants back to this origin, relative
        return map_uris(text, lambda uri: uri.removeprefix(base))
    folder = f"{prefix}/{relpath.rsplit('/', 1)[0]}/"
    return map_uris(text, lambda uri: uri if "://" in uri else public_url(folder + uri) or uri)


def _redirect(request: web.Request, relpath: str, admission: Admission | None) -> web.Response:
    """302 to where the storage keeps ``relpath`` for players (S3 behind a CDN), or 404.

    A priced channel's media keeps its token (the CDN's access logs bill it); its playlists
    are never redirected, since only this origin can sign them.
    """
    public_url = request.app.get(PUBLIC_URL)
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
) -> web.Application:
    """The origin app; ``metrics`` adds request metrics and ``/metrics``, ``viewers`` counting,
    ``gate`` playback tokens and billing for priced channels, ``resolve_vod`` the VODs under
    ``/vod/``, ``public_url`` redirects for files that are not on local disk."""
    middlewares = [cors_middleware]
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
    app.router.add_get("/healthz", healthz)
    if metrics is not None:
        app[METRICS] = metrics
        app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/live/{slug}/{path:.+}", serve_live)
    app.router.add_get("/vod/{stream_id}/{path:.+}", serve_vod)
    app.router.add_get("/watch/{slug}", watch_page)
    app.router.add_get("/static/{name}", static_file)
    return app
