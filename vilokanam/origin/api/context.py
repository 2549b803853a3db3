"""What the API handlers share: store, settings, stream manager, public URLs, the token, and
billing (the live counters, the playback-token secret, the settler when one runs)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from vilokanam.config import Settings
from vilokanam.config.urls import Urls
from vilokanam.origin.api.errors import ApiError
from vilokanam.origin.api.service import BillingOps, ChannelService, VodService
from vilokanam.store import Store

if TYPE_CHECKING:
    from vilokanam.billing.service import BillingService
    from vilokanam.ingest.streams import StreamManager
    from vilokanam.origin.vod import VodCatalogue

T = TypeVar("T")


@dataclass
class ApiContext:
    store: Store
    settings: Settings
    manager: StreamManager
    urls: Callable[[], Urls]
    """The server's public URLs (known only once its sockets are bound)."""
    token: str
    started: float = field(default_factory=time.monotonic)
    billing: BillingService | None = None
    """The running billing service (live per-viewer counters); None: billing is off."""
    token_secret: bytes = b""
    """The playback-token key."""
    settler: Any = None
    """The settlement backend (``await settler.settle_now()``), when one runs."""
    channel_changed: Callable[[str], None] | None = None
    """Told a slug whose channel changed (the billing gate's price cache)."""
    cdn_ingester: Any = None
    """CDN access log ingester (``vilokanam/origin/api/cdn.py``), made on first use."""
    vods: VodCatalogue | None = None
    """The VOD catalogue (deletes media and rows, and tells the origin); None: no deleting."""

    def live_slugs(self) -> set[str]:
        return {stream.channel.slug for stream in self.manager.live_streams()}

    def service(self) -> ChannelService:
        """A service for one request; the live set is taken now, on the event loop."""
        live = self.live_slugs()
        return ChannelService(self.store, self.settings, self.urls(), lambda: live)

    def vod_service(self) -> VodService:
        return VodService(self.store, self.urls())

    def require_vods(self) -> VodCatalogue:
        if self.vods is None:
            raise ApiError(503, "vod_unavailable", "VOD storage is not available on this server")
        return self.vods

    def billing_ops(self) -> BillingOps:
        return BillingOps(self.store, self.settings, self.urls(), lambda: self.token_secret)

    def require_billing(self) -> BillingService:
        if self.billing is None:
            raise ApiError(503, "billing_unavailable", "billing is not running on this server")
        return self.billing

    async def blocking(self, function: Callable[..., T], *args: Any) -> T:
        """Run a store call off the event loop."""
        return await asyncio.to_thread(function, *args)
