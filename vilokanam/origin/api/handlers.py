"""One coroutine per API operation; the route table in ``routes.py`` says which is which."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel

from vilokanam.origin.api.context import ApiContext
from vilokanam.origin.api.errors import ApiError, validation_error
from vilokanam.origin.api.schemas import (
    ChannelCreate,
    ChannelUpdate,
    DepositIn,
    EarningsQuery,
    HistoryQuery,
    KickOut,
    LedgerQuery,
    LiveStreamOut,
    RenditionOut,
    RotateQuery,
    SessionOut,
    StatusOut,
    VodQuery,
)
from vilokanam.origin.api.service import balance_out
from vilokanam.store.models import Viewer

if TYPE_CHECKING:
    from vilokanam.ingest.streams import LiveStream

DELETED = "channel deleted"
REVOKED = "stream key revoked"
ROTATED = "stream key rotated"
KICKED = "kicked by an operator"


@dataclass
class Call:
    """One API request after parsing: path parameters, validated body and query."""

    request: web.Request
    body: Any = None
    query: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers a handler wants (Location)."""

    @property
    def slug(self) -> str:
        return self.request.match_info["slug"]

    @property
    def name(self) -> str:
        return self.request.match_info["name"]

    @property
    def viewer(self) -> Viewer:
        """The viewer whose key authenticated a viewer route."""
        return self.request[VIEWER_KEY]


VIEWER_KEY = web.RequestKey("viewer", Viewer)
"""The viewer a viewer route's key belongs to (set by the auth middleware)."""


def version() -> str:
    try:
        return importlib.metadata.version("vilokanam")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - not installed
        return "0+unknown"


# -- status ----------------------------------------------------------------------------------
async def status(ctx: ApiContext, call: Call) -> StatusOut:
    counts = await ctx.blocking(ctx.store.counts)
    streams = ctx.manager.live_streams()
    urls = ctx.urls()
    return StatusOut(
        version=version(),
        uptime_seconds=round(time.monotonic() - ctx.started, 3),
        database="postgresql" if ctx.settings.database_url.startswith("postgres") else "sqlite",
        channels=counts["channels"],
        sessions=counts["sessions"],
        live_streams=len(streams),
        publishers=sum(1 for s in streams if s.publisher is not None),
        viewers=sum(s.stats.viewers for s in streams),
        rtmp_url=urls.rtmp_server,
        http_url=urls.http_base,
    )


# -- channels --------------------------------------------------------------------------------
async def list_channels(ctx: ApiContext, call: Call) -> list[BaseModel]:
    return list(await ctx.blocking(ctx.service().list))


async def create_channel(ctx: ApiContext, call: Call) -> BaseModel:
    body: ChannelCreate = call.body
    created = await ctx.blocking(ctx.service().create, body)
    call.headers["Location"] = f"{call.request.path.rstrip('/')}/{created.slug}"
    return created


async def get_channel(ctx: ApiContext, call: Call) -> BaseModel:
    return await ctx.blocking(ctx.service().get, call.slug)


async def update_channel(ctx: ApiContext, call: Call) -> BaseModel:
    body: ChannelUpdate = call.body
    updated = await ctx.blocking(ctx.service().update, call.slug, body)
    if ctx.channel_changed is not None:
        ctx.channel_changed(call.slug)  # a new price applies to the next request
    return updated


async def delete_channel(ctx: ApiContext, call: Call) -> BaseModel:
    """Refuse new publishes, end the live stream cleanly (ENDLIST), then delete."""
    service = ctx.service()
    channel = await ctx.blocking(service.revoke_key, call.slug)
    await ctx.manager.end_channel(channel.id, DELETED)
    if ctx.vods is not None:  # the rows would go with the channel: VODs' media first; what
        # its other streams left is swept later (viewers still get ENDLIST meanwhile)
        await _delete_media("the channel", ctx.vods.delete_channel(channel.id))
    return await ctx.blocking(service.delete, call.slug)


async def rotate_key(ctx: ApiContext, call: Call) -> BaseModel:
    query: RotateQuery = call.query
    keys = await ctx.blocking(ctx.service().rotate_key, call.slug)
    if query.kick:
        await ctx.manager.kick(call.slug, ROTATED)
    return keys


async def revoke_key(ctx: ApiContext, call: Call) -> BaseModel:
    """A leaked key: nobody may publish, and a live stream ends at once."""
    channel = await ctx.blocking(ctx.service().revoke_key, call.slug)
    await ctx.manager.end_channel(channel.id, REVOKED)
    return channel.model_copy(update={"live": False})


# -- live streams ----------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _integer(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def stream_out(ctx: ApiContext, stream: LiveStream) -> LiveStreamOut:
    """A live stream's figures, read on the event loop."""
    stats = stream.stats
    transcode = stats.transcode or {}
    per_rung = transcode.get("rungs") or {}
    renditions = []
    for name, info in stats.renditions.items():
        rung = per_rung.get(name) or {}
        renditions.append(
            RenditionOut(
                name=name,
                width=_integer(info.get("width")),
                height=_integer(info.get("height")),
                frame_rate=_number(info.get("frame_rate")),
                bandwidth=_integer(info.get("bandwidth")),
                fps=_number(rung.get("fps", transcode.get("fps"))),
                speed=_number(rung.get("speed", transcode.get("speed"))),
            )
        )
    source = stats.renditions.get("source") or max(
        stats.renditions.values(), key=lambda r: _integer(r.get("height")) or 0, default={}
    )
    return LiveStreamOut(
        channel=stream.channel.slug,
        stream_id=stream.session_id,
        state="live" if stream.publisher is not None else "reconnecting",
        publisher=stream.publisher.peer if stream.publisher is not None else None,
        started_at=stats.started_at,
        uptime_seconds=round(stats.uptime, 3),
        viewers=stats.viewers,
        peak_viewers=stats.peak_viewers,
        ingest_bitrate=int(stats.ingest.per_second() * 8),
        width=_integer(source.get("width")),
        height=_integer(source.get("height")),
        fps=_number(source.get("frame_rate")),
        segments=stream.segments,
        dropped_frames=stats.dropped_frames,
        renditions=renditions,
        playback_url=ctx.urls().playback(stream.channel.slug),
    )


async def list_streams(ctx: ApiContext, call: Call) -> list[BaseModel]:
    streams = sorted(ctx.manager.live_streams(), key=lambda s: s.channel.slug)
    return [stream_out(ctx, stream) for stream in streams]


async def _live(ctx: ApiContext, slug: str) -> LiveStream:
    stream = ctx.manager.stream_for_slug(slug)
    if stream is None or stream.ended or stream.finishing:
        await ctx.blocking(ctx.store.get_channel, slug)  # unknown channel: 404 not_found
        raise ApiError(404, "not_live", f"channel {slug!r} is not streaming")
    return stream


async def get_stream(ctx: ApiContext, call: Call) -> BaseModel:
    return stream_out(ctx, await _live(ctx, call.slug))


async def kick_stream(ctx: ApiContext, call: Call) -> BaseModel:
    """Disconnect the publisher; the stream ends unless it reconnects within the window."""
    await ctx.blocking(ctx.store.get_channel, call.slug)
    kicked = await ctx.manager.kick(call.slug, KICKED)
    return KickOut(channel=call.slug, kicked=kicked)


# -- history ---------------------------------------------------------------------------------
MAX_ID = 2**63 - 1


def _with_live_figures(ctx: ApiContext, session: SessionOut) -> SessionOut:
    """A session still running: segments and peak viewers from memory (the store lags)."""
    if session.state == "ended":
        return session
    stream = ctx.manager.stream_for_slug(session.channel)
    if stream is None or stream.session_id != session.id:
        return session
    return session.model_copy(
        update={
            "segments": max(session.segments, stream.segments),
            "peak_viewers": max(session.peak_viewers, stream.stats.peak_viewers),
        }
    )


async def history(ctx: ApiContext, call: Call) -> list[BaseModel]:
    query: HistoryQuery = call.query
    service = ctx.service()
    sessions = await ctx.blocking(service.history, query.channel, query.limit, query.before)
    return [_with_live_figures(ctx, session) for session in sessions]


def _path_id(call: Call) -> int:
    raw = call.request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_ID:
        raise validation_error([{"field": "id", "message": "must be a positive integer"}])
    return int(raw)


async def get_session(ctx: ApiContext, call: Call) -> BaseModel:
    session = await ctx.blocking(ctx.service().session, _path_id(call))
    return _with_live_figures(ctx, session)


# -- VODs ------------------------------------------------------------------------------------
async def list_vods(ctx: ApiContext, call: Call) -> list[BaseModel]:
    query: VodQuery = call.query
    vods = ctx.vod_service()
    return list(await ctx.blocking(vods.list, query.channel, query.limit, query.before))


async def get_vod(ctx: ApiContext, call: Call) -> BaseModel:
    return await ctx.blocking(ctx.vod_service().get, _path_id(call))


async def delete_vod(ctx: ApiContext, call: Call) -> web.Response:
    """Delete the VOD's media, then its entry; its URLs answer 404 from now on."""
    vod_id = _path_id(call)
    await _delete_media("the VOD", ctx.require_vods().delete(vod_id))
    return web.Response(status=204)


MEDIA_DELETE_TIMEOUT = 30.0
"""Seconds a delete request waits for the media storage (S3 away) before answering 503."""


async def _delete_media(what: str, deleting: Awaitable[object]) -> None:
    """Storage refusing or not answering a delete (a permission, S3 away): 503, and the VOD
    rows are kept, so the same request can be sent again once it is fixed."""
    try:
        await asyncio.wait_for(deleting, MEDIA_DELETE_TIMEOUT)
    except TimeoutError:
        detail = f"the media storage did not answer in {MEDIA_DELETE_TIMEOUT:.0f} s; try again"
        message = f"could not delete the media of {what}: {detail}"
        raise ApiError(503, "storage_error", message) from None
    except OSError as exc:
        detail = f"could not delete the media of {what} ({exc}); it is kept, try again"
        raise ApiError(503, "storage_error", detail) from None


# -- billing: viewers (operator) -------------------------------------------------------------
async def create_viewer(ctx: ApiContext, call: Call) -> BaseModel:
    created = await ctx.blocking(ctx.billing_ops().create_viewer, call.body)
    call.headers["Location"] = f"{call.request.path.rstrip('/')}/{created.name}"
    return created


async def list_viewers(ctx: ApiContext, call: Call) -> list[BaseModel]:
    return list(await ctx.blocking(ctx.billing_ops().list_viewers))


async def get_viewer(ctx: ApiContext, call: Call) -> BaseModel:
    return await ctx.blocking(ctx.billing_ops().get_viewer, call.name)


async def _balance(ctx: ApiContext, viewer: Viewer) -> BaseModel:
    billing = ctx.require_billing()
    assert viewer.id is not None
    await billing.ensure_loaded(viewer.id)
    return balance_out(billing.viewer_status(viewer.id), viewer)


async def viewer_balance(ctx: ApiContext, call: Call) -> BaseModel:
    viewer = await ctx.blocking(ctx.billing_ops().viewer, call.name)
    return await _balance(ctx, viewer)


async def deposit(ctx: ApiContext, call: Call) -> BaseModel:
    """Credit the local ledger, then let the live counters see the new balance."""
    body: DepositIn = call.body
    ops = ctx.billing_ops()
    result = await ctx.blocking(ops.deposit, call.name, body)
    if ctx.billing is not None:
        viewer = await ctx.blocking(ops.viewer, call.name)
        assert viewer.id is not None
        ctx.billing.invalidate(viewer.id)
        await ctx.billing.ensure_loaded(viewer.id)
        balance = ctx.billing.viewer_status(viewer.id)["balance"]
        result = result.model_copy(update={"balance": balance})
    return result


async def viewer_playback(ctx: ApiContext, call: Call) -> BaseModel:
    """The operator issues a playback URL for a viewer (``vilokanam viewer token``)."""
    ops = ctx.billing_ops()
    viewer = await ctx.blocking(ops.viewer, call.name)
    return await ctx.blocking(ops.playback, viewer, call.slug)


# -- billing: channels, ledger, settlement (operator) ----------------------------------------
async def earnings(ctx: ApiContext, call: Call) -> BaseModel:
    query: EarningsQuery = call.query
    return await ctx.blocking(ctx.billing_ops().earnings, call.slug, query.since)


async def ledger(ctx: ApiContext, call: Call) -> list[BaseModel]:
    query: LedgerQuery = call.query
    return list(await ctx.blocking(ctx.billing_ops().entries, query))


async def settle(ctx: ApiContext, call: Call) -> Any:
    """Force a settlement batch now; 503 when no settler runs."""
    if ctx.settler is None:
        raise ApiError(503, "settlement_unavailable", "no settlement backend runs on this server")
    if ctx.billing is not None:
        await ctx.billing.flush()  # what was watched so far goes into this batch
    summary = await ctx.settler.settle_now()
    return json.loads(json.dumps(summary, default=str))


# -- billing: the viewer's own routes (viewer key) -------------------------------------------
async def my_playback(ctx: ApiContext, call: Call) -> BaseModel:
    return await ctx.blocking(ctx.billing_ops().playback, call.viewer, call.slug)


async def me(ctx: ApiContext, call: Call) -> BaseModel:
    return await _balance(ctx, call.viewer)
