"""HTTP delivery of live HLS: playlists and segments under ``/live/{slug}/``, plus ``/healthz``
and (given a :class:`ServerMetrics`) ``/metrics``.

Only files inside the stream's media folder are served; anything else is a 404, whatever the
path tries (``..``, absolute paths, encoded separators).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path

from aiohttp import web

from vilokanam.config import Settings
from vilokanam.origin.gate import BillingGate, Refused, sign_playlist
from vilokanam.origin.metrics import METRICS, ServerMetrics, metrics_endpoint, metrics_middleware
from vilokanam.origin.storage import CONTENT_TYPES, cache_control
from vilokanam.origin.viewers import ViewerCounter, viewer_identity

MediaResolver = Callable[[str], str | None]
"""slug → storage prefix of its current (or latest) stream, or None."""

CORS_ORIGIN = web.AppKey("cors_origin", str)
MEDIA_ROOT = web.AppKey("media_root", Path)
RESOLVE_MEDIA = web.AppKey("resolve_media", MediaResolver)
VIEWERS = web.AppKey("viewers", ViewerCounter)
GATE = web.AppKey("billing_gate", BillingGate)

_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


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
    suffix = Path(relpath).suffix
    gate = request.app.get(GATE)
    admission = None
    if gate is not None and suffix != ".jpg":  # posters stay public; playlists, media do not
        try:
            admission = await gate.admit(request, slug)
        except Refused as refused:
            return refused.response()
    resolve = request.app[RESOLVE_MEDIA]
    prefix = resolve(slug)
    if prefix is None:
        raise web.HTTPNotFound(text=f"channel {slug!r} is not streaming")
    root = request.app[MEDIA_ROOT]
    file = root / prefix / relpath
    if suffix not in CONTENT_TYPES or not file.is_file():
        raise web.HTTPNotFound(text="not found")
    headers = {"Cache-Control": cache_control(file.name), "Content-Type": CONTENT_TYPES[suffix]}
    viewers = request.app.get(VIEWERS)
    if viewers is not None and suffix != ".jpg":
        viewer = None if admission is None else admission.viewer_id
        viewers.note(slug, viewer_identity(request, viewer))
    if suffix == ".m3u8":
        # Small and replaced atomically: read whole so a rename mid-send cannot mix versions.
        body = file.read_bytes()
        if admission is not None and gate is not None:
            body = sign_playlist(body.decode(), admission.token).encode()
            if relpath.endswith("/index.m3u8"):  # a media playlist: the player is polling
                gate.note_playlist(admission, prefix)
        return web.Response(body=body, headers=headers)
    if admission is not None and gate is not None:
        return gate.serve_segment(request, file, headers, admission)
    return web.FileResponse(file, headers=headers)


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
) -> web.Application:
    """The origin app; ``metrics`` adds request metrics and ``/metrics``, ``viewers`` counting,
    ``gate`` playback tokens and billing for priced channels."""
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
    app.router.add_get("/healthz", healthz)
    if metrics is not None:
        app[METRICS] = metrics
        app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/live/{slug}/{path:.+}", serve_live)
    app.router.add_get("/watch/{slug}", watch_page)
    app.router.add_get("/static/{name}", static_file)
    return app
