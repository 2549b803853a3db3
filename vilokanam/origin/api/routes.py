"""The one route table: it registers the aiohttp routes and is what the OpenAPI document describes.

Each :class:`Route` names its method, path, handler, request/query/response models and the
error statuses it can answer, so the document and the router cannot drift apart.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from vilokanam.origin.api import cdn
from vilokanam.origin.api import handlers as h
from vilokanam.origin.api.auth import require_token, require_viewer
from vilokanam.origin.api.context import ApiContext
from vilokanam.origin.api.errors import (
    ApiError,
    error_response,
    field_errors,
    from_exception,
    validation_error,
)
from vilokanam.origin.api.schemas import (
    BalanceOut,
    CdnBatchIn,
    CdnBatchOut,
    CdnCursorOut,
    CdnCursorQuery,
    ChannelCreate,
    ChannelCreated,
    ChannelOut,
    ChannelUpdate,
    DepositIn,
    DepositOut,
    EarningsOut,
    EarningsQuery,
    HistoryQuery,
    KickOut,
    LedgerEntryOut,
    LedgerQuery,
    LiveStreamOut,
    MeOut,
    PlaybackOut,
    RotateQuery,
    SessionOut,
    StatusOut,
    StreamKeyOut,
    ViewerCreate,
    ViewerCreated,
    ViewerOut,
    VodOut,
    VodQuery,
)

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
CONTEXT = web.AppKey("api_context", ApiContext)
DOCUMENT = web.AppKey("openapi_document", dict)
"""The OpenAPI document, built once when the API is mounted."""

Handler = Callable[[ApiContext, h.Call], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    """Relative to :data:`PREFIX`, aiohttp/OpenAPI style: ``/channels/{slug}``."""
    handler: Handler
    summary: str
    tag: str
    response: type[BaseModel] | None = None
    """Response body model (None: free-form JSON object)."""
    many: bool = False
    """The response is a JSON array of ``response``."""
    request: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    """Error statuses besides 401 (auth), 422/400 (input) and 500, which are implied."""
    auth: bool = True
    viewer: bool = False
    """Authenticated by a viewer's key (``vk_…``) instead of the operator token."""
    path_types: tuple[tuple[str, str], ...] = ()
    """JSON types of path parameters other than strings: ``(("id", "integer"),)``."""

    @property
    def full_path(self) -> str:
        return PREFIX + self.path


async def _openapi(ctx: ApiContext, call: h.Call) -> web.Response:
    return web.json_response(call.request.app[DOCUMENT])


SLUG_ERRORS = (404,)
ROUTES: tuple[Route, ...] = (
    Route("GET", "/status", h.status, "Server status and totals", "server", StatusOut),
    Route("GET", "/channels", h.list_channels, "List channels", "channels", ChannelOut, many=True),
    Route(
        "POST",
        "/channels",
        h.create_channel,
        "Create a channel; the response carries its stream key, shown only this once",
        "channels",
        ChannelCreated,
        request=ChannelCreate,
        status=201,
        errors=(409,),
    ),
    Route(
        "GET",
        "/channels/{slug}",
        h.get_channel,
        "Get a channel",
        "channels",
        ChannelOut,
        errors=SLUG_ERRORS,
    ),
    Route(
        "PATCH",
        "/channels/{slug}",
        h.update_channel,
        "Change a channel's title, category, tags, price, ladder, payout address or "
        "recording settings (only the fields sent)",
        "channels",
        ChannelOut,
        request=ChannelUpdate,
        errors=SLUG_ERRORS,
    ),
    Route(
        "DELETE",
        "/channels/{slug}",
        h.delete_channel,
        "Delete a channel, ending its live stream first",
        "channels",
        ChannelOut,
        errors=(*SLUG_ERRORS, 503),
    ),
    Route(
        "POST",
        "/channels/{slug}/rotate-key",
        h.rotate_key,
        "New stream key; the publisher keeps streaming unless kick=true",
        "channels",
        StreamKeyOut,
        query=RotateQuery,
        errors=SLUG_ERRORS,
    ),
    Route(
        "POST",
        "/channels/{slug}/revoke-key",
        h.revoke_key,
        "Revoke the stream key (leaked): a live stream ends at once",
        "channels",
        ChannelOut,
        errors=SLUG_ERRORS,
    ),
    Route(
        "GET",
        "/streams",
        h.list_streams,
        "Live streams with their figures",
        "streams",
        LiveStreamOut,
        many=True,
    ),
    Route(
        "GET",
        "/streams/{slug}",
        h.get_stream,
        "One live stream (404 not_live if not live)",
        "streams",
        LiveStreamOut,
        errors=SLUG_ERRORS,
    ),
    Route(
        "POST",
        "/streams/{slug}/kick",
        h.kick_stream,
        "Disconnect the publisher",
        "streams",
        KickOut,
        errors=SLUG_ERRORS,
    ),
    Route(
        "GET",
        "/history",
        h.history,
        "Stream sessions, newest first",
        "history",
        SessionOut,
        many=True,
        query=HistoryQuery,
        errors=SLUG_ERRORS,
    ),
    Route(
        "GET",
        "/history/{id}",
        h.get_session,
        "One stream session",
        "history",
        SessionOut,
        errors=(404,),
        path_types=(("id", "integer"),),
    ),
    # -- VODs --
    Route(
        "GET",
        "/vods",
        h.list_vods,
        "Recorded streams (VODs), newest first",
        "vods",
        VodOut,
        many=True,
        query=VodQuery,
        errors=(404,),
    ),
    Route(
        "GET",
        "/vods/{id}",
        h.get_vod,
        "One VOD",
        "vods",
        VodOut,
        errors=(404,),
        path_types=(("id", "integer"),),
    ),
    Route(
        "DELETE",
        "/vods/{id}",
        h.delete_vod,
        "Delete a VOD: its media, then its entry",
        "vods",
        status=204,
        errors=(404, 503),
        path_types=(("id", "integer"),),
    ),
    # -- billing (operator) --
    Route(
        "POST",
        "/viewers",
        h.create_viewer,
        "Create a viewer; the response carries its viewer key, shown only this once",
        "billing",
        ViewerCreated,
        request=ViewerCreate,
        status=201,
        errors=(409,),
    ),
    Route("GET", "/viewers", h.list_viewers, "List viewers", "billing", ViewerOut, many=True),
    Route(
        "GET", "/viewers/{name}", h.get_viewer, "Get a viewer", "billing", ViewerOut, errors=(404,)
    ),
    Route(
        "GET",
        "/viewers/{name}/balance",
        h.viewer_balance,
        "A viewer's balance and live counter: seconds watched, amount spent, pending spend",
        "billing",
        BalanceOut,
        errors=(404, 503),
    ),
    Route(
        "POST",
        "/viewers/{name}/deposit",
        h.deposit,
        "Credit a viewer on the local ledger (idempotent by reference)",
        "billing",
        DepositOut,
        request=DepositIn,
        errors=(404,),
    ),
    Route(
        "POST",
        "/viewers/{name}/playback/{slug}",
        h.viewer_playback,
        "Issue a signed playback URL of a channel for a viewer",
        "billing",
        PlaybackOut,
        errors=(404,),
    ),
    Route(
        "GET",
        "/channels/{slug}/earnings",
        h.earnings,
        "A channel's earnings: seconds watched, gross, fees, net, settled and unsettled",
        "billing",
        EarningsOut,
        query=EarningsQuery,
        errors=(404,),
    ),
    Route(
        "GET",
        "/ledger",
        h.ledger,
        "Ledger entries with their postings, newest first",
        "billing",
        LedgerEntryOut,
        many=True,
        query=LedgerQuery,
        errors=(404,),
    ),
    Route(
        "POST",
        "/billing/settle",
        h.settle,
        "Settle the unsettled ticks now; answers the batch summary",
        "billing",
        errors=(503,),
    ),
    Route(
        "GET",
        "/billing/cdn-cursor",
        cdn.cdn_cursor,
        "How far a CDN access log file was read (by its identity; a renamed file resumes)",
        "billing",
        CdnCursorOut,
        query=CdnCursorQuery,
        errors=(503,),
    ),
    Route(
        "POST",
        "/billing/cdn-fetches",
        cdn.cdn_fetches,
        "Feed a batch of CDN log fetches to billing and viewer counts, then move the file's "
        "cursor past it",
        "billing",
        CdnBatchOut,
        request=CdnBatchIn,
        errors=(503,),
    ),
    # -- billing (the viewer's key) --
    Route(
        "POST",
        "/channels/{slug}/playback",
        h.my_playback,
        "A signed, expiring master playlist URL for the calling viewer",
        "viewer",
        PlaybackOut,
        errors=(404,),
        viewer=True,
    ),
    Route(
        "GET",
        "/me",
        h.me,
        "The calling viewer's live counter: seconds watched, amount spent, balance",
        "viewer",
        MeOut,
        errors=(503,),
        viewer=True,
    ),
    Route("GET", "/openapi.json", _openapi, "This OpenAPI document", "server", auth=False),
)


def _dump(result: Any) -> Any:
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    if isinstance(result, list):
        return [_dump(item) for item in result]
    return result


async def _read_body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    raw = await request.read()
    try:
        data = json.loads(raw) if raw.strip() else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_request", f"request body is not valid JSON: {exc}") from None
    if data is None:
        raise ApiError(400, "bad_request", "send a JSON object as the request body")
    if not isinstance(data, dict):
        raise validation_error([{"field": "body", "message": "must be a JSON object"}])
    return model.model_validate(data)


def _view(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler for ``route``: parse and validate, call, serialize."""

    async def view(request: web.Request) -> web.StreamResponse:
        call = h.Call(request)
        if route.query is not None:
            try:
                call.query = route.query.model_validate(dict(request.query))
            except ValidationError as exc:
                raise validation_error(field_errors(exc)) from None
        if route.request is not None:
            call.body = await _read_body(request, route.request)
        result = await route.handler(request.app[CONTEXT], call)
        if isinstance(result, web.StreamResponse):
            return result
        return web.json_response(_dump(result), status=route.status, headers=call.headers)

    view.__name__ = route.handler.__name__
    return view


@web.middleware
async def api_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Bearer auth (the operator token; a viewer key on viewer routes; nothing on public ones)
    and JSON errors for everything under /api/v1."""
    try:
        route = request.match_info.route
        matched = not request.match_info.http_exception
        if matched and getattr(route.handler, "viewer_auth", False):
            ctx = request.app[CONTEXT]
            request[h.VIEWER_KEY] = await require_viewer(request, ctx.store.viewer_for_key)
        elif not (matched and getattr(route.handler, "public", False)):
            require_token(request, request.app[CONTEXT].token)
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {}
        if isinstance(exc, web.HTTPMethodNotAllowed):
            headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
            detail = f"{request.method} is not allowed here; use {headers['Allow']}"
            return error_response(405, "method_not_allowed", detail, headers)
        if exc.status == 404:
            return error_response(404, "not_found", f"no API route {request.path}")
        return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or "")
    except Exception as exc:
        error = from_exception(exc)
        if error is None:
            log.exception("API %s %s failed", request.method, request.path)
            return error_response(500, "internal_error", "unexpected error (see the server log)")
        return error_response(error.status, error.error, error.detail, error.headers)


def register(api: web.Application) -> None:
    """Add every route of the table to the API sub-application (paths without the prefix)."""
    for route in ROUTES:
        view = _view(route)
        view.public = not route.auth  # type: ignore[attr-defined]
        view.viewer_auth = route.viewer  # type: ignore[attr-defined]
        api.router.add_route(route.method, route.path, view)
