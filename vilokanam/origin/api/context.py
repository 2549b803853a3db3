"""What the API handlers share: store, settings, stream manager, public URLs, the token."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from vilokanam.config import Settings
from vilokanam.config.urls import Urls
from vilokanam.origin.api.service import ChannelService
from vilokanam.store import Store

if TYPE_CHECKING:
    from vilokanam.ingest.streams import StreamManager

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

    def live_slugs(self) -> set[str]:
        return {stream.channel.slug for stream in self.manager.live_streams()}

    def service(self) -> ChannelService:
        """A service for one request; the live set is taken now, on the event loop."""
        live = self.live_slugs()
        return ChannelService(self.store, self.settings, self.urls(), lambda: live)

    async def blocking(self, function: Callable[..., T], *args: Any) -> T:
        """Run a store call off the event loop."""
        return await asyncio.to_thread(function, *args)
