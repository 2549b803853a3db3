"""Wires the parts into one running server: store, stream manager, RTMP ingest, HTTP origin."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from vilokanam.config import Settings
from vilokanam.config.urls import urls_for
from vilokanam.ingest.server import RtmpServer
from vilokanam.ingest.streams import StreamManager
from vilokanam.origin.http import create_app
from vilokanam.origin.storage import LocalStorage
from vilokanam.store import Store

log = logging.getLogger("vilokanam")

DEMO_SLUG = "demo"


class VilokanamServer:
    """The whole server in one process (workers are child processes)."""

    def __init__(self, settings: Settings, *, echo: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.echo = echo
        self.store = Store(settings.database_url)
        self.storage = LocalStorage(settings.media_dir)
        self.manager = StreamManager(settings, self.store, self.storage)
        self.rtmp = RtmpServer(settings, self.manager)
        self.runner: web.AppRunner | None = None
        self.http_port = settings.http.port

    async def start(self) -> None:
        stale = await asyncio.to_thread(self.store.end_unfinished_sessions)
        if stale:
            log.info("ended %d stream session(s) left open by an earlier run", stale)
        await self.rtmp.start()
        app = create_app(self.settings, self.storage.root, self.manager.media_prefix)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.http.host, self.settings.http.port)
        await site.start()
        if self.settings.http.port == 0 and site._server is not None:  # tests: ephemeral port
            self.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.urls = urls_for(self.settings, self.rtmp.port, self.http_port)
        await self._first_start_banner()
        log.info(
            "listening: rtmp %s, http %s (data in %s)",
            self.urls.rtmp_server,
            self.urls.http_base,
            self.settings.data_dir.resolve(),
        )

    async def _first_start_banner(self) -> None:
        """On a first start, make a demo channel and say once where to publish and watch."""
        channels = await asyncio.to_thread(self.store.list_channels)
        if channels:
            lines = [f"Publish with OBS/ffmpeg to {self.urls.rtmp_server} using a channel's key."]
            lines += [f"  Watch {c.slug}: {self.urls.playback(c.slug)}" for c in channels[:10]]
            self.echo("\n".join(lines))
            return
        channel, key = await asyncio.to_thread(self.store.create_channel, DEMO_SLUG, "Demo")
        self.echo(
            "\n".join(
                [
                    "",
                    "Vilokanam is running. A 'demo' channel was created (shown once; "
                    "`vilokanam channel rotate-key demo` makes a new key):",
                    "  OBS > Settings > Stream > Service: Custom   "
                    f"Server: {self.urls.rtmp_server}",
                    f"  Stream key: {key}",
                    f"  or: ffmpeg -re -i INPUT -c:v libx264 -g 60 -c:a aac -f flv "
                    f"{self.urls.rtmp_publish(key)}",
                    f"  Watch: {self.urls.playback(channel.slug)}",
                    f"  In a browser: {self.urls.watch_page(channel.slug)}",
                    "",
                ]
            )
        )

    async def stop(self) -> None:
        await self.rtmp.stop()
        await self.manager.shutdown()
        if self.runner is not None:
            await self.runner.cleanup()


async def serve_forever(settings: Settings) -> None:
    server = VilokanamServer(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: ending live streams")
    await server.stop()
