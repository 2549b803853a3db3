"""The API side of ``vilokanam billing ingest-logs``: file cursors and batches of CDN log
fetches, fed to this server's billing tracker and viewer counts (see docs/cdn.md)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from vilokanam.billing.cdnlogs.cursors import CursorState
from vilokanam.billing.cdnlogs.formats import LogFetch
from vilokanam.billing.cdnlogs.ingest import Batch, Catalog, CdnIngester
from vilokanam.origin.api.context import ApiContext
from vilokanam.origin.api.errors import validation_error
from vilokanam.origin.api.schemas import (
    CdnBatchIn,
    CdnBatchOut,
    CdnCursorOut,
    CdnCursorQuery,
    CdnSummaryOut,
)
from vilokanam.origin.http import VIEWERS

if TYPE_CHECKING:
    from vilokanam.origin.api.handlers import Call


def _ingester(ctx: ApiContext, call: Call) -> CdnIngester:
    """The server's ingester, made on first use (it keeps caches between batches)."""
    if ctx.cdn_ingester is None:
        billing = ctx.require_billing()
        ctx.cdn_ingester = CdnIngester(
            billing,
            Catalog(ctx.store, ctx.settings, ctx.manager),
            ctx.token_secret,
            viewers=call.request.config_dict.get(VIEWERS),
        )
    return ctx.cdn_ingester


def _cursor(cursor: CursorState) -> CdnCursorOut:
    return CdnCursorOut(**asdict(cursor))


async def cdn_cursor(ctx: ApiContext, call: Call) -> CdnCursorOut:
    query: CdnCursorQuery = call.query
    return _cursor(await _ingester(ctx, call).cursor(query.source))


async def cdn_fetches(ctx: ApiContext, call: Call) -> CdnBatchOut:
    """Feed a batch; a fetch that fails validation is skipped and counted (``invalid
    {field}``), never refusing the batch: that would stall the file's cursor for ever."""
    body: CdnBatchIn = call.body
    if body.end < body.start:
        raise validation_error([{"field": "end", "message": "must not be less than start"}])
    batch = Batch(
        body.source,
        body.start,
        body.end,
        body.lines,
        body.bad_lines,
        body.other,
        [LogFetch(**fetch.model_dump()) for fetch in body.fetches],
    )
    summary, cursor = await _ingester(ctx, call).submit(batch)
    for reason, count in body.invalid_fetches().items():
        summary.skipped[reason] = summary.skipped.get(reason, 0) + count
    return CdnBatchOut(cursor=_cursor(cursor), summary=CdnSummaryOut(**summary.as_dict()))
