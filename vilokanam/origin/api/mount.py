"""Mount the API on the origin's aiohttp app as a sub-application under ``/api/v1``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from vilokanam.billing.tokens import load_or_create_secret
from vilokanam.config import Settings
from vilokanam.config.urls import Urls
from vilokanam.origin.api.context import ApiContext
from vilokanam.origin.api.handlers import version
from vilokanam.origin.api.openapi import build_document
from vilokanam.origin.api.routes import CONTEXT, DOCUMENT, PREFIX, api_middleware, register
from vilokanam.store import Store

if TYPE_CHECKING:
    from vilokanam.billing.service import BillingService
    from vilokanam.ingest.streams import StreamManager
    from vilokanam.origin.vod import VodCatalogue


def setup_api(
    app: web.Application,
    *,
    store: Store,
    settings: Settings,
    manager: StreamManager,
    urls_provider: Callable[[], Urls],
    token: str,
    billing: BillingService | None = None,
    token_secret: bytes | None = None,
    settler: Any = None,
    channel_changed: Callable[[str], None] | None = None,
    vods: VodCatalogue | None = None,
) -> web.Application:
    """Add ``/api/v1`` to ``app``; returns the sub-application. Without ``token_secret`` the
    playback-token key is ``billing.token_secret`` or the ``{data_dir}/billing-secret`` file."""
    if token_secret is None:
        token_secret = load_or_create_secret(settings)
    api = web.Application(middlewares=[api_middleware])
    api[CONTEXT] = ApiContext(
        store,
        settings,
        manager,
        urls_provider,
        token,
        billing=billing,
        token_secret=token_secret,
        settler=settler,
        channel_changed=channel_changed,
        vods=vods,
    )
    api[DOCUMENT] = build_document(version())
    register(api)
    app.add_subapp(PREFIX, api)
    return api
